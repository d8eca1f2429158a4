"""Inboxes: subscriptions that are read from instead of calling a handler.

``tidings.subscribe(topic)`` (threads) and ``tidings.aio.subscribe(topic)``
(asyncio) give an inbox. The broker stage appends to it as it would to a
handler's mailbox; the owner takes messages out with ``get()`` or by
iterating. The inbox is bounded: when a slow consumer lets ``max_pending``
messages pile up, the ``overflow`` policy decides what gives way, and every
message given up is counted (``inbox.dropped``, ``hub.stats()``).

- ``"drop_oldest"``: the oldest waiting message makes room (a ticker).
- ``"drop_newest"``: the message that does not fit is dropped.
- ``"error"`` (the default): the inbox ends, and the consumer's next
  ``get()`` raises :class:`SlowConsumerError`, so falling behind is never
  silent.

Blocking the sender instead is not offered: the sender may be any thread or
the event loop itself, and ``send()`` promises never to block.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

from ._channel import Channel
from ._exceptions import InboxClosedError, SlowConsumerError
from ._hub import Hub, default_hub
from ._message import Message, _new_message
from ._scope import Scope
from ._subscription import Subscription

if TYPE_CHECKING:
    from typing import Self

__all__ = ["OVERFLOW_POLICIES", "Inbox", "InboxCore", "Overflow", "subscribe"]

Overflow = Literal["drop_oldest", "drop_newest", "error"]
OVERFLOW_POLICIES: tuple[Overflow, ...] = ("drop_oldest", "drop_newest", "error")

_monotonic = time.monotonic


class InboxCore:
    """What the sync and async inboxes share: the buffer, the policy, the counts.

    It is the subscription's runner (see :class:`~tidings._subscription.Runner`):
    the broker stage calls :meth:`schedule` after appending to ``mailbox``.
    Everything that touches ``mailbox`` besides that append holds ``lock``.
    """

    tracked = False  # join() counts a message as handled once it is in the inbox

    def __init__(
        self, topic: str, hub: Hub | None, max_pending: int, overflow: Overflow, scope: Scope | None = None
    ) -> None:
        if type(max_pending) is not int:
            raise TypeError(f"max_pending must be an int, not {type(max_pending).__name__}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, not {max_pending}")
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {', '.join(map(repr, OVERFLOW_POLICIES))}, not {overflow!r}")
        if scope is not None:
            if not isinstance(scope, Scope):
                raise TypeError(f"scope must be a tidings.Scope, not {type(scope).__name__}")
            if hub is not None and hub is not scope._hub:
                raise ValueError("hub= and scope= name different hubs")
            hub = scope._hub
        self._scope = scope
        self._channel = Channel(topic, hub=hub if hub is not None else default_hub())
        self.hub = self._channel.hub
        self.topic = topic
        self.max_pending = max_pending
        self.overflow = overflow
        self.mailbox: deque[Message] = deque()
        self.lock = threading.Lock()
        self.counters: dict[str, int] = dict.fromkeys(
            ("delivered", "dropped_expired", "dropped_overflow", "dropped_unsubscribed"), 0
        )
        self._ended: InboxClosedError | None = None  # why no more messages will come
        self._sub: Subscription | None = None
        self._retired = False  # its counts have been folded into the hub's
        with self.hub._runners_lock:
            self.hub._inboxes.add(self)
        try:
            if scope is not None:
                scope._adopt(self)
            self._sub = self._channel._attach(_never_called, self)
        except BaseException:
            if scope is not None:
                scope._forget(self)
            self._retire()
            raise

    # -- the Runner protocol (the broker side) ---------------------------------

    def add(self, sub: Subscription) -> None:
        sub.mailbox = self.mailbox  # type: ignore[assignment]  # before the broker can route to it

    def discard(self, sub: Subscription) -> None:
        pass

    def schedule(self, sub: Subscription) -> None:
        ended = False
        with self.lock:
            mailbox = self.mailbox
            if self._ended is not None:
                self._count_away("dropped_unsubscribed")
                return
            excess = len(mailbox) - self.max_pending
            if excess > 0:
                policy = self.overflow
                take = mailbox.popleft if policy == "drop_oldest" else mailbox.pop
                if policy == "error":
                    excess = len(mailbox)
                    self._ended = SlowConsumerError(self.topic, self.max_pending, excess)
                    ended = True
                for _ in range(excess):
                    take()._drop()
                self.counters["dropped_overflow"] += excess
            self._wake()
        if ended:
            self._channel._end(sub)
            if self._scope is not None:
                self._scope._forget(self)
            self._retire()

    def _wake(self) -> None:
        """Wake a consumer waiting for a message (called holding ``lock``)."""
        raise NotImplementedError

    # -- the consumer side -----------------------------------------------------

    def _take(self) -> Message | None:
        """The next message (a copy for this consumer), holding ``lock``."""
        mailbox = self.mailbox
        if self._retired:
            # Closed: a message the broker appended in the moment of closing
            # is not handed out; it is counted with the others.
            self._count_away("dropped_unsubscribed")
            return None
        while mailbox:
            item = mailbox.popleft()
            deadline = item._deadline
            if deadline is not None and _monotonic() >= deadline:
                item._drop()
                self.counters["dropped_expired"] += 1
                continue
            message = _new_message(Message)
            message.topic = item.topic
            message.data = item.data.copy()
            message._origin = item
            self.counters["delivered"] += 1
            return message
        return None

    def _no_message(self) -> None:
        """Raise if nothing more will come (called holding ``lock``, inbox empty)."""
        ended = self._ended
        if ended is not None:
            raise ended
        if self.hub._state == "stopped":
            self._ended = InboxClosedError(self.topic, "hub stopped")
            raise self._ended

    def _end(self, reason: str) -> None:
        """End the inbox for ``reason`` and drop what it still holds."""
        with self.lock:
            if self._ended is None:
                self._ended = InboxClosedError(self.topic, reason)
            self._count_away("dropped_unsubscribed")
            self._wake()
        sub = self._sub
        if sub is not None:
            self._channel._end(sub)
        if self._scope is not None:
            self._scope._forget(self)
        self._retire()

    def _count_away(self, counter: str) -> None:
        """Drop and count what the inbox holds (holding ``lock``).

        Popped one by one: the broker may append meanwhile, without the lock.
        """
        mailbox = self.mailbox
        count = 0
        while True:
            try:
                message = mailbox.popleft()
            except IndexError:
                break
            message._drop()
            count += 1
        if not count:
            return
        self.counters[counter] += count
        if self._retired:
            # A message routed in the moment of closing: the hub's totals
            # no longer include this inbox, so it is added there directly.
            hub = self.hub
            with hub._runners_lock:
                hub._retired[counter] = hub._retired.get(counter, 0) + count

    def _retire(self) -> None:
        """Fold this inbox's counts into the hub's once it has ended."""
        hub = self.hub
        with self.lock, hub._runners_lock:
            if self._retired:
                return
            self._retired = True
            hub._inboxes.discard(self)
            for key, value in self.counters.items():
                hub._retired[key] = hub._retired.get(key, 0) + value

    def _hub_stopped(self) -> None:
        """Called by the hub when it has stopped: wake a consumer waiting in vain."""
        with self.lock:
            self._wake()

    # -- common public surface -------------------------------------------------

    @property
    def dropped(self) -> int:
        """Messages this inbox gave up: by its overflow policy, expired, or left when it ended."""
        counters = self.counters
        return counters["dropped_overflow"] + counters["dropped_expired"] + counters["dropped_unsubscribed"]

    @property
    def pending(self) -> int:
        """Messages waiting in the inbox."""
        return len(self.mailbox)

    @property
    def closed(self) -> bool:
        """True once the inbox has ended (closed, overflowed, hub or loop gone) and is empty."""
        return self._ended is not None and not self.mailbox

    def close(self) -> None:
        """Unsubscribe and drop what is waiting (counted). Idempotent."""
        self._end("closed")

    def __repr__(self) -> str:
        state = f"ended ({self._ended.reason})" if self._ended is not None else "open"
        return f"<{type(self).__name__} {self.topic!r} {state} pending={self.pending}/{self.max_pending}>"


def _never_called(message: Message) -> None:  # pragma: no cover - an inbox has no handler
    raise AssertionError("an inbox's subscription has no handler")


class Inbox(InboxCore):
    """A subscription read by a thread: ``get()``, or iterate.

        with tidings.subscribe("jobs.*", max_pending=100) as inbox:
            for message in inbox.iter(timeout=5.0):   # stops after 5 s of silence
                print(message.topic, message.data)

    Thread-safe; any number of threads may take from one inbox (each
    message goes to one of them).
    """

    def __init__(
        self,
        topic: str,
        *,
        hub: Hub | None = None,
        max_pending: int = 1000,
        overflow: Overflow = "error",
        scope: Scope | None = None,
    ) -> None:
        self._waiting = 0  # consumers waiting in get(); _wake() reads it first
        super().__init__(topic, hub, max_pending, overflow, scope)
        self._cond = threading.Condition(self.lock)

    def _wake(self) -> None:
        if self._waiting:
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Message:
        """The next message, waiting up to ``timeout`` seconds (None: no limit).

        Raises TimeoutError when none came in time, :class:`SlowConsumerError`
        once the inbox overflowed with ``overflow="error"``, and
        :class:`InboxClosedError` once it has ended and is empty.
        """
        deadline = None if timeout is None else _monotonic() + _check_timeout(timeout)
        with self._cond:
            while True:
                message = self._take()
                if message is not None:
                    return message
                self._no_message()
                remaining = None if deadline is None else deadline - _monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no message for {self.topic!r} within {timeout} s")
                self._waiting += 1
                try:
                    self._cond.wait(remaining)
                finally:
                    self._waiting -= 1

    def get_nowait(self) -> Message | None:
        """The next message, or None when the inbox is empty (raises once it has ended)."""
        with self.lock:
            message = self._take()
            if message is None:
                self._no_message()
            return message

    def iter(self, timeout: float | None = None) -> Iterator[Message]:
        """Iterate over messages; stop after ``timeout`` seconds without one, or when the inbox ends.

        A :class:`SlowConsumerError` is raised, not swallowed.
        """
        while True:
            try:
                yield self.get(timeout)
            except TimeoutError:
                return
            except SlowConsumerError:
                raise
            except InboxClosedError:
                return

    def __iter__(self) -> Iterator[Message]:
        return self.iter()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    if timeout != timeout or timeout < 0:
        raise ValueError(f"timeout must be >= 0, not {timeout}")
    return float(timeout)


def subscribe(
    topic: str,
    *,
    hub: Hub | None = None,
    max_pending: int = 1000,
    overflow: Overflow = "error",
    scope: Scope | None = None,
) -> Inbox:
    """Subscribe to ``topic`` with an inbox that a thread reads; see :class:`Inbox`.

    Messages sent after this returns are in it, exactly once and in order,
    until it is closed (leaving the ``with`` block closes it, and so does
    closing ``scope``).
    """
    return Inbox(topic, hub=hub, max_pending=max_pending, overflow=overflow, scope=scope)
