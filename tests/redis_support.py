"""Fixtures and helpers for the tests of the Redis Streams broker.

Test modules load the fixtures with ``pytest_plugins = ["redis_support"]``.

- ``redis_url``: the shared Redis (``$TEST_REDIS_URL``, default
  ``redis://127.0.0.1:6379/0``), checked with a PING. When it is missing the
  test fails if ``$CI`` is set and is skipped otherwise; the same holds for
  ``redis-server`` and redis-py.
- ``namespace``: a fresh ``CHANNEL_NAMESPACE`` per test; its keys on the
  shared Redis are deleted at the end of the session.
- ``redis_servers``: starts private ``redis-server`` processes (for tests
  that stop, restart or password-protect the server); all are stopped
  afterwards.
- ``make_redis_hub``: builds started hubs on a broker URL and stops them
  all, in parallel, afterwards (a Redis hub's ``stop()`` takes a round trip
  through Redis and the reader's ``XREAD BLOCK``).

Waits are bounded by ``support.TIMEOUT`` (or a multiple for the big runs)
and end as soon as their condition holds.

PYTEST_DONT_REWRITE: test modules both import helpers from this module and
load it as a plugin; pytest cannot rewrite the asserts of a module that is
already imported (and warns, which this suite turns into an error), so it is
told not to try. Its asserts carry their own messages.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

import tidings
from support import TIMEOUT, WORKER_TIMEOUT, Recorder
from tidings import Channel, Hub, Message, Settings

SHARED_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

# The internal topics of the Redis broker (tidings.brokers.redis imports
# redis-py, so tests that must run without it cannot import them from there).
GAP_TOPIC = "tidings.channels.gap"
DISCONNECTED_TOPIC = "tidings.channels.disconnected"
RECONNECTED_TOPIC = "tidings.channels.reconnected"

# make_redis_hub(url, *, start=True, placed=True, **settings) -> Hub
RedisHubFactory = Callable[..., Hub]

_namespaces_used: list[str] = []


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it when running in CI (where Redis must be there)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the Redis tests must run)", pytrace=False)
    pytest.skip(reason)


def need_redis_py() -> Any:
    try:
        import redis
    except ImportError:
        unavailable("redis-py is not installed: pip install 'tidings[redis]'")
    return redis


def wait_until(predicate: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``predicate`` until it is true; fail, naming ``what``, after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child interpreter that imports this tidings."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("TIDINGS_")}
    source = os.path.dirname(os.path.dirname(os.path.abspath(tidings.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


# -- raw access to Redis, typed ------------------------------------------------


class RawRedis:
    """A plain redis-py client for what tests do behind tidings' back.

    redis-py's return types are unions of every reply shape (and of
    awaitables); these wrappers state the shape each call returns here.
    """

    def __init__(self, url: str) -> None:
        redis = need_redis_py()
        self.client: Any = redis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)

    def close(self) -> None:
        self.client.close()

    def ping(self) -> bool:
        return bool(self.client.ping())

    def xlen(self, stream: str) -> int:
        return int(self.client.xlen(stream))

    def xadd(self, stream: str, fields: dict[bytes, bytes], maxlen: int | None = None) -> bytes:
        entry_id: bytes = self.client.xadd(stream, fields, maxlen=maxlen, approximate=True)
        return entry_id

    def xrange(self, stream: str, count: int | None = None) -> list[tuple[bytes, dict[bytes, bytes]]]:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = self.client.xrange(stream, count=count)
        return entries

    def tidings_clients(self) -> list[tuple[str, str]]:
        """(id, name) of every connection tidings opened (named tidings-reader-/tidings-writer-)."""
        clients: list[dict[str, str]] = self.client.client_list()
        return [
            (c["id"], c["name"]) for c in clients if c.get("name", "").startswith(("tidings-reader", "tidings-writer"))
        ]

    def kill_tidings_clients(self, role: str) -> int:
        """CLIENT KILL every tidings ``role`` ("reader" or "writer") connection; how many."""
        killed = 0
        for client_id, name in self.tidings_clients():
            if name.startswith(f"tidings-{role}-"):
                killed += int(self.client.client_kill_filter(_id=client_id))
        return killed

    def delete_namespace(self, namespace: str) -> None:
        keys = list(self.client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            self.client.delete(*keys)


# -- private redis-server processes -------------------------------------------


class RedisServer:
    """A redis-server of the test's own, on a free port, in a directory of its own."""

    def __init__(self, binary: str, directory: Path, *, appendonly: bool, password: str | None) -> None:
        self.binary = binary
        self.directory = directory
        self.appendonly = appendonly
        self.password = password
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, *, appendonly: bool | None = None) -> None:
        """Start (again) on the same port and directory."""
        assert self.process is None, "already running"
        if appendonly is not None:
            self.appendonly = appendonly
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--dir", str(self.directory),
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        if self.password:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        redis = need_redis_py()
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                client = redis.Redis.from_url(self.url, socket_connect_timeout=1.0, socket_timeout=1.0)
                try:
                    # Loading an AOF answers -LOADING until done: wait for a real PONG.
                    if client.ping():
                        return
                finally:
                    client.close()
            except redis.RedisError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise AssertionError(f"redis-server on port {self.port} did not start:\n{log}")
            time.sleep(0.01)

    def stop(self) -> None:
        """Shut down cleanly (SIGTERM: an append-only file is flushed first)."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(TIMEOUT)

    def raw(self) -> RawRedis:
        return RawRedis(self.url)


# -- a TCP proxy that injects faults ---------------------------------------------


class FaultyProxy:
    """A TCP proxy in front of a Redis server that can break things on purpose.

    - ``swallow_reply_to(b"XADD")``: the next command containing those bytes
      reaches Redis (and is executed), but its reply is thrown away and the
      connection closed: the client cannot tell whether it worked.
    - ``block()`` / ``unblock()``: close every connection and refuse new
      ones (closed at once) until unblocked: Redis is unreachable for the
      clients behind the proxy only.

    ``refused`` counts the connections it could not pass on (blocked, or
    the server down): the clients' reconnection attempts.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._blocked = False
        self._closed = False
        self._swallow: bytes | None = None
        self.swallowed = threading.Event()
        self.refused = 0
        self._thread = threading.Thread(target=self._accept, name="faulty-proxy", daemon=True)
        self._thread.start()

    def url(self, password: str | None = None) -> str:
        auth = f":{password}@" if password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def swallow_reply_to(self, command: bytes) -> None:
        with self._lock:
            self._swallow = command
            self.swallowed.clear()

    def block(self) -> None:
        with self._lock:
            self._blocked = True
            doomed = list(self._sockets)
        for sock in doomed:
            self._shut(sock)

    def unblock(self) -> None:
        with self._lock:
            self._blocked = False

    def close(self) -> None:
        self._closed = True
        self.block()
        # close() alone does not wake a thread blocked in accept() on Linux.
        self._shut(self._listener)
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "the proxy's accept thread did not end"

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                blocked = self._blocked
            if blocked:
                self.refused += 1
                self._shut(client)
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=TIMEOUT)
            except OSError:
                self.refused += 1
                self._shut(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets.update((client, server))
            state = {"swallow": False}
            threading.Thread(target=self._upstream, args=(client, server, state), daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client, state), daemon=True).start()

    def _upstream(self, client: socket.socket, server: socket.socket, state: dict[str, bool]) -> None:
        try:
            while data := client.recv(65536):
                with self._lock:
                    if self._swallow is not None and self._swallow in data:
                        self._swallow = None
                        state["swallow"] = True  # before Redis can answer
                server.sendall(data)
        except OSError:
            pass
        finally:
            self._forget(client, server)

    def _downstream(self, server: socket.socket, client: socket.socket, state: dict[str, bool]) -> None:
        try:
            while data := server.recv(65536):
                if state["swallow"]:
                    self.swallowed.set()
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            self._forget(client, server)

    def _forget(self, *socks: socket.socket) -> None:
        with self._lock:
            self._sockets.difference_update(socks)
        for sock in socks:
            self._shut(sock)


