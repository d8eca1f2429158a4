"""tidings over Redis Streams against broadcaster 0.3.1 and raw redis-py pub/sub, in one run.

Publisher and subscriber always run in separate processes (this script, started
again with a hidden ``--role``), talking through the Redis server on
127.0.0.1:6379 (``--url``). Four contenders:

- **tidings**: ``Hub(Settings(CHANNEL_BROKER_URL=..., CHANNEL_NAMESPACE=<fresh>))``
  in each process; ``Channel(topic, handler)`` in the subscriber,
  ``Channel(topic).send(data)`` in the publisher, which ends with
  ``hub.join()``. Main environment (redis-py 8.x).
- **broadcaster 0.3.1**, its ``redis://`` (pub/sub) backend:
  ``await broadcast.publish()`` per message, ``broadcast.subscribe()``.
  broadcaster 0.3.1 delivers nothing with redis-py 8, so its roles run in a
  virtual environment of their own, ``.bench-venvs/broadcaster`` in the repo
  root (git-ignored; created on first use with ``broadcaster==0.3.1``,
  ``redis==7.4.*`` and ``hiredis``, reused afterwards).
- **raw pub/sub, 1 call/msg**: redis-py's synchronous client,
  ``PUBLISH`` one call per message; the subscriber loops on
  ``pubsub.get_message()``. Main environment.
- **raw pub/sub, pipelined x100**: the same with 100 ``PUBLISH`` per
  ``pipeline(transaction=False)``.

Every payload is ``{"i": i, "t": time.time()}`` (JSON text for the peers); the
subscriber's handler records ``time.time()`` on arrival (one machine, one
clock). Three scenarios:

1. throughput: the publisher sends N messages as fast as it can; msgs/s from
   its first send to the subscriber's last handler call (median of runs);
2. latency: paced at 2,000 msg/s; p50/p99 from send to handler;
3. faults: paced at 4,000 msg/s, the harness kills the subscriber's Redis
   connection twice (``CLIENT KILL ID``; the connection is found with
   ``CLIENT LIST`` and the subscriber's own sockets in ``/proc``); received,
   lost, duplicated and out-of-order messages, and whether it hung.

Run::

    python benchmarks/bench_redis.py            # full, about 3 minutes
    python benchmarks/bench_redis.py --quick    # smoke test, < 60 s

The tables go to stdout (Markdown); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Only the standard library at module level: the broadcaster roles run this
# same file with the benchmark's own virtual environment, where neither
# tidings nor redis-py 8 is installed.

TIDINGS = "tidings"
BROADCASTER = "broadcaster 0.3.1"
RAW = "raw pub/sub, 1 call/msg"
RAW_PIPE = "raw pub/sub, pipelined x100"
CONTENDERS = (TIDINGS, BROADCASTER, RAW, RAW_PIPE)
KEYS = {TIDINGS: "tidings", BROADCASTER: "broadcaster", RAW: "raw", RAW_PIPE: "raw-pipe"}
NAMES = {key: name for name, key in KEYS.items()}

DEFAULT_URL = "redis://127.0.0.1:6379/0"
TOPIC = "bench.t"
PIPELINE = 100
REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".bench-venvs" / "broadcaster"
VENV_REQUIREMENTS = ("broadcaster==0.3.1", "redis==7.4.*", "hiredis")
TIDINGS_BROKER = REPO / "src" / "tidings" / "brokers" / "redis.py"
REDIS_START = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no '
    "--dir /var/lib/redis --logfile /var/log/redis/ci.log"
)


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# =============================================================================
# Roles: the code that runs in the publisher and subscriber processes
# =============================================================================

_emit_lock = threading.Lock()


def emit(word: str, payload: object = None) -> None:
    """One line to the harness: a word, optionally followed by JSON."""
    line = word if payload is None else f"{word} {json.dumps(payload)}"
    with _emit_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Recorder:
    """The subscriber's handler state: what arrived, when, in which order.

    Messages with ``i < 0`` are warm-up messages: the first one tells the
    harness that the path works end to end; none is counted.
    """

    GAP = 0.1  # a pause between two arrivals longer than this is listed

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = bytearray(n)
        self.received = 0
        self.distinct = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.highest = -1
        self.first = 0.0
        self.last = 0.0
        self.latencies: list[float] = []
        self.gaps: list[tuple[float, float, int]] = []  # (start, seconds, i after the pause)
        self.warm = False
        self.errors: list[str] = []
        self.stats: Callable[[], dict[str, Any]] | None = None  # the contender's own counters, if any

    def on(self, data: Any) -> None:
        now = time.time()
        i = data["i"]
        if i < 0:
            if not self.warm:
                self.warm = True
                emit("warm")
            return
        self.latencies.append(now - data["t"])
        if self.received:
            pause = now - self.last
            if pause > self.GAP and len(self.gaps) < 50:
                self.gaps.append((self.last, pause, i))
        else:
            self.first = now
        self.last = now
        self.received += 1
        if self.seen[i]:
            self.duplicates += 1
        else:
            self.seen[i] = 1
            self.distinct += 1
            if self.distinct == self.n:
                emit("done")
        if i < self.highest:
            self.out_of_order += 1
        else:
            self.highest = i

    def report(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        missing = [i for i in range(self.n) if not self.seen[i]]
        ranges: list[list[int]] = []
        for i in missing:
            if ranges and ranges[-1][1] == i - 1:
                ranges[-1][1] = i
            else:
                ranges.append([i, i])
        return {
            "received": self.received,
            "distinct": self.distinct,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "first": self.first,
            "last": self.last,
            "p50": percentile(lat, 0.50),
            "p99": percentile(lat, 0.99),
            "max": lat[-1] if lat else None,
            "gaps": self.gaps,
            "missing_ranges": ranges[:10],
            "errors": self.errors[:5],
            "stats": self._stats(),
        }

    def _stats(self) -> dict[str, Any]:
        if self.stats is None:
            return {}
        try:
            return {k: v for k, v in self.stats().items() if isinstance(v, (int, float, str, bool))}
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted sequence."""
    if not ordered:
        return None
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


