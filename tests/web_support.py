"""Fixtures and helpers for the tests of the WebSocket bridge and the web demo.

Test modules load the fixtures with ``pytest_plugins = ["web_support"]``.

- ``serve(app)``: runs an ASGI app on a real uvicorn, in a thread, on a free
  port of 127.0.0.1, and returns its base URL (``http://127.0.0.1:PORT``);
  every server is stopped after the test, before the ``hub`` fixture stops.
- ``browser``: headless Debian Chromium (``/usr/bin/chromium``, or
  ``$TEST_CHROMIUM``) driven by Playwright, one per test module.
- :class:`WsClient`: a blocking WebSocket client that speaks the bridge's
  protocol.

When Starlette, uvicorn, websockets, Playwright or Chromium is missing, a
test that needs it fails if ``$CI`` is set and is skipped otherwise, with a
reason that says what to install.

PYTEST_DONT_REWRITE: test modules both import helpers from this module and
load it as a plugin (see ``redis_support``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, NoReturn

import pytest

import tidings
from support import TIMEOUT
from tidings.testing import CheckedHub

if TYPE_CHECKING:
    from playwright.sync_api import Browser
    from websockets.sync.client import ClientConnection

CHROMIUM = os.environ.get("TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# serve(app, **uvicorn_options) -> base URL
Serve = Callable[..., str]


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it when running in CI (where everything must be installed)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the web tests must run)", pytrace=False)
    pytest.skip(reason)


def need_web() -> None:
    """Starlette, uvicorn and websockets (the server's WebSocket protocol and the tests' client)."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
        import websockets  # noqa: F401
    except ImportError as exc:
        unavailable(f"{exc.name} is not installed: pip install 'tidings[web]' websockets")


