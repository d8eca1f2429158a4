"""One subscription's delivery state: its handler, mailbox and flags.

Each ``Channel.subscribe()`` creates a :class:`Subscription`; the index holds
subscriptions, not channels, so that a channel that unsubscribes and
subscribes again never receives a message meant for its earlier life.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._channel import Channel
    from ._message import Message
    from ._workers import Worker

__all__ = ["Handler", "JoinToken", "Subscription"]

Handler = Callable[["Message"], Any]


class Subscription:
    """Delivery state of one subscription.

    - ``mailbox``: messages routed to it and not yet handled, in hub order.
      The broker stage appends, the one worker running it pops. Created
      with the first message: many subscriptions never get one, and an
      empty deque costs 760 bytes.
    - ``scheduled``: True while it is in the hub's ready queue or held by a
      worker; guarded by the hub's ready lock. This flag is what keeps one
      subscription's handler on one thread at a time.
    - ``active``: cleared by ``unsubscribe()``; no handler call starts once
      it is False.
    - ``live``: set by the broker stage when the subscription enters the
      index; messages routed before that are not for it.
    - ``running_on``: the worker running it, None when idle, so that
      ``unsubscribe()`` from outside a handler can wait for a call in
      progress.
    """

    __slots__ = (
        "active",
        "channel",
        "handler",
        "live",
        "mailbox",
        "on_error",
        "running_on",
        "scheduled",
        "since",
        "topic",
    )

    def __init__(
        self,
        channel: Channel,
        topic: str,
        handler: Handler,
        on_error: Callable[[BaseException, Message], None] | None,
    ) -> None:
        self.channel = channel
        self.topic = topic
        self.handler = handler
        self.on_error = on_error
        self.mailbox: deque[Message | JoinToken] | None = None
        self.scheduled = False
        self.active = True
        self.live = False
        self.running_on: Worker | None = None
        self.since = 0  # the hub's message number when it subscribed

    def __repr__(self) -> str:
        state = "active" if self.active else "ended"
        return f"<Subscription {self.topic!r} {state} handler={self.handler!r}>"


class JoinToken:
    """A marker that ``Hub.join`` sends through the stages.

    The broker stage puts it behind the last pending message of every busy
    subscription; it fires when every copy has been reached by a worker.
    """

    __slots__ = ("_event", "_lock", "_remaining")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._remaining = 1
        self._event = threading.Event()

    def add(self, count: int) -> None:
        with self._lock:
            self._remaining += count

    def done(self) -> None:
        with self._lock:
            self._remaining -= 1
            if self._remaining:
                return
        self._event.set()

    def wait(self, timeout: float | None) -> bool:
        return self._event.wait(timeout)