# -- helpers on hubs ---------------------------------------------------------------


def internal(recorder_messages: list[Message], topic: str, role: str | None = None) -> list[dict[str, Any]]:
    """The data of the internal messages on ``topic`` (for ``role``, if given)."""
    return [m.data for m in recorder_messages if m.topic == topic and (role is None or m.data.get("role") == role)]


def announced(recorder: Recorder, topic: str, role: str | None = None) -> Callable[[], bool]:
    """A wait_until() predicate: ``recorder`` got an internal message on ``topic`` (for ``role``)."""
    return lambda: bool(internal(recorder.messages, topic, role))


def stat_at_least(hub: Hub, key: str, value: int) -> Callable[[], bool]:
    """A wait_until() predicate: ``hub.stats()[key] >= value``."""
    return lambda: bool(hub.stats()[key] >= value)


def received_last(recorder: Recorder, value: object) -> Callable[[], bool]:
    """A wait_until() predicate: the last message ``recorder`` got has ``n == value``."""
    return lambda: value in recorder.values()[-1:]


def wait_placed(hub: Hub, timeout: float = TIMEOUT) -> None:
    """Wait until the hub's reader knows where it starts reading the stream.

    Until then, messages that *other* hubs or processes send can be skipped
    by this hub (see test_redis_broker.py::test_a_hub_sees_what_others_send_after_it_started).
    Tests that are about something else wait here first. Without the
    internal event, a round trip of a message of the hub's own proves the
    same (the writer appends nothing before the reader is placed), at the
    cost of one message in the stream.
    """
    placed = getattr(hub._network, "_reader_placed", None)
    if isinstance(placed, threading.Event):
        assert placed.wait(timeout), f"the reader of {hub!r} was not placed within {timeout} s"
        return
    back: list[Message] = []
    Channel("tidings-test.warm-up", back.append, hub=hub).send({})
    assert hub.join(timeout), f"the reader of {hub!r} was not placed within {timeout} s"
    assert back, f"the reader of {hub!r} was not placed within {timeout} s"


