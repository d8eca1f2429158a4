"""Scopes: a group of subscriptions that end together."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._channel import Channel
from ._fork import ForkSafeLock
from ._hub import Hub, default_hub

if TYPE_CHECKING:
    from asyncio import AbstractEventLoop

    from ._inbox import InboxCore
    from ._message import Message
    from ._subscription import Handler

__all__ = ["Scope"]

logger = logging.getLogger("tidings")

OnError = Callable[[BaseException, "Message", Channel], Any]

# One lock for every scope's channel list: a per-scope lock held by another
# thread at fork() would stay held in the child.
_scopes_lock = ForkSafeLock()


class Scope:
    """Subscriptions that belong to one owner (a view, a connection, a job).

    ``close()``, or leaving the ``with`` block, unsubscribes all of them.
    When a handler subscribed through the scope raises, ``on_error(exception,
    message, channel)`` is called on the worker thread and that channel is
    unsubscribed, which is what a Lona view does for its subscriptions.
    Without ``on_error`` the exception is logged on the ``tidings`` logger.

        with Scope(on_error=report) as scope:
            scope.subscribe("chat.rooms.lona", show_message)
            ...  # the subscription ends when the block is left

    Thread-safe: channels may be subscribed and the scope closed from any
    thread, handlers included.
    """

    def __init__(self, hub: Hub | None = None, on_error: OnError | None = None) -> None:
        if hub is not None and not isinstance(hub, Hub):
            raise TypeError(f"hub must be a tidings.Hub, not {type(hub).__name__}")
        if on_error is not None and not callable(on_error):
            raise TypeError(f"on_error must be callable, not {type(on_error).__name__}")
        self._hub = hub if hub is not None else default_hub()
        self._on_error = on_error
        self._channels: dict[Channel, None] = {}
        self._inboxes: dict[InboxCore, None] = {}  # tidings.subscribe(..., scope=self)
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def channels(self) -> list[Channel]:
        """The channels currently subscribed through this scope."""
        with _scopes_lock:
            return list(self._channels)

    @property
    def inboxes(self) -> list[InboxCore]:
        """The open inboxes made with ``scope=`` this scope (``tidings.subscribe``, ``tidings.aio.subscribe``)."""
        with _scopes_lock:
            return list(self._inboxes)

    def _adopt(self, inbox: InboxCore) -> None:
        with _scopes_lock:
            if self._closed:
                raise RuntimeError("the scope is closed")
            self._inboxes[inbox] = None

    def _forget(self, inbox: InboxCore) -> None:
        with _scopes_lock:
            self._inboxes.pop(inbox, None)

    def subscribe(self, topic: str, handler: Handler, *, loop: AbstractEventLoop | None = None) -> Channel:
        """Subscribe ``handler`` to ``topic`` within this scope.

        An ``async def`` handler runs on ``loop`` (default: the running
        loop), as with :class:`Channel`; so does an async ``on_error`` for it.
        """
        channel = Channel(topic, hub=self._hub)

        def failed(exc: BaseException, message: Message) -> Any:
            return self._handler_failed(channel, exc, message)

        channel._on_error = failed
        with _scopes_lock:
            if self._closed:
                raise RuntimeError("the scope is closed")
            channel.subscribe(handler, loop=loop)
            self._channels[channel] = None
        return channel

    def _handler_failed(self, channel: Channel, exc: BaseException, message: Message) -> Any:
        channel.unsubscribe()
        with _scopes_lock:
            self._channels.pop(channel, None)
        if self._on_error is None:
            logger.error("handler of channel %r raised on %r; unsubscribed it", channel.topic, message, exc_info=exc)
            return None
        return self._on_error(exc, message, channel)

    def close(self) -> None:
        """Unsubscribe every channel and close every inbox of the scope. Idempotent."""
        with _scopes_lock:
            self._closed = True
            channels = list(self._channels)
            self._channels.clear()
            inboxes = list(self._inboxes)
            self._inboxes.clear()
        for channel in channels:
            channel.unsubscribe()
        for inbox in inboxes:
            inbox.close()

    def __enter__(self) -> Scope:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._channels)} channels"
        return f"<Scope {state}>"
