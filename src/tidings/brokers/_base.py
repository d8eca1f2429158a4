"""What every network broker shares: wire format, signing, de-duplication.

An **entry** carries a batch of messages from one publisher (one hub in one
process) as a few fields:

====  =====================================================================
``v``  format version (``1``)
``p``  publisher id: random, new for each hub (and after a fork)
``s``  sequence number of the batch's first message (per publisher, from 1)
``n``  number of messages in the batch
``b``  JSON array of messages: ``[topic, data, hub token, hub seq, time,
       expiry (ISO 8601 UTC) or null, droppable]``
``h``  HMAC-SHA256 of the other fields, hex (only with a secret)
====  =====================================================================

Publishers number their messages; readers keep, per publisher, the highest
number delivered (the watermark) and the few numbers seen above it, so a
batch written twice (a retry after a lost reply) is delivered once, and a
hole that stays open is reported as a gap.

Data must be JSON as the standard library writes and reads it without
change: ``dict`` with ``str`` keys, ``list``, ``str``, ``int``, finite
``float``, ``bool`` and ``None``. Tuples (which would come back as lists),
non-string keys (which would come back as strings), NaN and everything else
are refused by ``send()`` with a ``TypeError`` or ``ValueError``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from datetime import UTC, datetime
from typing import Any

from tidings._message import Message
from tidings._topics import check_topic

__all__ = ["BadEntry", "Codec", "Deduplicator"]

FORMAT = b"1"
_monotonic = time.monotonic
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


class BadEntry(ValueError):
    """An entry that is not a well-formed, correctly signed tidings entry."""


def _refuse_constant(name: str) -> object:
    # json.loads accepts NaN and Infinity, which send() never writes.
    raise BadEntry(f"{name} is not JSON")


def _check_json(value: object, path: str, depth: int = 0) -> None:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise ValueError(f"{path} is {value!r}; JSON has no NaN or infinity")
        return
    if depth > 100:
        raise ValueError(f"{path} is nested more than 100 levels deep")
    if kind is dict:
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                raise TypeError(f"{path} has the key {key!r}; JSON keys are strings (it would arrive as {str(key)!r})")
            _check_json(item, f"{path}[{key!r}]", depth + 1)
        return
    if kind is list:
        for index, item in enumerate(value):  # type: ignore[arg-type]
            _check_json(item, f"{path}[{index}]", depth + 1)
        return
    if kind is tuple:
        raise TypeError(f"{path} is a tuple, which would arrive as a list; send a list")
    raise TypeError(f"{path} is a {kind.__name__}, which cannot cross the network as JSON")


class Codec:
    """Encodes messages at ``send()`` and packs/unpacks entries."""

    def __init__(self, max_bytes: int, secret: str | None) -> None:
        self.max_bytes = max_bytes
        self._key = None if secret is None else secret.encode()

    # -- one message -------------------------------------------------------

    def encode_message(self, message: Message) -> bytes:
        """The message's JSON; raises TypeError/ValueError for bad data (in send())."""
        data = message.data
        _check_json(data, "data")
        seq, token, sent, expiry, _local, droppable = message._meta
        expiry_text = None if expiry is None else expiry.isoformat()
        encoded = _dumps([message.topic, data, token, seq, sent, expiry_text, droppable]).encode()
        if len(encoded) > self.max_bytes:
            raise ValueError(
                f"the message on {message.topic!r} is {len(encoded)} bytes encoded; "
                f"CHANNEL_MAX_MESSAGE_BYTES is {self.max_bytes}"
            )
        return encoded

    # -- entries -----------------------------------------------------------

    def _sign(self, fields: list[bytes]) -> bytes:
        assert self._key is not None
        return hmac.new(self._key, b"\x00".join(fields), hashlib.sha256).hexdigest().encode()

    def pack(self, publisher: str, first: int, bodies: list[bytes]) -> dict[bytes, bytes]:
        """The fields of one entry holding ``bodies`` (encoded messages)."""
        fields = [
            FORMAT,
            publisher.encode(),
            str(first).encode(),
            str(len(bodies)).encode(),
            b"[" + b",".join(bodies) + b"]",
        ]
        entry = dict(zip((b"v", b"p", b"s", b"n", b"b"), fields, strict=True))
        if self._key is not None:
            entry[b"h"] = self._sign(fields)
        return entry

    def unpack_header(self, entry: dict[bytes, bytes]) -> tuple[str, int, int, bytes]:
        """(publisher, first sequence number, count, body), the signature checked.

        Cheap: the body is not parsed, so a reader can recognise its own
        entries and reuse the messages it sent instead of decoding them.
        """
        try:
            fields = [entry[b"v"], entry[b"p"], entry[b"s"], entry[b"n"], entry[b"b"]]
        except (KeyError, TypeError):
            raise BadEntry(f"missing fields (has {sorted(entry)[:8]!r})") from None
        if not all(isinstance(field, bytes) for field in fields):
            raise BadEntry("fields are not bytes")
        if fields[0] != FORMAT:
            raise BadEntry(f"unknown format {fields[0][:20]!r}")
        if self._key is not None:
            signature = entry.get(b"h")
            if not isinstance(signature, bytes) or not hmac.compare_digest(signature, self._sign(fields)):
                raise BadEntry("unsigned or wrongly signed")
        try:
            publisher = fields[1].decode()
            first = int(fields[2])
            count = int(fields[3])
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadEntry(f"unreadable header ({exc})") from None
        if not publisher or first < 1 or count < 1:
            raise BadEntry("inconsistent header")
        return publisher, first, count, fields[4]

    def decode_body(self, body: bytes, count: int) -> list[Message]:
        """The messages of an entry's body; BadEntry if anything is off."""
        try:
            raw = json.loads(body, parse_constant=_refuse_constant)
            if not isinstance(raw, list) or len(raw) != count:
                raise BadEntry("the body does not hold the number of messages the header says")
            return [self._message(item) for item in raw]
        except BadEntry:
            raise
        except (ValueError, RecursionError, OverflowError, TypeError) as exc:
            # Hostile input: nesting deep enough to exhaust the stack, numbers
            # too large for a float, ... all of it is only a bad entry.
            raise BadEntry(f"unreadable body ({type(exc).__name__}: {str(exc)[:200]})") from None

    def unpack(self, entry: dict[bytes, bytes]) -> tuple[str, int, list[Message]]:
        """(publisher, first sequence number, messages); BadEntry if anything is off."""
        publisher, first, count, body = self.unpack_header(entry)
        return publisher, first, self.decode_body(body, count)

    def _message(self, item: Any) -> Message:
        if not isinstance(item, list) or len(item) != 7:
            raise BadEntry("a message is not a 7-item array")
        topic, data, token, seq, sent, expiry_text, droppable = item
        try:
            check_topic(topic)
        except (TypeError, ValueError) as exc:
            raise BadEntry(f"bad topic: {exc}") from None
        if (
            type(data) is not dict
            or type(token) is not str
            or type(seq) is not int
            or type(sent) not in (int, float)
            or type(droppable) is not bool
        ):
            raise BadEntry("a message field has the wrong type")
        deadline = expiry = None
        if expiry_text is not None:
            try:
                expiry = datetime.fromisoformat(expiry_text)
            except (TypeError, ValueError):
                raise BadEntry("bad expiry") from None
            if expiry.tzinfo is None:
                raise BadEntry("expiry without a time zone")
            deadline = _monotonic() + (expiry - datetime.now(UTC)).total_seconds()
        return Message(topic, data, deadline, (seq, token, float(sent), expiry, False, droppable))


