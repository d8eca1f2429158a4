"""The message: what ``Channel.send`` creates and what handlers receive."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
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
    now = datetime.now(timezone.utc)
    if isinstance(expiry, timedelta):
        remaining = expiry.total_seconds()
        absolute = now + expiry
    elif isinstance(expiry, datetime):
        absolute = expiry.astimezone(timezone.utc)
        remaining = (absolute - now).total_seconds()
    else:
        raise TypeError(f"expiry must be a datetime or timedelta, not {type(expiry).__name__}")
    return absolute, _monotonic() + remaining


class Message:
    """One message, as a handler receives it.

    ``topic`` is the topic the message was sent on (which may be a wildcard),
    ``data`` a ``dict`` of its own: every handler call gets a fresh shallow
    copy, so a handler may change ``data`` at the top level without another
    subscriber seeing it. ``expiry`` is an aware UTC ``datetime`` or None,
    ``time`` the wall-clock time of sending (seconds since the epoch), ``id``
    a string unique across processes.

    Messages are created by ``Channel.send``; do not instantiate them.
    """

    __slots__ = (
        "_deadline",
        "_dropped",
        "_hub_id",
        "_origin",
        "_seq",
        "data",
        "droppable",
        "expiry",
        "local",
        "time",
        "topic",
    )

    def __init__(
        self,
        topic: str,
        data: dict[str, Any],
        seq: int,
        hub_id: str,
        sent: float,
        expiry: datetime | None,
        deadline: float | None,
        local: bool,
        droppable: bool,
    ) -> None:
        self.topic = topic
        self.data = data
        self._seq = seq
        self._hub_id = hub_id
        self.time = sent
        self.expiry = expiry
        self._deadline = deadline
        self.local = local
        self.droppable = droppable
        self._origin: Message | None = None
        self._dropped = False

    @property
    def id(self) -> str:
        """A string unique to this message across processes and hubs."""
        return f"{self._hub_id}-{self._seq}"

    def is_expired(self) -> bool:
        """Whether the message's expiry has passed (on the monotonic clock)."""
        deadline = self._deadline
        return deadline is not None and _monotonic() >= deadline

    def is_dropped(self) -> bool:
        """Whether the message was dropped, for any subscriber, before delivery.

        A message is dropped when it expired before a handler could run, or
        was droppable and the hub stopped. The copies handed to handlers
        share this flag with the message ``send`` returned.
        """
        origin = self._origin
        return (origin or self)._dropped

    def _drop(self) -> None:
        (self._origin or self)._dropped = True

    def _copy(self) -> Message:
        """The copy one handler call receives: its own ``data`` dict."""
        copy = Message(
            self.topic,
            self.data.copy(),
            self._seq,
            self._hub_id,
            self.time,
            self.expiry,
            self._deadline,
            self.local,
            self.droppable,
        )
        copy._origin = self._origin or self
        return copy

    def __repr__(self) -> str:
        return f"<Message {self.id} topic={self.topic!r} data={self.data!r}>"
