"""Exactly once, in order, one thread per subscription; isolation; integrity."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest

from support import TIMEOUT, HubFactory, Recorder, Watched, assert_common_order
from tidings import Channel, Hub, Message
from tidings._topics import topics_match
from tidings.testing import CheckedHub

SUBSCRIBED = [
    "news.sport",
    "news.sport",  # two subscriptions on one topic
    "news.*",
    "*.sport",
    "*",
    "news.[st]*",
    "news.weather",
    "other",
    "n?ws.s*",
]
SENT = ["news.sport", "news.weather", "news.tech", "news.*", "*.sport", "other", "*", "misc", "news.s*"]


@pytest.mark.parametrize("brokers", [1, 3])
@pytest.mark.parametrize("workers", [1, 4, 8])
def test_exactly_once_in_order_same_order_for_everyone(make_hub: HubFactory, brokers: int, workers: int) -> None:
    seed = 1000 * brokers + workers
    hub = make_hub(MAX_CHANNEL_MESSAGE_BROKER_THREADS=brokers, MAX_CHANNEL_TASK_WORKER_THREADS=workers)
    handlers = [Watched(random.Random(seed + i)) for i in range(len(SUBSCRIBED))]
    for topic, handler in zip(SUBSCRIBED, handlers, strict=True):
        Channel(topic, handler, hub=hub)

    senders, per_sender = 4, 1000
    sent_topics: dict[tuple[int, int], str] = {}
    sent_ids: list[list[str]] = [[] for _ in range(senders)]
    start = threading.Barrier(senders)

    def send(s: int) -> None:
        rng = random.Random(seed * 100 + s)
        start.wait(TIMEOUT)
        for n in range(per_sender):
            topic = rng.choice(SENT)
            sent_topics[(s, n)] = topic
            sent_ids[s].append(Channel(topic, hub=hub).send({"s": s, "n": n}).id)

    threads = [threading.Thread(target=send, args=(s,)) for s in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert hub.join(TIMEOUT)

    for topic, handler in zip(SUBSCRIBED, handlers, strict=True):
        context = f"subscription {topic!r} (seed {seed})"
        assert handler.overlaps == 0, f"{context}: handler ran on two threads at once"
        expected = {key for key, sent in sent_topics.items() if topics_match(sent, topic)}
        assert len(handler.received) == len(set(handler.received)), f"{context}: duplicates"
        assert set(handler.received) == expected, f"{context}: missing or extra messages"
        for s in range(senders):
            numbers = [n for sender, n in handler.received if sender == s]
            assert numbers == sorted(numbers), f"{context}: sender {s}'s messages out of order"
    received = {f"{i}:{topic}": h.ids for i, (topic, h) in enumerate(zip(SUBSCRIBED, handlers, strict=True))}
    assert_common_order(received, sent_ids)


def test_the_order_checker_itself() -> None:
    # The checker the order tests rely on: it must accept any set of
    # sequences one total order explains, and reject every other.
    assert_common_order({"a": [1, 2, 3], "b": [1, 3], "c": [2, 3, 4]}, [[1, 4]])
    for sequences in ({"a": [1, 2], "b": [2, 1]}, {"a": [1, 2], "b": [2, 3], "c": [3, 1]}):
        with pytest.raises(AssertionError, match="no single order"):
            assert_common_order(sequences)
    with pytest.raises(AssertionError, match="no single order"):
        assert_common_order({"a": [1, 2]}, [[2, 1]])


@pytest.mark.parametrize("brokers", [2, 4])
def test_broker_threads_route_a_backlog_in_one_order(make_hub: HubFactory, brokers: int) -> None:
    # A backlog queued before start() makes every broker thread compete for
    # it at once; they must still hand it out in send order. (Routing
    # without the broker lock fails this in most rounds.)
    for _ in range(4):
        hub = make_hub(MAX_CHANNEL_MESSAGE_BROKER_THREADS=brokers, MAX_CHANNEL_TASK_WORKER_THREADS=2, start=False)
        recorders = [Recorder() for _ in range(6)]
        for number, recorder in enumerate(recorders):
            Channel(["feed", "feed*", "*"][number % 3], recorder, hub=hub)
        count = 15_000
        for n in range(count):
            Channel("feed", hub=hub).send({"n": n})
        hub.start()
        assert hub.join(2 * TIMEOUT)
        for recorder in recorders:
            assert [n for n in recorder.values() if n is not None] == list(range(count))
        assert hub.stop(timeout=TIMEOUT)


@pytest.mark.parametrize("workers", [2, 8])
def test_one_subscription_never_runs_on_two_threads(make_hub: HubFactory, workers: int) -> None:
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=workers)
    watched = [Watched(random.Random(i)) for i in range(3)]
    for handler in watched:
        Channel("hot", handler, hub=hub)
    busy = Recorder()
    Channel("other", busy, hub=hub)

    def send(s: int) -> None:
        for n in range(500):
            Channel("hot", hub=hub).send({"s": s, "n": n})
            if n % 10 == 0:
                Channel("other", hub=hub).send()

    threads = [threading.Thread(target=send, args=(s,)) for s in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert hub.join(TIMEOUT)
    for handler in watched:
        assert handler.overlaps == 0
        assert len(handler.received) == 1500


def test_different_subscriptions_run_in_parallel(make_hub: HubFactory) -> None:
    # Each handler waits for the other to have started: this only succeeds
    # when two worker threads run them at the same time.
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=2)
    started = {"a": threading.Event(), "b": threading.Event()}
    saw_other: dict[str, bool] = {}

    def handler(name: str, other: str) -> Callable[[Message], None]:
        def handle(message: Message) -> None:
            started[name].set()
            saw_other[name] = started[other].wait(TIMEOUT)

        return handle

    Channel("a", handler("a", "b"), hub=hub)
    Channel("b", handler("b", "a"), hub=hub)
    Channel("a", hub=hub).send()
    Channel("b", hub=hub).send()
    assert hub.join(2 * TIMEOUT)
    assert saw_other == {"a": True, "b": True}


def test_handler_runs_on_a_worker_thread_not_the_sender(hub: Hub) -> None:
    recorder = Recorder()
    Channel("chat", recorder, hub=hub)
    Channel("chat", hub=hub).send()
    assert hub.join(TIMEOUT)
    assert recorder.threads[0] != threading.current_thread().name


# -- isolation -----------------------------------------------------------------


def test_a_blocked_handler_delays_only_its_own_subscription(make_hub: HubFactory) -> None:
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=2)
    release = threading.Event()
    blocked_started = threading.Event()
    blocked_got: list[int] = []

    def blocked(message: Message) -> None:
        blocked_got.append(message.data["n"])
        blocked_started.set()
        release.wait(TIMEOUT)

    others = [Recorder() for _ in range(3)]
    Channel("chat", blocked, hub=hub)
    for other in others:
        Channel("chat", other, hub=hub)
    sender = Channel("chat", hub=hub)
    for n in range(200):
        sender.send({"n": n})
    assert blocked_started.wait(TIMEOUT)
    # The blocked handler is still inside its first call while the others
    # receive everything.
    for other in others:
        assert other.wait_for(200)
        assert other.values() == list(range(200))
    assert blocked_got == [0]
    release.set()
    assert hub.join(TIMEOUT)
    assert blocked_got == list(range(200))


def test_blocked_handlers_do_not_stall_the_broker(make_hub: HubFactory) -> None:
    # Three of four workers blocked: new subscriptions and messages still flow.
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=4)
    release = threading.Event()
    entered = threading.Semaphore(0)

    def blocked(message: Message) -> None:
        entered.release()
        release.wait(TIMEOUT)

    for number in range(3):
        Channel(f"blocked.{number}", blocked, hub=hub)
        Channel(f"blocked.{number}", hub=hub).send()
    for _ in range(3):
        assert entered.acquire(timeout=TIMEOUT)
    late = Recorder()
    Channel("late", late, hub=hub)
    for n in range(100):
        Channel("late", hub=hub).send({"n": n})
    assert late.wait_for(100)
    release.set()
    assert hub.join(TIMEOUT)


def test_a_raising_handler_changes_nothing_for_others(hub: CheckedHub, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def failing(message: Message) -> None:
        calls.append(message.data["n"])
        raise ValueError(f"boom {message.data['n']}")

    good = Recorder()
    failing_channel = Channel("chat", failing, hub=hub)
    Channel("chat", good, hub=hub)
    with caplog.at_level(logging.ERROR, logger="tidings"):
        for n in range(20):
            Channel("chat", hub=hub).send({"n": n})
        assert hub.join(TIMEOUT)
    assert good.values() == list(range(20))
    assert calls == list(range(20)), "the raising handler stays subscribed and gets every message"
    assert failing_channel.handler is failing
    records = [r for r in caplog.records if r.name == "tidings" and r.exc_info]
    assert len(records) == 20
    assert all(r.levelno == logging.ERROR for r in records)
    errors = [r.exc_info[1] for r in records if r.exc_info]
    assert [str(e) for e in errors] == [f"boom {n}" for n in range(20)]
    assert all(e is not None and e.__traceback__ is not None for e in errors)
    stats = hub.stats()
    assert stats["handler_errors"] == 20
    assert stats["delivered"] == 40
    taken = hub.take_handler_errors()
    assert [str(error.exception) for error in taken] == [f"boom {n}" for n in range(20)]
    assert [error.message.data["n"] for error in taken] == list(range(20))


@pytest.mark.parametrize("exception", [SystemExit, KeyboardInterrupt, GeneratorExit])
def test_a_handler_raising_base_exception_does_not_end_a_worker(
    make_hub: HubFactory,
    exception: type[BaseException],
    caplog: pytest.LogCaptureFixture,
    thread_deaths: list[threading.ExceptHookArgs],
) -> None:
    # With a single worker thread, losing it would stop every delivery.
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=1)

    def failing(message: Message) -> None:
        raise exception()

    good = Recorder()
    Channel("bad", failing, hub=hub)
    Channel("good", good, hub=hub)
    with caplog.at_level(logging.CRITICAL + 1, logger="tidings"):
        for n in range(5):
            Channel("bad", hub=hub).send()
            Channel("good", hub=hub).send({"n": n})
        joined = hub.join(TIMEOUT)
    assert [death.thread.name for death in thread_deaths if death.thread] == [], "a worker thread died"
    assert joined
    assert good.values() == list(range(5))
    taken = hub.take_handler_errors()
    assert [type(error.exception) for error in taken] == [exception] * 5


# -- integrity -----------------------------------------------------------------


def test_sender_changes_after_send_are_not_seen(make_hub: HubFactory) -> None:
    hub = make_hub(start=False)  # nothing is delivered before the mutation
    recorder = Recorder()
    Channel("chat", recorder, hub=hub)
    nested = [1, 2]
    data: dict[str, Any] = {"text": "original", "nested": nested}
    sent = Channel("chat", hub=hub).send(data)
    data["text"] = "changed"
    data["added"] = True
    del data["nested"]
    hub.start()
    assert hub.join(TIMEOUT)
    (got,) = recorder.messages
    assert got.data == {"text": "original", "nested": [1, 2]}
    assert sent.data == {"text": "original", "nested": [1, 2]}
    assert got.data["nested"] is nested, "the copy is shallow, as documented"


@pytest.mark.parametrize("workers", [1, 4])
def test_a_subscriber_changing_data_is_not_seen_by_another(make_hub: HubFactory, workers: int) -> None:
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=workers)
    seen: list[dict[str, Any]] = []

    def vandal(message: Message) -> None:
        message.data["n"] = -1
        message.data["vandal"] = True
        message.data.pop("text", None)

    def reader(message: Message) -> None:
        seen.append(dict(message.data))

    for _ in range(3):
        Channel("chat", vandal, hub=hub)
    Channel("chat", reader, hub=hub)
    for _ in range(3):
        Channel("chat", vandal, hub=hub)
    sent = [Channel("chat", hub=hub).send({"n": n, "text": "hi"}) for n in range(100)]
    assert hub.join(TIMEOUT)
    assert seen == [{"n": n, "text": "hi"} for n in range(100)]
    assert [m.data for m in sent] == [{"n": n, "text": "hi"} for n in range(100)]
