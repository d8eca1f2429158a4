"""The ``tidings demo`` web app: Lona's clock and a multi-room chat, live in a browser.

One page (``static/index.html``, no build step) talks to a
:class:`~tidings.asgi.WebSocketBridge` on ``/ws``:

- **the clock**: every process sends ``clock.tick`` every second (a local
  message: with several processes sharing a broker each ticks for its own
  browsers), carrying the time and the number of people watching;
- **people watching**: :class:`Watchers` counts the open pages across every
  process that shares the broker, and sends the total on ``clock.watchers``
  whenever it changes;
- **the chat**: a room is the topic ``chat.rooms.<name>``; the ``*`` view
  follows every room through the pattern ``chat.rooms.*``.

Browsers may subscribe to ``clock.tick``, ``clock.watchers``,
``chat.rooms.*`` and any one room, and send only to one room (never a
pattern). Text is rendered with ``textContent``, and the page's
Content-Security-Policy runs only its own script (a nonce per response).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute

from tidings import Channel, Hub, Message, Scope, Settings
from tidings.asgi import Connection, WebSocketBridge

__all__ = ["Watchers", "authorize", "create_app"]

logger = logging.getLogger("tidings.demo")

_monotonic = time.monotonic

ROOMS = "chat.rooms."
_ROOM_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
_PUBLIC = frozenset({"clock.tick", "clock.watchers", ROOMS + "*"})

# The page's limits: short chat lines, a few subscriptions, a human's pace.
BRIDGE_LIMITS: dict[str, Any] = {
    "max_message_bytes": 4096,
    "max_messages_per_second": 20,
    "max_subscriptions": 10,
    "max_pending": 200,
    "overflow": "drop_oldest",  # a browser that lags skips old lines and is told how many
}


def is_room(topic: str) -> bool:
    """Whether ``topic`` is one room: ``chat.rooms.<name>``, the name without wildcards."""
    return topic.startswith(ROOMS) and _ROOM_NAME.fullmatch(topic[len(ROOMS) :]) is not None


def authorize(connection: Connection, action: str, topic: str) -> bool:
    """What a page may do: read the clock and the rooms, write to one room at a time."""
    if action == "subscribe":
        return topic in _PUBLIC or is_room(topic)
    return action == "send" and is_room(topic)


class Watchers:
    """How many pages are open, summed over every process that shares the broker.

    Each process counts its own connections and announces that number, an
    absolute count rather than a +1 or -1, with its process id:

    - on ``clock.watchers.join`` / ``clock.watchers.leave`` when one of its
      pages opens or closes;
    - on ``clock.watchers.presence`` every ``heartbeat`` seconds, and in
      answer to ``clock.watchers.hello``, which a process sends when it
      starts so that it learns the others' counts at once;
    - on ``clock.watchers.bye`` when it shuts down.

    Every process (the sender included: its own announcements come back to
    it) keeps the latest count of each process and sums the ones heard from
    in the last ``ttl`` seconds. As tidings delivers one process's messages
    in the order they were sent, the latest count is the true one; because
    counts are absolute, a lost or repeated announcement is corrected by the
    next one; a process that dies without ``bye`` drops out after ``ttl``.
    The total goes to the pages on ``clock.watchers`` (a local message)
    whenever it changes, and with every tick.
    """

    def __init__(self, hub: Hub, *, heartbeat: float = 2.0, ttl: float | None = None) -> None:
        self.hub = hub
        self.process = uuid.uuid4().hex
        self.heartbeat = heartbeat
        self.ttl = ttl if ttl is not None else 3.5 * heartbeat
        self.local = 0  # this process's open pages
        self.total = 0
        self._seen: dict[str, tuple[int, float]] = {}  # process -> (count, monotonic time heard)
        self._scope = Scope(hub)
        self._total_channel = Channel("clock.watchers", hub=hub)

    async def start(self) -> None:
        """Subscribe (on the running loop) and say hello."""
        self._scope.subscribe("clock.watchers.*", self._heard)
        self._announce("hello")

    def close(self) -> None:
        """Say goodbye and unsubscribe."""
        self._announce("bye")
        self._scope.close()

    def join(self) -> None:
        self.local += 1
        self._announce("join")

    def leave(self) -> None:
        self.local -= 1
        self._announce("leave")

    def beat(self) -> None:
        """Announce this process's count, and forget processes not heard from in ``ttl``."""
        self._announce("presence")
        self._recount()

    def _announce(self, event: str) -> None:
        Channel(f"clock.watchers.{event}", hub=self.hub).send({"process": self.process, "count": self.local})

    async def _heard(self, message: Message) -> None:
        data = message.data
        process, count = data.get("process"), data.get("count")
        if type(process) is not str or type(count) is not int or count < 0:
            logger.warning("ignored a malformed announcement on %s: %r", message.topic, data)
            return
        event = message.topic.rpartition(".")[2]
        if event == "bye":
            self._seen.pop(process, None)
        else:
            self._seen[process] = (count, _monotonic())
        if event == "hello" and process != self.process:
            self._announce("presence")
        self._recount()

    def _recount(self) -> None:
        oldest = _monotonic() - self.ttl
        for process, (_, heard) in list(self._seen.items()):
            if heard < oldest:
                del self._seen[process]
        total = sum(count for count, _ in self._seen.values())
        if total != self.total:
            self.total = total
            self._total_channel.send({"count": total}, local=True)


