"""The asyncio bridge: async handlers run on the event loop they subscribed from.

A :class:`LoopRunner` stands in for the task-worker threads for one event
loop: the broker stage hands it subscriptions with new mail (one
``call_soon_threadsafe`` per burst, not per message), and it runs each one's
turn as an asyncio task that awaits the handler for each message in order.
A subscription's next turn starts only after the previous one has finished,
so an async handler, like a sync one, never runs twice at once; a slow one
holds up only its own subscription.

This module imports asyncio; ``import tidings`` does not import it, so the
cost is paid only by programs that subscribe an async handler.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ._message import Message, _new_message
from ._subscription import Subscription

if TYPE_CHECKING:
    from ._hub import Hub

__all__ = ["LoopRunner", "runner_for"]

logger = logging.getLogger("tidings")

_monotonic = time.monotonic

# Handler calls one turn makes before letting the loop run other tasks.
TURN = 64

COUNTERS = ("delivered", "dropped_expired", "dropped_unsubscribed", "dropped_shutdown", "handler_errors")


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None."""
    return asyncio._get_running_loop()


def runner_for(hub: Hub, loop: asyncio.AbstractEventLoop | None) -> LoopRunner:
    """The hub's runner for ``loop`` (default: the running loop), created on first use."""
    if loop is None:
        loop = running_loop()
        if loop is None:
            raise RuntimeError(
                "an async handler runs on the event loop it subscribed from, and no event loop is "
                "running in this thread: subscribe from async code, or pass loop="
            )
    elif not isinstance(loop, asyncio.AbstractEventLoop):
        raise TypeError(f"loop must be an asyncio event loop, not {type(loop).__name__}")
    if loop.is_closed():
        raise RuntimeError(f"cannot subscribe an async handler on a closed event loop ({loop!r})")
    with hub._runners_lock:
        runner = hub._runners.get(loop)
        if runner is None or runner.closed:
            runner = hub._runners[loop] = LoopRunner(hub, loop)
            hub._all_runners.append(runner)
            runner.start()
        return runner


