"""Async handlers, inboxes and the awaitable helpers (the asyncio bridge).

Each test runs its coroutines with the ``run`` fixture, once on asyncio's
event loop and once on uvloop's.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import threading
import warnings
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import pytest

import tidings
import tidings.aio
from support import TIMEOUT, Recorder, call_in_thread
from tidings import Channel, Hub, InboxClosedError, Message, Scope, SlowConsumerError
from tidings._channel import is_async_callable
from tidings.testing import CheckedHub

Run = Callable[[Coroutine[Any, Any, Any]], Any]


class AsyncRecorder:
    """An async handler recording what it gets, on which thread, and any overlap."""

    def __init__(self, pause: int = 0) -> None:
        self.values: list[Any] = []
        self.threads: set[str] = set()
        self.overlaps = 0
        self._inside = False
        self._pause = pause  # awaits inside each call, to give others a chance to overlap

    async def __call__(self, message: Message) -> None:
        if self._inside:
            self.overlaps += 1
        self._inside = True
        try:
            self.threads.add(threading.current_thread().name)
            for _ in range(self._pause):
                await asyncio.sleep(0)
            self.values.append(message.data.get("n"))
        finally:
            self._inside = False


def send_all(hub: Hub, topic: str, count: int, **extra: Any) -> None:
    channel = Channel(topic, hub=hub)
    for n in range(count):
        channel.send({"n": n}, **extra)


# -- async handlers -------------------------------------------------------------------


def test_async_handler_runs_on_its_loop_awaited_in_order(hub: CheckedHub, run: Run) -> None:
    async def main() -> AsyncRecorder:
        handler = AsyncRecorder(pause=3)
        Channel("chat", handler, hub=hub)
        await asyncio.to_thread(send_all, hub, "chat", 500)  # from another thread: crosses threads
        send_all(hub, "chat", 500)  # and from the loop itself
        assert await hub.ajoin(TIMEOUT)
        return handler

    handler = run(main())
    assert handler.values == list(range(500)) * 2
    assert handler.overlaps == 0
    assert handler.threads == {threading.current_thread().name}
    assert hub.stats()["delivered"] == 1000


def test_async_handler_forms(hub: CheckedHub, run: Run) -> None:
    class Handlers:
        def __init__(self) -> None:
            self.got: list[str] = []

        async def method(self, message: Message) -> None:
            self.got.append("method")

        async def __call__(self, message: Message) -> None:
            self.got.append("object")

    async def tagged(tag: str, got: list[str], message: Message) -> None:
        got.append(tag)

    handlers = Handlers()
    for candidate in (handlers.method, handlers, functools.partial(tagged, "partial", handlers.got)):
        assert is_async_callable(candidate)
    assert not is_async_callable(print)
    assert not is_async_callable(lambda message: None)

    async def main() -> None:
        Channel("t", handlers.method, hub=hub)
        Channel("t", handlers, hub=hub)
        Channel("t", functools.partial(tagged, "partial", handlers.got), hub=hub)
        Channel("t", hub=hub).send()
        assert await hub.ajoin(TIMEOUT)

    run(main())
    assert sorted(handlers.got) == ["method", "object", "partial"]


def test_async_handler_needs_a_loop(hub: Hub) -> None:
    async def handler(message: Message) -> None:
        pass

    with pytest.raises(RuntimeError, match="no event loop is running"):
        Channel("t", handler, hub=hub)
    with pytest.raises(RuntimeError, match="no event loop is running"):
        Scope(hub=hub).subscribe("t", handler)
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(TypeError, match="not an async def"):
            Channel("t", print, hub=hub, loop=loop)
    finally:
        loop.close()
    with pytest.raises(TypeError, match="loop must be an asyncio event loop"):
        Channel("t", handler, hub=hub, loop="loop")  # type: ignore[arg-type]
    closed = asyncio.new_event_loop()
    closed.close()
    with pytest.raises(RuntimeError, match="closed event loop"):
        Channel("t", handler, hub=hub, loop=closed)
    assert hub.stats()["subscriptions"] == 0


def test_async_handler_subscribed_from_another_thread_with_loop(hub: CheckedHub, run: Run) -> None:
    handler = AsyncRecorder()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        # Subscribed from a thread, for this loop; sent after that returns.
        await asyncio.to_thread(Channel, "t", handler, hub=hub, loop=loop)
        send_all(hub, "t", 10)
        assert await hub.ajoin(TIMEOUT)

    run(main())
    assert handler.values == list(range(10))
    assert handler.threads == {threading.current_thread().name}


def test_two_loops_in_two_threads_receive_from_one_sender(hub: CheckedHub) -> None:
    handlers = [AsyncRecorder(pause=1), AsyncRecorder(pause=2)]
    subscribed = [threading.Event(), threading.Event()]
    release = threading.Event()

    def loop_thread(index: int) -> None:
        async def main() -> None:
            Channel("news.*", handlers[index], hub=hub)
            subscribed[index].set()
            while not release.is_set():
                await asyncio.sleep(0.001)

        asyncio.run(main())

    threads = [threading.Thread(target=loop_thread, args=(i,), name=f"loop-{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    assert all(event.wait(TIMEOUT) for event in subscribed)
    send_all(hub, "news.today", 300)
    assert hub.join(TIMEOUT)  # from a thread without a loop: fine
    release.set()
    for thread in threads:
        thread.join(TIMEOUT)
    for index, handler in enumerate(handlers):
        assert handler.values == list(range(300))
        assert handler.threads == {f"loop-{index}"}
        assert handler.overlaps == 0


def test_slow_async_handler_blocks_no_worker_and_no_other_subscription(make_hub: Any, run: Run) -> None:
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=1)
    sync_recorder = Recorder()
    fast = AsyncRecorder()

    async def main() -> None:
        stuck = asyncio.Event()
        entered = asyncio.Event()

        async def slow(message: Message) -> None:
            entered.set()
            await stuck.wait()

        Channel("t", slow, hub=hub)
        Channel("t", fast, hub=hub)
        Channel("t", sync_recorder, hub=hub)
        send_all(hub, "t", 50)
        await asyncio.wait_for(entered.wait(), TIMEOUT)
        # The slow handler is inside its first call; everyone else goes on.
        await asyncio.to_thread(sync_recorder.wait_for, 50)
        for _ in range(1000):
            if len(fast.values) == 50:
                break
            await asyncio.sleep(0.005)
        assert fast.values == list(range(50))
        assert not await hub.ajoin(0.05)  # the slow one still holds messages
        stuck.set()
        assert await hub.ajoin(TIMEOUT)

    run(main())
    assert sync_recorder.values() == list(range(50))


def test_async_handler_error_is_counted_and_it_stays_subscribed(
    hub: CheckedHub, run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[int] = []

    async def odd_fails(message: Message) -> None:
        got.append(message.data["n"])
        if message.data["n"] % 2:
            await asyncio.sleep(0)
            raise ValueError(f"odd {message.data['n']}")

    async def main() -> None:
        Channel("t", odd_fails, hub=hub)
        with caplog.at_level(logging.ERROR, logger="tidings"):
            send_all(hub, "t", 6)
            assert await hub.ajoin(TIMEOUT)

    run(main())
    assert got == list(range(6))
    assert [str(error.exception) for error in hub.take_handler_errors()] == ["odd 1", "odd 3", "odd 5"]
    assert hub.stats()["handler_errors"] == 3
    assert sum("raised" in record.getMessage() for record in caplog.records) == 3


@pytest.mark.parametrize("async_on_error", [False, True])
def test_async_handler_raising_in_a_scope(hub: CheckedHub, run: Run, async_on_error: bool) -> None:
    reported: list[tuple[str, Any, str, bool]] = []

    async def main() -> None:
        def on_error(exc: BaseException, message: Message, channel: Channel) -> None:
            reported.append((str(exc), message.data["n"], channel.topic, channel.subscribed))

        async def on_error_async(exc: BaseException, message: Message, channel: Channel) -> None:
            await asyncio.sleep(0)
            on_error(exc, message, channel)

        got: list[int] = []

        async def fails_at_two(message: Message) -> None:
            got.append(message.data["n"])
            if message.data["n"] == 2:
                raise KeyError("two")

        scope = Scope(hub=hub, on_error=on_error_async if async_on_error else on_error)
        channel = scope.subscribe("t", fails_at_two)
        send_all(hub, "t", 5)
        assert await hub.ajoin(TIMEOUT)
        assert got == [0, 1, 2], "no call after the failing one"
        assert not channel.subscribed
        assert scope.channels == []

    run(main())
    assert reported == [("'two'", 2, "t", False)]
    stats = hub.stats()
    assert stats["handler_errors"] == 1
    assert stats["dropped_unsubscribed"] == 2
    assert stats["subscriptions"] == 0


def test_unsubscribe_inside_an_async_handler_stops_the_next_call(hub: CheckedHub, run: Run) -> None:
    got: list[int] = []

    async def main() -> None:
        channel: Channel

        async def handler(message: Message) -> None:
            got.append(message.data["n"])
            if message.data["n"] == 3:
                channel.unsubscribe()  # never waits on the loop: it would wait for itself

        channel = Channel("t", handler, hub=hub)
        send_all(hub, "t", 10)
        assert await hub.ajoin(TIMEOUT)

    run(main())
    assert got == [0, 1, 2, 3]
    assert hub.stats()["dropped_unsubscribed"] == 6


def test_unsubscribe_from_a_thread_waits_for_the_async_call_in_progress(hub: CheckedHub, run: Run) -> None:
    events: list[str] = []

    async def main() -> None:
        entered = asyncio.Event()
        finish = threading.Event()

        async def handler(message: Message) -> None:
            entered.set()
            await asyncio.to_thread(finish.wait, TIMEOUT)
            events.append("handler done")

        channel = Channel("t", handler, hub=hub)
        send_all(hub, "t", 3)
        await asyncio.wait_for(entered.wait(), TIMEOUT)

        def unsubscribe() -> None:
            threading.Timer(0.05, finish.set).start()
            channel.unsubscribe()
            events.append("unsubscribed")

        await asyncio.to_thread(call_in_thread, unsubscribe)
        assert await hub.ajoin(TIMEOUT)

    run(main())
    assert events == ["handler done", "unsubscribed"]
    assert hub.stats()["delivered"] == 1


def test_a_sync_handler_returning_a_coroutine_is_an_error(hub: CheckedHub) -> None:
    async def work(message: Message) -> None:
        raise AssertionError("never run")

    def looks_sync(message: Message) -> Coroutine[Any, Any, None]:
        return work(message)

    Channel("t", looks_sync, hub=hub)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited" either
        Channel("t", hub=hub).send()
        assert hub.join(TIMEOUT)
        gc.collect()
    [error] = hub.take_handler_errors()
    assert isinstance(error.exception, TypeError)
    assert "async def" in str(error.exception)


# -- the event loop going away ------------------------------------------------------------


def test_subscriptions_end_when_their_loop_shuts_down(hub: CheckedHub, run: Run) -> None:
    handler = AsyncRecorder()
    channels: list[Channel] = []

    async def main() -> None:
        channels.append(Channel("t", handler, hub=hub))
        channels.append(Scope(hub=hub).subscribe("t.*", handler))
        send_all(hub, "t", 3)
        assert await hub.ajoin(TIMEOUT)

    run(main())  # the loop shuts down with both subscribed
    assert all(not channel.subscribed for channel in channels)
    stats = hub.stats()
    assert stats["ended_loop_closed"] == 2
    assert stats["subscriptions"] == 0
    send_all(hub, "t", 3)  # nobody is subscribed: nothing raises, nothing is delivered
    assert hub.join(TIMEOUT)
    assert handler.values == [0, 1, 2]
    assert hub.stats()["delivered"] == 3


def test_loop_shutting_down_mid_handler(hub: CheckedHub, run: Run) -> None:
    started = threading.Event()

    async def main() -> None:
        async def forever(message: Message) -> None:
            started.set()
            await asyncio.Event().wait()

        Channel("t", forever, hub=hub)
        send_all(hub, "t", 5)
        await asyncio.to_thread(started.wait, TIMEOUT)

    run(main())  # returns with the handler suspended: the runner cancels it
    assert hub.join(TIMEOUT), "the remaining messages were released, not left waiting for a dead loop"
    stats = hub.stats()
    assert stats["ended_loop_closed"] == 1
    assert stats["delivered"] == 1  # the call was made (and cancelled midway)
    assert stats["dropped_unsubscribed"] == 4
    assert stats["subscriptions"] == 0


def test_a_loop_closed_by_hand_is_noticed_at_the_next_message(hub: CheckedHub) -> None:
    handler = AsyncRecorder()
    loop = asyncio.new_event_loop()
    try:

        async def subscribe() -> Channel:
            return Channel("t", handler, hub=hub)

        channel = loop.run_until_complete(subscribe())
    finally:
        loop.close()  # without cancelling the runner's watcher task
    send_all(hub, "t", 2)
    assert hub.join(TIMEOUT)
    assert not channel.subscribed
    stats = hub.stats()
    assert stats["ended_loop_closed"] == 1
    # The first message finds the loop closed and is dropped; the second is
    # dropped too if it was routed before the subscription left the index.
    assert stats["dropped_unsubscribed"] in (1, 2)
    assert stats["delivered"] == 0
    assert handler.values == []


# -- join, stop -------------------------------------------------------------------------


def test_join_and_stop_refuse_to_block_the_handlers_loop(make_hub: Any, run: Run) -> None:
    hub = make_hub()

    async def main() -> None:
        async def handler(message: Message) -> None:
            if message.data.get("ajoin"):
                await hub.ajoin(1)

        Channel("t", handler, hub=hub)
        with pytest.raises(RuntimeError, match=r"use await hub\.ajoin"):
            hub.join(1)
        with pytest.raises(RuntimeError, match=r"use await hub\.astop"):
            hub.stop(1)
        Channel("t", hub=hub).send({"ajoin": True})
        assert await hub.ajoin(TIMEOUT)
        assert await hub.astop(TIMEOUT)

    run(main())
    [error] = hub.take_handler_errors()
    assert "cannot be awaited in a handler" in str(error.exception)


def test_ajoin_times_out_and_returns_false(hub: CheckedHub, run: Run) -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def blocked(message: Message) -> None:
            await release.wait()

        Channel("t", blocked, hub=hub)
        Channel("t", hub=hub).send()
        assert await hub.ajoin(0.05) is False
        release.set()
        assert await hub.ajoin(TIMEOUT) is True

    run(main())


def test_astop_drains_async_handlers(run: Run) -> None:
    handler = AsyncRecorder(pause=2)

    async def main() -> Hub:
        async with Hub() as hub:
            Channel("t", handler, hub=hub)
            send_all(hub, "t", 200)
        return hub

    hub = run(main())
    assert handler.values == list(range(200))
    assert not hub.running
    assert hub.stats()["pending"] == 0


# -- inboxes ----------------------------------------------------------------------------


def test_async_inbox_iterates_in_order(hub: CheckedHub, run: Run) -> None:
    async def main() -> list[int]:
        got: list[int] = []
        async with tidings.aio.subscribe("t.*", hub=hub) as inbox:
            await asyncio.to_thread(send_all, hub, "t.x", 100)
            async for message in inbox:
                got.append(message.data["n"])
                if len(got) == 100:
                    break
            assert inbox.get_nowait() is None
            with pytest.raises(TimeoutError, match=r"within 0\.01 s"):
                await inbox.get(timeout=0.01)
        assert inbox.closed
        with pytest.raises(InboxClosedError, match="closed"):
            await inbox.get()
        return got

    assert run(main()) == list(range(100))
    assert hub.stats()["subscriptions"] == 0


def test_async_inbox_wakes_a_waiting_get(hub: CheckedHub, run: Run) -> None:
    async def main() -> Any:
        async with tidings.aio.subscribe("t", hub=hub) as inbox:
            waiting = asyncio.ensure_future(inbox.get())
            await asyncio.sleep(0)
            threading.Thread(target=send_all, args=(hub, "t", 1)).start()
            return (await asyncio.wait_for(waiting, TIMEOUT)).data

    assert run(main()) == {"n": 0}


@pytest.mark.parametrize(
    ("overflow", "kept"),
    [("drop_oldest", list(range(12, 20))), ("drop_newest", list(range(8)))],
)
def test_inbox_overflow_drop_policies_count_exactly(
    hub: CheckedHub, run: Run, overflow: tidings.aio.Overflow, kept: list[int]
) -> None:
    async def main() -> tuple[list[int], int]:
        async with tidings.aio.subscribe("t", hub=hub, max_pending=8, overflow=overflow) as inbox:
            for n in range(20):
                Channel("t", hub=hub).send({"n": n})
                if n % 5 == 4:
                    assert await hub.ajoin(TIMEOUT)  # several routing batches, not one
            assert await hub.ajoin(TIMEOUT)
            got = [(await inbox.get(timeout=TIMEOUT)).data["n"] for _ in range(8)]
            assert inbox.get_nowait() is None
            return got, inbox.dropped

    got, dropped = run(main())
    assert got == kept
    assert dropped == 12
    stats = hub.stats()
    assert stats["dropped_overflow"] == 12
    assert stats["delivered"] == 8


def test_inbox_overflow_error_ends_it_and_the_consumer_sees_it(hub: CheckedHub, run: Run) -> None:
    async def main() -> None:
        async with tidings.aio.subscribe("t", hub=hub, max_pending=5) as inbox:
            send_all(hub, "t", 6)
            assert await hub.ajoin(TIMEOUT)
            with pytest.raises(SlowConsumerError) as caught:
                await anext(inbox)  # nothing is delivered after the overflow
            assert caught.value.max_pending == 5
            assert caught.value.dropped == 6
            assert inbox.dropped == 6
            with pytest.raises(SlowConsumerError):
                inbox.get_nowait()
            send_all(hub, "t", 3)  # after the end: not for this inbox any more
            assert await hub.ajoin(TIMEOUT)

    run(main())
    stats = hub.stats()
    assert stats["dropped_overflow"] == 6
    assert stats["subscriptions"] == 0


def test_cancelling_a_consumer_mid_iteration_unsubscribes(hub: CheckedHub, run: Run) -> None:
    async def main() -> None:
        got: list[int] = []
        inside = asyncio.Event()

        async def consume() -> None:
            async with tidings.aio.subscribe("t", hub=hub) as inbox:
                async for message in inbox:
                    got.append(message.data["n"])
                    inside.set()

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0)
        send_all(hub, "t", 1)
        await asyncio.wait_for(inside.wait(), TIMEOUT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert got == [0]
        assert hub.stats()["subscriptions"] == 0
        send_all(hub, "t", 5)
        assert await hub.ajoin(TIMEOUT)

    run(main())
    stats = hub.stats()
    assert stats["delivered"] == 1
    assert stats["pending"] == 0


def test_async_inbox_needs_a_loop_and_checks_its_arguments(hub: Hub) -> None:
    with pytest.raises(RuntimeError, match="needs a running event loop"):
        tidings.aio.subscribe("t", hub=hub)
    with pytest.raises(ValueError, match="max_pending must be at least 1"):
        tidings.subscribe("t", hub=hub, max_pending=0)
    with pytest.raises(TypeError, match="max_pending must be an int"):
        tidings.subscribe("t", hub=hub, max_pending=True)
    with pytest.raises(ValueError, match="overflow must be one of"):
        tidings.subscribe("t", hub=hub, overflow="block")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="topic"):
        tidings.subscribe("", hub=hub)
    assert hub.stats()["subscriptions"] == 0


def test_sync_inbox_iter_stops_after_silence(hub: CheckedHub) -> None:
    with tidings.subscribe("jobs.*", hub=hub, max_pending=100) as inbox:
        threading.Thread(target=send_all, args=(hub, "jobs.a", 20)).start()
        got = [message.data["n"] for message in inbox.iter(timeout=0.5)]
        assert got == list(range(20))
        with pytest.raises(TimeoutError):
            inbox.get(timeout=0)
    assert inbox.closed
    assert list(inbox.iter(timeout=0)) == []


@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest", "error"])
def test_sync_inbox_overflow(hub: CheckedHub, overflow: tidings.aio.Overflow) -> None:
    with tidings.subscribe("t", hub=hub, max_pending=3, overflow=overflow) as inbox:
        send_all(hub, "t", 7)
        assert hub.join(TIMEOUT)
        if overflow == "error":
            with pytest.raises(SlowConsumerError):
                list(inbox.iter(timeout=0))
        else:
            got = [message.data["n"] for message in inbox.iter(timeout=0)]
            assert got == ([4, 5, 6] if overflow == "drop_oldest" else [0, 1, 2])
        assert inbox.dropped == (7 if overflow == "error" else 4)
    assert hub.stats()["dropped_overflow"] == inbox.dropped


def test_sync_inbox_wakes_on_close_and_on_hub_stop(make_hub: Any) -> None:
    hub = make_hub()
    inbox = tidings.subscribe("t", hub=hub)
    threading.Timer(0.05, inbox.close).start()
    with pytest.raises(InboxClosedError, match="closed"):
        call_in_thread(inbox.get)
    second = tidings.subscribe("t", hub=hub)
    send_all(hub, "t", 2)
    threading.Timer(0.05, hub.stop).start()
    got = call_in_thread(lambda: [message.data["n"] for message in second])
    assert got == [0, 1], "what was in the inbox when the hub stopped is still read"
    with pytest.raises(InboxClosedError, match="hub stopped"):
        second.get_nowait()


def test_inbox_drops_expired_messages_when_read(hub: CheckedHub) -> None:
    with tidings.subscribe("t", hub=hub) as inbox:
        Channel("t", hub=hub).send({"n": 0}, expiry=timedelta(seconds=-1))
        Channel("t", hub=hub).send({"n": 1})
        assert hub.join(TIMEOUT)
        assert inbox.get(timeout=TIMEOUT).data == {"n": 1}
        assert inbox.dropped == 1
    assert hub.stats()["dropped_expired"] == 1


def test_inbox_messages_are_copies(hub: CheckedHub) -> None:
    with tidings.subscribe("t", hub=hub) as first, tidings.subscribe("t", hub=hub) as second:
        Channel("t", hub=hub).send({"n": 0})
        a = first.get(TIMEOUT)
        b = second.get(TIMEOUT)
        a.data["n"] = 99
        assert b.data == {"n": 0}


def test_stats_count_inbox_messages_as_pending_until_taken(hub: CheckedHub) -> None:
    with tidings.subscribe("t", hub=hub) as inbox:
        send_all(hub, "t", 4)
        assert hub.join(TIMEOUT)
        assert hub.stats()["pending"] == 4
        assert inbox.pending == 4
        inbox.get()
        stats = hub.stats()
        assert (stats["pending"], stats["delivered"]) == (3, 1)
    assert hub.join(TIMEOUT)
    stats = hub.stats()
    assert (stats["pending"], stats["delivered"], stats["dropped_unsubscribed"]) == (0, 1, 3)


def test_join_counts_a_message_in_an_inbox_as_handled(hub: CheckedHub) -> None:
    inbox = tidings.subscribe("t", hub=hub)
    send_all(hub, "t", 3)
    assert hub.join(TIMEOUT), "join() does not wait for the inbox's reader"
    assert inbox.pending == 3
    inbox.close()


def test_import_tidings_does_not_import_asyncio() -> None:
    from support import run_python

    result = run_python(
        "import sys, tidings\n"
        "assert 'asyncio' not in sys.modules\n"
        "tidings.subscribe\n"
        "assert 'asyncio' not in sys.modules\n"
        "import tidings.aio\n"
        "assert 'asyncio' in sys.modules\n"
    )
    assert result.returncode == 0, result.stderr


def test_inboxes_in_a_scope_close_with_it(hub: CheckedHub, run: Run) -> None:
    async def main() -> None:
        scope = Scope(hub=hub)
        async_inbox = tidings.aio.subscribe("t", scope=scope)
        thread_inbox = tidings.subscribe("t", scope=scope)
        channel = scope.subscribe("t", AsyncRecorder())
        assert scope.inboxes == [async_inbox, thread_inbox]
        send_all(hub, "t", 2)
        assert await hub.ajoin(TIMEOUT)
        assert (await async_inbox.get()).data == {"n": 0}
        async_inbox.close()  # closed on its own: the scope forgets it
        assert scope.inboxes == [thread_inbox]
        scope.close()
        assert thread_inbox.closed
        assert not channel.subscribed
        with pytest.raises(RuntimeError, match="scope is closed"):
            tidings.aio.subscribe("t", scope=scope)
        with pytest.raises(ValueError, match="different hubs"):
            tidings.subscribe("t", scope=Scope(hub=hub), hub=Hub())
        assert await hub.ajoin(TIMEOUT)

    run(main())
    stats = hub.stats()
    assert stats["subscriptions"] == 0
    assert stats["dropped_unsubscribed"] == 3  # one left in the async inbox, two in the thread inbox


def test_mail_pending_for_an_unsubscribed_handler_when_the_loop_ends(hub: CheckedHub, run: Run) -> None:
    async def main() -> None:
        async def handler(message: Message) -> None:
            pass

        channel = Channel("t", handler, hub=hub)
        assert await hub.ajoin(TIMEOUT)  # in the index
        Channel("t", hub=hub).send()  # its turn is about to be started on this loop...
        channel.unsubscribe()  # ...and the loop ends right after

    run(main())
    assert hub.join(TIMEOUT), "the subscription's mail was released, not left busy"
    stats = hub.stats()
    assert stats["delivered"] + stats["dropped_unsubscribed"] == 1
