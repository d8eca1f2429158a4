"""Topics: validation, the matching rule, and the index that implements it."""

from __future__ import annotations

import fnmatch
import unicodedata
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from support import Recorder, examples
from tidings import SUBSCRIBE_TOPIC, UNSUBSCRIBE_TOPIC, Channel, Hub
from tidings._topics import TopicIndex, topics_match

# A small alphabet, so that random topics and patterns often match each other.
ALPHABET = "ab.*?[]!"
topics = st.text(alphabet=ALPHABET, min_size=1, max_size=6)


# -- validation -------------------------------------------------------------


def _is_valid_topic(text: str) -> bool:
    return bool(text) and not any(c.isspace() or unicodedata.category(c) == "Cc" for c in text)


@given(st.text(max_size=8))
@settings(max_examples=examples(300))
def test_channel_accepts_exactly_the_valid_topics(text: str) -> None:
    hub = Hub()  # never started: Channel() only needs it as a reference
    if _is_valid_topic(text):
        assert Channel(text, hub=hub).topic == text
    else:
        with pytest.raises(ValueError, match="topic"):
            Channel(text, hub=hub)


@pytest.mark.parametrize(
    "topic",
    ["", " ", "a b", "a\tb", "a\nb", "\x00", "a\x1fb", "a\x7f", "\x85", "a\u00a0b", "a\u2003b", "a\u3000"],
)
def test_empty_whitespace_and_control_topics_are_value_errors(topic: str) -> None:
    with pytest.raises(ValueError, match="topic"):
        Channel(topic, hub=Hub())


@pytest.mark.parametrize("topic", [None, b"chat", 1, ("chat",), ["chat"]])
def test_non_string_topics_are_type_errors(topic: object) -> None:
    with pytest.raises(TypeError):
        Channel(topic, hub=Hub())  # type: ignore[arg-type]


@pytest.mark.parametrize("topic", ["chat", "chat.rooms.lona-releases", "*", "a?c", "[ab]", "ünïcode", "x" * 1000])
def test_valid_topics_are_kept_as_given(topic: str) -> None:
    channel = Channel(topic, hub=Hub())
    assert channel.topic == topic
    assert channel.handler is None


# -- the matching rule --------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "subscribed", "expected"),
    [
        ("chat.rooms.lona", "chat.rooms.lona", True),
        ("chat.rooms.lona", "chat.rooms.lona-releases", False),
        ("chat.rooms.lona-releases", "chat.rooms.lona-*", True),
        ("chat.rooms.lona", "chat.rooms.lona-*", False),
        ("chat.rooms.lona", "chat.rooms.*", True),
        ("chat.rooms.a.b.c", "chat.rooms.*", True),  # * matches across dots
        ("chat.rooms.lona", "*", True),
        (SUBSCRIBE_TOPIC, "*", True),
        ("chat.rooms.lona", "chat.rooms.lon?", True),
        ("chat.rooms.lona", "chat.rooms.lo?", False),
        ("chat.rooms.lona", "chat.rooms.[kl]ona", True),
        ("chat.rooms.lona", "chat.rooms.[!l]ona", False),
        ("Chat.Rooms.Lona", "chat.rooms.*", False),  # case-sensitive everywhere
        # wildcards on the sending side
        ("chat.rooms.lona-*", "chat.rooms.lona-releases", True),
        ("chat.rooms.*", "chat.rooms.lona", True),
        ("*", "anything.at.all", True),
        ("chat.rooms.lona-*", "chat.rooms.*", True),  # pattern against pattern
        ("chat.rooms.lona-*", "chat.rooms.lona-*", True),
        ("chat.*", "news.*", False),
    ],
)
def test_matching_rule(sent: str, subscribed: str, expected: bool) -> None:
    assert topics_match(sent, subscribed) is expected


def test_hub_delivers_by_the_matching_rule(hub: Hub) -> None:
    subscribed = [
        "chat.rooms.lona",
        "chat.rooms.lona-releases",
        "chat.rooms.lona-*",
        "chat.rooms.*",
        "chat.rooms.[kl]ona",
        "news",
        "*",
    ]
    sent = [
        "chat.rooms.lona",
        "chat.rooms.releases",
        "chat.rooms.lona-releases",
        "chat.rooms.lona-*",
        "chat.rooms.*",
        "chat.rooms.a.b",
        "news",
        "news.*",
        "*",
    ]
    recorders = {topic: Recorder() for topic in subscribed}
    for topic, recorder in recorders.items():
        Channel(topic, recorder, hub=hub)
    for number, topic in enumerate(sent):
        Channel(topic, hub=hub).send({"n": number})
    assert hub.join(10)
    for topic, recorder in recorders.items():
        expected = [n for n, sent_topic in enumerate(sent) if topics_match(sent_topic, topic)]
        got = [m.data["n"] for m in recorder.messages if m.topic not in (SUBSCRIBE_TOPIC, UNSUBSCRIBE_TOPIC)]
        assert got == expected, topic
        assert all(m.topic == sent[m.data["n"]] for m in recorder.messages if "n" in m.data)


