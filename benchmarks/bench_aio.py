"""tidings on asyncio against broadcaster 0.3.1's memory:// backend and a bare asyncio.Queue, in one run.

One sender and 1 or 100 async subscribers, all on one event loop. Four
contenders, interleaved within each scenario (the order rotates every round,
so that the machine's drift hits all of them alike):

- **tidings (async handler)**: ``Channel("bench", handler, hub=hub)`` with an
  ``async def`` handler, subscribed on the loop (the hub runs it there, one
  message at a time per subscription); the sender calls
  ``Channel("bench", hub=hub).send(payload)``. One ``Hub(Settings())``
  (1 broker + 4 task-worker threads) per event loop.
- **tidings (aio inbox)**: a task per subscriber reads
  ``async with tidings.aio.subscribe("bench", hub=hub, max_pending=<all>,
  overflow="error") as inbox: async for message in inbox`` from the same hub;
  ``inbox.dropped`` must stay 0.
- **broadcaster 0.3.1, memory://**: ``Broadcast("memory://")``, a task per
  subscriber in ``async with broadcast.subscribe(channel="bench")`` /
  ``async for event in subscriber``; the sender awaits
  ``broadcast.publish(channel="bench", message=payload)``. It passes the
  payload object through (no copy, no serialisation).
- **bare asyncio.Queue**: one ``asyncio.Queue`` per subscriber; the sender
  ``put_nowait``s the payload into each (fan-out in the sender), a task per
  subscriber awaits ``queue.get()``. No copy, no routing: a limit, not a
  competitor.

Every payload is a new ``{"i": i, "t": time.perf_counter()}``; every
subscriber calls the same recording function first thing in its handler (or
loop body), which checks that ``i`` is exactly the next expected number
(exactly once, in order) and, in the latency scenario, records
``perf_counter() - t``. Scenarios:

1. throughput: 1 subscriber, N messages sent as fast as possible;
2. fan-out: 100 subscribers, fewer messages;
3. latency: sends paced at a fixed rate, 1 and 100 subscribers; p50/p99 from
   the send to the start of the handler.

Rates are deliveries / (first send .. last delivery). The sender is a
coroutine on the loop and yields (``await asyncio.sleep(0)``) after every
``--yield-every`` messages (100), for every contender alike: a sender that
never yields would starve the subscribers on the same loop, and
broadcaster's ``publish`` (a coroutine) never suspends by itself either (its
queue is unbounded). Each timed window starts with ``gc.collect()``; tables
show medians. Run::

    PYTHONPATH=src python benchmarks/bench_aio.py                 # full, a few minutes
    PYTHONPATH=src python benchmarks/bench_aio.py --quick         # smoke test, < 60 s (CI)
    PYTHONPATH=src python benchmarks/bench_aio.py --loop both     # asyncio, then uvloop

The tables go to stdout (Markdown); progress goes to stderr. The exit status
is 1 if any contender lost, duplicated or reordered a message (or did not
finish in time), 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import tidings
import tidings.aio
from tidings import Channel, Hub, Message, Settings

try:
    from broadcaster import Broadcast
except ImportError:  # pragma: no cover - the bench extra is not installed
    HAVE_BROADCASTER = False
else:
    HAVE_BROADCASTER = True

HANDLER = "tidings (async handler)"
INBOX = "tidings (aio inbox)"
BROADCASTER = "broadcaster memory://"
BARE = "bare asyncio.Queue"
CONTENDERS = (HANDLER, INBOX, BROADCASTER, BARE)
KEYS = {"handler": HANDLER, "inbox": INBOX, "broadcaster": BROADCASTER, "bare": BARE}

TOPIC = "bench"
END = -1  # ``i`` of the untimed end marker sent after each window
TARGET = 3.0  # tidings / broadcaster deliveries/s

Payload = dict[str, Any]
perf_counter = time.perf_counter


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- configuration ------------------------------------------------------------

SCENARIOS = ("throughput", "fanout", "latency")
LOOPS = ("asyncio", "uvloop")


@dataclass(frozen=True)
class Config:
    quick: bool
    reps: int
    one_messages: int
    fan_subscribers: int
    fan_messages: int
    rate: float
    latency_seconds: float
    latency_subscribers: tuple[int, ...]
    yield_every: int
    timeout: float
    loops: tuple[str, ...]
    scenarios: tuple[str, ...]
    contenders: tuple[str, ...]


def make_config(args: argparse.Namespace) -> Config:
    quick = bool(args.quick)
    scenarios = tuple(args.only.split(",")) if args.only else SCENARIOS
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}; known: {', '.join(SCENARIOS)}")
    loops = LOOPS if args.loop == "both" else (args.loop,)
    contenders: tuple[str, ...] = CONTENDERS
    if args.contenders:
        wanted = args.contenders.split(",")
        unknown = set(wanted) - set(KEYS)
        if unknown:
            raise SystemExit(f"unknown contender(s): {', '.join(sorted(unknown))}; known: {', '.join(KEYS)}")
        contenders = tuple(KEYS[key] for key in wanted)
    if not HAVE_BROADCASTER:
        contenders = tuple(c for c in contenders if c != BROADCASTER)
    if args.yield_every < 1:
        raise SystemExit("--yield-every must be at least 1")
    return Config(
        quick=quick,
        reps=args.reps if args.reps else (3 if quick else 5),
        one_messages=args.messages if args.messages else (20_000 if quick else 100_000),
        fan_subscribers=100,
        fan_messages=2_000 if quick else 10_000,
        rate=args.rate,
        latency_seconds=0.5 if quick else 2.0,
        latency_subscribers=(1, 100),
        yield_every=args.yield_every,
        timeout=args.timeout,
        loops=loops,
        scenarios=scenarios,
        contenders=contenders,
    )


# -- what every subscriber records ------------------------------------------------


class Group:
    """The subscribers of one run: counts down deliveries, notes the last one's time."""

    def __init__(self, expected: int) -> None:
        self.remaining = expected
        self.end = 0.0
        self.done = asyncio.Event()

    def finish(self) -> None:
        self.end = perf_counter()
        self.done.set()