class Deduplicator:
    """Per publisher: which sequence numbers were delivered; what went missing.

    ``admit`` returns the indexes (within the batch) of the messages to
    deliver, and the number of messages found missing, if a hole has been
    open for longer than ``patience`` seconds.
    """

    def __init__(self, patience: float = 2.0) -> None:
        self.patience = patience
        # publisher -> [watermark, numbers seen above it, when the hole opened]
        self._state: dict[str, list[Any]] = {}

    def admit(self, publisher: str, first: int, count: int) -> tuple[list[int], int]:
        state = self._state.get(publisher)
        if state is None:
            # A publisher first seen: its earlier messages predate this reader.
            self._state[publisher] = [first + count - 1, set(), None]
            return list(range(count)), 0
        watermark, above, _opened = state
        fresh = [i for i in range(count) if first + i > watermark and first + i not in above]
        for i in fresh:
            above.add(first + i)
        missing = self._advance(state)
        return fresh, missing

    def _advance(self, state: list[Any]) -> int:
        watermark, above, opened = state
        while watermark + 1 in above:
            watermark += 1
            above.discard(watermark)
        missing = 0
        if above:
            now = _monotonic()
            if opened is None:
                opened = now
            elif now - opened > self.patience:
                # The hole stayed open: those messages are gone (trimmed,
                # or lost with a Redis that restarted without persistence).
                lowest = min(above)
                missing = lowest - watermark - 1
                watermark = lowest
                above.discard(lowest)
                while watermark + 1 in above:
                    watermark += 1
                    above.discard(watermark)
                opened = now if above else None
        else:
            opened = None
        state[0], state[2] = watermark, opened
        return missing

    def overdue(self) -> int:
        """Declare holes that stayed open too long; the number of messages lost."""
        return sum(self._advance(state) for state in self._state.values() if state[1])

    def forget(self) -> None:
        self._state.clear()
