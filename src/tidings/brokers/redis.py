"""The Redis Streams broker: one stream carries every message of a namespace.

Chosen by ``CHANNEL_BROKER_URL='redis://host:port/db'`` (also ``rediss://``
for TLS and ``unix://`` for a socket); needs ``pip install tidings[redis]``.

Every process that uses the same Redis and ``CHANNEL_NAMESPACE`` shares one
channel space. A message that is not ``local`` is appended to the stream
``<namespace>:stream`` and delivered, in every process (the sender's own
included), when it is read back, so all processes see the same total order:
the stream's.

Three threads per hub do the work:

- the broker thread(s) (``RedisBroker.run``) route local messages at once
  and hand the others to the writer;
- the **writer** packs waiting messages into entries (up to 500 messages
  each) and appends them with ``XADD``. When the connection fails it
  reconnects with jittered backoff and appends the same entry again; a
  reply lost with the connection can make that a duplicate, which readers
  drop by the publisher's sequence numbers. While Redis is unreachable,
  messages wait in order; once ``CHANNEL_SEND_BUFFER`` of them wait,
  ``send()`` raises :class:`~tidings.BrokerUnavailableError`;
- the **reader** reads the stream with ``XREAD BLOCK`` on a connection of
  its own, resuming after the last entry it saw when it reconnects. It
  drops and counts entries that are not tidings entries (or not signed with
  ``CHANNEL_BROKER_SECRET``), and reports a gap (the stream trimmed past its
  position, reset, or a publisher's numbers missing) on the local topic
  ``tidings.channels.gap``, in the log and in ``hub.stats()``.

Local topics ``tidings.channels.disconnected`` and
``tidings.channels.reconnected`` announce the connection's state, so that
applications can resynchronise.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from tidings._exceptions import BrokerUnavailableError
from tidings._message import Message
from tidings._settings import redact_url
from tidings._subscription import JoinToken
from tidings._workers import MessageBroker

from ._base import Deduplicator

if TYPE_CHECKING:
    from tidings._hub import Hub

# redis-py's reply types are unions of every shape a reply can take; this
# module knows which shape each call returns (RESP2, bytes).
Redis = Any

__all__ = ["DISCONNECTED_TOPIC", "GAP_TOPIC", "RECONNECTED_TOPIC", "RedisBroker"]

logger = logging.getLogger("tidings.redis")

GAP_TOPIC = "tidings.channels.gap"
DISCONNECTED_TOPIC = "tidings.channels.disconnected"
RECONNECTED_TOPIC = "tidings.channels.reconnected"

ENTRY_MESSAGES = 500  # at most this many messages in one stream entry
ENTRY_BYTES = 1 << 20  # and about this many bytes (a single larger message goes alone)
READ_COUNT = 200  # entries per XREAD
BLOCK_MS = 300  # XREAD BLOCK: well under the socket timeout, and how long stop() may wait
SOCKET_TIMEOUT = 10.0
CHECK_EVERY = 5.0  # seconds between checks for a trimmed or reset stream
HEARTBEAT_EVERY = 2.0  # seconds between reader heartbeats (for `tidings stats`)


def _import_redis() -> Any:
    try:
        import redis
    except ImportError:
        raise ImportError("the Redis broker needs redis-py: pip install 'tidings[redis]'") from None
    return redis


def connect(url: str, name: str) -> Redis:
    """A single-connection client with no automatic retries (tidings retries itself)."""
    redis = _import_redis()
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=5.0,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        single_connection_client=True,
        client_name=name,
        protocol=2,
        health_check_interval=0,
    )
    client.ping()
    return client


def _parse_id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class _Backoff:
    """Jittered exponential backoff: 50 ms doubling up to 2 s."""

    def __init__(self) -> None:
        self.delay = 0.05

    def reset(self) -> None:
        self.delay = 0.05

    def next(self) -> float:
        delay = self.delay * random.uniform(0.5, 1.5)
        self.delay = min(self.delay * 2, 2.0)
        return delay


class RedisLink:
    """The connection of one hub to Redis: a writer and a reader thread."""

    def __init__(self, hub: Hub, resume: bytes | None = None) -> None:
        settings = hub.settings
        assert settings.CHANNEL_BROKER_URL is not None
        assert hub._codec is not None
        _import_redis()  # fail at start, with the install hint, not in a thread
        self.hub = hub
        self.url = settings.CHANNEL_BROKER_URL
        self.namespace = settings.CHANNEL_NAMESPACE
        self.stream = f"{self.namespace}:stream"
        self.readers_key = f"{self.namespace}:readers"
        # A random token naming the stream's life: a Redis that restarted
        # without persistence (or a FLUSHALL) loses it, and whoever writes
        # first sets a new one, so readers can tell a reset stream apart.
        self.epoch_key = f"{self.namespace}:epoch"
        self._epoch: bytes | None = None
        self.maxlen = settings.CHANNEL_STREAM_MAXLEN
        self.buffer_limit = settings.CHANNEL_SEND_BUFFER
        self.codec = hub._codec
        self.publisher = os.urandom(8).hex()
        self.reader_name = f"{socket.gethostname()}:{os.getpid()}:{self.publisher[:8]}"
        self._outbox: deque[Message | JoinToken] = deque()
        self._outbox_ready = threading.Condition(threading.Lock())
        self._next_seq = 1
        self._tokens: deque[tuple[tuple[int, int] | None, JoinToken]] = deque()
        self._tokens_lock = threading.Lock()
        # Entries this hub appended, by first sequence number, until the
        # reader reads them back: it delivers these messages instead of
        # decoding its own JSON again.
        self._inflight: dict[int, list[Message]] = {}
        self._read_position: tuple[int, int] | None = None
        self.position: bytes | None = resume  # of the last entry read (or where to start)
        self._last_id: tuple[int, int] | None = None  # of the newest entry appended
        self._writing = False  # the writer holds messages taken from the outbox
        self._started = time.time()
        self._base = 0  # entries the stream held up to the reader's first position
        self._entries_read = 0
        self._stopping = threading.Event()
        # The writer appends nothing before the reader knows where to start
        # reading: else the reader could start after our own first entry.
        self._reader_placed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._connected: dict[str, bool | None] = {"writer": None, "reader": None}
        self._counters = dict.fromkeys(
            ("published", "received", "duplicates", "rejected", "gaps", "lost", "reconnects"), 0
        )
        self._delivery_counters: dict[str, int] = {"dropped_unsubscribed": 0}
        self._lag = 0

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        self._started = time.time()
        for role, target in (("writer", self._write_loop), ("reader", self._read_loop)):
            thread = threading.Thread(target=self._supervise, args=(role, target), name=f"tidings-{role}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._outbox_ready:
            self._outbox_ready.notify_all()
        for thread in self._threads:
            thread.join(SOCKET_TIMEOUT + 2)
        # What never reached Redis (the hub gave up draining) is dropped, counted.
        dropped = 0
        while self._outbox:
            item = self._outbox.popleft()
            if isinstance(item, Message):
                item._drop()
                dropped += 1
            else:
                item.done()
        with self._tokens_lock:
            while self._tokens:
                self._tokens.popleft()[1].done()
        if dropped:
            logger.error("%d messages were never sent to %s: the hub stopped first", dropped, redact_url(self.url))
            self.hub._shutdown_drops += dropped

    def _supervise(self, role: str, loop: Any) -> None:
        # A thread that dies is a listener nobody notices: restart the loop.
        while not self._stopping.is_set():
            try:
                loop()
            except BaseException:
                logger.exception("the Redis %s crashed; restarting it", role)
                self._stopping.wait(1.0)

    # -- what the broker thread hands over ----------------------------------

    def idle(self) -> bool:
        """Whether everything handed to the link was appended and read back."""
        last = self._last_id
        position = self._read_position
        return not self._outbox and not self._writing and (last is None or (position is not None and position >= last))

    def enqueue(self, items: list[Message | JoinToken]) -> None:
        self._outbox.extend(items)
        # Bounded while Redis is unreachable; while connected, the backlog
        # is what the writer has yet to append, and it drains.
        if len(self._outbox) >= self.buffer_limit and not self._connected["writer"]:
            self.hub._refusing = True
        with self._outbox_ready:
            self._outbox_ready.notify()

    def refuse(self) -> None:
        raise BrokerUnavailableError(len(self._outbox), self.buffer_limit)

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "broker_connected": all(self._connected.values()),
            "broker_buffered": sum(1 for item in list(self._outbox) if isinstance(item, Message)),
            "broker_lag": self._lag,
        }
        stats.update((f"broker_{key}", value) for key, value in self._counters.items())
        return stats

    # -- connection state --------------------------------------------------

    def _announce(self, role: str, up: bool, error: BaseException | None = None) -> None:
        before = self._connected[role]
        if before == up:
            return
        self._connected[role] = up
        if up and before is None:
            return  # the first connection: nothing to announce
        topic = RECONNECTED_TOPIC if up else DISCONNECTED_TOPIC
        data: dict[str, Any] = {"role": role, "broker": redact_url(self.url)}
        if error is not None:
            data["error"] = f"{type(error).__name__}: {error}"
            what = "cannot open" if before is None else "lost"
            logger.warning("%s the Redis %s connection to %s: %s (retrying)", what, role, redact_url(self.url), error)
        else:
            self._counters["reconnects"] += 1
            logger.info("the Redis %s connection to %s is back", role, redact_url(self.url))
        self._local(topic, data)

    def _local(self, topic: str, data: dict[str, Any]) -> None:
        try:
            self.hub._publish(topic, data, None, True, False)
        except Exception:  # the hub is stopping: nobody is left to tell
            pass

    def _connect(self, role: str, backoff: _Backoff) -> Redis | None:
        redis = _import_redis()
        while not self._stopping.is_set():
            try:
                return connect(self.url, f"tidings-{role}-{self.publisher[:8]}")
            except redis.RedisError as exc:
                self._announce(role, False, exc)
                self._stopping.wait(backoff.next())
        return None

    # -- the writer --------------------------------------------------------

    def _take(self) -> tuple[list[Message], list[JoinToken]]:
        """The next entry's messages and the join tokens right behind them."""
        outbox = self._outbox
        with self._outbox_ready:
            while not outbox and not self._stopping.is_set():
                self._outbox_ready.wait(1.0)
        messages: list[Message] = []
        tokens: list[JoinToken] = []
        size = 0
        while outbox:
            item = outbox[0]
            if isinstance(item, Message):
                if tokens or len(messages) >= ENTRY_MESSAGES or (messages and size + len(item._wire) > ENTRY_BYTES):
                    break
                size += len(item._wire)
                messages.append(item)
            else:
                tokens.append(item)
            outbox.popleft()
        return messages, tokens

    def _write_loop(self) -> None:
        redis = _import_redis()
        backoff = _Backoff()
        client: Redis | None = self._connect("writer", backoff)
        if client is not None:
            self._announce("writer", True)
        last_id: tuple[int, int] | None = None
        while not self._stopping.is_set():
            self._writing = True
            messages, tokens = self._take()
            if messages:
                while not self._reader_placed.wait(0.5):
                    if self._stopping.is_set():
                        self._outbox.extendleft(reversed([*messages, *tokens]))
                        return
                entry = self.codec.pack(self.publisher, self._next_seq, [m._wire for m in messages])
                inflight = self._inflight
                if len(inflight) > 10_000:  # never read back (trimmed?): forget the oldest
                    del inflight[min(inflight)]
                inflight[self._next_seq] = messages
                while True:
                    if client is None:
                        client = self._connect("writer", backoff)
                        if client is None:  # stopping: stop() drops what is left
                            self._outbox.extendleft(reversed([*messages, *tokens]))
                            return
                        self._announce("writer", True)
                        try:
                            client.set(self.epoch_key, os.urandom(8).hex(), nx=True)
                        except redis.RedisError:
                            pass  # the XADD below fails too, and is retried
                    try:
                        entry_id = client.xadd(self.stream, entry, maxlen=self.maxlen, approximate=True)
                        break
                    except redis.RedisError as exc:
                        # The entry may or may not have been appended: send
                        # it again; readers drop a duplicate by its numbers.
                        client.close()
                        client = None
                        self._announce("writer", False, exc)
                        self._stopping.wait(backoff.next())
                backoff.reset()
                self._next_seq += len(messages)
                self._counters["published"] += len(messages)
                last_id = self._last_id = _parse_id(entry_id)
                self.hub._refusing = False  # connected again: the backlog drains
            self._writing = False
            if tokens:
                # join(): done once the reader has read back what was sent
                # before it (or at once if nothing was ever sent).
                with self._tokens_lock:
                    self._tokens.extend((last_id, token) for token in tokens)
                position = self._read_position
                if last_id is None or (position is not None and position >= last_id):
                    self._release_tokens(position)
        if client is not None:
            client.close()

    # -- the reader --------------------------------------------------------

    def _start_position(self, client: Redis) -> bytes:
        """Where reading starts: at the moment the hub started, on Redis's clock.

        Connecting may take a while (or Redis may be down when the hub
        starts); entries appended since the start are read all the same.
        Entry ids are Redis-clock milliseconds, so the start time is moved
        onto that clock by the difference between TIME and ours.
        """
        seconds, micros = client.time()
        skew = seconds + micros / 1e6 - time.time()
        start_ms = int((self._started + skew) * 1000)
        newest = client.xrevrange(self.stream, count=1)
        if not newest:
            return f"{start_ms}-0".encode() if start_ms > 0 else b"0-0"
        newest_id: bytes = newest[0][0]
        if _parse_id(newest_id) < (start_ms, 0):
            return newest_id
        return f"{start_ms}-0".encode()

    def _stream_info(self, client: Redis) -> dict[str, Any] | None:
        redis = _import_redis()
        try:
            info = client.xinfo_stream(self.stream)
        except redis.ResponseError:  # no such key
            return None
        return {(k.decode() if isinstance(k, bytes) else k): v for k, v in info.items()}

    def _place(self, client: Redis, position: bytes) -> None:
        """Remember how many entries the stream had up to ``position``.

        With the count of entries read since, that tells exactly how many
        unread entries a trim removed (Redis 7.0 does not record it).
        """
        client.set(self.epoch_key, os.urandom(8).hex(), nx=True)
        self._epoch = client.get(self.epoch_key)
        info = self._stream_info(client)
        if info is None:
            self._base = 0
        else:
            after = len(client.xrange(self.stream, min=b"(" + position, max=b"+", count=100_000))
            self._base = int(info.get("entries-added", 0)) - after
        self._entries_read = 0

    def _check_stream(self, client: Redis, position: bytes) -> bytes:
        """Detect a stream that was reset, or trimmed past ``position``."""
        client.set(self.epoch_key, os.urandom(8).hex(), nx=True)
        epoch = client.get(self.epoch_key)
        if epoch != self._epoch:
            self._epoch = epoch
            self._gap("reset", "the stream was reset (Redis restarted without persistence, or was flushed)")
            self._base = self._entries_read = 0
            return b"0-0"
        info = self._stream_info(client)
        if info is None:
            if self._base or self._entries_read:
                self._gap(
                    "reset", "the stream no longer exists (Redis restarted without persistence, or it was deleted)"
                )
                self._base = self._entries_read = 0
                return b"0-0"
            return position  # never had entries: nothing to lose
        last = info.get("last-generated-id")
        if last is not None and _parse_id(last) < _parse_id(position):
            self._gap("reset", "the stream was recreated: its newest entry is older than the last one read")
            self._base = self._entries_read = 0
            return b"0-0"
        first = info.get("first-entry")
        if first and _parse_id(first[0]) > _parse_id(position):
            # Every entry left is unread; any other unread one was trimmed.
            unread = int(info.get("entries-added", 0)) - self._base - self._entries_read
            lost = unread - int(info.get("length", 0))
            if lost > 0:
                self._base += lost
                self._gap("trimmed", f"the stream was trimmed past this reader: {lost} unread entries removed")
        return position

    def _gap(self, reason: str, detail: str, missing: int | None = None) -> None:
        self._counters["gaps"] += 1
        if missing:
            self._counters["lost"] += missing
        logger.error(
            "gap in %s: %s (%s)", self.stream, detail, "messages lost" if missing is None else f"{missing} lost"
        )
        self._local(GAP_TOPIC, {"reason": reason, "detail": detail, "missing": missing, "stream": self.stream})

    def _read_loop(self) -> None:
        redis = _import_redis()
        backoff = _Backoff()
        dedup = Deduplicator()
        position: bytes | None = self.position
        placed = False
        client: Redis | None = None
        checked = heartbeat = 0.0
        while not self._stopping.is_set():
            if client is None:
                client = self._connect("reader", backoff)
                if client is None:
                    return
                try:
                    if position is None or not placed:
                        if position is None:
                            position = self._start_position(client)
                        self._place(client, position)
                        placed = True
                    else:
                        position = self._check_stream(client, position)
                except redis.RedisError as exc:
                    client.close()
                    client = None
                    self._announce("reader", False, exc)
                    continue
                self._announce("reader", True)
                self._reader_placed.set()
                backoff.reset()
            assert position is not None
            try:
                reply = client.xread({self.stream: position}, count=READ_COUNT, block=BLOCK_MS)
                now = time.monotonic()
                if now - heartbeat > HEARTBEAT_EVERY:
                    heartbeat = now
                    self._heartbeat(client, position)
                if now - checked > CHECK_EVERY:
                    checked = now
                    position = self._check_stream(client, position)
            except redis.RedisError as exc:
                client.close()
                client = None
                self._announce("reader", False, exc)
                self._stopping.wait(backoff.next())
                continue
            entries = reply[0][1] if reply else []
            if entries:
                self._entries_read += len(entries)
                position = self.position = entries[-1][0]
                self._deliver(entries, dedup)
                self._read_position = _parse_id(position)
            lost = dedup.overdue()
            if lost:
                self._gap("sequence", "messages of a publisher never arrived", lost)
            self._release_tokens(_parse_id(position))
        if client is not None:
            try:
                client.hdel(self.readers_key, self.reader_name)  # no longer reading
            except redis.RedisError:
                pass
            client.close()

    def _deliver(self, entries: list[Any], dedup: Deduplicator) -> None:
        batch: list[Message] = []
        counters = self._counters
        own = self.publisher
        inflight = self._inflight
        for entry_id, fields in entries:
            try:
                publisher, first, count, body = self.codec.unpack_header(fields)
                messages = inflight.pop(first, None) if publisher == own else None
                if messages is None or len(messages) != count:
                    messages = self.codec.decode_body(body, count)
            except Exception as exc:  # BadEntry, or anything a hostile entry provokes
                counters["rejected"] += 1
                logger.warning("dropped stream entry %r of %s: %s", entry_id, self.stream, exc)
                continue
            fresh, missing = dedup.admit(publisher, first, len(messages))
            counters["duplicates"] += len(messages) - len(fresh)
            counters["received"] += len(fresh)
            if missing:
                self._gap("sequence", f"publisher {publisher} skipped messages", missing)
            batch.extend(messages[i] for i in fresh)
        if batch:
            hub = self.hub
            with hub._broker_lock:
                hub._route(batch, self._delivery_counters, own=hub._token)

    def _release_tokens(self, position: tuple[int, int] | None) -> None:
        ready: list[JoinToken] = []
        with self._tokens_lock:
            while self._tokens and (
                self._tokens[0][0] is None or (position is not None and self._tokens[0][0] <= position)
            ):
                ready.append(self._tokens.popleft()[1])
        if ready:
            hub = self.hub
            with hub._broker_lock:
                for token in ready:
                    hub._place_join_token(token)

    def _heartbeat(self, client: Redis, position: bytes) -> None:
        info = {"position": position.decode(), "time": time.time(), "pid": os.getpid(), "host": socket.gethostname()}
        client.hset(self.readers_key, self.reader_name, json.dumps(info))
        client.expire(self.readers_key, 3600)
        newest = client.xrevrange(self.stream, count=1)
        if newest:
            self._lag = len(client.xrange(self.stream, min=b"(" + position, max=b"+", count=10_000))


