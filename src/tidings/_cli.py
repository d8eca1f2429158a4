"""The ``tidings`` command: listen, send and inspect over a network broker.

    tidings listen 'chat.*' --broker redis://127.0.0.1:6379/0
    tidings send chat.rooms.lona '{"text": "hello"}' --broker redis://127.0.0.1:6379/0
    tidings stats --broker redis://127.0.0.1:6379/0
    tidings demo --port 8000                      # the web demo (needs tidings[web])

``--broker`` defaults to ``$TIDINGS_CHANNEL_BROKER_URL`` and ``--namespace``
to ``$TIDINGS_CHANNEL_NAMESPACE`` (else ``tidings``). Errors print one line
on stderr and exit non-zero: 2 for bad arguments, 1 for everything else.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from ._channel import Channel
from ._exceptions import TidingsError
from ._hub import Hub
from ._message import Message
from ._settings import Settings, redact_url

__all__ = ["main"]


class CommandError(Exception):
    """A failure to report as one line, with an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _settings(args: argparse.Namespace) -> Settings:
    url = args.broker or os.environ.get("TIDINGS_CHANNEL_BROKER_URL")
    if not url:
        raise CommandError("no broker: give --broker URL or set TIDINGS_CHANNEL_BROKER_URL", 2)
    options: dict[str, Any] = {"CHANNEL_BROKER_URL": url}
    if args.namespace:
        options["CHANNEL_NAMESPACE"] = args.namespace
    try:
        return Settings(**options)
    except ValueError as exc:
        raise CommandError(str(exc), 2) from None


def _check_reachable(settings: Settings) -> None:
    from .brokers.redis import connect

    url = settings.CHANNEL_BROKER_URL
    assert url is not None
    try:
        connect(url, "tidings-cli").close()
    except ImportError as exc:
        raise CommandError(str(exc)) from None
    except Exception as exc:
        raise CommandError(f"cannot reach {redact_url(url)}: {exc}") from None


def _line(message: Message) -> str:
    record = {"topic": message.topic, "data": message.data, "id": message.id, "time": message.time}
    return json.dumps(record, ensure_ascii=False, default=repr)


def listen(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _check_reachable(settings)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    out = sys.stdout
    lock = threading.Lock()

    def show(message: Message) -> None:
        text = _line(message)
        with lock:
            out.write(text + "\n")
            out.flush()

    with Hub(settings, name="cli") as hub:
        try:
            Channel(args.pattern, show, hub=hub)
        except (TypeError, ValueError) as exc:
            raise CommandError(f"bad pattern: {exc}", 2) from None
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
    return 0


def send(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        data = json.loads(args.data) if args.data is not None else {}
    except json.JSONDecodeError as exc:
        raise CommandError(f"the data is not JSON: {exc}", 2) from None
    if not isinstance(data, dict):
        raise CommandError('the data must be a JSON object, such as \'{"text": "hello"}\'', 2)
    _check_reachable(settings)
    with Hub(settings, name="cli") as hub:
        try:
            message = Channel(args.topic, hub=hub).send(data)
        except (TypeError, ValueError) as exc:
            raise CommandError(str(exc), 2) from None
        if not hub.join(args.timeout):
            raise CommandError(f"the message did not make it through {redact_url(str(settings.CHANNEL_BROKER_URL))}")
    print(message.id)
    return 0


def stats(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _check_reachable(settings)
    from .brokers.redis import connect

    url = settings.CHANNEL_BROKER_URL
    assert url is not None
    namespace = settings.CHANNEL_NAMESPACE
    stream = f"{namespace}:stream"
    client = connect(url, "tidings-cli")
    try:
        length = client.xlen(stream)
        newest = client.xrevrange(stream, count=1)
        readers = client.hgetall(f"{namespace}:readers")
        now = time.time()
        rows = []
        for name, raw in sorted(readers.items()):
            try:
                info = json.loads(raw)
                position = str(info["position"])
                seen = now - float(info["time"])
            except (ValueError, KeyError, TypeError):
                continue
            if seen > 60:
                continue  # a reader that stopped long ago
            behind = len(client.xrange(stream, min="(" + position, max="+", count=10_001))
            lag = "10000+" if behind > 10_000 else str(behind)
            rows.append({"reader": name.decode(), "position": position, "lag": lag, "seen": round(seen, 1)})
    finally:
        client.close()
    result = {
        "broker": redact_url(url),
        "stream": stream,
        "length": length,
        "newest": newest[0][0].decode() if newest else None,
        "readers": rows,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"broker   {result['broker']}")
    print(f"stream   {stream}: {length} entries, newest {result['newest']}")
    if not rows:
        print("readers  none connected")
    for row in rows:
        print(f"reader   {row['reader']}  at {row['position']}  lag {row['lag']} entries  seen {row['seen']} s ago")
    return 0


def demo(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ._demo.app import create_app
    except ImportError as exc:
        raise CommandError(f"the demo needs Starlette and uvicorn: pip install 'tidings[web]' ({exc})") from None
    url = args.broker or os.environ.get("TIDINGS_CHANNEL_BROKER_URL")
    options: dict[str, Any] = {}
    if url:
        options["CHANNEL_BROKER_URL"] = url
        if args.namespace:
            options["CHANNEL_NAMESPACE"] = args.namespace
        try:
            settings = Settings(**options)
        except ValueError as exc:
            raise CommandError(str(exc), 2) from None
        _check_reachable(settings)
        where = f"broker {redact_url(url)}"
    else:
        settings = Settings()
        where = "in-process broker"
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, args.port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    # A WebSocket frame past the bridge's limit gets an error frame; only
    # a much larger one is cut off by uvicorn (close code 1009).
    config = uvicorn.Config(create_app(settings=settings), log_level=args.log_level, ws_max_size=1 << 20, lifespan="on")
    print(f"tidings demo: open http://{host}:{port}/ ({where}; Ctrl-C to stop)", flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down gracefully, then raises the Ctrl-C again
        pass
    finally:
        sock.close()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tidings", description="Listen, send and inspect tidings channels.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--broker", help="broker URL (default: $TIDINGS_CHANNEL_BROKER_URL)")
    common.add_argument("--namespace", help="channel namespace (default: $TIDINGS_CHANNEL_NAMESPACE or 'tidings')")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("listen", parents=[common], help="print each matching message as a JSON line")
    p.add_argument("pattern", help="topic or pattern, e.g. 'chat.*'")
    p.set_defaults(run=listen)
    p = commands.add_parser("send", parents=[common], help="send one message and print its id")
    p.add_argument("topic")
    p.add_argument("data", nargs="?", help="a JSON object (default: {})")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for delivery through the broker")
    p.set_defaults(run=send)
    p = commands.add_parser("stats", parents=[common], help="show the stream and its readers")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=stats)
    p = commands.add_parser(
        "demo", parents=[common], help="serve the web demo: the clock and a chat (needs tidings[web])"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(run=demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except CommandError as exc:
        print(f"tidings {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except TidingsError as exc:
        print(f"tidings {args.command}: {exc}", file=sys.stderr)
        return 1
    return code