def stop_all(hubs: list[Hub], timeout: float = TIMEOUT) -> list[Hub]:
    """Stop hubs in parallel; the ones that did not stop cleanly."""
    results: dict[int, bool] = {}

    def stop(index: int, hub: Hub) -> None:
        results[index] = hub.stop(timeout=timeout)

    threads = [threading.Thread(target=stop, args=(i, hub), daemon=True) for i, hub in enumerate(hubs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 15)
    return [hub for i, hub in enumerate(hubs) if not results.get(i, False)]


# -- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The shared Redis; fails (with $CI) or skips when it does not answer PING."""
    redis = need_redis_py()
    try:
        client = redis.Redis.from_url(SHARED_URL, socket_connect_timeout=2.0, socket_timeout=2.0)
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        unavailable(f"no Redis answers at {SHARED_URL} ({exc}); start one or set TEST_REDIS_URL")
    yield SHARED_URL
    raw = RawRedis(SHARED_URL)
    try:
        for namespace in _namespaces_used:
            raw.delete_namespace(namespace)
    finally:
        raw.close()


@pytest.fixture
def namespace() -> str:
    """A CHANNEL_NAMESPACE of this test's own."""
    name = f"tidings-test-{uuid.uuid4().hex[:16]}"
    _namespaces_used.append(name)
    return name


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """start(appendonly=False, password=None) -> a running private RedisServer."""
    binary = shutil.which("redis-server")
    servers: list[RedisServer] = []

    def start(*, appendonly: bool = False, password: str | None = None) -> RedisServer:
        if binary is None:
            unavailable("redis-server is not installed")
        need_redis_py()
        directory = tmp_path / f"redis-{len(servers)}"
        directory.mkdir()
        server = RedisServer(binary, directory, appendonly=appendonly, password=password)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def faulty_proxies() -> Iterator[Callable[[RedisServer], FaultyProxy]]:
    """proxy(server) -> a FaultyProxy in front of ``server``; all closed afterwards."""
    proxies: list[FaultyProxy] = []

    def proxy(server: RedisServer) -> FaultyProxy:
        made = FaultyProxy(server.port)
        proxies.append(made)
        return made

    yield proxy
    for made in proxies:
        made.close()


@pytest.fixture
def make_redis_hub(
    namespace: str,
    redis_servers: Callable[..., RedisServer],
    faulty_proxies: Callable[[RedisServer], FaultyProxy],
) -> Iterator[RedisHubFactory]:
    """make(url, *, start=True, placed=True, **settings): a hub on the Redis broker at ``url``.

    With ``placed`` (and ``start``) it returns once the hub's reader has
    placed itself in the stream (``wait_placed``). Settings: this test's namespace and ``support.WORKER_TIMEOUT`` unless
    given. Hubs are stopped (in parallel) before the test's own Redis
    servers and proxies are (this fixture depends on both), and teardown
    asserts that each stopped cleanly.
    """
    hubs: list[Hub] = []

    def make(url: str, *, start: bool = True, placed: bool = True, **settings: Any) -> Hub:
        settings.setdefault("CHANNEL_NAMESPACE", namespace)
        settings.setdefault("CHANNEL_WORKER_TIMEOUT", WORKER_TIMEOUT)
        hub = Hub(Settings(CHANNEL_BROKER_URL=url, **settings))
        hubs.append(hub)
        if start:
            hub.start()
            if placed:
                wait_placed(hub)
        return hub

    yield make
    failed = stop_all(hubs)
    assert not failed, f"hubs did not stop cleanly: {failed}"


def python_command(script: Path, *args: str) -> list[str]:
    return [sys.executable, str(script), *args]


class PacedSender:
    """Sends ``{"n": 0..count-1}`` from a thread, at most ``window`` ahead of ``progress()``.

    ``progress`` counts the messages that got somewhere: delivered to a
    receiver (``lambda: len(recorder.messages)``) or appended by the writer
    (``broker_published``). Flow control instead of sleeps: the flow stays
    spread out over time (so faults land in the middle of it) and stalls
    ``window`` messages ahead while Redis is away.
    """

    def __init__(
        self, channel: Any, count: int, progress: Callable[[], int], window: int, timeout: float = 60.0
    ) -> None:
        self.channel = channel
        self.count = count
        self.progress = progress
        self.window = window
        self.timeout = timeout
        self.sent = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="paced-sender", daemon=True)

    def start(self) -> PacedSender:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for n in range(self.count):
                if n - self.progress() >= self.window:
                    wait_until(self._may_send, "the flow to move on", self.timeout)
                self.channel.send({"n": n})
                self.sent = n + 1
        except BaseException as exc:
            self.error = exc

    def _may_send(self) -> bool:
        return self.sent - self.progress() < self.window

    def finish(self) -> None:
        self._thread.join(self.timeout)
        assert not self._thread.is_alive(), "the sender did not finish"
        if self.error is not None:
            raise self.error
