"""tidings against Lona 1.16.2's channels and a bare-Python hand-off, in one run.

Three contenders run side by side, alternating within each scenario so that
the machine's drift hits all of them:

- **tidings**: its own :class:`tidings.Hub` with default settings (1 broker
  thread, 4 task-worker threads), driven through the public API.
- **Lona 1.16.2**: ``lona.channels`` without the web server: one
  ``MessageBroker`` and four ``TaskWorker`` on a
  ``ThreadPoolExecutor(max_workers=5)``, worker timeout 1.0 s (Lona's
  defaults). Completion is detected by counting handler calls.
- **bare Python**: the sending thread puts ``(topic, data)`` on a
  ``queue.SimpleQueue``; one consumer thread looks the topic up in a dict
  (exact topics only) and calls each handler. No copies, no wildcards: a
  limit, not a competitor.

Every contender calls the same counting handler. Each timed window starts
with ``gc.collect()``; the table shows medians. Run::

    PYTHONPATH=src python benchmarks/bench_core.py           # full, a few minutes
    PYTHONPATH=src python benchmarks/bench_core.py --quick   # smoke test, < 30 s

The table goes to stdout (Markdown); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import itertools
import os
import platform
import queue
import re
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import tidings
from tidings import Channel, Hub, Settings

LONA: Any
try:
    import lona.channels as _lona_channels
except ImportError:  # pragma: no cover - the bench extra is not installed
    LONA = None
else:
    LONA = _lona_channels

TIDINGS, LONA_NAME, BARE = "tidings", "Lona 1.16.2", "bare Python"
CONTENDERS = (TIDINGS, LONA_NAME, BARE)

DATA: dict[str, Any] = {"text": "hello", "n": 1}
SETUP_TIMEOUT = 600.0

Handler = Callable[[Any], object]
Sample = dict[str, float]


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- configuration ------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    quick: bool
    reps: int
    one_messages: int
    fan_subscribers: int
    fan_messages: int
    ks: tuple[int, ...]
    route_messages: int
    lona_rep_seconds: float
    send_calls: int
    send_windows: int
    memory_subscriptions: int
    import_reps: int
    timeout: float
    scenarios: frozenset[str]


SCENARIOS = ("one", "fanout", "send", "routing", "memory", "import")


def make_config(args: argparse.Namespace) -> Config:
    quick = bool(args.quick)
    ks: tuple[int, ...] = (10, 1_000, 10_000) if quick else (10, 1_000, 10_000, 100_000)
    if args.ks:
        ks = tuple(sorted({int(k) for k in args.ks.split(",")}))
    scenarios = frozenset(args.only.split(",")) if args.only else frozenset(SCENARIOS)
    unknown = scenarios - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}; known: {', '.join(SCENARIOS)}")
    return Config(
        quick=quick,
        reps=args.reps if args.reps else (2 if quick else 5),
        one_messages=20_000 if quick else 100_000,
        fan_subscribers=1_000,
        fan_messages=50 if quick else 500,
        ks=ks,
        route_messages=2_000 if quick else 20_000,
        lona_rep_seconds=0.2 if quick else 1.0,
        send_calls=20_000 if quick else 100_000,
        send_windows=20 if quick else 100,
        memory_subscriptions=10_000 if quick else 100_000,
        import_reps=2 if quick else 5,
        timeout=args.timeout,
        scenarios=scenarios,
    )


# -- the handler every contender calls ------------------------------------------


class Counter:
    """A handler that counts its calls and sets ``done`` at ``expected``.

    ``next()`` on ``itertools.count`` is atomic, so concurrent task workers
    (Lona runs one channel's handler on several threads) lose no count.
    """

    def __init__(self) -> None:
        self.expected = 0
        self._count = itertools.count(1)
        self.done = threading.Event()

    def arm(self, expected: int) -> None:
        """Start counting again; call only while no delivery is in flight."""
        self._count = itertools.count(1)
        self.done = threading.Event()
        self.expected = expected

    def __call__(self, message: object) -> None:
        if next(self._count) == self.expected:
            self.done.set()

    @property
    def value(self) -> int:
        return int(repr(self._count)[6:-1]) - 1


def _noop(message: object) -> None:
    return None


# -- the contenders -----------------------------------------------------------


class Runner:
    """One contender's side of a scenario: subscribe, start, send, wait, close."""

    name = ""

    def subscribe(self, topic: str, handler: Handler) -> object:
        raise NotImplementedError

    def start(self) -> None:
        """Called once the scenario's subscriptions exist, before any timing."""
        raise NotImplementedError

    def send_loop(self, topic: str, count: int) -> None:
        """``count`` sends of DATA on ``topic`` from the calling thread."""
        raise NotImplementedError

    def send_topics(self, topics: Sequence[str]) -> None:
        """One send of DATA on each topic, the idiomatic ``Channel(topic).send()``."""
        raise NotImplementedError

    def wait(self, counter: Counter, timeout: float) -> bool:
        """Wait until ``counter`` reached its expected count (everything sent was delivered)."""
        if counter.done.wait(timeout):
            return True
        self.give_up()
        return False

    def give_up(self) -> None:
        """After a timeout: drop what is still queued so that closing does not wait for it."""

    def quiesce(self, timeout: float) -> bool:
        """After a timed window (untimed): let the contender finish its own bookkeeping."""
        return True

    def settle(self, timeout: float) -> bool:
        """Wait until everything sent has left the queues (for sends nobody receives)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class TidingsRunner(Runner):
    name = TIDINGS

    def __init__(self) -> None:
        self.hub = Hub(Settings(), name="bench").start()

    def subscribe(self, topic: str, handler: Handler) -> object:
        return Channel(topic, handler, hub=self.hub)

    def start(self) -> None:
        if not self.hub.join(SETUP_TIMEOUT):
            raise RuntimeError("tidings: subscriptions were not applied in time")

    def send_loop(self, topic: str, count: int) -> None:
        send = Channel(topic, hub=self.hub).send
        data = DATA
        for _ in range(count):
            send(data)

    def send_topics(self, topics: Sequence[str]) -> None:
        hub = self.hub
        data = DATA
        for topic in topics:
            Channel(topic, hub=hub).send(data)

    def quiesce(self, timeout: float) -> bool:
        # join() is O(subscriptions) (it walks the index), so it is kept
        # out of the timed windows; see the row that times it.
        return self.hub.join(timeout)

    def settle(self, timeout: float) -> bool:
        return self.hub.join(timeout)

    def close(self) -> None:
        self.hub.stop(timeout=SETUP_TIMEOUT)


def _reset_lona() -> None:
    """Forget Lona's class-level state (no workers may be running).

    ``Channel._clear_state()`` unsubscribes channel by channel and takes
    ``list(_channels)[0]`` each time: quadratic in the number of topics
    (hours at 100,000), and every unsubscribe queues a message. Dropping the
    state directly is equivalent for a benchmark.
    """
    channel = LONA.Channel
    channel._channels.clear()
    LONA.clear_queue(channel._messages)
    LONA.clear_queue(channel._tasks)


class LonaRunner(Runner):
    name = LONA_NAME
    TIMEOUT = 1.0  # Lona's CHANNEL_WORKER_TIMEOUT default

    def __init__(self) -> None:
        _reset_lona()
        self.executor: ThreadPoolExecutor | None = None
        self.workers: list[Any] = []

    def subscribe(self, topic: str, handler: Handler) -> object:
        return LONA.Channel(topic, handler)

    def start(self) -> None:
        # Every subscribe queued a 'lona.channels.subscribe' message; routing
        # each against K topics would take O(K^2) before the first timing.
        LONA.clear_queue(LONA.Channel._messages)
        executor = ThreadPoolExecutor(max_workers=5, thread_name_prefix="lona-channels")
        self.executor = executor
        self.workers = [LONA.MessageBroker(None, executor, self.TIMEOUT)]
        self.workers += [LONA.TaskWorker(None, executor, self.TIMEOUT) for _ in range(4)]

    def send_loop(self, topic: str, count: int) -> None:
        send = LONA.Channel(topic).send
        data = DATA
        for _ in range(count):
            send(message_data=data)

    def send_topics(self, topics: Sequence[str]) -> None:
        channel = LONA.Channel
        data = DATA
        for topic in topics:
            channel(topic).send(message_data=data)

    def give_up(self) -> None:
        LONA.clear_queue(LONA.Channel._messages)
        LONA.clear_queue(LONA.Channel._tasks)

    def settle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        channel = LONA.Channel
        while channel._messages.qsize() or channel._tasks.qsize():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        time.sleep(0.005)  # the broker may still be routing the last one
        return True

    def close(self) -> None:
        for worker in self.workers:
            worker.shutdown()
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        self.workers = []
        self.executor = None
        _reset_lona()


class BareRunner(Runner):
    """The limit: SimpleQueue hand-off, dict lookup, direct handler calls."""

    name = BARE

    def __init__(self) -> None:
        self.table: dict[str, list[Handler]] = {}
        self.queue: queue.SimpleQueue[tuple[str, dict[str, Any]] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._consume, name="bare-consumer", daemon=True)

    def _consume(self) -> None:
        get = self.queue.get
        lookup = self.table.get
        nothing: list[Handler] = []
        while True:
            item = get()
            if item is None:
                return
            topic, data = item
            for handler in lookup(topic, nothing):
                handler(data)

    def subscribe(self, topic: str, handler: Handler) -> object:
        self.table.setdefault(topic, []).append(handler)
        return handler

    def start(self) -> None:
        self.thread.start()

    def send_loop(self, topic: str, count: int) -> None:
        put = self.queue.put
        data = DATA
        for _ in range(count):
            put((topic, data))

    def send_topics(self, topics: Sequence[str]) -> None:
        put = self.queue.put
        data = DATA
        for topic in topics:
            put((topic, data))

    def settle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.queue.empty():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    def close(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()


def make_runners(with_lona: bool) -> list[Runner]:
    runners: list[Runner] = [TidingsRunner()]
    if with_lona:
        runners.append(LonaRunner())
    runners.append(BareRunner())
    return runners


def close_all(runners: Sequence[Runner]) -> None:
    for runner in runners:
        runner.close()


# -- results ------------------------------------------------------------------


@dataclass
class Cell:
    """One contender's result in one row: the median of its samples."""

    samples: list[float] = field(default_factory=list)
    failure: str = ""  # e.g. "timeout >300 s"; shown instead of a value
    note: str = ""  # e.g. "n=3 msgs", shown after the value

    @property
    def value(self) -> float | None:
        if self.failure or not self.samples:
            return None
        return statistics.median(self.samples)


@dataclass
class Row:
    label: str
    unit: str  # "rate", "us", "bytes", "ms", "ratio"
    higher_is_better: bool
    cells: dict[str, Cell] = field(default_factory=dict)
    target: str = ""
    check: Callable[[Row], bool | None] | None = None
    compare: bool = True  # show the tidings-vs-Lona factor

    def cell(self, name: str) -> Cell:
        return self.cells.setdefault(name, Cell())

    def value(self, name: str) -> float | None:
        cell = self.cells.get(name)
        return None if cell is None else cell.value

    def advantage(self) -> float | None:
        """How many times better tidings is than Lona (>1: tidings better)."""
        ours, theirs = self.value(TIDINGS), self.value(LONA_NAME)
        if ours is None or theirs is None or ours <= 0 or theirs <= 0:
            return None
        return ours / theirs if self.higher_is_better else theirs / ours


def advantage_at_least(factor: float) -> Callable[[Row], bool | None]:
    def check(row: Row) -> bool | None:
        adv = row.advantage()
        return None if adv is None else adv >= factor

    return check


def tidings_at_most(limit: float) -> Callable[[Row], bool | None]:
    def check(row: Row) -> bool | None:
        ours = row.value(TIDINGS)
        return None if ours is None else ours <= limit

    return check


def fmt_number(value: float, unit: str) -> str:
    if unit == "rate":
        return f"{value:,.0f}/s"
    if unit == "ratio":
        return f"{value:,.2f}x"
    if unit == "bytes":
        return f"{value:,.0f} B"
    if unit == "ms":
        return f"{value:,.1f} ms" if value >= 1 else f"{value:,.2f} ms"
    # microseconds: keep three significant digits, switch to seconds when huge
    if value >= 1_000_000:
        return f"{value / 1_000_000:,.2f} s"
    if value >= 1_000:
        return f"{value:,.0f} µs"
    if value >= 10:
        return f"{value:,.1f} µs"
    return f"{value:,.2f} µs"


def fmt_cell(row: Row, name: str) -> str:
    cell = row.cells.get(name)
    if cell is None:
        return "—"
    if cell.failure:
        return cell.failure
    value = cell.value
    if value is None:
        return "—"
    text = fmt_number(value, row.unit)
    return f"{text} ({cell.note})" if cell.note else text


def render_table(rows: Sequence[Row], with_lona: bool) -> str:
    head = ["scenario", TIDINGS, LONA_NAME, "bare Python (limit)", "tidings vs Lona (x better)", "target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---", *["---:"] * 4, "---", ":---:"]) + "|"]
    for row in rows:
        adv = row.advantage() if row.compare else None
        met = row.check(row) if row.check is not None else None
        lona_text = fmt_cell(row, LONA_NAME) if with_lona else "not installed"
        cells = [
            row.label,
            fmt_cell(row, TIDINGS),
            lona_text,
            fmt_cell(row, BARE),
            "—" if adv is None else f"{adv:,.1f}x",
            row.target or "—",
            "" if met is None else ("yes" if met else "**no**"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_samples(rows: Sequence[Row]) -> str:
    out = []
    for row in rows:
        parts = []
        for name in CONTENDERS:
            cell = row.cells.get(name)
            if cell is None or not cell.samples:
                continue
            shown = ", ".join(fmt_number(v, row.unit) for v in cell.samples)
            parts.append(f"{name}: [{shown}]")
        if parts:
            out.append(f"- {row.label}: " + "; ".join(parts))
    return "\n".join(out)


# -- running repetitions --------------------------------------------------------

Run = Callable[[], Sample | None]


def alternate(runs: dict[str, Run], reps: dict[str, int], label: str) -> dict[str, list[Sample] | str]:
    """Run each contender ``reps[name]`` times, interleaved, reversing the order every round.

    Returns each contender's samples, or a failure text once a run fails.
    """
    results: dict[str, list[Sample] | str] = {name: [] for name in runs}
    order = list(runs)
    for round_number in range(max(reps.values(), default=0)):
        for name in order if round_number % 2 == 0 else order[::-1]:
            got = results[name]
            if isinstance(got, str) or round_number >= reps[name]:
                continue
            gc.collect()
            sample = runs[name]()
            if sample is None:
                results[name] = "timeout"
                log(f"  {label}: {name} timed out")
            else:
                got.append(sample)
    return results


def fill(row: Row, results: dict[str, list[Sample] | str], metric: str, failure: str = "") -> None:
    for name, got in results.items():
        cell = row.cell(name)
        if isinstance(got, str):
            cell.failure = failure or got
        else:
            cell.samples = [sample[metric] for sample in got]


def end_to_end(
    runner: Runner, counter: Counter, expected: int, send: Callable[[], None], timeout: float
) -> float | None:
    """Seconds from the first send until the handler call that completes ``expected`` deliveries."""
    counter.arm(expected)
    gc.collect()
    start = time.perf_counter()
    send()
    if not runner.wait(counter, timeout):
        return None
    elapsed = time.perf_counter() - start
    if not runner.quiesce(timeout) or counter.value != expected:
        log(f"  WARNING: {runner.name} delivered {counter.value:,} messages, expected {expected:,}")
    return elapsed


# -- scenarios ------------------------------------------------------------------


def scenario_one_subscriber(cfg: Config, with_lona: bool) -> list[Row]:
    n = cfg.one_messages
    log(f"one subscriber, {n:,} messages")
    runners = make_runners(with_lona)
    counters: dict[str, Counter] = {}
    try:
        for runner in runners:
            counters[runner.name] = counter = Counter()
            runner.subscribe("bench.one", counter)
            runner.start()

        def run_for(runner: Runner) -> Run:
            def run() -> Sample | None:
                elapsed = end_to_end(
                    runner, counters[runner.name], n, lambda: runner.send_loop("bench.one", n), cfg.timeout
                )
                return None if elapsed is None else {"rate": n / elapsed}

            return run

        for runner in runners:  # warm-up
            run_for(runner)()
        results = alternate({r.name: run_for(r) for r in runners}, dict.fromkeys(counters, cfg.reps), "one")
    finally:
        close_all(runners)
    row = Row(
        f"one subscriber, {n:,} msgs: msgs/s end to end",
        "rate",
        True,
        target="≥ 10x Lona",
        check=advantage_at_least(10),
    )
    fill(row, results, "rate", f"timeout >{cfg.timeout:.0f} s")
    return [row]


def scenario_fanout(cfg: Config, with_lona: bool) -> list[Row]:
    subs, n = cfg.fan_subscribers, cfg.fan_messages
    expected = subs * n
    log(f"one topic, {subs:,} subscribers, {n:,} messages")
    runners = make_runners(with_lona)
    counters: dict[str, Counter] = {}
    try:
        for runner in runners:
            counters[runner.name] = counter = Counter()
            for _ in range(subs):
                runner.subscribe("bench.fan", counter)
            runner.start()

        def run_for(runner: Runner) -> Run:
            def run() -> Sample | None:
                elapsed = end_to_end(
                    runner, counters[runner.name], expected, lambda: runner.send_loop("bench.fan", n), cfg.timeout
                )
                return None if elapsed is None else {"rate": expected / elapsed}

            return run

        for runner in runners:  # warm-up, with fewer messages
            end_to_end(runner, counters[runner.name], subs * 5, partial(runner.send_loop, "bench.fan", 5), cfg.timeout)
        reps = {r.name: cfg.reps if r.name != LONA_NAME else max(1, min(cfg.reps, 3)) for r in runners}
        results = alternate({r.name: run_for(r) for r in runners}, reps, "fanout")
    finally:
        close_all(runners)
    row = Row(
        f"one topic, {subs:,} subscribers, {n:,} msgs: deliveries/s",
        "rate",
        True,
        target="≥ 10x Lona",
        check=advantage_at_least(10),
    )
    fill(row, results, "rate", f"timeout >{cfg.timeout:.0f} s")
    return [row]


def other_topics(k: int) -> list[str]:
    """K subscribed topics that the target messages never reach.

    Half exact (``other.{i}``); of the other half, wildcard patterns with a
    literal prefix in three families (``user.{i}.*``, ``room.{i}.msg.*``,
    ``feed.{i}.?``) and, for one in ten, a leading wildcard (``*.x{i}``).
    """
    topics = []
    for i in range(k):
        if i % 2 == 0:
            topics.append(f"other.{i}")
        elif i % 20 == 1:
            topics.append(f"*.x{i}")
        else:
            family = (i // 2) % 3
            topics.append((f"user.{i}.*", f"room.{i}.msg.*", f"feed.{i}.?")[family])
    return topics


OTHERS_DESCRIPTION = (
    "the K others: 50% exact `other.{i}`; 45% prefix patterns `user.{i}.*` / `room.{i}.msg.*` / "
    "`feed.{i}.?`; 5% leading-wildcard `*.x{i}`. None matches the target topics."
)

_fresh_topics = itertools.count()


def fresh_topics(count: int) -> list[str]:
    """Topics never sent before: each one misses every route cache."""
    return [f"bench.target.{next(_fresh_topics)}" for _ in range(count)]


def _routing_at(cfg: Config, with_lona: bool, k: int) -> tuple[Row, Row, float]:
    """µs per message to the target with K other subscriptions: repeated topic, new topic each message."""
    log(f"routing: 1 target + K={k:,} others")
    same = Row(f"K={k:,} others, repeated topic: µs/msg end to end", "us", False)
    fresh = Row(f"K={k:,} others, new topic each msg: µs/msg end to end", "us", False)
    runners = make_runners(with_lona)
    topics = other_topics(k)
    same_counters: dict[str, Counter] = {}
    fresh_counters: dict[str, Counter] = {}
    strays: dict[str, Counter] = {}

    def measure(runner: Runner, variant: str, count: int) -> float | None:
        """µs per message for ``count`` messages of one variant."""
        if variant == "same":
            counter = same_counters[runner.name]

            def send() -> None:
                runner.send_loop("bench.target", count)

        else:
            counter = fresh_counters[runner.name]
            batch = fresh_topics(count)

            def send() -> None:
                runner.send_topics(batch)

        elapsed = end_to_end(runner, counter, count, send, cfg.timeout)
        return None if elapsed is None else elapsed / count * 1e6

    def run_for(runner: Runner, variant: str, count: int) -> Run:
        def run() -> Sample | None:
            cost = measure(runner, variant, count)
            return None if cost is None else {"us": cost}

        return run

    try:
        for runner in runners:
            started = time.perf_counter()
            same_counters[runner.name] = Counter()
            fresh_counters[runner.name] = Counter()
            strays[runner.name] = stray = Counter()
            runner.subscribe("bench.target", same_counters[runner.name])
            runner.subscribe("bench.target.*", fresh_counters[runner.name])
            for topic in topics:
                runner.subscribe(topic, stray)
            runner.start()
            log(f"  {runner.name}: {k + 2:,} subscriptions set up in {time.perf_counter() - started:.2f} s")
        join_ms = idle_join_ms(runners[0])

        for variant, row in (("same", same), ("fresh", fresh)):
            counts: dict[str, int] = {}
            reps: dict[str, int] = {}
            failed: set[str] = set()
            # The bare limit has no wildcards: it cannot reach `bench.target.*`.
            variant_runners = [r for r in runners if variant == "same" or r.name != BARE]
            for runner in variant_runners:
                if runner.name != LONA_NAME:
                    measure(runner, variant, min(1_000, cfg.route_messages))  # warm-up
                    counts[runner.name], reps[runner.name] = cfg.route_messages, cfg.reps
                    continue
                # Lona: one untimed message fills fnmatch's pattern cache (up
                # to 32,768 patterns); a second one sets how many are timed.
                first = measure(runner, variant, 1)
                if first is not None and first < 1e6:
                    first = measure(runner, variant, 1)
                if first is None:
                    failed.add(runner.name)
                    continue
                count = int(max(3, min(cfg.route_messages, cfg.lona_rep_seconds * 1e6 / first)))
                rep_seconds = first * count / 1e6
                counts[runner.name] = count
                reps[runner.name] = cfg.reps if rep_seconds < 2 else (2 if rep_seconds < 10 else 1)
                log(f"  Lona {variant}: one message {first / 1e3:,.1f} ms; timing {count} msgs x {reps[runner.name]}")
            active = {r.name: run_for(r, variant, counts[r.name]) for r in variant_runners if r.name not in failed}
            results = alternate(active, reps, f"routing K={k}")
            fill(row, results, "us", f"timeout >{cfg.timeout:.0f} s")
            for name in failed:
                row.cell(name).failure = f"timeout >{cfg.timeout:.0f} s"
            lona_count = counts.get(LONA_NAME)
            if lona_count is not None and lona_count < cfg.route_messages:
                row.cell(LONA_NAME).note = f"n={lona_count}x{reps[LONA_NAME]}"
        for runner in runners:
            if strays[runner.name].value:
                log(f"  WARNING: {runner.name} delivered {strays[runner.name].value} messages to the K others")
    finally:
        close_all(runners)
    return same, fresh, join_ms


def idle_join_ms(runner: Runner) -> float:
    """Median ms of ``hub.join()`` on tidings' hub with nothing pending."""
    assert isinstance(runner, TidingsRunner)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        runner.hub.join(SETUP_TIMEOUT)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def scenario_routing(cfg: Config, with_lona: bool) -> list[Row]:
    rows: list[Row] = []
    per_k: dict[int, tuple[Row, Row]] = {}
    joins: dict[int, float] = {}
    for k in cfg.ks:
        same, fresh, joins[k] = _routing_at(cfg, with_lona, k)
        per_k[k] = same, fresh
        rows += [same, fresh]
        gc.collect()
    low, high = min(cfg.ks), max(cfg.ks)
    join = Row(f"`hub.join()` with nothing pending, K={high:,} others: ms", "ms", False, compare=False)
    join.cell(TIDINGS).samples = [joins[high]]
    if low != high:
        join.cell(TIDINGS).note = f"K={low:,}: {joins[low]:.2f} ms"
    if low != high:
        for index, variant in enumerate(("repeated topic", "new topic each msg")):
            ratio = Row(
                f"cost at K={high:,} / cost at K={low:,}, {variant}",
                "ratio",
                False,
                target="tidings ≤ 2x",
                check=tidings_at_most(2.0),
                compare=False,
            )
            for name in CONTENDERS:
                a, b = per_k[low][index].value(name), per_k[high][index].value(name)
                if a is not None and b is not None and a > 0:
                    ratio.cell(name).samples = [b / a]
            rows.append(ratio)
    rows.append(join)
    return rows


SEND_WINDOW = 1_000


def scenario_send(cfg: Config, with_lona: bool) -> list[Row]:
    n, windows = cfg.send_calls, cfg.send_windows
    log(f"send() cost: {windows} windows of {SEND_WINDOW:,} calls, and {n:,} calls back to back; no subscriber")
    runners = make_runners(with_lona)
    try:
        for runner in runners:
            runner.start()

        def short_windows(runner: Runner, idiomatic: bool) -> Run:
            """Median µs/call over windows of 1,000 calls, the queues drained before each.

            A window (~1 ms) is shorter than the 5 ms GIL switch interval, so
            the hub's threads do not run inside it: this is the caller's own cost.
            """
            topics = [f"bench.nobody.{i % 100}" for i in range(SEND_WINDOW)]

            def run() -> Sample | None:
                costs = []
                for _ in range(windows):
                    if not runner.settle(cfg.timeout):
                        return None
                    start = time.perf_counter()
                    if idiomatic:
                        runner.send_topics(topics)
                    else:
                        runner.send_loop("bench.nobody", SEND_WINDOW)
                    costs.append(time.perf_counter() - start)
                return {"us": statistics.median(costs) / SEND_WINDOW * 1e6}

            return run

        def sustained(runner: Runner) -> Run:
            def run() -> Sample | None:
                if not runner.settle(cfg.timeout):
                    return None
                gc.collect()
                start = time.perf_counter()
                runner.send_loop("bench.nobody", n)
                wall = time.perf_counter() - start
                if not runner.settle(cfg.timeout):
                    return None
                return {"us": wall / n * 1e6}

            return run

        for runner in runners:  # warm-up
            runner.send_loop("bench.nobody", min(n, 10_000))
            runner.settle(cfg.timeout)
        reps = {r.name: cfg.reps for r in runners}
        plain = alternate({r.name: short_windows(r, False) for r in runners}, reps, "send")
        idiomatic = alternate({r.name: short_windows(r, True) for r in runners}, reps, "Channel(t).send")
        burst = alternate({r.name: sustained(r) for r in runners}, reps, "send burst")
    finally:
        close_all(runners)
    short = Row(
        f"`ch.send(data)`, 0 subscribers: µs/call (median window of {SEND_WINDOW:,} calls)",
        "us",
        False,
        target="tidings < 1 µs (Lona 2.3 µs in the notes)",
        check=tidings_at_most(1.0),
    )
    new = Row(
        f"`Channel(topic).send(data)`, 0 subscribers: µs/call (median window of {SEND_WINDOW:,} calls)", "us", False
    )
    long = Row(
        f"`ch.send(data)`, {n:,} calls back to back: µs/call, wall clock (hub threads and GC included)", "us", False
    )
    fill(short, plain, "us")
    fill(new, idiomatic, "us")
    fill(long, burst, "us")
    return [short, new, long]


def traced_bytes(build: Callable[[], object], finish: Callable[[], object]) -> tuple[float, object]:
    """Bytes allocated by ``build`` (kept alive) after ``finish``, per tracemalloc."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = build()
        finish()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return float(after - before), kept


def scenario_memory(cfg: Config, with_lona: bool) -> list[Row]:
    n = cfg.memory_subscriptions
    log(f"memory per subscription, {n:,} subscriptions")
    topics = other_topics(n)
    row = Row(f"memory per subscription at {n:,} subscriptions (K-others mix): bytes", "bytes", False)
    for runner in make_runners(with_lona):
        try:
            holder: list[object] = [None] * n  # allocated before tracing: not counted
            started = time.perf_counter()

            def build(runner: Runner = runner, holder: list[object] = holder) -> object:
                for i, topic in enumerate(topics):
                    holder[i] = runner.subscribe(topic, _noop)
                return holder

            def finish(runner: Runner = runner) -> object:
                # tidings: wait until the broker applied them; Lona: drop the
                # queued 'lona.channels.subscribe' messages; bare: nothing.
                if isinstance(runner, TidingsRunner):
                    runner.start()
                elif isinstance(runner, LonaRunner):
                    LONA.clear_queue(LONA.Channel._messages)
                return None

            total, _ = traced_bytes(build, finish)
            row.cell(runner.name).samples = [total / n]
            log(f"  {runner.name}: {total / n:,.0f} B/subscription ({time.perf_counter() - started:.1f} s)")
            del holder
        finally:
            if isinstance(runner, BareRunner):
                runner.table.clear()
            else:
                runner.close()
            gc.collect()
    return [row]


_IMPORT_LINE = re.compile(r"^import time:\s*(\d+)\s*\|\s*(\d+)\s*\|( *)(\S+)\s*$")


def import_microseconds(statement: str, package: str) -> float | None:
    """Cumulative µs of ``package``'s top-level lines under ``python -X importtime``."""
    env = dict(os.environ)
    source_root = os.path.dirname(os.path.dirname(os.path.abspath(tidings.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source_root, env.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        log(f"  import failed: {done.stderr.strip().splitlines()[-1:]}")
        return None
    total = 0
    for line in done.stderr.splitlines():
        found = _IMPORT_LINE.match(line)
        if found is None:
            continue
        depth, name = len(found.group(3)), found.group(4)
        if depth <= 1 and (name == package or name.startswith(package + ".")):
            total += int(found.group(2))
    return float(total) if total else None


def scenario_import(cfg: Config, with_lona: bool) -> list[Row]:
    log("import time")
    row = Row(
        "import time (`python -X importtime`, cumulative): ms",
        "ms",
        False,
        target="tidings < 30 ms",
        check=tidings_at_most(30.0),
    )
    plans = [(TIDINGS, "import tidings", "tidings")]
    if with_lona:
        plans.append((LONA_NAME, "import lona.channels", "lona"))
    for round_number in range(cfg.import_reps):
        for name, statement, package in plans if round_number % 2 == 0 else plans[::-1]:
            micro = import_microseconds(statement, package)
            if micro is not None:
                row.cell(name).samples.append(micro / 1000)
    if with_lona:
        row.cell(LONA_NAME).note = "all of lona"
    return [row]


# -- main -----------------------------------------------------------------------


def machine_summary(cfg: Config) -> Iterator[str]:
    lona_version = "not installed"
    if LONA is not None:
        try:
            lona_version = importlib.metadata.version("lona")
        except importlib.metadata.PackageNotFoundError:
            lona_version = "unknown"
    yield (
        f"tidings {tidings.__version__}, lona {lona_version}, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"mode: {'quick' if cfg.quick else 'full'}, medians of up to {cfg.reps} runs"
    )


def notes(cfg: Config) -> list[str]:
    return [
        "- tidings: `Hub(Settings())` (1 broker + 4 task-worker threads), public API only.",
        "- Lona 1.16.2: `lona.channels` without its server: 1 `MessageBroker` + 4 `TaskWorker` on a "
        "`ThreadPoolExecutor(max_workers=5)`, worker timeout 1.0 s. Its `lona.channels.subscribe` "
        "messages are discarded before its workers start.",
        "- bare Python: the sender puts `(topic, data)` on a `queue.SimpleQueue`; one consumer "
        "thread looks the topic up in a dict (exact topics only, no copy) and calls each handler.",
        "- Lona's one-subscriber rate is bimodal across processes on this 2-core machine: about "
        "55-70k/s in some runs, 115-130k/s in others, stable within a run (how the OS places its six "
        "threads); tidings' varies far less. Compare the samples of a few runs.",
        "- Every contender calls the same counting handler; a timed window ends at the handler call "
        "that completes the expected count (tidings' `hub.join()` then runs untimed and the count is "
        "checked: join walks every subscription, see its row). `gc.collect()` before each window; "
        "tidings and Lona alternate within the run, the order reversed every round.",
        f"- Routing: one target subscription `bench.target` (repeated topic) and one `bench.target.*` "
        f"(each message on a never-used `bench.target.{{j}}`, so every route cache misses), plus {OTHERS_DESCRIPTION} "
        f"Lona gets untimed warm-up messages, then as many as fit in ~{cfg.lona_rep_seconds:g} s per run "
        f"(at least 3; n=messages x runs in the cell where that is fewer than tidings sends): at large K its "
        f"cost per message is extrapolated from those few.",
        "- send(): a tight loop on the main thread while the hub's threads run, no subscriber on the "
        "topic. The per-call rows take the median of windows of 1,000 calls (~1 ms, shorter than the "
        "5 ms GIL switch interval) with the queues drained before each: the caller's own cost. The "
        "back-to-back row also pays for sharing the GIL with the hub's threads and for the full "
        "garbage collections that ~100,000 queued objects trigger. `Channel(topic).send()` builds a "
        "channel per call (100 distinct topics).",
        "- Memory: `tracemalloc`, bytes allocated by subscribing (channel objects included) and kept "
        "after the subscriptions were applied, divided by the count; the bare limit is a "
        "`dict[str, list[handler]]`.",
        "- Import: median of cumulative µs of the package's top-level `-X importtime` lines in a fresh "
        "interpreter; `import lona.channels` imports all of lona (its `__init__` loads the framework).",
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke test that takes < 30 s")
    parser.add_argument("--reps", type=int, default=0, help="runs per measurement (default 5, quick 2)")
    parser.add_argument("--only", default="", help=f"comma-separated scenarios among {', '.join(SCENARIOS)}")
    parser.add_argument("--ks", default="", help="comma-separated K values for the routing scenario")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one timed run")
    parser.add_argument("--no-lona", action="store_true", help="leave Lona out even if it is installed")
    args = parser.parse_args(argv)
    cfg = make_config(args)
    with_lona = LONA is not None and not args.no_lona
    if LONA is None and not args.no_lona:
        log("lona is not installed (pip install 'lona==1.16.2'); running without it")

    started = time.perf_counter()
    rows: list[Row] = []
    plan: list[tuple[str, Callable[[Config, bool], list[Row]]]] = [
        ("one", scenario_one_subscriber),
        ("fanout", scenario_fanout),
        ("send", scenario_send),
        ("routing", scenario_routing),
        ("memory", scenario_memory),
        ("import", scenario_import),
    ]
    for name, scenario in plan:
        if name in cfg.scenarios:
            rows += scenario(cfg, with_lona)
    elapsed = time.perf_counter() - started

    print()
    for line in machine_summary(cfg):
        print(line)
    print()
    print(render_table(rows, with_lona))
    print()
    print("\n".join(notes(cfg)))
    print()
    print("Samples (each run):")
    print(render_samples(rows))
    print()
    print(f"Total time: {elapsed:.0f} s")


if __name__ == "__main__":
    main()