class Sink:
    """One subscriber's record: exactly once and in order, and latencies when asked.

    ``record`` is the first thing every contender's handler (or loop body)
    does with a payload; it returns True for the end marker.
    """

    __slots__ = ("anomalies", "ended", "first_anomalies", "group", "latencies", "next", "received")

    def __init__(self, group: Group, latencies: bool) -> None:
        self.group = group
        self.latencies: list[float] | None = [] if latencies else None
        self.next = 0
        self.received = 0
        self.anomalies = 0  # deliveries whose i was not the next expected one
        self.first_anomalies: list[str] = []
        self.ended = False

    def record(self, data: Payload) -> bool:
        latencies = self.latencies
        if latencies is not None:
            latencies.append(perf_counter() - data["t"])
        i = data["i"]
        if i != self.next:
            return self._unexpected(i)
        self.next = i + 1
        self.received += 1
        group = self.group
        group.remaining -= 1
        if not group.remaining:
            group.finish()
        return False

    def _unexpected(self, i: int) -> bool:
        if i == END:
            if self.latencies:
                self.latencies.pop()
            self.ended = True
            return True
        self.anomalies += 1
        if len(self.first_anomalies) < 3:
            self.first_anomalies.append(f"got #{i} when #{self.next} was due")
        self.next = max(self.next, i + 1)
        self.received += 1
        group = self.group
        group.remaining -= 1
        if not group.remaining:
            group.finish()
        return False


# -- the contenders -----------------------------------------------------------


class Contender:
    """One way of delivering the payloads: subscribe, send, stop."""

    name = ""

    async def setup(self, sinks: Sequence[Sink]) -> None:
        """Subscribe one subscriber per sink; return once messages sent now reach them all."""
        raise NotImplementedError

    def sender(self) -> Callable[[Payload], object]:
        """A callable that sends one payload (it may return an awaitable to await)."""
        raise NotImplementedError

    async_send = False  # whether sender() returns a coroutine function

    async def finish(self, timeout: float) -> None:
        """After the end marker was sent: wait until every subscriber has it, then unsubscribe."""
        raise NotImplementedError

    def problems(self) -> list[str]:
        """Anything the contender itself reports (e.g. an inbox's dropped count)."""
        return []


