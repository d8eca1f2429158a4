"""A hub used before os.fork() keeps working in the child and in the parent."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from support import TIMEOUT, HubFactory, Recorder
from tidings import Channel, Hub, MessageBroker, Scope

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")


def in_child(body: Callable[[], Any], timeout: float = 3 * TIMEOUT) -> Any:
    """Fork; run ``body`` in the child and return what it returned (via a pipe).

    The child reports an exception as a failure; it always ends with
    os._exit() so that no pytest machinery runs twice. A child that hangs
    (a deadlock after fork) is killed after ``timeout`` and reported.
    """
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a multi-threaded process; the
        # point of these tests is that tidings handles exactly that.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read_end)
        code = 1
        try:
            outcome: list[Any] = []

            def run() -> None:
                try:
                    outcome.append({"result": body()})
                except BaseException as exc:
                    outcome.append({"error": f"{type(exc).__name__}: {exc}"})

            # On a thread, so that a deadlock in the child ends as a report.
            worker = threading.Thread(target=run, daemon=True)
            worker.start()
            worker.join(timeout / 2)
            report = outcome[0] if outcome else {"error": "the child hung (deadlock after fork?)"}
            os.write(write_end, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as pipe:
        while chunk := pipe.read():
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    report = json.loads(b"".join(chunks))
    assert "error" not in report, report["error"]
    return report["result"]


def test_a_hub_used_before_fork_works_in_the_child_and_the_parent(make_hub: HubFactory) -> None:
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=2)
    recorder = Recorder()
    pattern = Recorder()
    Channel("chat", recorder, hub=hub)
    Channel("chat*", pattern, hub=hub)
    Channel("chat", hub=hub).send({"n": "before"})
    assert hub.join(TIMEOUT)

    def child() -> Any:
        del recorder.messages[:], pattern.messages[:]
        for n in range(100):
            Channel("chat", hub=hub).send({"n": n})
        assert hub.join(TIMEOUT)
        fresh = Recorder()
        Channel("fresh", fresh, hub=hub)
        Channel("fresh", hub=hub).send({"n": "fresh"})
        assert hub.join(TIMEOUT)
        ids = [m.id for m in recorder.messages]
        assert hub.stop(timeout=TIMEOUT)
        return [recorder.values(), pattern.values(), fresh.values(), ids]

    got, got_pattern, got_fresh, child_ids = in_child(child)
    assert got == got_pattern == list(range(100))
    assert got_fresh == ["fresh"]
    # The parent goes on, unaffected by what the child did.
    for n in range(100):
        Channel("chat", hub=hub).send({"n": n})
    assert hub.join(TIMEOUT)
    assert recorder.values() == ["before", *range(100)]
    assert pattern.values() == ["before", *range(100)]
    assert not set(child_ids) & {m.id for m in recorder.messages}, "message ids repeat across processes"


def test_messages_queued_at_fork_are_delivered_once_by_the_parent(make_hub: HubFactory) -> None:
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=2)
    entered = threading.Event()
    release = threading.Event()
    got: list[Any] = []

    def blocking(message: Any) -> None:
        got.append(message.data["n"])
        entered.set()
        release.wait(TIMEOUT)

    Channel("chat", blocking, hub=hub)
    for n in range(5):
        Channel("chat", hub=hub).send({"n": n})
    assert entered.wait(TIMEOUT)

    def child() -> Any:
        # The call in progress belongs to the parent; so does what was queued.
        release.set()
        del got[:]
        Channel("chat", hub=hub).send({"n": "child"})
        assert hub.join(TIMEOUT)
        return list(got)

    assert in_child(child) == ["child"]
    release.set()
    assert hub.join(TIMEOUT)
    assert got == [0, 1, 2, 3, 4]


def test_fork_from_inside_a_handler(make_hub: HubFactory) -> None:
    # e.g. multiprocessing with the fork start method, used by a handler.
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=2)
    results: list[Any] = []
    others = Recorder()
    Channel("other", others, hub=hub)

    def forking(message: Any) -> None:
        def child() -> Any:
            got = Recorder()
            Channel("in-child", got, hub=hub)
            Channel("in-child", hub=hub).send({"n": 1})
            Channel("other", hub=hub).send({"n": "child"})
            # Not join(): it would wait for the handler that forked, which
            # goes on in the child until this returns.
            assert got.wait_for(1)
            assert others.wait_for(1)
            return [got.values(), others.values()]

        results.append(in_child(child))

    Channel("fork", forking, hub=hub)
    Channel("fork", hub=hub).send()
    assert hub.join(3 * TIMEOUT)
    assert results == [[[1], ["child"]]]
    Channel("other", hub=hub).send({"n": "parent"})
    assert hub.join(TIMEOUT)
    assert others.values() == ["parent"]


class GatedBroker(MessageBroker):
    """A broker that routes nothing until ``gate`` is set (a slow broker)."""

    gate = threading.Event()

    def run(self) -> None:
        if self.gate.wait(0.01):
            super().run()


@contextmanager
def gated() -> Iterator[type[GatedBroker]]:
    GatedBroker.gate = threading.Event()
    try:
        yield GatedBroker
    finally:
        GatedBroker.gate.set()


@pytest.mark.parametrize("started", [False, True], ids=["unstarted hub", "broker not yet caught up"])
def test_a_subscription_made_just_before_fork_works_in_the_child(make_hub: HubFactory, started: bool) -> None:
    # subscribe() has returned, so messages sent afterwards must reach the
    # subscription, in the child as well: a pre-forking server subscribes
    # at import time and forks right away.
    with gated() as broker:
        hub = make_hub(CHANNEL_MESSAGE_BROKER_CLASS=broker, start=started)
        recorder = Recorder()
        Channel("chat", recorder, hub=hub)

        def child() -> Any:
            broker.gate.set()
            hub.start()
            Channel("chat", hub=hub).send({"n": "child"})
            assert hub.join(TIMEOUT)
            return recorder.values()

        assert in_child(child) == ["child"]
        broker.gate.set()
        hub.start()
        Channel("chat", hub=hub).send({"n": "parent"})
        assert hub.join(TIMEOUT)
        assert recorder.values() == ["parent"]


def test_an_unsubscription_made_just_before_fork_holds_in_the_child(make_hub: HubFactory) -> None:
    with gated() as broker:
        hub = make_hub(CHANNEL_MESSAGE_BROKER_CLASS=broker, start=False)
        recorder = Recorder()
        channel = Channel("chat", recorder, hub=hub)
        channel.unsubscribe()

        def child() -> Any:
            broker.gate.set()
            hub.start()
            Channel("chat", hub=hub).send()
            assert hub.join(TIMEOUT)
            return [len(recorder.messages), hub.stats()["subscriptions"], hub.topics()]

        assert in_child(child) == [0, 0, []]
        broker.gate.set()


@pytest.mark.parametrize("via", ["channel", "scope"])
def test_fork_while_another_thread_subscribes(hub: Hub, via: str) -> None:
    # Another thread keeps subscribing and unsubscribing while we fork; in
    # every child, subscribing and unsubscribing must still work. A lock
    # held by that thread at the moment of fork() would stay locked in the
    # child forever.
    stop = threading.Event()
    scope = Scope(hub=hub)

    def churn() -> None:
        number = 0
        while not stop.is_set():
            if via == "scope":
                channel = scope.subscribe(f"churn.{number % 10}", lambda message: None)
            else:
                channel = Channel(f"churn.{number % 10}", lambda message: None, hub=hub)
            channel.unsubscribe()
            number += 1

    thread = threading.Thread(target=churn)
    thread.start()

    def child() -> Any:
        recorder = Recorder()
        channel = scope.subscribe("child", recorder) if via == "scope" else Channel("child", recorder, hub=hub)
        Channel("child", hub=hub).send()
        assert hub.join(TIMEOUT)
        channel.unsubscribe()
        return len(recorder.messages)

    try:
        for attempt in range(20):
            assert in_child(child, timeout=2.0) == 1, f"fork {attempt}"
    finally:
        stop.set()
        thread.join(TIMEOUT)
        scope.close()


def test_async_subscriptions_end_in_a_forked_child(make_hub: HubFactory) -> None:
    hub = make_hub()
    got: list[int] = []
    subscribed = threading.Event()
    release = threading.Event()

    async def handler(message: Any) -> None:
        got.append(message.data["n"])

    def loop_thread() -> None:
        async def main() -> None:
            Channel("t", handler, hub=hub)
            subscribed.set()
            while not release.is_set():
                await asyncio.sleep(0.001)

        asyncio.run(main())

    thread = threading.Thread(target=loop_thread)
    thread.start()
    try:
        assert subscribed.wait(TIMEOUT)

        def child() -> Any:
            # No event loop of the parent runs here: the subscription ends
            # instead of holding messages (and join()) forever.
            Channel("t", hub=hub).send({"n": 1})
            joined = hub.join(TIMEOUT)
            stats = hub.stats()
            return [joined, stats["ended_loop_closed"], stats["subscriptions"]]

        assert in_child(child) == [True, 1, 0]
        Channel("t", hub=hub).send({"n": 2})
        assert hub.join(TIMEOUT)
        assert got == [2], "the parent's subscription is untouched"
    finally:
        release.set()
        thread.join(TIMEOUT)
