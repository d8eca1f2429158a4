"""One subscription's delivery state: its handler, mailbox and flags.

Each ``Channel.subscribe()`` creates a :class:`Subscription`; the index holds
subscriptions, not channels, so that a channel that unsubscribes and
subscribes again never receives a message meant for its earlier life.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._asyncio import LoopRunner
    from ._channel import Channel
    from ._message import Message
    from ._workers import Worker

__all__ = ["Handler", "JoinToken", "Runner", "Subscription"]

Handler = Callable[["Message"], Any]


class Runner(Protocol):
    """What takes a subscription's mail instead of the task-worker threads.

    ``tracked``: whether the subscription is marked scheduled (and so in the
    hub's busy set, waited for by ``join()``) while it has mail.
    ``schedule(sub)`` is called by the broker stage after it appended to
    the subscription's mailbox; ``add`` and ``discard`` when the
    subscription begins and ends.
    """

    tracked: bool

    def schedule(self, sub: Subscription) -> None: ...

    def add(self, sub: Subscription) -> None: ...

    def discard(self, sub: Subscription) -> None: ...


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
    - ``running_on``: the worker (or loop runner) running it, None when
      idle, so that ``unsubscribe()`` from outside a handler can wait for a
      call in progress.
    - ``runner``: None for a handler run by the task-worker threads;
      otherwise what takes its mail instead: a
      :class:`~tidings._asyncio.LoopRunner` for an async handler, an inbox
      for ``tidings.subscribe()``.
    """

    __slots__ = (
        "active",
        "channel",
        "handler",
        "live",
        "mailbox",
        "on_error",
        "runner",
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
        on_error: Callable[[BaseException, Message], Any] | None,
        runner: Runner | None = None,
    ) -> None:
        self.channel = channel
        self.topic = topic
        self.handler = handler
        self.on_error = on_error
        self.mailbox: deque[Message | JoinToken] | None = None
        self.scheduled = False
        self.active = True
        self.live = False
        self.running_on: Worker | LoopRunner | None = None
        self.runner = runner
        self.since = 0  # the hub's message number when it subscribed

    def __repr__(self) -> str:
        state = "active" if self.active else "ended"
        return f"<Subscription {self.topic!r} {state} handler={self.handler!r}>"


class JoinToken:
    """A marker that ``Hub.join`` sends through the stages.

    The broker stage puts it behind the last pending message of every busy
    subscription; it fires when every copy has been reached by a worker.
    """

    __slots__ = ("_callback", "_event", "_lock", "_remaining")

    def __init__(self, callback: Callable[[], object] | None = None) -> None:
        self._lock = threading.Lock()
        self._remaining = 1
        self._event = threading.Event()
        self._callback = callback  # called once, when it fires (ajoin wakes its loop)

    def add(self, count: int) -> None:
        with self._lock:
            self._remaining += count

    def done(self) -> None:
        with self._lock:
            self._remaining -= 1
            if self._remaining:
                return
        self._event.set()
        if self._callback is not None:
            self._callback()

    def wait(self, timeout: float | None) -> bool:
        return self._event.wait(timeout)
