"""tidings for asyncio: inboxes read with ``async for``.

Async handlers need nothing from here: ``Channel(topic, handler)`` and
``Scope.subscribe`` take an ``async def`` handler and run it on the event
loop they were called from. This module adds subscriptions that a task
reads::

    import tidings.aio

    async def follow_room(websocket):
        async with tidings.aio.subscribe("chat.rooms.lona", max_pending=100) as inbox:
            async for message in inbox:
                await websocket.send_json(message.data)

``send()`` needs no async twin: it never blocks, so call it from async code
as it is. ``await hub.ajoin()`` and ``await hub.astop()`` wait without
blocking the loop.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from typing import TYPE_CHECKING

from ._exceptions import InboxClosedError, SlowConsumerError
from ._hub import Hub
from ._inbox import OVERFLOW_POLICIES, InboxCore, Overflow, _check_timeout
from ._message import Message
from ._scope import Scope
from ._subscription import Subscription

if TYPE_CHECKING:
    from typing import Self

__all__ = ["OVERFLOW_POLICIES", "AsyncInbox", "Overflow", "subscribe"]


class AsyncInbox(InboxCore):
    """A subscription read by asyncio tasks of one event loop.

    Made by :func:`subscribe`. The broker stage fills it from its own
    thread and wakes a waiting ``get()`` with one ``call_soon_threadsafe``
    per burst of messages. See :mod:`tidings._inbox` for the overflow
    policies. Leaving ``async with`` (also by an exception or a
    cancellation) unsubscribes and drops what is left, counted.
    """

    def __init__(
        self,
        topic: str,
        *,
        hub: Hub | None = None,
        max_pending: int = 1000,
        overflow: Overflow = "error",
        loop: asyncio.AbstractEventLoop | None = None,
        scope: Scope | None = None,
    ) -> None:
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError(
                    "tidings.aio.subscribe() needs a running event loop (or loop=): "
                    "for threads, use tidings.subscribe()"
                ) from None
        elif not isinstance(loop, asyncio.AbstractEventLoop):
            raise TypeError(f"loop must be an asyncio event loop, not {type(loop).__name__}")
        self._loop = loop
        self._waker = _waker_for(loop)
        self._waiters: list[asyncio.Future[None]] = []  # readers waiting in get()
        super().__init__(topic, hub, max_pending, overflow, scope)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def _wake(self) -> None:
        waiters = self._waiters
        if not waiters:
            return
        # Every waiting reader: each takes a message or waits again.
        self._waiters = []
        if not self._waker.wake(waiters):  # the loop has closed: nobody will read this inbox
            self._ended = InboxClosedError(self.topic, "loop closed")
            self._count_away("dropped_unsubscribed")

    def schedule(self, sub: Subscription) -> None:
        super().schedule(sub)
        if self._ended is not None and self._ended.reason == "loop closed":
            self._end("loop closed")  # unsubscribes; idempotent

    async def get(self, timeout: float | None = None) -> Message:
        """The next message, waiting up to ``timeout`` seconds (None: no limit).

        Raises TimeoutError when none came in time, :class:`SlowConsumerError`
        once the inbox overflowed with ``overflow="error"``, and
        :class:`InboxClosedError` once it has ended and is empty.
        """
        if timeout is not None:
            timeout = _check_timeout(timeout)
            try:
                async with asyncio.timeout(timeout):
                    return await self.get()
            except TimeoutError:
                raise TimeoutError(f"no message for {self.topic!r} within {timeout} s") from None
        while True:
            with self.lock:
                message = self._take()
                if message is not None:
                    return message
                self._no_message()
                waiter = self._loop.create_future()
                self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with self.lock:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)  # cancelled while waiting

    def get_nowait(self) -> Message | None:
        """The next message, or None when the inbox is empty (raises once it has ended)."""
        with self.lock:
            message = self._take()
            if message is None:
                self._no_message()
            return message

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        with self.lock:
            message = self._take()
        if message is not None:
            return message  # the common case under load: no coroutine of get() at all
        try:
            return await self.get()
        except SlowConsumerError:
            raise
        except InboxClosedError:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Close the inbox (the same as :meth:`close`, for ``contextlib.aclosing``)."""
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class _Waker:
    """Wakes the inbox readers of one event loop: one ``call_soon_threadsafe`` per burst.

    Shared by every inbox on the loop, so a message for 100 inboxes costs
    one wake-up of the loop, not 100.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: deque[asyncio.Future[None]] = deque()  # never swapped: see LoopRunner._ready
        self._woken = False

    def wake(self, waiters: list[asyncio.Future[None]]) -> bool:
        """Resolve ``waiters`` on the loop soon; False if the loop has closed."""
        self._pending.extend(waiters)
        if not self._woken:
            self._woken = True
            try:
                self._loop.call_soon_threadsafe(self._run)
            except RuntimeError:
                self._woken = False
                self._pending.clear()
                return False
        return True

    def _run(self) -> None:
        self._woken = False  # first: a waiter added from now on wakes again
        pending = self._pending
        while pending:
            waiter = pending.popleft()
            if not waiter.done():
                waiter.set_result(None)


_wakers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Waker] = weakref.WeakKeyDictionary()
_wakers_lock = threading.Lock()


def _waker_for(loop: asyncio.AbstractEventLoop) -> _Waker:
    with _wakers_lock:
        waker = _wakers.get(loop)
        if waker is None:
            waker = _wakers[loop] = _Waker(loop)
        return waker


def subscribe(
    topic: str,
    *,
    hub: Hub | None = None,
    max_pending: int = 1000,
    overflow: Overflow = "error",
    loop: asyncio.AbstractEventLoop | None = None,
    scope: Scope | None = None,
) -> AsyncInbox:
    """Subscribe to ``topic`` with an inbox read on this event loop; see :class:`AsyncInbox`.

    Messages sent after this returns are in it, exactly once and in order,
    until it is closed, or ``scope`` is. Use it with ``async with``::

        async with tidings.aio.subscribe("prices.*", overflow="drop_oldest") as inbox:
            message = await inbox.get(timeout=5.0)
    """
    return AsyncInbox(topic, hub=hub, max_pending=max_pending, overflow=overflow, loop=loop, scope=scope)
