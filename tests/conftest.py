"""Fixtures shared by the test suite.

Every test gets its own :class:`tidings.Hub` (``hub`` or ``make_hub``), so no
state is shared between tests and the default hub is never started in the
test process; tests of the default hub run in a subprocess.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import datetime, timedelta, tzinfo
from typing import Any, TypeVar

import pytest
from hypothesis import settings as hypothesis_settings

from support import TIMEOUT, WORKER_TIMEOUT, FakeClock, HubFactory, WallClock
from tidings import Settings
from tidings.testing import CheckedHub

T = TypeVar("T")

pytest_plugins = ["pytester"]

# Threads make examples slow and uneven: no deadline. print_blob prints the
# @reproduce_failure line for a failing example; the failing example itself
# is also kept in .hypothesis/ and replayed first on the next run.
hypothesis_settings.register_profile("tidings", deadline=None, print_blob=True)
hypothesis_settings.load_profile("tidings")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a developer's ``TIDINGS_*`` variables from changing the tests."""
    for name in list(os.environ):
        if name.startswith("TIDINGS_"):
            monkeypatch.delenv(name)


@pytest.fixture
def tidings_settings() -> Settings:
    """The settings of tidings.testing's ``hub`` fixture (see ``support.WORKER_TIMEOUT``)."""
    return Settings(CHANNEL_WORKER_TIMEOUT=WORKER_TIMEOUT)


@pytest.fixture
def make_hub() -> Iterator[HubFactory]:
    """Build more hubs (started unless ``start=False``); each is stopped afterwards.

    The ``hub`` fixture itself comes from tidings.testing (the pytest plugin
    that tidings installs). These are :class:`tidings.testing.CheckedHub`
    too: settings default to the library's, except ``CHANNEL_WORKER_TIMEOUT``
    (see ``support.WORKER_TIMEOUT``).

    Teardown asserts that ``stop()`` drained and ended its threads, so a test
    that leaves a handler blocked fails instead of leaking threads, and that
    no handler raised unless the test took the error.
    """
    hubs: list[CheckedHub] = []

    def make(settings: Settings | None = None, *, start: bool = True, **kwargs: Any) -> CheckedHub:
        if settings is None:
            kwargs.setdefault("CHANNEL_WORKER_TIMEOUT", WORKER_TIMEOUT)
            settings = Settings(**kwargs)
        hub = CheckedHub(settings)
        hubs.append(hub)
        if start:
            hub.start()
        return hub

    yield make
    failed = [hub for hub in hubs if not hub.stop(timeout=TIMEOUT)]
    for hub in hubs:
        hub.check()
    assert not failed, f"hubs did not stop cleanly: {failed}"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, T]], T]:
    """``run(coroutine)``: run it to the end on a new event loop, asyncio's or uvloop's.

    Like ``asyncio.run``: when the coroutine returns, the loop's remaining
    tasks are cancelled and the loop is closed. uvloop missing: skipped
    locally, a failure in CI (where ``tidings[uvloop]`` is installed).
    """
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if request.param == "uvloop":
        try:
            import uvloop
        except ImportError:
            reason = "uvloop is not installed: pip install 'tidings[uvloop]'"
            if os.environ.get("CI"):
                pytest.fail(f"{reason} (CI is set: the uvloop tests must run)", pytrace=False)
            pytest.skip(reason)
        factory = uvloop.new_event_loop

    def run(coroutine: Coroutine[Any, Any, T]) -> T:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coroutine)

    return run


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Replace the monotonic clock tidings measures expiry on.

    Every tidings module's ``_monotonic`` is patched, so the deadline set by
    ``send()`` and the check made before a handler call read the same clock.
    """
    clock = FakeClock(time.monotonic())
    patched = []
    for name, module in list(sys.modules.items()):
        if (name == "tidings" or name.startswith("tidings.")) and hasattr(module, "_monotonic"):
            monkeypatch.setattr(module, "_monotonic", clock)
            patched.append(name)
    assert "tidings._message" in patched, patched
    return clock


class _AnyDatetime(type):
    # Keeps isinstance(real_datetime, <patched datetime>) true in tidings.
    def __instancecheck__(cls, instance: object) -> bool:
        return isinstance(instance, datetime)


@pytest.fixture
def wall_clock(monkeypatch: pytest.MonkeyPatch) -> WallClock:
    """Let a test move the wall clock without touching the monotonic one."""
    clock = WallClock()
    real_time = time.time

    def shifted_time() -> float:
        return real_time() + clock.offset

    class ShiftedDatetime(datetime, metaclass=_AnyDatetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> ShiftedDatetime:
            moment = datetime.now(tz) + timedelta(seconds=clock.offset)
            return cls.combine(moment.date(), moment.timetz() if tz else moment.time())

    monkeypatch.setattr(time, "time", shifted_time)
    for name, module in list(sys.modules.items()):
        if name == "tidings" or name.startswith("tidings."):
            if getattr(module, "datetime", None) is datetime:
                monkeypatch.setattr(module, "datetime", ShiftedDatetime)
            for attribute in ("_time", "time"):
                if getattr(module, attribute, None) is real_time:
                    monkeypatch.setattr(module, attribute, shifted_time)
    return clock


@pytest.fixture
def thread_deaths(monkeypatch: pytest.MonkeyPatch) -> list[threading.ExceptHookArgs]:
    """Exceptions that ended a thread during the test (instead of pytest's warning).

    Tests that make handlers raise ``BaseException`` assert this stays empty,
    so a worker thread killed by one fails that test and no other.
    """
    deaths: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", deaths.append)
    return deaths
