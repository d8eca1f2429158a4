"""Helpers for the tests: recording handlers, bounded waits, order checks."""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import tidings
from tidings import Message
from tidings._topics import topics_match
from tidings.testing import CheckedHub

# Upper bound for every wait in the suite. Waits end as soon as their event
# happens; the bound only turns a hang into a failure.
TIMEOUT = 10.0

# CHANNEL_WORKER_TIMEOUT for the tests' hubs. An idle tick would hide a lost
# wake-up (a message would wait for the next tick instead of never
# arriving); with an hour-long tick, a lost wake-up fails the test. Tests of
# the setting itself pass their own value.
WORKER_TIMEOUT = 3600.0

# Hypothesis example counts are multiplied by this; e.g. a deeper search:
#   HYPOTHESIS_SCALE=20 python -m pytest -k "model or index"
HYPOTHESIS_SCALE = max(1, int(os.environ.get("HYPOTHESIS_SCALE", "1")))


def examples(count: int) -> int:
    """A hypothesis ``max_examples``, scaled by ``HYPOTHESIS_SCALE``."""
    return count * HYPOTHESIS_SCALE


T = TypeVar("T")

# The ``make_hub`` fixture: make_hub(settings=None, *, start=True, **settings).
HubFactory = Callable[..., CheckedHub]


class FakeClock:
    """A monotonic clock that moves only when told to (see ``fake_clock``)."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class WallClock:
    """Shifts the wall clock that tidings sees (``time.time``, ``datetime.now``)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def jump(self, seconds: float) -> None:
        self.offset += seconds


class Recorder:
    """A handler that records the messages it gets and the threads it ran on."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.threads: list[str] = []
        self._cond = threading.Condition()

    def __call__(self, message: Message) -> None:
        with self._cond:
            self.messages.append(message)
            self.threads.append(threading.current_thread().name)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = TIMEOUT) -> bool:
        """Wait until at least ``count`` messages have arrived."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.messages) >= count, timeout)

    @property
    def data(self) -> list[dict[str, Any]]:
        return [message.data for message in self.messages]

    @property
    def ids(self) -> list[str]:
        return [message.id for message in self.messages]

    def values(self, key: str = "n") -> list[Any]:
        return [message.data.get(key) for message in self.messages]


class Gate:
    """A handler that blocks on its first call until opened, recording all calls."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.recorder = Recorder()

    def __call__(self, message: Message) -> None:
        self.recorder(message)
        self.entered.set()
        self.opened.wait(TIMEOUT)


def run_python(
    script: str, *args: str, env: Mapping[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter that imports this tidings."""
    child_env = {name: value for name, value in os.environ.items() if not name.startswith("TIDINGS_")}
    source = os.path.dirname(os.path.dirname(os.path.abspath(tidings.__file__)))
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, child_env.get("PYTHONPATH")]))
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env,
        check=False,
    )


def call_in_thread(function: Callable[[], T], timeout: float = TIMEOUT) -> T:
    """Run ``function`` on another thread; fail if it has not returned in time.

    Used wherever a bug would be a deadlock: the test fails instead of hanging.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(function())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{function!r} did not return within {timeout} s (deadlock?)"
    if error:
        raise error[0]
    return result[0]


def assert_common_order(
    sequences: Mapping[str, Sequence[Hashable]],
    chains: Iterable[Sequence[Hashable]] = (),
) -> None:
    """Assert that one total order is consistent with every sequence given.

    ``sequences`` are what each subscription received, in order; ``chains``
    are orders known from elsewhere (each sender's own sends). Two
    subscriptions that disagree on the relative order of two messages, or
    three that disagree in a cycle, make the union of their orders cyclic.
    """
    successors: defaultdict[Hashable, set[Hashable]] = defaultdict(set)
    indegree: defaultdict[Hashable, int] = defaultdict(int)
    nodes: set[Hashable] = set()
    for sequence in [*sequences.values(), *chains]:
        nodes.update(sequence)
        for before, after in itertools.pairwise(sequence):
            if after not in successors[before]:
                successors[before].add(after)
                indegree[after] += 1
    ready = deque(node for node in nodes if indegree[node] == 0)
    placed = 0
    while ready:
        node = ready.popleft()
        placed += 1
        for after in successors[node]:
            indegree[after] -= 1
            if indegree[after] == 0:
                ready.append(after)
    if placed == len(nodes):
        return
    stuck = {node for node in nodes if indegree[node] > 0}
    conflicts = []
    for name, sequence in sequences.items():
        position = {item: i for i, item in enumerate(sequence)}
        for other, other_sequence in sequences.items():
            common = [item for item in other_sequence if item in position and item in stuck]
            if [position[item] for item in common] != sorted(position[item] for item in common):
                conflicts.append((name, other))
                break
        if len(conflicts) >= 3:
            break
    raise AssertionError(
        f"no single order is consistent with what the subscriptions received: "
        f"{len(stuck)} messages are in a cycle; disagreeing pairs include {conflicts}"
    )


class Watched:
    """A handler that records (sender, number), counts calls, and catches overlaps.

    ``in_flight`` is taken without blocking: if a second thread enters while
    a call is running, the overlap is recorded. With ``rng``, a call now and
    then sleeps a little (up to ``longest`` seconds, with probability
    ``chance``) to jitter the interleaving.
    """

    def __init__(self, rng: random.Random | None = None, chance: float = 0.02, longest: float = 0.0005) -> None:
        self.received: list[tuple[int, int]] = []
        self.ids: list[str] = []
        self.calls = 0
        self.overlaps = 0
        self._in_flight = threading.Lock()
        self._rng = rng
        self._chance = chance
        self._longest = longest

    def __call__(self, message: Message) -> None:
        if not self._in_flight.acquire(blocking=False):
            self.overlaps += 1
            return
        try:
            self.calls += 1
            if "s" in message.data:
                self.received.append((message.data["s"], message.data["n"]))
                self.ids.append(message.id)
            if self._rng is not None and self._rng.random() < self._chance:
                time.sleep(self._rng.random() * self._longest)
        finally:
            self._in_flight.release()


def never_arrived(
    sent: Mapping[Any, Any],
    got: Sequence[Hashable],
    *,
    topic: str,
    after_subscribe: float,
    after_unsubscribe: float | None,
    joined_at: float | None,
) -> list[Any]:
    """The keys of ``sent`` that a subscription to ``topic`` must have received and did not.

    ``sent`` maps keys to records with ``before``/``after`` (the global
    counter read around the send) and ``topic``. Owed: every matching
    message sent entirely after subscribe() returned and, once unsubscribed,
    entirely before the latest message that arrived or a join() made ahead
    of unsubscribe().
    """
    if after_unsubscribe is None:
        horizon = float("inf")
    else:
        latest = max((sent[key].before for key in got), default=-1)
        horizon = max(latest, -1 if joined_at is None else joined_at)
    arrived = set(got)
    return [
        key
        for key, message in sent.items()
        if key not in arrived
        and message.before > after_subscribe
        and message.after < horizon
        and topics_match(message.topic, topic)
    ]