class RedisBroker(MessageBroker):
    """Routes local messages in-process and carries the others through Redis.

    See the module documentation. Configure with
    ``Settings(CHANNEL_BROKER_URL="redis://127.0.0.1:6379/0")``.
    """

    def on_start(self) -> None:
        hub = self.hub
        if hub._codec is None:
            raise BrokerUnavailableError(0, 0) from None  # pragma: no cover - needs CHANNEL_BROKER_URL
        if hub._network is None:
            hub._network = RedisLink(hub, resume=getattr(hub, "_network_resume", None))
            hub._network.start()

    def on_stop(self) -> None:
        link = self.hub._network
        if link is not None and not link._stopping.is_set():
            link.stop()

    def run(self) -> None:
        hub = self.hub
        link: RedisLink = hub._network
        local: list[Message] = []
        outgoing: list[Message | JoinToken] = []
        for item in self._take_items():
            if isinstance(item, Message):
                if item._meta[4]:  # local
                    local.append(item)
                else:
                    outgoing.append(item)
                continue
            function, argument = item
            if function == hub._place_join_token and (outgoing or not link.idle()):
                # join() waits for the messages before it to come back from
                # Redis, behind them in the outbox; with none outstanding
                # it needs no Redis at all (and is placed below).
                outgoing.append(argument)
                continue
            if local:
                hub._route(local, self._counters)
                local = []
            function(argument)
        if local:
            hub._route(local, self._counters)
        if outgoing:
            link.enqueue(outgoing)