async def _stop_tasks(tasks: Sequence[asyncio.Task[None]], timeout: float) -> None:
    """Wait up to ``timeout`` for the consumer tasks, then cancel the rest."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5.0)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log(f"  a consumer task raised: {task.exception()!r}")


class TidingsHandler(Contender):
    name = HANDLER

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.channels: list[Channel] = []

    async def setup(self, sinks: Sequence[Sink]) -> None:
        def make_handler(sink: Sink) -> Callable[[Message], Coroutine[Any, Any, None]]:
            record = sink.record

            async def handler(message: Message) -> None:
                record(message.data)

            return handler

        self.channels = [Channel(TOPIC, make_handler(sink), hub=self.hub) for sink in sinks]
        await self.hub.ajoin(60.0)

    def sender(self) -> Callable[[Payload], object]:
        return Channel(TOPIC, hub=self.hub).send

    async def finish(self, timeout: float) -> None:
        if not await self.hub.ajoin(timeout):
            log(f"  {self.name}: hub.ajoin() timed out")
        for channel in self.channels:
            channel.unsubscribe()
        self.channels = []


class TidingsInbox(Contender):
    name = INBOX

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.tasks: list[asyncio.Task[None]] = []
        self.dropped: list[int] = []
        self.errors: list[str] = []

    async def setup(self, sinks: Sequence[Sink]) -> None:
        expected = sinks[0].group.remaining if sinks else 0
        max_pending = max(1000, 2 * expected + 10)  # never overflows in these runs
        self.dropped = []
        self.errors = []
        ready: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()

        async def consume(sink: Sink, subscribed: asyncio.Future[None]) -> None:
            record = sink.record
            try:
                async with tidings.aio.subscribe(
                    TOPIC, hub=self.hub, max_pending=max_pending, overflow="error"
                ) as inbox:
                    subscribed.set_result(None)
                    async for message in inbox:
                        if record(message.data):
                            break
                    self.dropped.append(inbox.dropped)
            except Exception as exc:
                self.errors.append(repr(exc))
                raise

        for sink in sinks:
            subscribed = loop.create_future()
            ready.append(subscribed)
            self.tasks.append(asyncio.create_task(consume(sink, subscribed)))
        await asyncio.wait_for(asyncio.gather(*ready), 60.0)
        await self.hub.ajoin(60.0)

    def sender(self) -> Callable[[Payload], object]:
        return Channel(TOPIC, hub=self.hub).send

    async def finish(self, timeout: float) -> None:
        await _stop_tasks(self.tasks, timeout)
        self.tasks = []

    def problems(self) -> list[str]:
        found = [f"inbox errors: {', '.join(self.errors[:2])}"] if self.errors else []
        if any(self.dropped):
            found.append(f"inbox.dropped = {sum(self.dropped):,}")
        return found


class BroadcasterMemory(Contender):
    name = BROADCASTER
    async_send = True

    def __init__(self) -> None:
        self.broadcast: Any = None
        self.tasks: list[asyncio.Task[None]] = []

    async def setup(self, sinks: Sequence[Sink]) -> None:
        broadcast = Broadcast("memory://")
        await broadcast.connect()
        self.broadcast = broadcast
        loop = asyncio.get_running_loop()
        ready: list[asyncio.Future[None]] = []

        async def consume(sink: Sink, subscribed: asyncio.Future[None]) -> None:
            record = sink.record
            async with broadcast.subscribe(channel=TOPIC) as subscriber:
                subscribed.set_result(None)
                async for event in subscriber:  # type: ignore[union-attr]
                    # broadcaster types events as str (and None); memory:// passes our dict.
                    if record(event.message):  # type: ignore[union-attr,arg-type]
                        break

        for sink in sinks:
            subscribed = loop.create_future()
            ready.append(subscribed)
            self.tasks.append(asyncio.create_task(consume(sink, subscribed)))
        await asyncio.wait_for(asyncio.gather(*ready), 60.0)

    def sender(self) -> Callable[[Payload], object]:
        publish = self.broadcast.publish

        def send(payload: Payload) -> Awaitable[None]:
            return publish(channel=TOPIC, message=payload)  # type: ignore[no-any-return]

        return send

    async def finish(self, timeout: float) -> None:
        await _stop_tasks(self.tasks, timeout)
        self.tasks = []
        await self.broadcast.disconnect()
        self.broadcast = None


class BareQueue(Contender):
    name = BARE

    def __init__(self) -> None:
        self.queues: list[asyncio.Queue[Payload]] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def setup(self, sinks: Sequence[Sink]) -> None:
        async def consume(sink: Sink, queue: asyncio.Queue[Payload]) -> None:
            record = sink.record
            get = queue.get
            while True:
                if record(await get()):
                    break

        self.queues = [asyncio.Queue() for _ in sinks]
        self.tasks = [asyncio.create_task(consume(sink, q)) for sink, q in zip(sinks, self.queues, strict=True)]
        await asyncio.sleep(0)

    def sender(self) -> Callable[[Payload], object]:
        queues = self.queues
        if len(queues) == 1:
            return queues[0].put_nowait
        puts = [q.put_nowait for q in queues]

        def send(payload: Payload) -> None:
            for put in puts:
                put(payload)

        return send

    async def finish(self, timeout: float) -> None:
        await _stop_tasks(self.tasks, timeout)
        self.tasks = []
        self.queues = []


# -- one run ------------------------------------------------------------------------


@dataclass
class Outcome:
    rate: float | None = None  # deliveries/s
    p50: float | None = None  # seconds
    p99: float | None = None
    problems: list[str] = field(default_factory=list)


async def blast(contender: Contender, n: int, every: int) -> None:
    """N payloads as fast as possible, yielding to the loop after every ``every``."""
    send = contender.sender()
    sleep = asyncio.sleep
    if contender.async_send:
        for start in range(0, n, every):
            for i in range(start, min(n, start + every)):
                await send({"i": i, "t": perf_counter()})  # type: ignore[misc]
            await sleep(0)
    else:
        for start in range(0, n, every):
            for i in range(start, min(n, start + every)):
                send({"i": i, "t": perf_counter()})
            await sleep(0)


async def paced(contender: Contender, n: int, rate: float) -> None:
    """N payloads at ``rate`` per second: each wake-up sends every payload that is due."""
    send = contender.sender()
    interval = 1.0 / rate
    start = perf_counter()
    i = 0
    while i < n:
        now = perf_counter()
        due = min(n, int((now - start) / interval) + 1)
        while i < due:
            result = send({"i": i, "t": perf_counter()})
            if contender.async_send:
                await result  # type: ignore[misc]
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, start + i * interval - perf_counter()))


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted values."""
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