def wait_until(predicate: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``predicate`` until it is true; fail, naming ``what``, after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def listening_socket() -> socket.socket:
    """A socket listening on a free port of 127.0.0.1 (handed to uvicorn, so no port race)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


class ServerThread:
    """uvicorn serving ``app`` in a thread of this process."""

    def __init__(self, app: Any, **options: Any) -> None:
        import uvicorn

        options.setdefault("log_level", "warning")
        options.setdefault("lifespan", "auto")
        self.sock = listening_socket()
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, **options))
        self.thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}", daemon=True)
        self.failure: BaseException | None = None

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as exc:  # reported by start() and stop()
            self.failure = exc

    def start(self) -> None:
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), "uvicorn to start")
        if not self.server.started:
            raise AssertionError(f"uvicorn did not start: {self.failure!r}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(TIMEOUT)
        self.sock.close()
        assert not self.thread.is_alive(), "uvicorn did not stop"
        assert self.failure is None, f"uvicorn failed: {self.failure!r}"


@pytest.fixture
def serve(hub: CheckedHub) -> Iterator[Serve]:
    """``serve(app, **uvicorn_options)``: the base URL of a real uvicorn serving ``app``."""
    need_web()
    servers: list[ServerThread] = []

    def start(app: Any, **options: Any) -> str:
        server = ServerThread(app, **options)
        servers.append(server)
        server.start()
        return server.url

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium under Playwright (never downloaded: Debian's ``chromium``)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("Playwright is not installed: pip install playwright (its browsers are not needed)")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set TEST_CHROMIUM)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=TIMEOUT * 3000)
        try:
            yield chromium
        finally:
            chromium.close()


class DemoProcess:
    """``python -m tidings demo --port 0 ARGS...`` in a process of its own."""

    def __init__(self, *args: str) -> None:
        env = {name: value for name, value in os.environ.items() if not name.startswith("TIDINGS_")}
        source = os.path.dirname(os.path.dirname(os.path.abspath(tidings.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tidings", "demo", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self._pumps = [
            threading.Thread(target=self._pump, args=(self.process.stdout, self._lines.put), daemon=True),
            threading.Thread(target=self._pump, args=(self.process.stderr, self.stderr.append), daemon=True),
        ]
        for pump in self._pumps:
            pump.start()
        try:
            self.banner = self._lines.get(timeout=TIMEOUT * 3)
        except queue.Empty:
            self.stop(check=False)
            raise AssertionError(f"tidings demo printed no address; stderr: {''.join(self.stderr)}") from None
        found = re.search(r"open (http://\S+/)", self.banner)
        assert found, self.banner
        self.url = found.group(1).rstrip("/")

    @staticmethod
    def _pump(stream: IO[str] | None, put: Callable[[str], object]) -> None:
        assert stream is not None
        for line in stream:
            put(line)

    def stop(self, check: bool = True) -> int:
        """Ctrl-C, and the exit code (0 is required with ``check``)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(TIMEOUT * 2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        for pump in self._pumps:
            pump.join(TIMEOUT)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        if check:
            assert code == 0, f"tidings demo exited with {code}; stderr: {''.join(self.stderr)}"
        return code


class StuckClient:
    """A WebSocket client that reads only when told to, over a socket with a tiny receive buffer.

    It stands for a browser that stops reading: once the kernel's small
    buffers are full, the server's writes to it block. (websockets' client
    keeps reading into memory, so a raw socket is used.)
    """

    def __init__(self, url: str) -> None:
        host, _, rest = url.removeprefix("http://").removeprefix("ws://").partition("/")
        address, _, port = host.partition(":")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # also turns off autotuning
        self.sock.settimeout(TIMEOUT)
        self.sock.connect((address, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /{rest} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self._buffer = b""
        while b"\r\n\r\n" not in self._buffer:
            self._buffer += self._read_some()
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self.welcome = self.recv()

    def _read_some(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server closed the connection")
        return data

    def _take(self, count: int) -> bytes:
        while len(self._buffer) < count:
            self._buffer += self._read_some()
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def send(self, frame: dict[str, Any]) -> None:
        payload = json.dumps(frame).encode()
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        self.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    def recv(self) -> dict[str, Any]:
        """The next text frame, decoded (fails on a close frame)."""
        first, second = self._take(2)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(self._take(2), "big")
        elif length == 127:
            length = int.from_bytes(self._take(8), "big")
        payload = self._take(length)
        assert first == 0x81, f"not a text frame: opcode {first & 0x0F}, {payload[:100]!r}"
        frame: dict[str, Any] = json.loads(payload)
        return frame

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> StuckClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class WsClient:
    """A blocking client of the bridge: send frames, read replies and messages.

    ``request()`` sends a frame with a fresh ``id`` and returns the reply
    with that id; ``message`` frames read meanwhile are kept, in order, for
    ``next_message()``.
    """

    def __init__(self, url: str, **options: Any) -> None:
        from websockets.sync.client import connect

        options.setdefault("open_timeout", TIMEOUT)
        options.setdefault("close_timeout", TIMEOUT)
        self._stack = contextlib.ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(connect(url.replace("http://", "ws://", 1), **options))
        self.messages: list[dict[str, Any]] = []
        self.others: list[dict[str, Any]] = []  # replies and errors not asked for
        self._ids = 0
        try:
            self.welcome = self.recv()
        except BaseException:
            self.close()
            raise
        assert self.welcome["type"] == "welcome", self.welcome

    def send(self, frame: dict[str, Any] | str | bytes) -> None:
        self.ws.send(json.dumps(frame) if isinstance(frame, dict) else frame)

    def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        raw = self.ws.recv(timeout=timeout)
        frame: dict[str, Any] = json.loads(raw)
        return frame

    def request(self, frame: dict[str, Any], timeout: float = TIMEOUT) -> dict[str, Any]:
        self._ids += 1
        request_id = self._ids
        self.send({**frame, "id": request_id})
        return self.reply(request_id, timeout)

    def reply(self, request_id: object, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The reply to ``request_id``; what comes before it is kept."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv(max(0.0, deadline - time.monotonic()))
            if frame["type"] == "message":
                self.messages.append(frame)
            elif frame.get("id") == request_id:
                return frame
            else:
                self.others.append(frame)

    def next_message(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        if self.messages:
            return self.messages.pop(0)
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv(max(0.0, deadline - time.monotonic()))
            if frame["type"] == "message":
                return frame
            self.others.append(frame)

    def subscribe(self, topic: str) -> None:
        reply = self.request({"action": "subscribe", "topic": topic})
        assert reply["type"] == "ok", reply

    def close_code(self, timeout: float = TIMEOUT) -> int | None:
        """Read until the server closes the connection; its close code. Frames read are kept."""
        from websockets.exceptions import ConnectionClosed

        deadline = time.monotonic() + timeout
        try:
            while True:
                frame = self.recv(max(0.0, deadline - time.monotonic()))
                (self.messages if frame["type"] == "message" else self.others).append(frame)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None

    def close(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            self._stack.close()
        except ConnectionClosed:  # closed by the server with an error code: already seen by the test
            pass

    def __enter__(self) -> WsClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
