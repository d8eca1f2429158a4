"""The WebSocket bridge under fan-out: N clients on one topic, one sender, on one machine.

Two paths deliver the same messages, each in a process of its own (the
script starts itself again with a hidden ``--role``):

- **through the bridge**: uvicorn serving :class:`tidings.asgi.WebSocketBridge`
  on an in-process hub; N WebSocket clients (``websockets``, asyncio, all in
  this process) subscribe to ``bench.feed``. A sender thread in the server
  process calls ``Channel("bench.feed").send(...)``; each client decodes
  every frame.
- **tidings' core alone**: the same hub, sender thread and N readers, but
  each reader is a ``tidings.aio`` inbox read by a task on one event loop:
  no sockets, no JSON. What the bridge adds is the difference.

For each N (100, 1,000) and path:

- **flat out**: M messages sent as fast as ``send()`` goes (inboxes are big
  enough to hold them all); deliveries/s = N x M / (last frame received -
  first ``send()``), and whether every client got every message, in order;
- **paced**: 10,000 deliveries/s (10,000 / N messages/s) for a few seconds;
  p50 and p99 of the time from ``send()`` to a client having decoded the
  frame. Sender and clients read ``time.monotonic()``, which on Linux is
  one clock for every process of the machine.

CPU: the share of one core each process used during the flat-out window
(from ``/proc``), which tells which side was the bottleneck. Run::

    python benchmarks/bench_ws.py             # 100 and 1,000 clients, about 2 minutes
    python benchmarks/bench_ws.py --quick     # smoke test, < 60 s (CI)
    python benchmarks/bench_ws.py --clients 100 --messages 2000

The table goes to stdout (Markdown); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import tidings
from tidings import Channel, Hub, Message, Settings

FEED, CONTROL = "bench.feed", "bench.control"
PACED_DELIVERIES = 10_000  # per second, whatever N


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# -- the sender (both roles) ----------------------------------------------------------


def send_feed(hub: Hub, run: int, count: int, rate: float) -> None:
    """Send ``count`` messages on the feed, at ``rate`` per second (0: flat out)."""
    feed = Channel(FEED, hub=hub)
    interval = 1.0 / rate if rate else 0.0
    start = time.monotonic()
    for n in range(count):
        if interval:
            delay = start + n * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        feed.send({"run": run, "n": n, "t": time.monotonic()})


# -- role: the bridge's server ---------------------------------------------------------


def role_server(spec: dict[str, Any]) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    from tidings.asgi import WebSocketBridge

    raise_fd_limit()
    hub = Hub(Settings(), name="bench-ws").start()

    def authorize(connection: object, action: str, topic: str) -> bool:
        return (action, topic) in (("subscribe", FEED), ("send", CONTROL))

    def control(message: Message) -> None:
        data = message.data
        threading.Thread(target=send_feed, args=(hub, data["run"], data["count"], data["rate"])).start()

    Channel(CONTROL, control, hub=hub)
    bridge = WebSocketBridge(
        hub=hub, authorize=authorize, max_pending=spec["max_pending"], max_messages_per_second=1000
    )
    app = Starlette(routes=[WebSocketRoute("/ws", bridge)])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    # Keep-alive pings off: a client process busy with 1,000 sockets may answer late.
    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws_ping_interval=None, backlog=4096)
    print(f"ws://127.0.0.1:{sock.getsockname()[1]}/ws", flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop(timeout=10.0)


# -- role: tidings' core alone ---------------------------------------------------------


def role_core(spec: dict[str, Any]) -> None:
    """N aio inboxes on one loop, fed by a sender thread; prints one JSON result per run."""
    import tidings.aio

    clients, runs = spec["clients"], spec["runs"]

    async def main() -> list[dict[str, Any]]:
        results = []
        async with Hub(Settings(), name="bench-core") as hub:
            inboxes = [tidings.aio.subscribe(FEED, hub=hub, max_pending=spec["max_pending"]) for _ in range(clients)]
            for run, (count, rate) in enumerate(runs):
                tally = Tally(clients, count, run)
                readers = [asyncio.create_task(read_inbox(inbox, tally, index)) for index, inbox in enumerate(inboxes)]
                cpu_before = time.process_time()
                threading.Thread(target=send_feed, args=(hub, run, count, rate)).start()
                try:
                    await asyncio.wait_for(tally.done.wait(), spec["timeout"])
                except TimeoutError:
                    pass
                for reader in readers:
                    reader.cancel()
                tally.cpu = time.process_time() - cpu_before
                results.append(tally.result())
            for inbox in inboxes:
                inbox.close()
        return results

    for result in asyncio.run(main()):
        print(json.dumps(result), flush=True)


async def read_inbox(inbox: Any, tally: Tally, index: int) -> None:
    async for message in inbox:
        data = message.data
        tally.seen(index, data["run"], data["n"], data["t"])


# -- the clients -------------------------------------------------------------------------


@dataclass
class Tally:
    """What N readers received in one run."""

    clients: int
    count: int
    run: int
    received: int = 0
    out_of_order: int = 0
    first_sent: float | None = None
    last_received: float = 0.0
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    next_n: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.next_n = [0] * self.clients

    def seen(self, index: int, run: int, n: int, sent: float) -> None:
        if run != self.run:
            return
        now = time.monotonic()
        self.latencies.append(now - sent)
        if n != self.next_n[index]:
            self.out_of_order += 1
        self.next_n[index] = n + 1
        if n == 0 and (self.first_sent is None or sent < self.first_sent):
            self.first_sent = sent
        self.received += 1
        self.last_received = now
        if self.received == self.clients * self.count:
            self.done.set()

    def result(self) -> dict[str, Any]:
        expected = self.clients * self.count
        elapsed = self.last_received - self.first_sent if self.first_sent is not None else float("nan")
        return {
            "clients": self.clients,
            "count": self.count,
            "received": self.received,
            "expected": expected,
            "out_of_order": self.out_of_order,
            "elapsed": elapsed,
            "rate": self.received / elapsed if elapsed > 0 else 0.0,
            "p50": percentile(self.latencies, 0.50) if self.latencies else float("nan"),
            "p99": percentile(self.latencies, 0.99) if self.latencies else float("nan"),
            "cpu": self.cpu,
        }


async def bridge_runs(
    url: str, server_pid: int, clients: int, runs: list[tuple[int, float]], timeout: float
) -> list[dict[str, Any]]:
    from websockets.asyncio.client import connect

    subscribe = json.dumps({"action": "subscribe", "topic": FEED})
    sockets = []
    for start in range(0, clients, 100):  # connect in waves, as a crowd would arrive
        batch = [
            connect(url, max_queue=1024, ping_interval=None, open_timeout=60)
            for _ in range(start, min(clients, start + 100))
        ]
        sockets += await asyncio.gather(*batch)
    for ws in sockets:
        await ws.send(subscribe)
    for ws in sockets:
        while json.loads(await ws.recv())["type"] != "ok":
            pass
    control = await connect(url, ping_interval=None)
    await control.recv()  # welcome
    results = []
    try:
        for run, (count, rate) in enumerate(runs):
            tally = Tally(clients, count, run)
            readers = [asyncio.create_task(read_socket(ws, tally, index)) for index, ws in enumerate(sockets)]
            cpu_before, server_before = time.process_time(), cpu_seconds(server_pid)
            await control.send(
                json.dumps({"action": "send", "topic": CONTROL, "data": {"run": run, "count": count, "rate": rate}})
            )
            try:
                await asyncio.wait_for(tally.done.wait(), timeout)
            except TimeoutError:
                log(f"  run {run}: timed out with {tally.received:,} of {clients * count:,} deliveries")
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            tally.cpu = time.process_time() - cpu_before
            result = tally.result()
            result["server_cpu"] = cpu_seconds(server_pid) - server_before
            results.append(result)
    finally:
        await asyncio.gather(*(ws.close() for ws in [*sockets, control]), return_exceptions=True)
    return results


async def read_socket(ws: Any, tally: Tally, index: int) -> None:
    loads = json.loads
    async for raw in ws:
        frame = loads(raw)
        if frame["type"] == "message":
            data = frame["data"]
            tally.seen(index, data["run"], data["n"], data["t"])
        else:
            log(f"  client {index}: {frame}")


# -- the harness -------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    quick: bool
    clients: tuple[int, ...]
    messages: int  # per flat-out run, at 100 clients (fewer at 1,000: the same deliveries)
    paced_seconds: float
    timeout: float


def runs_for(cfg: Config, clients: int) -> list[tuple[int, float]]:
    flat = max(20, cfg.messages * 100 // clients)
    rate = PACED_DELIVERIES / clients
    return [(flat, 0.0), (max(10, int(rate * cfg.paced_seconds)), rate)]


def spawn(role: str, spec: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--role", role, "--spec", json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
    )


def measure_core(cfg: Config, clients: int) -> list[dict[str, Any]]:
    runs = runs_for(cfg, clients)
    spec = {"clients": clients, "runs": runs, "max_pending": max(r[0] for r in runs) + 10, "timeout": cfg.timeout}
    process = spawn("core", spec)
    started = time.monotonic()
    out, _ = process.communicate(timeout=cfg.timeout * 4)
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    for result in results:
        result["server_cpu"] = result["cpu"]
    log(f"  core alone: {time.monotonic() - started:.1f} s")
    return results


def measure_bridge(cfg: Config, clients: int) -> list[dict[str, Any]]:
    runs = runs_for(cfg, clients)
    server = spawn("server", {"max_pending": max(r[0] for r in runs) + 10})
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        if not url.startswith("ws://"):
            raise SystemExit(f"the bridge's server did not start (is tidings[web] installed?): {url!r}")
        started = time.monotonic()
        results = asyncio.run(bridge_runs(url, server.pid, clients, runs, cfg.timeout))
        log(f"  bridge: {time.monotonic() - started:.1f} s")
        return results
    finally:
        server.send_signal(2)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def render(rows: list[tuple[int, str, dict[str, Any], dict[str, Any]]]) -> str:
    lines = [
        "| clients | path | flat out: deliveries/s | every client got every message, in order "
        f"| paced {PACED_DELIVERIES:,} deliveries/s: p50 | p99 | CPU (server / clients), flat out |",
        "|---:|---|---:|:---:|---:|---:|---|",
    ]
    for clients, path, flat, paced in rows:
        complete = flat["received"] == flat["expected"] and paced["received"] == paced["expected"]
        ordered = flat["out_of_order"] == 0 and paced["out_of_order"] == 0
        verdict = (
            "yes"
            if complete and ordered
            else (
                f"**no**: {flat['received']:,}/{flat['expected']:,} and {paced['received']:,}/{paced['expected']:,}"
                f" delivered, {flat['out_of_order'] + paced['out_of_order']} out of order"
            )
        )
        elapsed = flat["elapsed"] or float("nan")
        if path.startswith("tidings"):
            cpu = f"{flat['cpu'] / elapsed:.0%} (one process)"
        else:
            cpu = f"{flat['server_cpu'] / elapsed:.0%} / {flat['cpu'] / elapsed:.0%}"
        lines.append(
            f"| {clients:,} | {path} | {flat['rate']:,.0f}/s ({flat['count']:,} msgs) | {verdict} "
            f"| {paced['p50'] * 1000:.2f} ms | {paced['p99'] * 1000:.2f} ms | {cpu} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller runs: a smoke test that takes < 60 s")
    parser.add_argument("--clients", default="", help="comma-separated client counts (default 100,1000)")
    parser.add_argument("--messages", type=int, default=0, help="flat-out messages at 100 clients (default 2,000)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one run")
    parser.add_argument("--role", default="", help=argparse.SUPPRESS)
    parser.add_argument("--spec", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "server":
        role_server(json.loads(args.spec))
        return
    if args.role == "core":
        role_core(json.loads(args.spec))
        return
    try:
        import starlette
        import uvicorn
        import websockets  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"{exc.name} is missing: pip install -e '.[web]' websockets") from None
    raise_fd_limit()
    cfg = Config(
        quick=args.quick,
        clients=tuple(int(c) for c in args.clients.split(",")) if args.clients else (100, 1000),
        messages=args.messages or (500 if args.quick else 2_000),
        paced_seconds=2.0 if args.quick else 8.0,
        timeout=args.timeout,
    )
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    rows = []
    for clients in cfg.clients:
        log(f"{clients:,} clients")
        core_flat, core_paced = measure_core(cfg, clients)
        bridge_flat, bridge_paced = measure_bridge(cfg, clients)
        rows.append((clients, "tidings core alone (aio inboxes, no sockets)", core_flat, core_paced))
        rows.append((clients, "through the bridge (uvicorn + WebSocket + JSON)", bridge_flat, bridge_paced))
    load_after = os.getloadavg()[0]

    import importlib.metadata

    import starlette
    import uvicorn

    print()
    print(
        f"tidings {tidings.__version__}, Starlette {starlette.__version__}, uvicorn {uvicorn.__version__}, "
        f"websockets {importlib.metadata.version('websockets')}, "
        f"Python {platform.python_version()}, {os.cpu_count()} cores"
    )
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, mode: {'quick' if cfg.quick else 'full'}, "
        f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after"
    )
    print()
    print(render(rows))
    print()
    for clients, _, _, _ in rows[::2]:
        core = next(r[2] for r in rows if r[0] == clients and r[1].startswith("tidings"))
        bridge = next(r[2] for r in rows if r[0] == clients and r[1].startswith("through"))
        if bridge["rate"]:
            print(
                f"- {clients:,} clients: the core alone delivers {core['rate'] / bridge['rate']:.1f}x "
                "what the bridge does: the bridge (socket writes, frames, JSON) is the bottleneck"
                if core["rate"] > bridge["rate"]
                else f"- {clients:,} clients: the bridge keeps up with the core"
            )
    print(
        "- Flat out: M messages sent as fast as `send()` goes; inboxes hold them all (max_pending ≥ M), so "
        "nothing may be dropped. Paced: the sender sleeps between sends to reach "
        f"{PACED_DELIVERIES:,} deliveries/s in total (10,000 / N messages/s)."
    )
    print(
        "- Latency: from just before `send()` (in the server process) to the client having decoded the frame "
        "(in the client process), both on `time.monotonic()`. Clients and server share the machine's 2 cores."
    )
    print()
    print(f"Total time: {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
