"""A WebSocket bridge: browsers subscribe and send to tidings topics over JSON.

:class:`WebSocketBridge` is an ASGI application (built on Starlette's
``WebSocket``; ``pip install 'tidings[web]'``). Mount it on a WebSocket
route; the application decides, per connection, what may be done through
an ``authorize(connection, action, topic)`` hook::

    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from tidings.asgi import WebSocketBridge

    def authorize(connection, action, topic):
        # subscribe to any room, send to exactly one room (no wildcards)
        wildcard = any(c in topic for c in "*?[")
        return topic.startswith("chat.rooms.") and (action == "subscribe" or not wildcard)

    bridge = WebSocketBridge(authorize=authorize)
    app = Starlette(routes=[WebSocketRoute("/ws", bridge)])
    # uvicorn app:app  -- closing a socket, or stopping the server, unsubscribes it all

The protocol (also in ``docs/websocket-protocol.md``). Every frame is a text
frame holding one JSON object.

Client to server; ``id`` is optional (a string of at most 128 characters or
an integer) and is echoed in the reply:

- ``{"action": "subscribe", "topic": T, "id": I}``: receive the messages
  on ``T`` (wildcards allowed). Replies ``ok``; from then on every message
  that reaches ``T`` arrives as a ``message`` frame. Subscribing to a topic
  the connection already has is an ``ok`` and changes nothing.
- ``{"action": "unsubscribe", "topic": T, "id": I}``: replies ``ok``; no
  ``message`` frame of that subscription follows the ``ok``.
- ``{"action": "send", "topic": T, "data": {...}, "id": I}``: sends
  ``data`` (a JSON object, default ``{}``) on ``T``. Replies ``ok`` with
  ``"message_id"``, the tidings message id.
- ``{"action": "ping", "id": I}``: replies ``{"type": "pong", "id": I}``.

Server to client:

- ``{"type": "welcome", "connection": C, "limits": {...}}``: first frame,
  with the connection's id and the limits below.
- ``{"type": "ok", "action": A, "topic": T, "id": I}`` (``"message_id"``
  for a send).
- ``{"type": "message", "subscription": S, "topic": T, "data": {...},
  "id": M, "time": 1700000000.5}``: ``S`` is the topic subscribed to (a
  message reaching two of a connection's subscriptions arrives once for
  each), ``T`` the topic it was sent on, ``M`` the message id, ``time`` its
  send time. With ``overflow="drop_oldest"``/``"drop_newest"``,
  ``"dropped": n`` says that ``n`` messages of this subscription were
  dropped since its previous frame.
- ``{"type": "error", "code": E, "message": "...", "id": I}``: ``id`` when
  the request had a usable one, ``topic`` when it names one.

Error codes: ``bad_json`` (not JSON, or not an object), ``bad_frame`` (a
binary frame), ``bad_request`` (a field missing or of the wrong type),
``unknown_action``, ``bad_topic``, ``too_large`` (more than
``max_message_bytes`` of UTF-8), ``rate_limited`` (more than
``max_messages_per_second``; the frame is not read), ``too_many_subscriptions``,
``not_subscribed``, ``forbidden`` (refused by ``authorize``), ``bad_data``
(the hub refused the data, e.g. too big or too deep for the network broker),
``unavailable`` (the hub is stopped or the network broker is unreachable),
``internal`` (``authorize`` raised; logged), ``slow_consumer`` (the
subscription fell more than ``max_pending`` messages behind and was ended;
subscribe again to resume) and ``policy_violation`` (too many errors: the
connection is closed next, with WebSocket close code 1008).

Rules that hold whatever ``authorize`` says:

- The default, without ``authorize``, allows every subscribe and refuses
  every send. With ``authorize``, it decides both: a true result allows, a
  false one (``None`` included) refuses; it may be ``async def``. It is
  called once per subscribe and per send, and requests are handled one at
  a time per connection, in order.
- ``tidings.*`` topics (the hub's internal ones) can be neither subscribed
  to nor sent to, and messages on them are never forwarded (a subscription
  to ``*`` does not see them).
- A connection gets ``max_errors`` error frames per minute (refilled
  gradually); the next costs it the connection (close code 1008). Errors
  caused by the server (``slow_consumer``, ``unavailable``, ``internal``)
  do not count.
- A browser that stops reading: the server writes to it until its socket
  buffer is full, then messages wait in each subscription's inbox (up to
  ``max_pending``), where ``overflow`` decides (see :mod:`tidings.aio`).
  A single write blocked for ``send_timeout`` seconds closes the connection.
- Messages whose data cannot be encoded as JSON (possible on the in-process
  hub, which carries any ``dict``) are skipped: logged once and counted in
  :meth:`WebSocketBridge.stats` as ``unencodable``.
- When the hub stops, connections with subscriptions are closed with code
  1001; one made while the hub is not running is accepted and closed at
  once with 1001.

Frames larger than the ASGI server's own limit (uvicorn's ``ws_max_size``,
16 MiB by default) are refused by the server, which closes the connection
with code 1009.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

try:
    from starlette.websockets import WebSocket, WebSocketState
except ImportError as exc:  # pragma: no cover - the web extra is not installed
    raise ImportError(f"tidings.asgi needs Starlette: pip install 'tidings[web]' ({exc})") from exc

from . import aio
from ._channel import Channel
from ._exceptions import HubClosedError, SlowConsumerError, TidingsError
from ._hub import Hub, default_hub
from ._inbox import OVERFLOW_POLICIES, Overflow
from ._scope import Scope as TidingsScope
from ._topics import check_topic

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from ._message import Message

__all__ = ["Action", "Authorize", "Connection", "ConnectionHook", "WebSocketBridge"]

logger = logging.getLogger("tidings.asgi")

_monotonic = time.monotonic

Action = Literal["subscribe", "send"]
#: ``authorize(connection, action, topic) -> bool`` (or an awaitable of one).
Authorize = Callable[["Connection", Action, str], "bool | Awaitable[bool]"]
#: ``on_connect(connection)`` / ``on_disconnect(connection)``, plain or ``async def``.
ConnectionHook = Callable[["Connection"], "object | Awaitable[object]"]

INTERNAL_PREFIX = "tidings."
MAX_ID_LENGTH = 128
# Encoded messages kept, by message id, so that fanning one message out to
# many connections encodes it once.
ENCODED_CACHE_SIZE = 1024
ERROR_WINDOW = 60.0

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011

# Error codes that the server causes: they do not count against the client.
_SERVER_ERRORS = frozenset({"slow_consumer", "unavailable", "internal"})

_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


_loads = json.JSONDecoder(parse_constant=_reject_constant).decode


class _Gone(Exception):
    """The connection cannot be written to any more."""


class _Subscription:
    __slots__ = ("dropped", "inbox", "prefix", "task", "topic")

    def __init__(self, topic: str, inbox: aio.AsyncInbox) -> None:
        self.topic = topic
        self.inbox = inbox
        self.prefix = '{"type":"message","subscription":' + _dumps(topic) + ","
        self.dropped = 0
        self.task: asyncio.Task[None] | None = None


class Connection:
    """One WebSocket connection, as ``authorize`` and the connection hooks see it.

    - ``websocket``: Starlette's :class:`~starlette.websockets.WebSocket`
      (headers, cookies, query parameters, ``client``, the ASGI scope with
      whatever a middleware put there, such as a session or a user);
    - ``id``: a string unique to this connection;
    - ``state``: a dict for the application's own use;
    - ``subscriptions``: the topics subscribed to, in order;
    - ``scope``: the :class:`tidings.Scope` that holds the connection's
      subscriptions (closed when the connection ends; the application may
      subscribe its own handlers for the connection in it too).
    """

    def __init__(self, bridge: WebSocketBridge, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.id = uuid.uuid4().hex
        self.state: dict[str, Any] = {}
        self._bridge = bridge
        self._subs: dict[str, _Subscription] = {}
        self.scope = TidingsScope(hub=bridge.hub)
        self._lock = asyncio.Lock()
        self._receiver: asyncio.Task[None] | None = None
        self._writing_since: float | None = None
        self._gone = False
        self._close_code: int | None = None
        self._close_reason = ""
        now = _monotonic()
        self._tokens = float(bridge.max_messages_per_second)
        self._tokens_at = now
        self._error_tokens = float(bridge.max_errors)
        self._errors_at = now

    @property
    def subscriptions(self) -> list[str]:
        return list(self._subs)

    def __repr__(self) -> str:
        client = self.websocket.client
        where = f" from {client.host}:{client.port}" if client else ""
        return f"<Connection {self.id}{where} subscriptions={len(self._subs)}>"

    # -- limits ------------------------------------------------------------------

    def _take_token(self) -> bool:
        """Token bucket: ``max_messages_per_second`` per second, bursts of as many."""
        rate = self._bridge.max_messages_per_second
        now = _monotonic()
        tokens = min(float(rate), self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True

    def _take_error(self) -> bool:
        """Count one error against the client; False once it has used up its allowance."""
        allowance = self._bridge.max_errors
        now = _monotonic()
        tokens = min(float(allowance), self._error_tokens + (now - self._errors_at) * allowance / ERROR_WINDOW)
        self._errors_at = now
        self._error_tokens = tokens - 1.0
        return tokens >= 1.0

    # -- writing -----------------------------------------------------------------

    async def _send(self, text: str) -> None:
        """Write one frame; frames from different tasks go out whole, in turn."""
        if self._gone:
            raise _Gone
        async with self._lock:
            if self._gone:
                raise _Gone
            # The bridge's watchdog ends a connection whose write is blocked
            # too long (cheaper than a timer per write).
            self._writing_since = _monotonic()
            try:
                await self.websocket.send_text(text)
            except Exception as exc:  # the socket is gone; the server says so in its own way
                logger.debug("%r: write failed: %r", self, exc)
                self._abort(None, "")
                raise _Gone from None
            finally:
                self._writing_since = None
            self._bridge._counters["frames_sent"] += 1

    def _abort(self, code: int | None, reason: str) -> None:
        """Stop serving this connection: no more writes, the receive loop ends."""
        if not self._gone:
            self._gone = True
            self._close_code = code
            self._close_reason = reason
        receiver = self._receiver
        if receiver is not None and receiver is not asyncio.current_task():
            receiver.cancel()

    async def _reply(self, reply: dict[str, Any]) -> None:
        try:
            await self._send(_dumps(reply))
        except _Gone:
            pass

    async def _error(self, code: str, text: str, request_id: object = None, **extra: Any) -> None:
        bridge = self._bridge
        counters = bridge._counters
        counters["errors"] += 1
        by_code = bridge._errors_by_code
        by_code[code] = by_code.get(code, 0) + 1
        reply: dict[str, Any] = {"type": "error", "code": code, "message": text}
        if request_id is not None:
            reply["id"] = request_id
        reply.update(extra)
        logger.debug("%r: error %s: %s", self, code, text)
        await self._reply(reply)
        if code not in _SERVER_ERRORS and not self._take_error():
            counters["disconnected_errors"] += 1
            logger.info("%r: too many errors (%s per minute); closing", self, bridge.max_errors)
            counters["errors"] += 1
            by_code["policy_violation"] = by_code.get("policy_violation", 0) + 1
            await self._reply(
                {"type": "error", "code": "policy_violation", "message": "too many errors: closing the connection"}
            )
            self._abort(CLOSE_POLICY_VIOLATION, "too many errors")


class WebSocketBridge:
    """An ASGI app that lets WebSocket clients subscribe and send to topics.

    See the module's documentation for the JSON protocol. Arguments (all
    keyword-only):

    - ``hub``: the hub to use (default: the default hub, looked up at the
      first connection);
    - ``authorize(connection, action, topic)``: ``action`` is
      ``"subscribe"`` or ``"send"``; true allows. May be ``async def``.
      Without it, subscribes are allowed and sends refused. ``topic`` is as
      the client gave it, wildcards included: a send on ``chat.*`` reaches
      every subscription that the pattern matches;
    - ``on_connect(connection)``, ``on_disconnect(connection)``: called
      when a connection is accepted and when it has ended (its
      subscriptions already closed); plain or ``async def``;
    - ``max_message_bytes``: the largest frame read (UTF-8 bytes), 64 KiB;
    - ``max_messages_per_second``: frames a client may send per second,
      with bursts of as many, 50;
    - ``max_subscriptions``: per connection, 100;
    - ``max_errors``: error frames per minute before the connection is
      closed, 20;
    - ``max_pending``, ``overflow``: each subscription's inbox (see
      :func:`tidings.aio.subscribe`); 1000 and ``"error"``;
    - ``send_timeout``: seconds one write may block before the connection
      is closed, 10.

    One bridge serves any number of connections; each is handled on its
    own, so one client's errors, floods or slowness do not reach the others.
    """

    def __init__(
        self,
        *,
        hub: Hub | None = None,
        authorize: Authorize | None = None,
        on_connect: ConnectionHook | None = None,
        on_disconnect: ConnectionHook | None = None,
        max_message_bytes: int = 64 * 1024,
        max_messages_per_second: float = 50,
        max_subscriptions: int = 100,
        max_errors: int = 20,
        max_pending: int = 1000,
        overflow: Overflow = "error",
        send_timeout: float = 10.0,
    ) -> None:
        if hub is not None and not isinstance(hub, Hub):
            raise TypeError(f"hub must be a tidings.Hub, not {type(hub).__name__}")
        for name, hook in (("authorize", authorize), ("on_connect", on_connect), ("on_disconnect", on_disconnect)):
            if hook is not None and not callable(hook):
                raise TypeError(f"{name} must be callable, not {type(hook).__name__}")
        for name, value in (
            ("max_message_bytes", max_message_bytes),
            ("max_subscriptions", max_subscriptions),
            ("max_errors", max_errors),
            ("max_pending", max_pending),
        ):
            if type(value) is not int:
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        for name, number in (("max_messages_per_second", max_messages_per_second), ("send_timeout", send_timeout)):
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise TypeError(f"{name} must be a number, not {type(number).__name__}")
            if not number > 0 or number == float("inf"):
                raise ValueError(f"{name} must be a positive finite number, not {number}")
        if max_messages_per_second < 1:
            raise ValueError(f"max_messages_per_second must be at least 1, not {max_messages_per_second}")
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {', '.join(map(repr, OVERFLOW_POLICIES))}, not {overflow!r}")
        self._hub = hub
        self.authorize = authorize
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.max_message_bytes = max_message_bytes
        self.max_messages_per_second = float(max_messages_per_second)
        self.max_subscriptions = max_subscriptions
        self.max_errors = max_errors
        self.max_pending = max_pending
        self.overflow: Overflow = overflow
        self.send_timeout = float(send_timeout)
        self._connections: set[Connection] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._encoded: dict[str, str | None] = {}
        self._counters: dict[str, int] = dict.fromkeys(
            (
                "connections_total",
                "frames_received",
                "frames_sent",
                "messages_forwarded",
                "sends",
                "errors",
                "slow_consumers",
                "unencodable",
                "disconnected_errors",
                "disconnected_send_timeout",
            ),
            0,
        )
        self._errors_by_code: dict[str, int] = {}
        self._actions: dict[str, Callable[[Connection, dict[str, Any], object], Awaitable[None]]] = {
            "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
            "send": self._send_message,
            "ping": self._ping,
        }

    @property
    def hub(self) -> Hub:
        if self._hub is None:
            self._hub = default_hub()
        return self._hub

    @property
    def connections(self) -> list[Connection]:
        """The open connections."""
        return list(self._connections)

    def limits(self) -> dict[str, Any]:
        """The limits each connection gets (also sent in the ``welcome`` frame)."""
        return {
            "max_message_bytes": self.max_message_bytes,
            "max_messages_per_second": self.max_messages_per_second,
            "max_subscriptions": self.max_subscriptions,
            "max_errors_per_minute": self.max_errors,
            "max_pending": self.max_pending,
            "overflow": self.overflow,
        }

    def stats(self) -> dict[str, Any]:
        """Counters since the bridge was made.

        ``connections`` (open now), ``subscriptions`` (open now),
        ``connections_total``, ``frames_received``, ``frames_sent``,
        ``messages_forwarded``, ``sends`` (messages clients sent into the
        hub), ``errors`` (error frames) and ``errors_by_code``,
        ``slow_consumers`` (subscriptions ended by overflow), ``dropped``
        (messages the open subscriptions' inboxes dropped), ``unencodable``
        (messages skipped because their data is not JSON),
        ``disconnected_errors`` (closed for too many errors),
        ``disconnected_send_timeout`` (closed for a blocked write).
        """
        connections = list(self._connections)
        subs = [sub for connection in connections for sub in connection._subs.values()]
        return {
            "connections": len(connections),
            "subscriptions": len(subs),
            **self._counters,
            "errors_by_code": dict(self._errors_by_code),
            "dropped": sum(sub.inbox.dropped for sub in subs),
        }

    def __repr__(self) -> str:
        return f"<WebSocketBridge connections={len(self._connections)}>"

    # -- ASGI --------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":  # served on its own: nothing to set up
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "websocket":
            body = b"tidings.asgi: WebSocket connections only\n"
            headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
            await send(
                {"type": "http.response.start", "status": 426, "headers": [*headers, (b"upgrade", b"websocket")]}
            )
            await send({"type": "http.response.body", "body": body})
            return
        websocket = WebSocket(scope, receive, send)
        hub = self.hub
        if not hub.running:  # accepted first, so that the client sees why
            await websocket.accept()
            await websocket.close(CLOSE_GOING_AWAY, "the hub is not running")
            return
        connection = Connection(self, websocket)
        await websocket.accept()
        self._connections.add(connection)
        watchdog = self._watchdog
        if watchdog is None or watchdog.done():
            self._watchdog = asyncio.create_task(self._watch_writes())
        self._counters["connections_total"] += 1
        try:
            if self.on_connect is not None:
                await _call(self.on_connect, connection)
            await connection._reply({"type": "welcome", "connection": connection.id, "limits": self.limits()})
            receiver = connection._receiver = asyncio.create_task(self._receive_loop(connection))
            try:
                await asyncio.wait([receiver])
            finally:
                receiver.cancel()
        except Exception:
            logger.exception("%r: failed", connection)
            connection._abort(CLOSE_INTERNAL_ERROR, "internal error")
        finally:
            await self._end(connection)

    async def _end(self, connection: Connection) -> None:
        """Unsubscribe everything, close the socket if still open, call on_disconnect."""
        connection._gone = True
        subs = list(connection._subs.values())
        connection._subs.clear()
        connection.scope.close()  # every inbox of the connection
        tasks = [sub.task for sub in subs if sub.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._connections.discard(connection)
        websocket = connection.websocket
        code = connection._close_code
        if code is not None and websocket.application_state == WebSocketState.CONNECTED:
            try:
                # A client that reads nothing never takes the close frame either.
                async with asyncio.timeout(1.0):
                    await websocket.close(code, connection._close_reason)
            except Exception:  # the client went away meanwhile
                pass
        if self.on_disconnect is not None:
            try:
                await _call(self.on_disconnect, connection)
            except Exception:
                logger.exception("on_disconnect of %r raised", connection)

    async def _watch_writes(self) -> None:
        """While there are connections: end those whose write has been blocked for ``send_timeout``."""
        interval = min(1.0, self.send_timeout / 4)
        while self._connections:
            await asyncio.sleep(interval)
            oldest = _monotonic() - self.send_timeout
            for connection in list(self._connections):
                since = connection._writing_since
                if since is not None and since < oldest and not connection._gone:
                    self._counters["disconnected_send_timeout"] += 1
                    logger.info("%r: a write blocked for %s s; closing", connection, self.send_timeout)
                    connection._abort(CLOSE_POLICY_VIOLATION, "too slow")

    async def _receive_loop(self, connection: Connection) -> None:
        receive = connection.websocket.receive
        counters = self._counters
        limit = self.max_message_bytes
        actions = self._actions
        while not connection._gone:
            event = await receive()
            kind = event["type"]
            if kind == "websocket.disconnect":
                connection._gone = True
                return
            if kind != "websocket.receive":
                continue
            counters["frames_received"] += 1
            if not connection._take_token():
                await connection._error(
                    "rate_limited", f"more than {self.max_messages_per_second:g} frames per second; frame ignored"
                )
                continue
            text = event.get("text")
            if text is None:
                await connection._error("bad_frame", "binary frames are not supported: send JSON text frames")
                continue
            if len(text) > limit or (len(text) * 4 > limit and len(text.encode("utf-8", "surrogatepass")) > limit):
                await connection._error("too_large", f"the frame is larger than {limit} bytes")
                continue
            try:
                frame = _loads(text)
            except (ValueError, RecursionError):
                await connection._error("bad_json", "the frame is not valid JSON")
                continue
            if type(frame) is not dict:
                await connection._error("bad_json", "a frame must be a JSON object")
                continue
            request_id = frame.get("id")
            if request_id is not None and not _usable_id(request_id):
                await connection._error(
                    "bad_request", f"id must be a string of at most {MAX_ID_LENGTH} characters or a (safe) integer"
                )
                continue
            action = frame.get("action")
            if type(action) is not str:
                await connection._error("bad_request", "action must be a string", request_id)
                continue
            handle = actions.get(action)
            if handle is None:
                await connection._error(
                    "unknown_action",
                    f"unknown action {action[:40]!r}: use subscribe, unsubscribe, send or ping",
                    request_id,
                )
                continue
            await handle(connection, frame, request_id)

    # -- actions -----------------------------------------------------------------

    async def _topic(self, connection: Connection, frame: dict[str, Any], request_id: object) -> str | None:
        topic = frame.get("topic")
        if type(topic) is not str:
            await connection._error("bad_request", "topic must be a string", request_id)
            return None
        try:
            check_topic(topic)
        except (TypeError, ValueError) as exc:
            await connection._error("bad_topic", str(exc)[:200], request_id)
            return None
        return topic

    async def _allowed(self, connection: Connection, action: Action, topic: str, request_id: object) -> bool:
        if topic.startswith(INTERNAL_PREFIX):
            await connection._error("forbidden", f"{topic[:100]!r}: tidings.* topics are internal", request_id)
            return False
        authorize = self.authorize
        if authorize is None:
            allowed = action == "subscribe"
        else:
            try:
                allowed = bool(await _call(authorize, connection, action, topic))
            except Exception:
                logger.exception("authorize(%r, %r, %r) raised", connection, action, topic)
                await connection._error("internal", "authorization failed", request_id)
                return False
        if not allowed:
            await connection._error("forbidden", f"not allowed to {action} on {topic[:100]!r}", request_id)
        return allowed

    async def _subscribe(self, connection: Connection, frame: dict[str, Any], request_id: object) -> None:
        topic = await self._topic(connection, frame, request_id)
        if topic is None:
            return
        ok = {"type": "ok", "action": "subscribe", "topic": topic, "id": request_id}
        if topic in connection._subs:
            await connection._reply(ok)
            return
        if len(connection._subs) >= self.max_subscriptions:
            await connection._error(
                "too_many_subscriptions", f"at most {self.max_subscriptions} subscriptions per connection", request_id
            )
            return
        if not await self._allowed(connection, "subscribe", topic, request_id):
            return
        if connection._gone or topic in connection._subs:  # changed while authorize ran
            return
        try:
            inbox = aio.subscribe(topic, max_pending=self.max_pending, overflow=self.overflow, scope=connection.scope)
        except HubClosedError:
            await connection._error("unavailable", "the hub is stopped", request_id)
            return
        sub = _Subscription(topic, inbox)
        connection._subs[topic] = sub
        sub.task = asyncio.create_task(self._forward(connection, sub))
        await connection._reply(ok)

    async def _unsubscribe(self, connection: Connection, frame: dict[str, Any], request_id: object) -> None:
        topic = await self._topic(connection, frame, request_id)
        if topic is None:
            return
        sub = connection._subs.pop(topic, None)
        if sub is None:
            await connection._error("not_subscribed", f"not subscribed to {topic[:100]!r}", request_id)
            return
        sub.inbox.close()
        await connection._reply({"type": "ok", "action": "unsubscribe", "topic": topic, "id": request_id})

    async def _send_message(self, connection: Connection, frame: dict[str, Any], request_id: object) -> None:
        topic = await self._topic(connection, frame, request_id)
        if topic is None:
            return
        data = frame.get("data", {})
        if type(data) is not dict:
            await connection._error("bad_request", "data must be a JSON object", request_id)
            return
        if not await self._allowed(connection, "send", topic, request_id):
            return
        try:
            message = Channel(topic, hub=self.hub).send(data)
        except (TypeError, ValueError) as exc:
            await connection._error("bad_data", str(exc)[:200], request_id)
            return
        except TidingsError as exc:  # stopped hub, unreachable broker
            await connection._error("unavailable", str(exc)[:200], request_id)
            return
        self._counters["sends"] += 1
        await connection._reply(
            {"type": "ok", "action": "send", "topic": topic, "id": request_id, "message_id": message.id}
        )

    async def _ping(self, connection: Connection, frame: dict[str, Any], request_id: object) -> None:
        await connection._reply({"type": "pong", "id": request_id})

    # -- delivery ----------------------------------------------------------------

    def _encode(self, message: Message) -> str | None:
        """``"topic":...,"data":...,"id":...,"time":...`` of a message; None if its data is not JSON."""
        key = message.id
        cache = self._encoded
        try:
            return cache[key]
        except KeyError:
            pass
        try:
            data = _dumps(message.data)
        except (TypeError, ValueError, RecursionError) as exc:
            self._counters["unencodable"] += 1
            logger.warning("message %s on %r not forwarded to WebSocket clients: %s", key, message.topic, exc)
            encoded = None
        else:
            encoded = f'"topic":{_dumps(message.topic)},"data":{data},"id":{_dumps(key)},"time":{message.time!r}'
        cache[key] = encoded
        if len(cache) > ENCODED_CACHE_SIZE:
            del cache[next(iter(cache))]
        return encoded

    async def _forward(self, connection: Connection, sub: _Subscription) -> None:
        """Write each message of one subscription to the socket, in order."""
        inbox = sub.inbox
        counters = self._counters
        encode = self._encode
        send = connection._send
        try:
            async for message in inbox:
                if message.topic.startswith(INTERNAL_PREFIX):
                    continue
                encoded = encode(message)
                if encoded is None:
                    continue
                dropped = inbox.dropped
                if dropped != sub.dropped:
                    frame = f'{sub.prefix}{encoded},"dropped":{dropped - sub.dropped}}}'
                    sub.dropped = dropped
                else:
                    frame = f"{sub.prefix}{encoded}}}"
                await send(frame)
                counters["messages_forwarded"] += 1
        except SlowConsumerError as exc:
            counters["slow_consumers"] += 1
            if connection._subs.get(sub.topic) is sub:
                del connection._subs[sub.topic]
            inbox.close()
            logger.info("%r: subscription %r fell behind: %s", connection, sub.topic, exc)
            await connection._error(
                "slow_consumer",
                f"more than {exc.max_pending} messages waited for this connection; subscription ended",
                topic=sub.topic,
            )
        except _Gone:
            pass
        else:
            # The inbox ended. Unsubscribing or the end of the connection
            # removed it first; otherwise the hub stopped (or the loop is
            # closing), and the connection cannot go on.
            if connection._subs.get(sub.topic) is sub:
                del connection._subs[sub.topic]
                inbox.close()
                connection._abort(CLOSE_GOING_AWAY, "the hub stopped")


async def _call(function: Callable[..., Any], *args: Any) -> Any:
    result = function(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


def _usable_id(value: object) -> bool:
    if type(value) is str:
        return len(value) <= MAX_ID_LENGTH
    # Integers a browser reads back exactly (JavaScript numbers are doubles).
    return type(value) is int and -(2**53) < value < 2**53