class Demo:
    """The demo's moving parts on one hub: the bridge, the watcher count, the ticker."""

    def __init__(self, hub: Hub, *, heartbeat: float = 2.0) -> None:
        self.hub = hub
        self.watchers = Watchers(hub, heartbeat=heartbeat)
        self.bridge = WebSocketBridge(
            hub=hub,
            authorize=authorize,
            on_connect=self._connected,
            on_disconnect=self._disconnected,
            **BRIDGE_LIMITS,
        )
        self._tasks: list[asyncio.Task[None]] = []

    def _connected(self, connection: Connection) -> None:
        self.watchers.join()

    def _disconnected(self, connection: Connection) -> None:
        self.watchers.leave()

    async def start(self) -> None:
        await self.watchers.start()
        self._tasks = [asyncio.create_task(self._tick()), asyncio.create_task(self._beat())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.watchers.close()

    async def _tick(self) -> None:
        ticks = Channel("clock.tick", hub=self.hub)
        while True:
            second = int(time.time()) + 1
            await asyncio.sleep(second - time.time())  # on the second
            now = max(time.time(), second)  # the loop's timer may fire a hair early
            ticks.send(
                {"time": time.strftime("%H:%M:%S", time.localtime(now)), "epoch": now, "watchers": self.watchers.total},
                local=True,
            )

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.watchers.heartbeat)
            self.watchers.beat()


def page(nonce: str) -> str:
    """The page, with ``nonce`` for its inline script and style."""
    html = resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")
    return html.replace("{{nonce}}", nonce)


def create_app(hub: Hub | None = None, *, settings: Settings | None = None, heartbeat: float = 2.0) -> Starlette:
    """The demo as a Starlette app: ``/`` (the page) and ``/ws`` (the bridge).

    Without ``hub``, the app makes one from ``settings`` (in-process unless
    they name a broker), starts it with the app and stops it at shutdown. A
    hub that is given is started if needed and left running.
    """
    own = hub is None
    if hub is None:
        hub = Hub(settings if settings is not None else Settings(), name="demo")
    demo = Demo(hub, heartbeat=heartbeat)
    template = page("{{nonce}}")

    async def index(request: Request) -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        policy = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
        headers = {
            "Content-Security-Policy": policy,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        }
        return HTMLResponse(template.replace("{{nonce}}", nonce), headers=headers)

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not hub.running:
            hub.start()
        await demo.start()
        try:
            yield
        finally:
            await demo.stop()
            if own:
                await hub.astop(timeout=10.0)

    app = Starlette(
        routes=[Route("/", index), Route("/health", health), WebSocketRoute("/ws", demo.bridge)],
        lifespan=lifespan,
    )
    app.state.demo = demo
    return app
