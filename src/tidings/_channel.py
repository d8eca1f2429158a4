"""The channel API: subscribe to a topic, send to a topic."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from ._fork import ForkSafeLock
from ._hub import Hub, default_hub
from ._subscription import Handler, Runner, Subscription
from ._topics import check_topic

if TYPE_CHECKING:
    from asyncio import AbstractEventLoop

    from ._message import Message

__all__ = ["Channel", "is_async_callable"]

_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE, without importing inspect


def is_async_callable(obj: object) -> bool:
    """Whether calling ``obj`` returns a coroutine: an ``async def`` function,
    or a method, ``functools.partial`` or callable object wrapping one."""
    while isinstance(obj, partial):
        obj = obj.func
    function = getattr(obj, "__func__", obj)  # a bound method
    code = getattr(function, "__code__", None)
    if code is None:
        call = getattr(type(obj), "__call__", None)  # noqa: B004 (an instance with an async __call__)
        code = getattr(getattr(call, "__func__", call), "__code__", None)
    return code is not None and bool(code.co_flags & _CO_COROUTINE)


# Guards the subscribed/unsubscribed transition of every channel. One lock
# for all keeps a channel small (100,000 of them are ordinary).
_transition = ForkSafeLock()


class Channel:
    """A topic, and optionally a subscription to it.

    ``Channel(topic, handler)`` subscribes ``handler`` at once;
    ``Channel(topic).send(data)`` publishes. Topics may contain the
    wildcards ``*``, ``?`` and ``[...]`` on either side (see
    :mod:`tidings` for the matching rule).

    The handler is called with a :class:`Message` on a task-worker thread,
    once for each matching message sent while subscribed, in the order the
    hub received them, never on two threads at once. A handler that raises
    is logged on the ``tidings`` logger and counted; it stays subscribed.
    (In a :class:`Scope`, the scope's ``on_error`` is called instead and the
    channel is unsubscribed.)

    An ``async def`` handler runs on the event loop running where it
    subscribed (or on ``loop``), awaited message after message with the same
    guarantees; it ends, unsubscribed, when that loop shuts down.

        def on_message(message):
            print(message.topic, message.data)

        channel = Channel("chat.rooms.*", on_message)
        Channel("chat.rooms.lona").send({"text": "hello"})
        ...
        channel.unsubscribe()
    """

    __slots__ = ("__weakref__", "_hub", "_on_error", "_subscription", "_topic")

    def __init__(
        self,
        topic: str,
        handler: Handler | None = None,
        *,
        hub: Hub | None = None,
        loop: AbstractEventLoop | None = None,
    ) -> None:
        check_topic(topic)
        if hub is not None and not isinstance(hub, Hub):
            raise TypeError(f"hub must be a tidings.Hub, not {type(hub).__name__}")
        self._topic = topic
        self._hub = hub if hub is not None else default_hub()
        self._subscription: Subscription | None = None
        self._on_error: Callable[[BaseException, Message], None] | None = None
        if handler is not None:
            self.subscribe(handler, loop=loop)
        elif loop is not None:
            raise TypeError("loop= is for async handlers; no handler was given")

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def hub(self) -> Hub:
        return self._hub

    @property
    def handler(self) -> Handler | None:
        """The subscribed handler, or None when not subscribed."""
        sub = self._subscription
        return None if sub is None else sub.handler

    @property
    def subscribed(self) -> bool:
        return self._subscription is not None

    def subscribe(self, handler: Handler, *, loop: AbstractEventLoop | None = None) -> None:
        """Subscribe ``handler`` to this channel's topic.

        Messages sent after ``subscribe`` returns reach it; earlier ones do
        not. An ``async def`` handler runs on ``loop``, by default the event
        loop running in this thread (RuntimeError if there is none). Raises
        RuntimeError if the channel is already subscribed, and
        :class:`HubClosedError` if its hub has stopped.
        """
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        runner: Runner | None = None
        if is_async_callable(handler):
            from ._asyncio import runner_for

            runner = runner_for(self._hub, loop)
        elif loop is not None:
            raise TypeError(f"loop= is for async handlers; {handler!r} is not an async def function")
        self._attach(handler, runner)

    def _attach(self, handler: Handler, runner: Runner | None) -> Subscription:
        with _transition:
            if self._subscription is not None:
                raise RuntimeError(f"channel {self._topic!r} is already subscribed")
            sub = Subscription(self, self._topic, handler, self._on_error, runner)
            if runner is not None:
                runner.add(sub)
            try:
                self._hub._subscribe(sub)
            except BaseException:
                if runner is not None:
                    runner.discard(sub)
                raise
            self._subscription = sub
            self._hub._subscription_count += 1
        return sub

    def _end(self, sub: Subscription) -> None:
        """Unsubscribe, if ``sub`` is still this channel's subscription; never waits."""
        with _transition:
            if self._subscription is not sub:
                return
        self.unsubscribe(wait=False)

    def unsubscribe(self, *, wait: bool = True) -> None:
        """End the subscription; a no-op when not subscribed.

        No handler call starts after this returns. Called from outside any
        handler with ``wait=True`` (the default), it also waits for a call
        in progress to finish, so that the handler is known to be idle
        afterwards; do not hold a lock the handler may need while calling
        it. Called from a handler it never waits (that could deadlock): a
        call that another worker has already begun, or has just decided to
        make, may still run.
        """
        with _transition:
            sub = self._subscription
            if sub is None:
                return
            self._subscription = None
            sub.active = False
            self._hub._subscription_count -= 1
        runner = sub.runner
        if runner is not None:
            runner.discard(sub)
        self._hub._unsubscribe(sub, wait)

    def send(
        self,
        data: Mapping[str, Any] | None = None,
        *,
        expiry: datetime | timedelta | None = None,
        local: bool = False,
        droppable: bool = False,
    ) -> Message:
        """Publish a shallow copy of ``data`` to every matching subscription.

        Never blocks: the message is appended to the hub's queue and the
        call returns. ``expiry`` (a ``datetime`` or ``timedelta``) drops the
        message for any subscriber it has not reached in time; ``local``
        keeps it in this process when a network broker is used;
        ``droppable`` lets the hub drop it instead of delivering it while
        stopping. Returns the :class:`Message`, whose ``is_dropped()`` tells
        later whether it was dropped for any subscriber.
        """
        if type(data) is dict:
            copied = data.copy()
        elif data is None:
            copied = {}
        elif isinstance(data, Mapping):
            copied = dict(data)
        else:
            raise TypeError(f"data must be a Mapping or None, not {type(data).__name__}")
        if local is not False and local is not True:
            raise TypeError(f"local must be a bool, not {type(local).__name__}")
        if droppable is not False and droppable is not True:
            raise TypeError(f"droppable must be a bool, not {type(droppable).__name__}")
        return self._hub._publish(self._topic, copied, expiry, local, droppable)

    def __repr__(self) -> str:
        return f"<Channel {self._topic!r} handler={self.handler!r}>"