async def run_once(contender: Contender, subscribers: int, n: int, cfg: Config, pace: float | None) -> Outcome:
    """One timed window; ``pace`` None means flat out."""
    group = Group(subscribers * n)
    sinks = [Sink(group, latencies=pace is not None) for _ in range(subscribers)]
    outcome = Outcome()
    await contender.setup(sinks)
    try:
        gc.collect()
        start = perf_counter()
        if pace is None:
            await blast(contender, n, cfg.yield_every)
        else:
            await paced(contender, n, pace)
        try:
            await asyncio.wait_for(group.done.wait(), cfg.timeout)
        except TimeoutError:
            outcome.problems.append(f"not all delivered within {cfg.timeout:g} s")
        else:
            outcome.rate = subscribers * n / (group.end - start)
        # Untimed: the end marker flushes every subscriber, so that late
        # duplicates are counted too.
        end = contender.sender()({"i": END, "t": 0.0})
        if contender.async_send:
            await end  # type: ignore[misc]
    finally:
        await contender.finish(cfg.timeout)
    outcome.problems += contender.problems()
    expected = n
    short = [s for s in sinks if s.received < expected]
    extra = [s for s in sinks if s.received > expected]
    disordered = [s for s in sinks if s.anomalies]
    unfinished = [s for s in sinks if not s.ended]
    if short:
        lost = sum(expected - s.received for s in short)
        outcome.problems.append(f"LOST {lost:,} deliveries ({len(short)} of {subscribers} subscribers short)")
    if extra:
        dup = sum(s.received - expected for s in extra)
        outcome.problems.append(f"DUPLICATED {dup:,} deliveries ({len(extra)} subscribers)")
    if disordered:
        sample = disordered[0].first_anomalies
        outcome.problems.append(
            f"OUT OF SEQUENCE: {sum(s.anomalies for s in disordered):,} deliveries "
            f"({len(disordered)} subscribers; e.g. {'; '.join(sample)})"
        )
    if unfinished:
        outcome.problems.append(f"end marker not received by {len(unfinished)} subscribers")
    if pace is not None:
        latencies = sorted(x for s in sinks for x in (s.latencies or ()))
        if latencies:
            outcome.p50 = percentile(latencies, 0.50)
            outcome.p99 = percentile(latencies, 0.99)
    if outcome.problems:
        outcome.rate = None
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
    higher_is_better: bool
    cells: dict[str, Cell] = field(default_factory=dict)
    has_target: bool = False

    def cell(self, name: str) -> Cell:
        return self.cells.setdefault(name, Cell())

    def value(self, name: str) -> float | None:
        cell = self.cells.get(name)
        return None if cell is None else cell.value

    def advantage(self, ours: str, theirs: str) -> float | None:
        """How many times better ``ours`` is than ``theirs`` (>1: ours better)."""
        a, b = self.value(ours), self.value(theirs)
        if a is None or b is None or a <= 0 or b <= 0:
            return None
        return a / b if self.higher_is_better else b / a