def subscriber_control(recorder: Recorder, close: Callable[[], object]) -> None:
    """The subscriber's main thread: wait for ``report``, answer, leave.

    The answer comes from this thread, so a subscriber whose receiving side
    hangs still reports what it got.
    """
    for line in sys.stdin:
        if line.strip() == "report":
            emit("result", recorder.report())
            break
    closer = threading.Thread(target=close, daemon=True)
    closer.start()
    closer.join(5.0)
    sys.stdout.flush()
    os._exit(0)


def json_payload(i: int) -> str:
    return json.dumps({"i": i, "t": time.time()})


class Go:
    """The publisher waits for the harness's ``go`` (read on another thread)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            if line.strip() == "go":
                self.event.set()
                return
        os._exit(3)  # the harness went away


def pace_sync(n: int, rate: float, send: Callable[[int], object]) -> None:
    """Send 0..n-1: as fast as possible (rate 0) or message i at start + i/rate."""
    if rate <= 0:
        for i in range(n):
            send(i)
        return
    start = time.perf_counter()
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        send(i)


def warm_up_sync(go: Go, send: Callable[[int], object]) -> None:
    """Warm-up messages until the subscriber saw one, then let them drain."""
    k = 0
    while not go.event.wait(0.02):
        k += 1
        send(-k)
    time.sleep(0.2)


def publisher_started() -> float:
    import gc

    gc.collect()
    started = time.time()
    emit("started", {"t": started})
    return started


def role_tidings_sub(spec: dict[str, Any]) -> None:
    from tidings import Channel, Hub, Message, Settings

    recorder = Recorder(spec["n"])
    hub = Hub(Settings(CHANNEL_BROKER_URL=spec["url"], CHANNEL_NAMESPACE=spec["namespace"]), name="bench-sub").start()

    def handler(message: Message) -> None:
        recorder.on(message.data)

    Channel(TOPIC, handler, hub=hub)
    recorder.stats = hub.stats
    hub.join(30.0)
    emit("subscribed")
    subscriber_control(recorder, lambda: hub.stop(timeout=3.0, drain=False))


def role_tidings_pub(spec: dict[str, Any]) -> None:
    from tidings import Channel, Hub, Settings

    hub = Hub(Settings(CHANNEL_BROKER_URL=spec["url"], CHANNEL_NAMESPACE=spec["namespace"]), name="bench-pub").start()
    send = Channel(TOPIC, hub=hub).send
    go = Go()
    emit("ready")
    warm_up_sync(go, lambda i: send({"i": i, "t": time.time()}))
    hub.join(10.0)
    started = publisher_started()
    pace_sync(spec["n"], spec["rate"], lambda i: send({"i": i, "t": time.time()}))
    sent = time.time()
    joined = hub.join(spec["timeout"])
    done = time.time()
    stats = {k: v for k, v in hub.stats().items() if isinstance(v, (int, float, str, bool))}
    emit("result", {"first": started, "sent": sent, "joined": done, "join_ok": joined, "errors": [], "stats": stats})
    hub.stop(timeout=5.0, drain=False)


def role_raw_sub(spec: dict[str, Any]) -> None:
    redis: Any = importlib.import_module("redis")
    recorder = Recorder(spec["n"])
    client = redis.Redis.from_url(spec["url"])
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(spec["channel"])
    loads = json.loads

    def receive() -> None:
        get = pubsub.get_message
        try:
            while True:
                message = get(timeout=1.0)
                if message is not None and message["type"] == "message":
                    recorder.on(loads(message["data"]))
        except Exception as exc:  # reported, not raised: the harness asks for the result
            recorder.errors.append(f"receiver stopped: {type(exc).__name__}: {exc}")

    threading.Thread(target=receive, daemon=True, name="raw-sub").start()
    emit("subscribed")
    subscriber_control(recorder, pubsub.close)


def role_raw_pub(spec: dict[str, Any], pipelined: bool) -> None:
    redis: Any = importlib.import_module("redis")
    client = redis.Redis.from_url(spec["url"])
    channel = spec["channel"]
    errors: list[str] = []
    publish = client.publish

    def send_one(i: int) -> None:
        try:
            publish(channel, json_payload(i))
        except Exception as exc:
            errors.append(f"{i}: {type(exc).__name__}: {exc}")

    go = Go()
    emit("ready")
    warm_up_sync(go, send_one)
    started = publisher_started()
    n, rate = spec["n"], spec["rate"]
    if pipelined:
        pipe = client.pipeline(transaction=False)

        def send_batch(b: int) -> None:
            for i in range(b * PIPELINE, min(n, (b + 1) * PIPELINE)):
                pipe.publish(channel, json_payload(i))
            try:
                pipe.execute()
            except Exception as exc:
                errors.append(f"batch {b}: {type(exc).__name__}: {exc}")
                pipe.reset()

        pace_sync(-(-n // PIPELINE), rate / PIPELINE, send_batch)
    else:
        pace_sync(n, rate, send_one)
    sent = time.time()
    emit("result", {"first": started, "sent": sent, "joined": sent, "join_ok": None, "errors": errors[:5]})
    client.close()


def role_broadcaster_sub(spec: dict[str, Any]) -> None:
    import asyncio

    broadcaster: Any = importlib.import_module("broadcaster")
    recorder = Recorder(spec["n"])
    subscribed = threading.Event()
    loads = json.loads

    async def run() -> None:
        async with broadcaster.Broadcast(spec["url"]) as broadcast, broadcast.subscribe(spec["channel"]) as subscriber:
            subscribed.set()
            async for event in subscriber:
                recorder.on(loads(event.message))

    def thread() -> None:
        try:
            asyncio.run(run())
            recorder.errors.append("subscriber loop ended")
        except BaseException as exc:
            recorder.errors.append(f"subscriber stopped: {type(exc).__name__}: {exc}")
        subscribed.set()

    threading.Thread(target=thread, daemon=True, name="broadcaster-sub").start()
    subscribed.wait(30.0)
    emit("subscribed")
    subscriber_control(recorder, lambda: None)


def role_broadcaster_pub(spec: dict[str, Any]) -> None:
    import asyncio

    broadcaster: Any = importlib.import_module("broadcaster")
    channel, n, rate = spec["channel"], spec["n"], spec["rate"]
    errors: list[str] = []

    async def run() -> None:
        async with broadcaster.Broadcast(spec["url"]) as broadcast:
            publish = broadcast.publish

            async def send_one(i: int) -> None:
                try:
                    await publish(channel, json_payload(i))
                except Exception as exc:
                    errors.append(f"{i}: {type(exc).__name__}: {exc}")

            go = Go()
            emit("ready")
            k = 0
            while not go.event.is_set():
                k += 1
                await send_one(-k)
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
            started = publisher_started()
            if rate <= 0:
                for i in range(n):
                    await send_one(i)
            else:
                start = time.perf_counter()
                for i in range(n):
                    delay = start + i / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await send_one(i)
            sent = time.time()
            emit("result", {"first": started, "sent": sent, "joined": sent, "join_ok": None, "errors": errors[:5]})

    asyncio.run(run())


def run_role(role: str, spec: dict[str, Any]) -> None:
    side, _, key = role.partition(":")
    if side == "sub":
        subscribers = {"tidings": role_tidings_sub, "broadcaster": role_broadcaster_sub}
        subscribers.get(key, role_raw_sub)(spec)
    elif key == "tidings":
        role_tidings_pub(spec)
    elif key == "broadcaster":
        role_broadcaster_pub(spec)
    else:
        role_raw_pub(spec, pipelined=key == "raw-pipe")
    sys.stdout.flush()
    os._exit(0)  # do not wait for client threads that may hang


# =============================================================================
# The harness
# =============================================================================


class Child:
    """A role process: JSON-lines protocol on stdout, commands on stdin, stderr to a file."""

    def __init__(self, python: str, role: str, spec: dict[str, Any], workdir: Path) -> None:
        self.role = role
        self.stderr_path = workdir / f"{role.replace(':', '-')}-{uuid.uuid4().hex[:6]}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [python, str(Path(__file__).resolve()), "--role", role, "--spec", json.dumps(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=env,
                cwd=str(REPO),
            )
        self.lines: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.got: dict[str, Any] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            word, _, rest = line.strip().partition(" ")
            try:
                payload = json.loads(rest) if rest else None
            except ValueError:
                payload = rest
            self.lines.put((word, payload))
        self.lines.put(("eof", None))

    def expect(self, word: str, timeout: float) -> Any:
        """Wait for ``word`` (lines seen meanwhile are kept); raise on timeout or exit."""
        if word in self.got:
            return self.got[word]
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.role}: no '{word}' within {timeout:.0f} s")
            try:
                got, payload = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            self.got[got] = payload
            if got == word:
                return payload
            if got == "eof":
                raise EOFError(f"{self.role} exited ({self.proc.wait()}) before '{word}': {self.stderr_tail()}")

    def send(self, command: str) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def stderr_tail(self, lines: int = 3) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@dataclass
class Outcome:
    """What one publisher/subscriber run gave."""

    contender: str
    n: int
    pub: dict[str, Any] = field(default_factory=dict)
    sub: dict[str, Any] = field(default_factory=dict)
    failure: str = ""
    kills: list[tuple[float, str]] = field(default_factory=list)  # (time, what was killed)
    sub_done: bool = False
    wall: float = 0.0

    @property
    def rate(self) -> float | None:
        if self.failure or not self.sub_done or not self.pub:
            return None
        return self.n / (float(self.sub["last"]) - float(self.pub["first"]))


def socket_ports(pid: int) -> set[int]:
    """Local TCP ports of the sockets that process ``pid`` holds (Linux /proc)."""
    inodes: set[str] = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    except OSError:
        return set()
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if len(parts) > 9 and parts[9] in inodes:
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return ports


def find_connections(admin: Any, pid: int, which: str) -> list[dict[str, str]]:
    """The Redis clients of process ``pid`` to kill.

    ``which``: ``reader`` (tidings' reader connection), ``subscriber`` (a
    client in SUBSCRIBE mode) or ``writer`` (every other connection).
    """
    ports = socket_ports(pid)
    clients = [c for c in admin.client_list() if int(c["addr"].rsplit(":", 1)[1]) in ports]

    def subscribing(c: dict[str, str]) -> bool:
        return int(c.get("sub", "0") or 0) > 0 or "P" in c.get("flags", "")

    def tidings_reader(c: dict[str, str]) -> bool:
        return c.get("name", "").startswith("tidings") and "reader" in c.get("name", "")

    if which == "reader":
        found = [c for c in clients if tidings_reader(c)]
        return found or [c for c in clients if c.get("name", "").startswith("tidings")]
    if which == "subscriber":
        return [c for c in clients if subscribing(c)]
    return [c for c in clients if not subscribing(c) and not tidings_reader(c)]


def kill_connections(admin: Any, pid: int, which: str) -> str:
    found = find_connections(admin, pid, which)
    if not found:
        return "nothing found"
    killed = []
    for client in found:
        with contextlib.suppress(Exception):
            admin.execute_command("CLIENT", "KILL", "ID", client["id"])
            killed.append(f"{client.get('name') or '(no name)'} id={client['id']} cmd={client.get('cmd')}")
    return "; ".join(killed)


@dataclass(frozen=True)
class Config:
    quick: bool
    url: str
    reps: int
    n: int
    latency_rate: float
    latency_seconds: float
    fault_n: int
    fault_rate: float
    fault_publisher: bool
    hang_timeout: float
    timeout: float
    contenders: tuple[str, ...]
    scenarios: frozenset[str]


SCENARIOS = ("throughput", "latency", "faults")


class Harness:
    def __init__(self, cfg: Config, workdir: Path, venv_python: str | None) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.venv_python = venv_python
        redis: Any = importlib.import_module("redis")
        self.admin = redis.Redis.from_url(cfg.url)

    def python_for(self, contender: str) -> str:
        if contender == BROADCASTER:
            assert self.venv_python is not None
            return self.venv_python
        return sys.executable

    def cleanup(self, namespace: str) -> None:
        """Delete the keys that a tidings run left under its namespace."""
        with contextlib.suppress(Exception):
            keys = list(self.admin.scan_iter(match=f"*{namespace}*", count=1000))
            if keys:
                self.admin.delete(*keys)

    def run(
        self,
        contender: str,
        n: int,
        rate: float,
        kill: tuple[str, Sequence[float]] | None = None,
    ) -> Outcome:
        """One publisher/subscriber pair: ``n`` messages at ``rate`` (0: flat out).

        ``kill``: (``sub`` or ``pub``, seconds after the first send) for fault runs.
        """
        key = KEYS[contender]
        run_id = uuid.uuid4().hex[:12]
        namespace = f"bench-{run_id}"
        spec: dict[str, Any] = {
            "url": self.cfg.url,
            "namespace": namespace,
            "channel": f"bench-{run_id}.t",
            "n": n,
            "rate": rate,
            "timeout": self.cfg.timeout,
        }
        outcome = Outcome(contender, n)
        python = self.python_for(contender)
        started = time.perf_counter()
        sub = pub = None
        try:
            sub = Child(python, f"sub:{key}", spec, self.workdir)
            sub.expect("subscribed", 60.0)
            pub = Child(python, f"pub:{key}", spec, self.workdir)
            pub.expect("ready", 60.0)
            try:
                sub.expect("warm", 20.0)
            except TimeoutError:
                raise TimeoutError("delivers nothing (no warm-up message arrived within 20 s)") from None
            pub.send("go")
            first = pub.expect("started", 30.0)["t"]
            send_seconds = n / rate if rate > 0 else 0.0
            if kill is not None:
                side, moments = kill
                target, which = (sub, "reader") if key == "tidings" else (sub, "subscriber")
                if side == "pub":
                    target, which = pub, "writer"
                for moment in moments:
                    delay = first + moment - time.time()
                    if delay > 0:
                        time.sleep(delay)
                    outcome.kills.append((time.time(), kill_connections(self.admin, target.proc.pid, which)))
            outcome.pub = pub.expect("result", send_seconds + self.cfg.timeout + 30.0)
            wait = self.cfg.hang_timeout if kill is not None else self.cfg.timeout
            try:
                sub.expect("done", wait)
                outcome.sub_done = True
                if kill is not None:
                    time.sleep(0.5)  # late duplicates
            except TimeoutError:
                pass
            except EOFError as exc:
                outcome.failure = f"subscriber exited: {exc}"
            if sub.proc.poll() is None:
                sub.send("report")
                try:
                    outcome.sub = sub.expect("result", 15.0)
                except (TimeoutError, EOFError) as exc:
                    outcome.failure = outcome.failure or f"no report from the subscriber ({exc})"
            if not outcome.sub_done and not outcome.failure and kill is None:
                got = outcome.sub.get("distinct", 0)
                outcome.failure = f"incomplete: {got:,}/{n:,} after {wait:.0f} s"
        except (TimeoutError, EOFError, KeyError, TypeError) as exc:
            outcome.failure = str(exc)
            for child in (sub, pub):
                if child is not None and child.stderr_tail():
                    log(f"  {child.role} stderr: {child.stderr_tail()}")
        finally:
            for child in (pub, sub):
                if child is not None:
                    child.close()
            if key == "tidings":
                self.cleanup(namespace)
        outcome.wall = time.perf_counter() - started
        return outcome


# -- results ------------------------------------------------------------------


@dataclass
class Cell:
    samples: list[float] = field(default_factory=list)
    failure: str = ""

    @property
    def value(self) -> float | None:
        if self.failure or not self.samples:
            return None
        return statistics.median(self.samples)


@dataclass
class Row:
    label: str
    unit: str  # "rate" or "ms"
    cells: dict[str, Cell] = field(default_factory=dict)

    def cell(self, name: str) -> Cell:
        return self.cells.setdefault(name, Cell())

    def value(self, name: str) -> float | None:
        cell = self.cells.get(name)
        return None if cell is None else cell.value


def fmt_number(value: float, unit: str) -> str:
    if unit == "rate":
        return f"{value:,.0f}/s"
    if unit == "ratio":
        return f"{value:,.2f}x"
    return f"{value:,.1f} ms" if value >= 10 else f"{value:,.2f} ms"


def fmt_cell(row: Row, name: str) -> str:
    cell = row.cells.get(name)
    if cell is None:
        return "—"
    if cell.failure:
        return cell.failure
    value = cell.value
    return "—" if value is None else fmt_number(value, row.unit)


def render_table(rows: Sequence[Row]) -> str:
    head = ["scenario", *CONTENDERS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---", *["---:"] * len(CONTENDERS)]) + "|"]
    for row in rows:
        lines.append("| " + " | ".join([row.label, *(fmt_cell(row, name) for name in CONTENDERS)]) + " |")
    return "\n".join(lines)


def render_samples(rows: Sequence[Row]) -> Iterator[str]:
    for row in rows:
        parts = []
        for name in CONTENDERS:
            cell = row.cells.get(name)
            if cell is not None and cell.samples:
                parts.append(f"{name}: [{', '.join(fmt_number(v, row.unit) for v in cell.samples)}]")
        if parts:
            yield f"- {row.label}: " + "; ".join(parts)


@dataclass
class FaultRow:
    contender: str
    side: str  # "sub" or "pub": whose connection was killed
    outcome: Outcome
    hang_timeout: float

    def lost(self) -> int | None:
        return None if not self.outcome.sub else self.outcome.n - int(self.outcome.sub["distinct"])

    def stalled_at(self) -> int | None:
        """The kill after which nothing arrived any more (1-based), if any.

        What was already in the socket's receive buffer may still be read
        just after a kill, hence the margin.
        """
        if self.outcome.sub_done or not self.outcome.sub:
            return None
        last = float(self.outcome.sub.get("last") or 0.0)
        for k, (moment, _) in enumerate(self.outcome.kills, 1):
            if last < moment + 0.25:
                return k
        return None

    def verdict(self) -> str:
        o = self.outcome
        if o.failure and not o.sub:
            return o.failure
        sub = o.sub
        errors = [e.replace("|", "/") for e in sub.get("errors", [])]
        parts: list[str] = []
        stalled = self.stalled_at()
        missed = [str(k) for k, (_, what) in enumerate(o.kills, 1) if what == "nothing found"]
        if missed:
            parts.append(f"**kill #{', #'.join(missed)} found no connection to kill**")
        if o.sub_done:
            parts.append("complete")
        elif sub.get("received", 0) == 0:
            parts.append("received nothing")
        elif stalled is not None:
            how = "**stops**" if errors else "**hangs**"
            parts.append(f"{how}: nothing after kill #{stalled} (waited {self.hang_timeout:g} s after the last send)")
        else:
            parts.append("recovered, with losses")
        parts += errors[:1]
        stats = (o.pub if self.side == "pub" else sub).get("stats") or {}
        if "broker_reconnects" in stats:
            whose = "publisher" if self.side == "pub" else "subscriber"
            parts.append(
                f"tidings' {whose} counted {stats['broker_reconnects']} reconnects, "
                f"{stats.get('broker_duplicates', 0)} duplicates dropped, {stats.get('broker_gaps', 0)} gaps"
            )
        if o.pub.get("join_ok") is False:
            parts.append("publisher's `hub.join()` timed out")
        parts += [f"publisher: {e}".replace("|", "/") for e in o.pub.get("errors", [])[:1]]
        if o.failure:
            parts.append(o.failure)
        return "; ".join(parts)

    def pause(self) -> str:
        if self.stalled_at() is not None:
            return "never resumed"
        gaps = self.outcome.sub.get("gaps") or []
        if not gaps:
            return "< 0.1 s"
        return f"{max(g[1] for g in gaps):.2f} s"


def render_faults(rows: Sequence[FaultRow]) -> str:
    head = [
        "contender",
        "connection killed (x2)",
        "sent",
        "received",
        "lost",
        "duplicated",
        "out of order",
        "longest pause",
        "outcome",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---", "---", *["---:"] * 6, "---"]) + "|"]
    for row in rows:
        o, sub = row.outcome, row.outcome.sub
        side = {"sub": "subscriber's", "pub": "publisher's"}[row.side]
        which = f"{side} {'reader' if row.contender == TIDINGS and row.side == 'sub' else 'connection'}"
        if not sub:
            cells = [row.contender, which, f"{o.n:,}", "—", "—", "—", "—", "—", row.verdict()]
        else:
            cells = [
                row.contender,
                which,
                f"{o.n:,}",
                f"{sub['distinct']:,}",
                f"{row.lost():,}",
                f"{sub['duplicates']:,}",
                f"{sub['out_of_order']:,}",
                row.pause(),
                row.verdict(),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- scenarios ------------------------------------------------------------------


@dataclass
class Book:
    """What the scenarios note besides their rows: time per contender, side observations."""

    timings: dict[str, float] = field(default_factory=dict)
    join_lags: list[float] = field(default_factory=list)  # tidings: publisher's join() after the last handler call

    def spent(self, name: str, seconds: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + seconds

    def note_join(self, o: Outcome) -> None:
        if o.contender == TIDINGS and o.sub_done and o.pub.get("join_ok"):
            self.join_lags.append(o.pub["joined"] - o.sub["last"])


def alternate(contenders: Sequence[str], reps: int, run: Callable[[str], Outcome]) -> dict[str, list[Outcome]]:
    """Each contender ``reps`` times, interleaved, the order reversed every round; stop one at its first failure."""
    results: dict[str, list[Outcome]] = {name: [] for name in contenders}
    order = list(contenders)
    for round_number in range(reps):
        for name in order if round_number % 2 == 0 else order[::-1]:
            if any(o.failure for o in results[name]):
                continue
            outcome = run(name)
            results[name].append(outcome)
            if outcome.failure:
                log(f"  {name}: {outcome.failure}")
    return results


def scenario_throughput(h: Harness, cfg: Config, book: Book) -> list[Row]:
    log(f"throughput: {cfg.n:,} messages flat out, {cfg.reps} run(s) each")
    row = Row(f"{cfg.n:,} msgs, publisher flat out: msgs/s, first send → last handler call", "rate")

    def run(name: str) -> Outcome:
        o = h.run(name, cfg.n, 0)
        if o.rate is not None:
            send = o.pub["sent"] - o.pub["first"]
            log(f"  {name}: {o.rate:,.0f} msgs/s (publisher's sends took {send:.2f} s; run {o.wall:.1f} s)")
        book.spent(name, o.wall)
        book.note_join(o)
        return o

    for name, outcomes in alternate(cfg.contenders, cfg.reps, run).items():
        cell = row.cell(name)
        cell.samples = [o.rate for o in outcomes if o.rate is not None]
        failed = [o.failure for o in outcomes if o.failure]
        if failed:
            cell.failure = failed[0]
    return [row]


def scenario_latency(h: Harness, cfg: Config, book: Book) -> list[Row]:
    n = int(cfg.latency_rate * cfg.latency_seconds)
    contenders = [c for c in cfg.contenders if c != RAW_PIPE]
    reps = 1 if cfg.quick else 2
    log(f"latency: {cfg.latency_rate:,.0f} msg/s for {cfg.latency_seconds:g} s, {reps} run(s) each")
    label = f"paced {cfg.latency_rate:,.0f} msg/s for {cfg.latency_seconds:g} s: send → handler"
    p50, p99 = Row(f"{label}, p50", "ms"), Row(f"{label}, p99", "ms")

    def run(name: str) -> Outcome:
        o = h.run(name, n, cfg.latency_rate)
        if not o.failure and o.sub.get("p99") is not None:
            log(f"  {name}: p50 {o.sub['p50'] * 1000:.2f} ms, p99 {o.sub['p99'] * 1000:.2f} ms (run {o.wall:.1f} s)")
        book.spent(name, o.wall)
        book.note_join(o)
        return o

    for name, outcomes in alternate(contenders, reps, run).items():
        for row, key in ((p50, "p50"), (p99, "p99")):
            cell = row.cell(name)
            cell.samples = [o.sub[key] * 1000 for o in outcomes if not o.failure and o.sub.get(key) is not None]
            failed = [o.failure for o in outcomes if o.failure]
            if failed:
                cell.failure = failed[0]
    return [p50, p99]


def scenario_faults(h: Harness, cfg: Config, book: Book) -> list[FaultRow]:
    seconds = cfg.fault_n / cfg.fault_rate
    moments = (0.3 * seconds, 0.65 * seconds)
    contenders = [c for c in cfg.contenders if c != RAW_PIPE]
    sides = ("sub", "pub") if cfg.fault_publisher else ("sub",)
    rows: list[FaultRow] = []
    for side in sides:
        log(
            f"faults: {cfg.fault_n:,} messages at {cfg.fault_rate:,.0f}/s, the {side}lisher's"
            if side == "pub"
            else f"faults: {cfg.fault_n:,} messages at {cfg.fault_rate:,.0f}/s, the subscriber's"
            f" connection killed at {moments[0]:.1f} s and {moments[1]:.1f} s"
        )
        for name in contenders:
            o = h.run(name, cfg.fault_n, cfg.fault_rate, kill=(side, moments))
            book.spent(name, o.wall)
            row = FaultRow(name, side, o, cfg.hang_timeout)
            rows.append(row)
            killed = " / ".join(what for _, what in o.kills)
            log(f"  {name}: killed [{killed}] → {row.verdict()} (lost {row.lost()}; run {o.wall:.1f} s)")
    return rows


# -- environment ----------------------------------------------------------------


def ensure_venv(python: str) -> str | None:
    """The broadcaster venv's python, created once; None (with a log line) if it cannot be had."""
    venv_python = VENV / "bin" / "python"
    check = "import broadcaster, redis, importlib.metadata as m; print(m.version('broadcaster'), redis.__version__)"
    if venv_python.exists():
        done = subprocess.run([str(venv_python), "-c", check], capture_output=True, text=True, check=False)
        if done.returncode == 0 and done.stdout.split()[:1] == ["0.3.1"] and done.stdout.split()[1].startswith("7.4"):
            return str(venv_python)
        log(f"{VENV} is not usable ({(done.stderr or done.stdout).strip()[-200:]}); creating it again")
        shutil.rmtree(VENV, ignore_errors=True)
    log(f"creating {VENV} with {', '.join(VENV_REQUIREMENTS)}")
    started = time.perf_counter()
    steps = [
        [python, "-m", "venv", str(VENV)],
        [str(venv_python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *VENV_REQUIREMENTS],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log(f"  failed: {' '.join(step[:4])}...: {done.stderr.strip()[-300:]}")
            shutil.rmtree(VENV, ignore_errors=True)
            return None
    log(f"  done in {time.perf_counter() - started:.0f} s")
    return str(venv_python)


def tidings_status() -> str:
    """Empty when tidings' Redis broker can be used, else why not."""
    if not TIDINGS_BROKER.exists():
        return "placeholder: src/tidings/brokers/redis.py does not exist yet"
    probe = (
        "from tidings import Settings; "
        f"Settings(CHANNEL_BROKER_URL={DEFAULT_URL!r}, CHANNEL_NAMESPACE='bench-probe'); "
        "import tidings.brokers.redis"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"unavailable: {last}"
    return ""


def versions(venv_python: str | None) -> str:
    import importlib.metadata as metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    redis: Any = importlib.import_module("redis")
    info = redis.Redis.from_url(DEFAULT_URL).info("server")
    venv = "not run"
    if venv_python:
        done = subprocess.run(
            [venv_python, "-c", "import redis, hiredis; print(redis.__version__, hiredis.__version__)"],
            capture_output=True,
            text=True,
            check=False,
        )
        parts = done.stdout.split()
        if len(parts) == 2:
            venv = f"redis-py {parts[0]} + hiredis {parts[1]}"
    return (
        f"tidings {version('tidings')}, redis-py {version('redis')} + hiredis {version('hiredis')} (main env), "
        f"broadcaster 0.3.1: {venv}, Redis {info.get('redis_version')}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    )


def make_config(args: argparse.Namespace) -> Config:
    quick = bool(args.quick)
    scenarios = frozenset(args.only.split(",")) if args.only else frozenset(SCENARIOS)
    unknown = scenarios - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}; known: {', '.join(SCENARIOS)}")
    contenders: tuple[str, ...] = CONTENDERS
    if args.contenders:
        wanted = set(args.contenders.split(","))
        contenders = tuple(name for name in CONTENDERS if KEYS[name] in wanted)
        if wanted - set(NAMES):
            raise SystemExit(f"unknown contender(s); known: {', '.join(NAMES)}")
    return Config(
        quick=quick,
        url=args.url,
        reps=args.reps if args.reps else (1 if quick else 3),
        n=args.messages if args.messages else (10_000 if quick else 50_000),
        latency_rate=2_000.0,
        latency_seconds=2.0 if quick else 5.0,
        fault_n=8_000 if quick else 20_000,
        fault_rate=4_000.0,
        fault_publisher=not quick,
        hang_timeout=5.0 if quick else 10.0,
        timeout=args.timeout,
        contenders=contenders,
        scenarios=scenarios,
    )


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def targets(rows: Sequence[Row], faults: Sequence[FaultRow], tidings_missing: str, with_faults: bool) -> str:
    lines = ["| figure | value | target | met |", "|---|---:|---|:---:|"]

    def add(label: str, value: str, target: str, met: bool | None) -> None:
        mark = "" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {label} | {value} | {target} | {mark} |")

    by_unit = {row.label: row for row in rows}
    throughput = next((r for r in by_unit.values() if r.unit == "rate"), None)
    p99 = next((r for r in by_unit.values() if r.label.endswith("p99")), None)
    missing = tidings_missing or "—"
    if throughput is not None:
        for peer, factor in ((BROADCASTER, 3.0), (RAW_PIPE, 1.0)):
            if peer not in throughput.cells:
                continue
            value = ratio(throughput.value(TIDINGS), throughput.value(peer))
            text = missing if value is None else f"{value:,.2f}x"
            add(f"throughput, tidings / {peer}", text, f"≥ {factor:g}x", None if value is None else value >= factor)
    if p99 is not None:
        ours = p99.value(TIDINGS)
        add(
            "tidings p99 at 2,000 msg/s",
            missing if ours is None else fmt_number(ours, "ms"),
            "< 2 ms",
            None if ours is None else ours < 2.0,
        )
    for fault in faults:
        if fault.contender != TIDINGS:
            continue
        lost, sub = fault.lost(), fault.outcome.sub
        if lost is None:
            add(f"tidings under faults ({fault.side}), lost / duplicated", fault.verdict(), "0 / 0", False)
        else:
            dup = int(sub["duplicates"])
            add(
                f"tidings under faults ({fault.side}), lost / duplicated",
                f"{lost:,} / {dup:,}",
                "0 / 0",
                lost == 0 and dup == 0,
            )
    if with_faults and not any(f.contender == TIDINGS for f in faults):
        add("tidings under faults, lost / duplicated", missing, "0 / 0", None)
    return "\n".join(lines)


def notes(cfg: Config) -> list[str]:
    """The notes under the tables, for the scenarios and contenders that ran."""
    lines = [
        "- One Redis 7 server on loopback; publisher and subscriber are separate processes of this script "
        "(`--role`), started fresh for every run, with a fresh namespace / channel. A run starts after "
        "warm-up messages have gone through end to end; throughput is N / (subscriber's last handler call - "
        "publisher's first send), both `time.time()` on one machine. Medians of the runs; contenders "
        "alternate, the order reversed every round.",
    ]
    if TIDINGS in cfg.contenders:
        lines.append(
            "- tidings: `Hub(Settings(CHANNEL_BROKER_URL, CHANNEL_NAMESPACE))` in each process, public API only; "
            "the publisher ends with `hub.join()` (messages also come back to the sending process)."
        )
    if BROADCASTER in cfg.contenders:
        lines.append(
            "- broadcaster 0.3.1: `redis://` backend (PUBLISH/SUBSCRIBE), one `await broadcast.publish()` per "
            "message, `async for event in subscriber`; JSON text payloads. Runs with redis-py 7.4 + hiredis in "
            "`.bench-venvs/broadcaster`: with redis-py 8 it delivers nothing and raises nothing."
        )
    if RAW in cfg.contenders or RAW_PIPE in cfg.contenders:
        lines.append(
            "- raw pub/sub: redis-py 8 synchronous client with hiredis, default options; one `publish()` call "
            f"per message, or {PIPELINE} per `pipeline(transaction=False)`; the subscriber loops on "
            "`pubsub.get_message(timeout=1)` and decodes JSON. Pub/sub keeps nothing for a disconnected "
            "subscriber."
        )
    if "latency" in cfg.scenarios:
        lines.append(
            "- Latency: paced with `sleep` to message i at start + i/rate; payload carries `time.time()` taken "
            f"just before the send; percentiles over all {int(cfg.latency_rate * cfg.latency_seconds):,} messages "
            "of a run, median over runs."
        )
    if "faults" in cfg.scenarios:
        lines.append(
            f"- Faults: {cfg.fault_n:,} messages at {cfg.fault_rate:,.0f}/s; at 30% and 65% of the send time the "
            "harness runs `CLIENT KILL ID` on the subscriber's connection, found in `CLIENT LIST` among the "
            "subscriber process's own sockets (`/proc/<pid>/fd`): for tidings the connection whose name starts "
            "with `tidings` and contains `reader` (else every `tidings*` connection of that process), for the "
            "others the one in SUBSCRIBE mode. The publisher rows kill the publisher's other connections (not a "
            f"tidings reader). A subscriber that has not completed {cfg.hang_timeout:g} s after the last send "
            "reports what it has; 'hangs' means nothing arrived after a kill. 'longest pause' is the longest "
            "time between two arrivals."
        )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke test that takes < 60 s")
    parser.add_argument("--reps", type=int, default=0, help="throughput runs per contender (default 3, quick 1)")
    parser.add_argument("--messages", type=int, default=0, help="messages per throughput run (default 50,000)")
    parser.add_argument("--only", default="", help=f"comma-separated scenarios among {', '.join(SCENARIOS)}")
    parser.add_argument("--contenders", default="", help=f"comma-separated among {', '.join(NAMES)}")
    parser.add_argument("--url", default=DEFAULT_URL, help="Redis URL (loopback only)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one run to complete")
    parser.add_argument("--role", default="", help=argparse.SUPPRESS)
    parser.add_argument("--spec", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        run_role(args.role, json.loads(args.spec))
        return

    cfg = make_config(args)
    try:
        redis: Any = importlib.import_module("redis")
    except ImportError:
        raise SystemExit(
            "redis-py is not installed: pip install -e '.[redis]' (or: pip install redis hiredis)"
        ) from None
    try:
        redis.Redis.from_url(cfg.url, socket_connect_timeout=2).ping()
    except Exception as exc:
        raise SystemExit(f"Redis is not reachable at {cfg.url} ({exc}); start it with:\n  {REDIS_START}") from None

    started = time.perf_counter()
    contenders = list(cfg.contenders)
    tidings_missing = tidings_status() if TIDINGS in contenders else ""
    if tidings_missing:
        log(f"tidings: {tidings_missing}")
        contenders.remove(TIDINGS)
    venv_python = ensure_venv(sys.executable) if BROADCASTER in contenders else None
    broadcaster_missing = BROADCASTER in contenders and venv_python is None
    if broadcaster_missing:
        contenders.remove(BROADCASTER)
    setup_seconds = time.perf_counter() - started
    cfg = Config(**{**cfg.__dict__, "contenders": tuple(contenders)})

    book = Book()
    load_before = os.getloadavg()[0]
    rows: list[Row] = []
    faults: list[FaultRow] = []
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        harness = Harness(cfg, Path(tmp), venv_python)
        if "throughput" in cfg.scenarios:
            rows += scenario_throughput(harness, cfg, book)
        if "latency" in cfg.scenarios:
            rows += scenario_latency(harness, cfg, book)
        if "faults" in cfg.scenarios:
            faults = scenario_faults(harness, cfg, book)
    for row in rows:
        if tidings_missing:
            row.cell(TIDINGS).failure = "—"
        if broadcaster_missing:
            row.cell(BROADCASTER).failure = "no venv (see stderr)"
        if "p50" in row.label or "p99" in row.label:
            row.cells.setdefault(RAW_PIPE, Cell(failure="—"))
    elapsed = time.perf_counter() - started

    print()
    print(versions(venv_python))
    load_after = os.getloadavg()[0]
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, mode: {'quick' if cfg.quick else 'full'}, "
        f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after"
    )
    if tidings_missing:
        print()
        print(f"**tidings: {tidings_missing}.** Its cells are empty; the peers ran.")
    print()
    if rows:
        print(render_table(rows))
        print()
    if faults:
        print(render_faults(faults))
        print()
    print(targets(rows, faults, tidings_missing, "faults" in cfg.scenarios))
    print()
    print("\n".join(notes(cfg)))
    if book.join_lags:
        lags = ", ".join(f"{lag * 1000:+,.0f}" for lag in book.join_lags)
        print(
            "- tidings' publisher: when `hub.join()` returned, relative to the subscriber's last handler call "
            f"(throughput and latency runs; negative: before it): {lags} ms. About +1,000 ms means join() "
            "waited for the reader's `XREAD BLOCK` (1 s) to time out although everything had come back."
        )
    print()
    print("Samples (each run):")
    print("\n".join(render_samples(rows)))
    print()
    spent = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in book.timings.items())
    print(f"Total time: {elapsed:.0f} s (setup {setup_seconds:.0f} s; per contender: {spent})")


if __name__ == "__main__":
    main()
