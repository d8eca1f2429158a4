"""The message: what ``Channel.send`` creates and what handlers receive."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["Message", "resolve_expiry"]

_monotonic = time.monotonic


def resolve_expiry(expiry: datetime | timedelta) -> tuple[datetime, float]:
    """Turn an expiry into (absolute UTC datetime, monotonic deadline).

    A message's life is measured on the monotonic clock, so a wall-clock jump
    after sending neither expires nor revives it. The UTC datetime is what
    crosses the network. A naive ``datetime`` is taken as local time, like
    ``datetime.now()``.
    """
    now = datetime.now(UTC)
    if isinstance(expiry, timedelta):
        remaining = expiry.total_seconds()
        absolute = now + expiry
    elif isinstance(expiry, datetime):
        absolute = expiry.astimezone(UTC)
        remaining = (absolute - now).total_seconds()
    else:
        raise TypeError(f"expiry must be a datetime or timedelta, not {type(expiry).__name__}")
    return absolute, _monotonic() + remaining


class Message:
    """One message, as a handler receives it.

    - ``topic``: the topic it was sent on (which may be a wildcard);
    - ``data``: a ``dict`` of its own. Every handler call gets a fresh
      shallow copy, so a handler may change ``data`` at the top level
      without another subscriber seeing it;
    - ``expiry``: an aware UTC ``datetime``, or None;
    - ``local``, ``droppable``: the flags given to ``send``;
    - ``time``: when it was sent (seconds since the epoch);
    - ``id``: a string unique across processes.

    Messages are created by ``Channel.send``; do not instantiate them.
    """

    # The message send() returns (the origin) holds everything; the copy a
    # handler receives holds topic, data and a reference to its origin, so
    # that making it costs three stores. ``_meta`` is
    # (sequence number, hub token, time, expiry, local, droppable).
    __slots__ = ("_deadline", "_dropped", "_meta", "_origin", "_wire", "data", "topic")

    _dropped: bool  # set only when dropped (unset reads as False)
    _wire: bytes  # the encoded message, set by send() when a network broker carries it

    def __init__(
        self,
        topic: str,
        data: dict[str, Any],
        deadline: float | None,
        meta: tuple[int, str, float, datetime | None, bool, bool],
    ) -> None:
        self.topic = topic
        self.data = data
        self._deadline = deadline
        self._meta = meta
        self._origin: Message | None = None

    @property
    def id(self) -> str:
        """A string unique to this message across processes and hubs."""
        meta = (self._origin or self)._meta
        return f"{meta[1]}-{meta[0]}"

    @property
    def time(self) -> float:
        """When the message was sent, in seconds since the epoch."""
        return (self._origin or self)._meta[2]

    @property
    def expiry(self) -> datetime | None:
        """When the message expires (an aware UTC datetime), or None."""
        return (self._origin or self)._meta[3]

    @property
    def local(self) -> bool:
        """Whether the message stays in this process (with a network broker)."""
        return (self._origin or self)._meta[4]

    @property
    def droppable(self) -> bool:
        """Whether the hub may drop the message instead of delivering it while stopping."""
        return (self._origin or self)._meta[5]

    def is_expired(self) -> bool:
        """Whether the message's expiry has passed (on the monotonic clock)."""
        deadline = (self._origin or self)._deadline
        return deadline is not None and _monotonic() >= deadline

    def is_dropped(self) -> bool:
        """Whether the message was dropped, for any subscriber, before delivery.

        A message is dropped when it expired before a handler could run, or
        was droppable and the hub stopped. The copies handed to handlers
        share this flag with the message ``send`` returned.
        """
        return getattr(self._origin or self, "_dropped", False)

    def _drop(self) -> None:
        (self._origin or self)._dropped = True

    def __repr__(self) -> str:
        return f"<Message {self.id} topic={self.topic!r} data={self.data!r}>"


_new_message = object.__new__