def fmt_number(value: float, unit: str) -> str:
    if unit == "rate":
        return f"{value:,.0f}/s"
    if value >= 10:
        return f"{value:,.1f} ms"
    return f"{value:,.3f} ms"


def fmt_cell(row: Row, name: str) -> str:
    cell = row.cells.get(name)
    if cell is None:
        return "—"
    if cell.failure:
        return f"**{cell.failure}**"
    value = cell.value
    return "—" if value is None else fmt_number(value, row.unit)


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:,.2f}x"


def met_text(row: Row) -> str:
    if not row.has_target:
        return "—"
    parts = []
    for name, short in ((HANDLER, "handler"), (INBOX, "inbox")):
        adv = row.advantage(name, BROADCASTER)
        if adv is not None:
            parts.append(f"{short}: {'yes' if adv >= TARGET else '**no**'}")
    return ", ".join(parts) or "—"


def render_table(rows: Sequence[Row]) -> str:
    head = [
        "scenario",
        *CONTENDERS,
        "handler vs broadcaster",
        "inbox vs broadcaster",
        "handler / inbox vs bare Queue",
        f"target ≥ {TARGET:g}x broadcaster met",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---", *["---:"] * 7, ":---:"]) + "|"]
    for row in rows:
        bare = f"{fmt_ratio(row.advantage(HANDLER, BARE))} / {fmt_ratio(row.advantage(INBOX, BARE))}"
        cells = [
            row.label,
            *(fmt_cell(row, name) for name in CONTENDERS),
            fmt_ratio(row.advantage(HANDLER, BROADCASTER)),
            fmt_ratio(row.advantage(INBOX, BROADCASTER)),
            bare,
            met_text(row),
        ]
        lines.append("| " + " | ".join(cells) + " |")
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


# -- scenarios ------------------------------------------------------------------


@dataclass
class Book:
    """Integrity problems of every run, per contender."""

    problems: dict[str, list[str]] = field(default_factory=dict)

    def add(self, name: str, label: str, problems: Sequence[str]) -> None:
        if problems:
            self.problems.setdefault(name, []).extend(f"{label}: {p}" for p in problems)
            for problem in problems:
                log(f"  !!! {name}, {label}: {problem}")


async def measure(
    contenders: Sequence[Contender],
    subscribers: int,
    n: int,
    cfg: Config,
    pace: float | None,
    label: str,
    book: Book,
) -> dict[str, list[Outcome]]:
    """Warm up, then ``cfg.reps`` runs per contender, rotating the order every round."""
    results: dict[str, list[Outcome]] = {c.name: [] for c in contenders}
    warm_n = max(1, min(n, 2_000 if pace is None else 200))
    for contender in contenders:
        warm = await run_once(contender, subscribers, warm_n, cfg, None)
        book.add(contender.name, f"{label} (warm-up)", warm.problems)
    order = list(contenders)
    for round_number in range(cfg.reps):
        shift = round_number % len(order)
        rotated = order[shift:] + order[:shift]
        for contender in rotated if round_number % 2 == 0 else rotated[::-1]:
            gc.collect()
            outcome = await run_once(contender, subscribers, n, cfg, pace)
            results[contender.name].append(outcome)
            book.add(contender.name, label, outcome.problems)
            shown = f"{outcome.rate:,.0f}/s" if outcome.rate is not None else "failed"
            if pace is not None and outcome.p50 is not None and outcome.p99 is not None:
                shown = f"p50 {outcome.p50 * 1e3:.3f} ms, p99 {outcome.p99 * 1e3:.3f} ms"
            log(f"  {label} #{round_number + 1} {contender.name}: {shown}")
    return results


def fill(row: Row, results: dict[str, list[Outcome]], metric: str) -> None:
    for name, outcomes in results.items():
        cell = row.cell(name)
        values: list[float] = []
        for outcome in outcomes:
            if outcome.problems:
                cell.failure = "FAILED (see below)"
            value = getattr(outcome, metric)
            if value is not None:
                values.append(value * 1e3 if row.unit == "ms" else value)
        cell.samples = values


async def run_suite(cfg: Config, loop_name: str, book: Book) -> list[Row]:
    hub = Hub(Settings(), name=f"bench-aio-{loop_name}").start()
    contenders: list[Contender] = []
    for name in cfg.contenders:
        if name == HANDLER:
            contenders.append(TidingsHandler(hub))
        elif name == INBOX:
            contenders.append(TidingsInbox(hub))
        elif name == BROADCASTER:
            contenders.append(BroadcasterMemory())
        else:
            contenders.append(BareQueue())
    rows: list[Row] = []
    try:
        if "throughput" in cfg.scenarios:
            n = cfg.one_messages
            label = f"{loop_name}: 1 subscriber, {n:,} msgs flat out: deliveries/s (= msgs/s)"
            log(label)
            row = Row(label, "rate", True, has_target=True)
            fill(row, await measure(contenders, 1, n, cfg, None, f"{loop_name} throughput", book), "rate")
            rows.append(row)
        if "fanout" in cfg.scenarios:
            subs, n = cfg.fan_subscribers, cfg.fan_messages
            label = f"{loop_name}: {subs} subscribers, {n:,} msgs flat out: deliveries/s"
            log(label)
            row = Row(label, "rate", True, has_target=True)
            fill(row, await measure(contenders, subs, n, cfg, None, f"{loop_name} fan-out", book), "rate")
            rows.append(row)
        if "latency" in cfg.scenarios:
            n = max(1, int(cfg.rate * cfg.latency_seconds))
            for subs in cfg.latency_subscribers:
                plural = "s" if subs > 1 else ""
                what = f"{subs} subscriber{plural}, {cfg.rate:,.0f} msg/s for {cfg.latency_seconds:g} s"
                log(f"{loop_name}: latency, {what}")
                results = await measure(contenders, subs, n, cfg, cfg.rate, f"{loop_name} latency x{subs}", book)
                p50 = Row(f"{loop_name}: {what}: p50 send → handler", "ms", False)
                p99 = Row(f"{loop_name}: {what}: p99 send → handler", "ms", False)
                fill(p50, results, "p50")
                fill(p99, results, "p99")
                rows += [p50, p99]
    finally:
        await hub.astop(timeout=60.0)
    return rows


def run_loop(cfg: Config, loop_name: str, book: Book) -> list[Row]:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop_name == "uvloop":
        try:
            import uvloop
        except ImportError:
            log("uvloop is not installed (pip install uvloop); skipping it")
            return []
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run_suite(cfg, loop_name, book))


