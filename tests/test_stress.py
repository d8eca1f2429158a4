"""Stress and model tests of the core promise: exactly once, in order.

``test_churn`` runs several sender threads that also subscribe and
unsubscribe while others send, against several broker and task-worker
threads, with handlers that sleep at random. Cross-thread "before" and
"after" come from one global counter read right before and right after each
call (``next()`` on ``itertools.count`` is atomic), which makes every check
exact: a message sent entirely before ``subscribe()`` was called must not
arrive; one whose ``send()`` began after ``subscribe()`` returned is
eligible, and eligible ones may be missing only at the end (unsubscribing
drops what was not yet delivered) unless a ``join()`` before the
unsubscribe covered them.

``test_model`` (hypothesis) runs random single-thread interleavings of
subscribe/send/unsubscribe/join against a model of the same rules.
"""

from __future__ import annotations

import itertools
import random
import threading
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support import TIMEOUT, WORKER_TIMEOUT, HubFactory, Recorder, Watched, assert_common_order, examples, never_arrived
from tidings import SUBSCRIBE_TOPIC, UNSUBSCRIBE_TOPIC, Channel, Hub, Settings
from tidings._topics import topics_match

SUBSCRIBED = ["a.b", "a.c", "a.*", "*.b", "*", "a.[bc]", "b.?", "b.x", "c", "c.*", "?.b", "*x*", "tidings.*"]
SENT = ["a.b", "a.c", "b.x", "b.y", "c", "c.d", "a.*", "*.x", "c*", "x", "a.b", "b.x", "*"]


@dataclass
class Sent:
    topic: str
    id: str
    before: int
    after: int


@dataclass
class Sub:
    topic: str
    handler: Watched
    before_subscribe: int
    after_subscribe: int
    channel: Channel
    joined_at: int | None = None  # counter value before a successful join() ahead of unsubscribe()
    after_unsubscribe: int | None = None  # None: subscribed until the end
    label: str = field(default="")


def run_churn(hub: Hub, seed: int, threads: int, operations: int, stable: int) -> None:
    clock = itertools.count()
    rng = random.Random(seed)
    subs: list[Sub] = []
    sent: dict[tuple[int, int], Sent] = {}
    lock = threading.Lock()

    def subscribe(topic: str, rng: random.Random, label: str) -> Sub:
        handler = Watched(random.Random(rng.random()), chance=0.003, longest=0.001)
        before = next(clock)
        channel = Channel(topic, handler, hub=hub)
        after = next(clock)
        sub = Sub(topic, handler, before, after, channel, label=label)
        with lock:
            subs.append(sub)
        return sub

    for number in range(stable):
        subscribe(rng.choice(SUBSCRIBED), rng, f"stable {number}")
    start = threading.Barrier(threads)
    notifications = [0]

    def worker(s: int) -> None:
        rng = random.Random(seed * 1000 + s)
        mine: list[Sub] = []
        n = 0
        start.wait(TIMEOUT)
        for _ in range(operations):
            action = rng.random()
            if action < 0.65:
                topic = rng.choice(SENT)
                before = next(clock)
                message = Channel(topic, hub=hub).send({"s": s, "n": n})
                sent[(s, n)] = Sent(topic, message.id, before, next(clock))
                n += 1
            elif action < 0.82 or not mine:
                mine.append(subscribe(rng.choice(SUBSCRIBED), rng, f"thread {s}"))
            else:
                sub = mine.pop(rng.randrange(len(mine)))
                if rng.random() < 0.3:
                    joined_at = next(clock)
                    assert hub.join(TIMEOUT), f"seed {seed}: join() timed out"
                    sub.joined_at = joined_at
                sub.channel.unsubscribe()
                sub.after_unsubscribe = next(clock)
                with lock:
                    notifications[0] += 1

    workers = [threading.Thread(target=worker, args=(s,)) for s in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(6 * TIMEOUT)
        assert not thread.is_alive(), f"seed {seed}: a sender hung"
    assert hub.join(TIMEOUT), f"seed {seed}"

    # -- the checks ---------------------------------------------------------
    for sub in subs:
        context = f"seed {seed}, {sub.label} subscription on {sub.topic!r}"
        handler = sub.handler
        assert handler.overlaps == 0, f"{context}: handler ran on two threads at once"
        got = handler.received
        assert len(got) == len(set(got)), f"{context}: a message arrived twice"
        for key in got:
            message = sent[key]
            assert topics_match(message.topic, sub.topic), f"{context}: got {message.topic!r}"
            assert message.after > sub.before_subscribe, f"{context}: got {key}, sent before subscribe()"
            assert sub.after_unsubscribe is None or message.before < sub.after_unsubscribe, (
                f"{context}: got {key}, sent after unsubscribe() returned"
            )
        for s in range(threads):
            numbers = [n for sender, n in got if sender == s]
            assert numbers == sorted(numbers), f"{context}: thread {s}'s messages out of order"
        missing = never_arrived(
            sent,
            got,
            topic=sub.topic,
            after_subscribe=sub.after_subscribe,
            after_unsubscribe=sub.after_unsubscribe,
            joined_at=sub.joined_at,
        )
        assert not missing, f"{context}: {len(missing)} messages never arrived, e.g. {missing[:5]}"
    chains = [[message.id for (sender, _), message in sorted(sent.items()) if sender == s] for s in range(threads)]
    assert_common_order({f"{i} {sub.label} {sub.topic}": sub.handler.ids for i, sub in enumerate(subs)}, chains)
    stats = hub.stats()
    assert stats["sent"] == len(sent) + len(subs) + notifications[0], f"seed {seed}: {stats}"
    assert stats["delivered"] == sum(sub.handler.calls for sub in subs), f"seed {seed}: {stats}"
    assert stats["subscriptions"] == sum(1 for sub in subs if sub.after_unsubscribe is None)


@pytest.mark.parametrize(
    ("brokers", "workers", "seed"),
    [(1, 1, 1), (1, 4, 2), (3, 4, 3), (2, 8, 4), (3, 2, 5)],
)
def test_churn(make_hub: HubFactory, brokers: int, workers: int, seed: int) -> None:
    hub = make_hub(MAX_CHANNEL_MESSAGE_BROKER_THREADS=brokers, MAX_CHANNEL_TASK_WORKER_THREADS=workers)
    run_churn(hub, seed, threads=4, operations=1000, stable=200)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 120))