class LoopRunner:
    """Runs the async handlers of one hub that live on one event loop.

    Takes the place of a task worker for them: it holds the same counters,
    keeps the same ``scheduled``/``busy`` protocol (so ``join()`` and
    ``stop()`` wait for async handlers too) and makes the same per-delivery
    copy of each message.

    When its loop shuts down (``asyncio.run`` cancels every task at the
    end), its subscriptions end: they are unsubscribed and counted in
    ``stats()["ended_loop_closed"]``. A loop closed without that is noticed
    when the next message for it arrives.
    """

    tracked = True  # a subscription run here is in the hub's busy set while it has mail

    def __init__(self, hub: Hub, loop: asyncio.AbstractEventLoop) -> None:
        self.hub = hub
        self.loop = loop
        self.closed = False
        # Appended by the broker stage, popped on the loop: one deque, never
        # swapped (a swap could lose an append made in the same instant).
        self._ready: deque[Subscription] = deque()
        self._woken = False
        self._subs: set[Subscription] = set()
        # Handed over by schedule() and not yet released: what _close() must
        # release if the loop stops before their turns run (or finish).
        self._scheduled: set[Subscription] = set()
        self._turns: set[asyncio.Task[None]] = set()  # running turns (also keeps them referenced)
        self._watcher: asyncio.Task[None] | None = None
        # unsubscribe() from another thread waits here for a call in progress.
        self._done = threading.Condition(threading.Lock())
        self._waiters = 0
        # Written on the loop's thread (hot paths) or through _add(); folded
        # into the hub's totals once the loop is gone and no turn runs, so
        # that a closed loop is not kept alive by its runner.
        self._counters: dict[str, int] = dict.fromkeys((*COUNTERS, "ended_loop_closed"), 0)
        self._folded = False
        self._running_turns = 0

    def __repr__(self) -> str:
        return f"<LoopRunner {self.hub.name} on {self.loop!r}>"

    # -- set-up and shutdown ---------------------------------------------------

    def start(self) -> None:
        """Start the watcher task that notices the loop shutting down."""
        if running_loop() is self.loop:
            self._start_watcher()
        else:
            self._call_soon(self._start_watcher)

    def _start_watcher(self) -> None:
        if self.closed or self._watcher is not None:
            return
        self._watcher = self.loop.create_task(self._watch())
        # A loop closed by hand (without cancelling its tasks) must not log
        # "Task was destroyed but it is pending" for this internal task.
        self._watcher._log_destroy_pending = False  # type: ignore[attr-defined]

    async def _watch(self) -> None:
        try:
            await self.loop.create_future()
        finally:
            # Cancelled: the loop is shutting down (asyncio.run, Runner.close).
            self._close()

    def _call_soon(self, callback: Callable[[], Any]) -> None:
        try:
            self.loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop is closed
            self._close()

    def add(self, sub: Subscription) -> None:
        with self.hub._runners_lock:
            if self.closed:
                raise RuntimeError(f"cannot subscribe an async handler on a closed event loop ({self.loop!r})")
            self._subs.add(sub)

    def discard(self, sub: Subscription) -> None:
        with self.hub._runners_lock:
            self._subs.discard(sub)

    def _close(self) -> None:
        """The loop is going away: end every subscription that runs here."""
        with self.hub._runners_lock:
            if self.closed:
                return
            self.closed = True
            if self.hub._runners.get(self.loop) is self:
                del self.hub._runners[self.loop]
            subs = list(self._subs)
            self._subs.clear()
        for sub in subs:
            if sub.active:
                self._add("ended_loop_closed")
                sub.channel._end(sub)
        # Unsubscribed ones too: a turn that the stopping loop will never
        # run (or finish) must not leave them busy, holding join() forever.
        for sub in {*subs, *self._scheduled}:
            if sub.running_on is self:
                sub.running_on = None
            self._release(sub)
        ready = self._ready
        while ready:
            self._release(ready.popleft())
        with self._done:
            self._done.notify_all()  # unsubscribe() calls waiting for a call that will not finish
        self._fold()

    def _add(self, key: str, count: int = 1) -> None:
        """Count outside a turn: into this runner's counters, or the hub's once folded."""
        with self.hub._runners_lock:
            target = self.hub._retired if self._folded else self._counters
            target[key] = target.get(key, 0) + count

    def fold_if_gone(self) -> None:
        """Fold now if the loop has closed with turns that never ran (called by stats())."""
        if self.closed and not self._folded and self.loop.is_closed():
            self._fold()

    def _fold(self) -> None:
        """Once closed and quiet, move the counts to the hub and let go of the loop."""
        if not self.closed or (self._running_turns and not self.loop.is_closed()):
            return  # a turn still being cancelled will count: fold after it
        hub = self.hub
        with hub._runners_lock:
            if self._folded:
                return
            self._folded = True
            for key, value in self._counters.items():
                hub._retired[key] = hub._retired.get(key, 0) + value
            if self in hub._all_runners:
                hub._all_runners.remove(self)

    # -- the broker side -------------------------------------------------------

    def schedule(self, sub: Subscription) -> None:
        """Hand ``sub`` (already marked scheduled and busy) to the loop."""
        if self.closed:
            self._release(sub)
            return
        self._scheduled.add(sub)
        self._ready.append(sub)
        if not self._woken:
            # One wake-up per burst: _run takes every subscription queued
            # until it runs.
            self._woken = True
            self._call_soon(self._run)

    # -- the loop side ---------------------------------------------------------

    def _run(self) -> None:
        self._woken = False  # first: a subscription added from now on wakes again
        ready = self._ready
        if self.closed:  # the loop is shutting down: no new turns
            while ready:
                self._release(ready.popleft())
            return
        create_task = self.loop.create_task
        turns = self._turns
        while ready:
            self._running_turns += 1  # from now: _fold() waits for this turn's counts
            task = create_task(self._turn(ready.popleft()))
            # A loop closed by hand mid-turn is handled by _close(); asyncio
            # need not log this internal task as "destroyed but pending".
            task._log_destroy_pending = False  # type: ignore[attr-defined]
            turns.add(task)
            task.add_done_callback(turns.discard)

    def in_handler(self) -> bool:
        """Whether the current task is running one of this runner's handlers."""
        return asyncio.current_task(self.loop) in self._turns

    async def _turn(self, sub: Subscription) -> None:
        """Run ``sub``'s mailbox on its handler, in order, until it is empty."""
        hub = self.hub
        counters = self._counters
        handler: Callable[[Message], Awaitable[Any]] = sub.handler
        mailbox = sub.mailbox
        assert mailbox is not None  # scheduled only with mail
        popleft = mailbox.popleft
        calls = 0  # handler calls made and not yet counted in counters["delivered"]
        # Held for the whole turn, as a task worker holds its task: a thread
        # that unsubscribes waits until the turn ends, which is right after
        # the call in progress (no call starts once active is False).
        sub.running_on = self
        try:
            while True:
                while mailbox:
                    try:
                        item = popleft()
                    except IndexError:  # stop() discarded it meanwhile
                        break
                    if not isinstance(item, Message):
                        # A join token: what join() waits for is counted first.
                        counters["delivered"] += calls
                        calls = 0
                        item.done()
                        continue
                    if not (sub.active and hub._normal) and not self._may_deliver(item, sub):
                        continue
                    deadline = item._deadline
                    if deadline is not None and _monotonic() >= deadline:
                        item._drop()
                        counters["dropped_expired"] += 1
                        continue
                    message = _new_message(Message)
                    message.topic = item.topic
                    message.data = item.data.copy()
                    message._origin = item
                    calls += 1  # a call made, even if it is cancelled midway
                    try:
                        await handler(message)
                    except GeneratorExit:
                        raise  # the turn's coroutine is being closed (its loop is gone)
                    except asyncio.CancelledError as exc:
                        task = asyncio.current_task()
                        if task is not None and task.cancelling():
                            raise  # this turn was cancelled: the loop is shutting down
                        counters["handler_errors"] += 1
                        await self._report(sub, message, exc)
                    except BaseException as exc:  # a handler must not end the turn
                        counters["handler_errors"] += 1
                        await self._report(sub, message, exc)
                    if calls >= TURN:
                        counters["delivered"] += calls
                        calls = 0
                        await asyncio.sleep(0)  # let the loop's other tasks run
                with hub._ready_cond:
                    if not mailbox:
                        sub.scheduled = False
                        hub._busy.discard(sub)
                        self._scheduled.discard(sub)
                        return
        except asyncio.CancelledError:
            # The loop is shutting down: this subscription ends with it.
            if sub.active:
                self._add("ended_loop_closed")
                sub.channel._end(sub)
            self._release(sub)
            raise
        finally:
            self._running_turns -= 1
            if self.closed:
                self._add("delivered", calls)
                self._fold()
            else:
                counters["delivered"] += calls
            sub.running_on = None
            if self._waiters:
                with self._done:
                    self._done.notify_all()

    def _may_deliver(self, message: Message, sub: Subscription) -> bool:
        hub = self.hub
        if not sub.active:
            self._counters["dropped_unsubscribed"] += 1
            return False
        if not hub._alive or (hub._state == "stopping" and message.droppable):
            message._drop()
            self._counters["dropped_shutdown"] += 1
            return False
        return True

    async def _report(self, sub: Subscription, message: Message, exc: BaseException) -> None:
        on_error = sub.on_error
        if on_error is None:
            self.hub._handler_failed(sub, message, exc)
            return
        try:
            result = on_error(exc, message)
            if result is not None and hasattr(result, "__await__"):
                await result
        except BaseException:  # the error handler must not end the turn either
            logger.exception("the error handler of channel %r raised", sub.topic)

    def _release(self, sub: Subscription) -> None:
        """Drop what is left in an ended subscription's mailbox and unmark it."""
        hub = self.hub
        mailbox = sub.mailbox
        dropped = 0
        with hub._ready_cond:
            while mailbox:
                item = mailbox.popleft()
                if isinstance(item, Message):
                    dropped += 1
                else:
                    item.done()
            sub.scheduled = False
            hub._busy.discard(sub)
            self._scheduled.discard(sub)
        if dropped:
            self._add("dropped_unsubscribed", dropped)

    # -- unsubscribe() waiting for a call in progress --------------------------

    def _wait_until_done(self, sub: Subscription) -> None:
        if running_loop() is not None:
            return  # never block an event loop (least of all this one)
        with self._done:
            self._waiters += 1
            try:
                while sub.running_on is self:
                    if self.loop.is_closed():
                        break  # closed by hand mid-call: that call will never finish
                    # In slices: a loop closed by hand tells nobody.
                    self._done.wait(0.1)
            finally:
                self._waiters -= 1
        if sub.running_on is self and self.loop.is_closed():
            self._close()

    def check_closed(self) -> None:
        """End this runner's subscriptions if its loop was closed by hand."""
        if not self.closed and self.loop.is_closed():
            self._close()


def _end_after_fork() -> None:
    """In a forked child no event loop of the parent runs: end the async subscriptions.

    Registered when this module is first imported, so it runs after the
    hubs' and the channels' own fork handlers (the channel lock is usable
    again by then). Counted in ``ended_loop_closed``; the parent keeps them.
    """
    from ._hub import _hubs

    for hub in list(_hubs):
        for runner in list(hub._runners.values()):
            runner._close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_end_after_fork)