# -- main -----------------------------------------------------------------------


def version_of(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def notes(cfg: Config) -> list[str]:
    return [
        "- Everything runs on one event loop per loop kind; tidings' hub (`Hub(Settings())`: 1 broker + "
        "4 task-worker threads, the workers idle here) routes on its broker thread and hands each "
        "subscription with new mail to the loop with one `call_soon_threadsafe` per burst.",
        f"- The sender is a coroutine on the same loop; it yields with `await asyncio.sleep(0)` after every "
        f"{cfg.yield_every} messages for every contender (broadcaster's `await publish()` never suspends "
        "by itself: its queues are unbounded).",
        "- deliveries/s = subscribers x messages / (first send → the handler start that completes the "
        "last delivery); `gc.collect()` before each window; warm-up run per contender first; median of "
        f"{cfg.reps} runs; contenders interleaved, the order rotated (and reversed) every round.",
        "- Latency: sends paced by `asyncio.sleep` (1 ms timer resolution, so a wake-up sends the 1-3 "
        "messages due); each payload carries `perf_counter()` taken just before its send; the "
        "subscriber's first statement reads `perf_counter()` again. p50/p99 over all deliveries "
        "(all subscribers) of a run, median over runs.",
        "- tidings copies the payload dict once in `send()` and once per delivery (each subscriber "
        "gets its own `Message`); broadcaster and the bare queue hand every subscriber the sender's "
        "object.",
        "- Integrity: every subscriber checks that each payload's `i` is the next expected one; an "
        "untimed end marker after each window flushes late duplicates. Any loss, duplicate or "
        "reordering marks the cell FAILED and the script exits with status 1.",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke test that takes < 60 s")
    parser.add_argument("--reps", type=int, default=0, help="runs per contender and scenario (default 5, quick 3)")
    parser.add_argument("--messages", type=int, default=0, help="messages of the 1-subscriber run (100,000)")
    parser.add_argument("--rate", type=float, default=2000.0, help="msg/s of the latency scenario (2,000)")
    parser.add_argument("--yield-every", type=int, default=100, help="sender yields after this many sends")
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="asyncio")
    parser.add_argument("--only", default="", help=f"comma-separated scenarios among {', '.join(SCENARIOS)}")
    parser.add_argument("--contenders", default="", help=f"comma-separated among {', '.join(KEYS)} (default: all)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one run's deliveries")
    args = parser.parse_args(argv)
    cfg = make_config(args)
    if not HAVE_BROADCASTER:
        log("broadcaster is not installed (pip install 'broadcaster==0.3.1'); running without it")

    started = perf_counter()
    load_before = os.getloadavg()[0]
    book = Book()
    rows: list[Row] = []
    for loop_name in cfg.loops:
        rows += run_loop(cfg, loop_name, book)
    elapsed = perf_counter() - started
    load_after = os.getloadavg()[0]

    print()
    print(
        f"tidings {tidings.__version__}, broadcaster {version_of('broadcaster')}, uvloop {version_of('uvloop')}, "
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    )
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, mode: {'quick' if cfg.quick else 'full'}, loop: {', '.join(cfg.loops)}, "
        f"medians of {cfg.reps} runs, load average (1 min) {load_before:.2f} before, {load_after:.2f} after"
    )
    print()
    print(render_table(rows))
    print()
    print(
        f"Target: tidings ≥ {TARGET:g}x broadcaster memory:// in deliveries/s (the throughput and fan-out rows), "
        "for the async handler and for the aio inbox. Ratios are of medians; for latency rows, "
        "broadcaster's latency / tidings' (above 1: tidings faster)."
    )
    print()
    print("\n".join(notes(cfg)))
    print()
    print("Samples (each run):")
    print("\n".join(render_samples(rows)))
    print()
    failed = False
    if book.problems:
        print("**Integrity problems (messages lost, duplicated or out of order):**")
        for name, problems in book.problems.items():
            for problem in problems[:10]:
                print(f"- **{name}**, {problem}")
            if len(problems) > 10:
                print(f"- {name}: {len(problems) - 10} more")
        failed = True
    else:
        print("Integrity: every subscriber of every run got every message exactly once, in order.")
    print()
    print(f"Total time: {elapsed:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