def test_churn_long(make_hub: HubFactory, seed: int) -> None:
    rng = random.Random(seed)
    hub = make_hub(
        MAX_CHANNEL_MESSAGE_BROKER_THREADS=rng.randint(1, 3), MAX_CHANNEL_TASK_WORKER_THREADS=rng.randint(1, 8)
    )
    run_churn(hub, seed, threads=rng.randint(2, 6), operations=1500, stable=300)


# -- model ------------------------------------------------------------------------------

small_topics = st.text(alphabet="ab.*?", min_size=1, max_size=4)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("subscribe"), small_topics),
        st.tuples(st.just("subscribe"), st.sampled_from(["*", "tidings.*", "*.subscribe"])),
        st.tuples(st.just("send"), small_topics),
        st.tuples(st.just("send"), small_topics),
        st.tuples(st.just("unsubscribe"), st.integers(0, 30)),
        st.tuples(st.just("join"), st.just("")),
    ),
    max_size=30,
)


@dataclass
class ModelSub:
    topic: str
    channel: Channel
    recorder: Recorder
    eligible: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    must: int = 0
    active: bool = True


@given(ops=operations, brokers=st.integers(1, 2), workers=st.integers(1, 3))
@settings(max_examples=examples(300))
def test_model(ops: list[tuple[str, object]], brokers: int, workers: int) -> None:
    hub = Hub(
        Settings(
            MAX_CHANNEL_MESSAGE_BROKER_THREADS=brokers,
            MAX_CHANNEL_TASK_WORKER_THREADS=workers,
            CHANNEL_WORKER_TIMEOUT=WORKER_TIMEOUT,
        )
    )
    hub.start()
    try:
        subs: list[ModelSub] = []

        def publish(topic: str, data: dict[str, object]) -> None:
            for sub in subs:
                if sub.active and topics_match(topic, sub.topic):
                    sub.eligible.append((topic, data))

        for number, (op, argument) in enumerate(ops):
            if op == "subscribe":
                assert isinstance(argument, str)
                recorder = Recorder()
                channel = Channel(argument, recorder, hub=hub)
                subs.append(ModelSub(argument, channel, recorder))
                publish(SUBSCRIBE_TOPIC, {"topic": argument})
            elif op == "send":
                assert isinstance(argument, str)
                Channel(argument, hub=hub).send({"n": number})
                publish(argument, {"n": number})
            elif op == "unsubscribe" and subs:
                assert isinstance(argument, int)
                sub = subs[argument % len(subs)]
                sub.channel.unsubscribe()
                if sub.active:
                    sub.active = False
                    publish(UNSUBSCRIBE_TOPIC, {"topic": sub.topic})
            elif op == "join":
                assert hub.join(TIMEOUT)
                for sub in subs:
                    if sub.active:
                        sub.must = len(sub.eligible)
        assert hub.join(TIMEOUT)
        for sub in subs:
            if sub.active:
                sub.must = len(sub.eligible)
            got = [(message.topic, message.data) for message in sub.recorder.messages]
            assert got == sub.eligible[: len(got)], f"{sub.topic!r}: not what was sent, in order"
            assert len(got) >= sub.must, f"{sub.topic!r}: {sub.must - len(got)} messages missing"
    finally:
        assert hub.stop(timeout=TIMEOUT)