def test_star_receives_internal_topics(hub: Hub) -> None:
    everything = Recorder()
    Channel("*", everything, hub=hub)
    other = Channel("chat", lambda message: None, hub=hub)
    other.unsubscribe()
    assert hub.join(10)
    internal = [(m.topic, m.data) for m in everything.messages]
    assert (SUBSCRIBE_TOPIC, {"topic": "chat"}) in internal
    assert (UNSUBSCRIBE_TOPIC, {"topic": "chat"}) in internal
    assert internal.index((SUBSCRIBE_TOPIC, {"topic": "chat"})) < internal.index((UNSUBSCRIBE_TOPIC, {"topic": "chat"}))


# -- the index against the rule ------------------------------------------------


def _brute_force(subscriptions: dict[int, str], sent: str) -> Counter[int]:
    return Counter(sub for sub, topic in subscriptions.items() if topics_match(sent, topic))


@given(st.lists(topics, max_size=20), st.lists(topics, min_size=1, max_size=20))
@settings(max_examples=examples(300))
def test_index_routes_like_the_rule(subscribed: list[str], sent: list[str]) -> None:
    index: TopicIndex[int] = TopicIndex()
    subscriptions = dict(enumerate(subscribed))
    for sub, topic in subscriptions.items():
        index.add(topic, sub)
    for topic in sent + sent:  # the second round is answered from the cache
        assert Counter(index.route(topic)) == _brute_force(subscriptions, topic), topic


def test_topics_match_is_fnmatchcase_both_ways() -> None:
    # The spec function itself, against its definition, on every pair of a
    # small set (including '[' that fnmatch treats as a literal).
    sample = ["a", "ab", "a.b", "a*", "*b", "*", "?", "a?", "[ab]", "[!a]b", "a[", "]", "!", "*.*", "a.[b]"]
    for sent in sample:
        for subscribed in sample:
            expected = (
                sent == subscribed or fnmatch.fnmatchcase(sent, subscribed) or fnmatch.fnmatchcase(subscribed, sent)
            )
            assert topics_match(sent, subscribed) is expected, (sent, subscribed)


class IndexMachine(RuleBasedStateMachine):
    """Random add/remove/route sequences; every answer checked by brute force.

    Routes are asked between changes, so an answer cached before a change and
    not dropped by it is caught.
    """

    subscriptions = Bundle("subscriptions")

    def __init__(self) -> None:
        super().__init__()
        self.index: TopicIndex[int] = TopicIndex()
        self.model: dict[int, str] = {}
        self.next_sub = 0

    @rule(target=subscriptions, topic=topics)
    def add(self, topic: str) -> tuple[int, str]:
        return self._add(topic)

    def _add(self, topic: str) -> tuple[int, str]:
        sub = self.next_sub
        self.next_sub += 1
        self.index.add(topic, sub)
        self.model[sub] = topic
        return (sub, topic)

    @rule(target=subscriptions, entry=subscriptions)
    def add_same_topic(self, entry: tuple[int, str]) -> tuple[int, str]:
        return self._add(entry[1])

    @rule(entry=consumes(subscriptions))
    def remove(self, entry: tuple[int, str]) -> None:
        sub, topic = entry
        self.index.remove(topic, sub)
        del self.model[sub]

    @rule(topic=topics, sub=st.integers(min_value=-3, max_value=-1))
    def remove_unknown_is_a_no_op(self, topic: str, sub: int) -> None:
        self.index.remove(topic, sub)

    @rule(topic=topics)
    def route(self, topic: str) -> None:
        assert Counter(self.index.route(topic)) == _brute_force(self.model, topic), topic

    @rule(entry=subscriptions)
    def route_subscribed_topic(self, entry: tuple[int, str]) -> None:
        self.route(entry[1])

    @invariant()
    def contents(self) -> None:
        assert len(self.index) == len(self.model)
        assert sorted(self.index) == sorted(self.model)
        assert sorted(self.index.topics()) == sorted(set(self.model.values()))


IndexMachine.TestCase.settings = settings(max_examples=examples(150), stateful_step_count=40)
test_index_machine = IndexMachine.TestCase
