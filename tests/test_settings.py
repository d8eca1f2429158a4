"""Settings: the reference's names and defaults, keyword-only, from the environment."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import tidings
from support import TIMEOUT, HubFactory
from tidings import Channel, ConfigurationError, Hub, Message, Settings

DEFAULTS: dict[str, Any] = {
    "MAX_CHANNEL_MESSAGE_BROKER_THREADS": 1,
    "MAX_CHANNEL_TASK_WORKER_THREADS": 4,
    "CHANNEL_MESSAGE_BROKER_CLASS": "tidings.MessageBroker",
    "CHANNEL_TASK_WORKER_CLASS": "tidings.TaskWorker",
    "CHANNEL_WORKER_TIMEOUT": 1.0,
    "CHANNEL_SHUTDOWN_TIMEOUT": 10.0,
}


def test_defaults() -> None:
    settings = Settings()
    for name, value in DEFAULTS.items():
        assert getattr(settings, name) == value, name


def test_settings_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        Settings(2)  # type: ignore[call-arg]


def test_unknown_setting_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="MAX_CHANNEL_TASK_WORKERS"):
        Settings(MAX_CHANNEL_TASK_WORKERS=2)


def test_repr_shows_every_setting() -> None:
    text = repr(Settings(MAX_CHANNEL_TASK_WORKER_THREADS=8, CHANNEL_TASK_WORKER_CLASS=tidings.TaskWorker))
    assert text.startswith("Settings(")
    for name in DEFAULTS:
        assert f"{name}=" in text
    assert "MAX_CHANNEL_TASK_WORKER_THREADS=8" in text
    assert "CHANNEL_WORKER_TIMEOUT=1.0" in text
    assert "TaskWorker" in text


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_CHANNEL_MESSAGE_BROKER_THREADS", 3),
        ("MAX_CHANNEL_TASK_WORKER_THREADS", 16),
        ("CHANNEL_MESSAGE_BROKER_CLASS", "package.module.Broker"),
        ("CHANNEL_MESSAGE_BROKER_CLASS", tidings.MessageBroker),
        ("CHANNEL_TASK_WORKER_CLASS", tidings.TaskWorker),
        ("CHANNEL_WORKER_TIMEOUT", 0.25),
        ("CHANNEL_WORKER_TIMEOUT", 2),
        ("CHANNEL_SHUTDOWN_TIMEOUT", 30.0),
    ],
)
def test_good_values_are_kept(name: str, value: object) -> None:
    assert getattr(Settings(**{name: value}), name) == value


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_CHANNEL_MESSAGE_BROKER_THREADS", 0),
        ("MAX_CHANNEL_MESSAGE_BROKER_THREADS", -1),
        ("MAX_CHANNEL_TASK_WORKER_THREADS", 0),
        ("MAX_CHANNEL_TASK_WORKER_THREADS", 1.5),
        ("MAX_CHANNEL_TASK_WORKER_THREADS", "4"),
        ("MAX_CHANNEL_TASK_WORKER_THREADS", True),
        ("MAX_CHANNEL_TASK_WORKER_THREADS", None),
        ("MAX_CHANNEL_TASK_WORKER_THREADS", 10**6),
        ("CHANNEL_MESSAGE_BROKER_CLASS", "NoDots"),
        ("CHANNEL_MESSAGE_BROKER_CLASS", ""),
        ("CHANNEL_MESSAGE_BROKER_CLASS", 42),
        ("CHANNEL_TASK_WORKER_CLASS", None),
        ("CHANNEL_TASK_WORKER_CLASS", ".Leading"),
        ("CHANNEL_WORKER_TIMEOUT", 0),
        ("CHANNEL_WORKER_TIMEOUT", -1.0),
        ("CHANNEL_WORKER_TIMEOUT", float("nan")),
        ("CHANNEL_WORKER_TIMEOUT", float("inf")),
        ("CHANNEL_WORKER_TIMEOUT", "1.0"),
        ("CHANNEL_WORKER_TIMEOUT", True),
        ("CHANNEL_SHUTDOWN_TIMEOUT", 0),
        ("CHANNEL_SHUTDOWN_TIMEOUT", None),
        ("CHANNEL_SHUTDOWN_TIMEOUT", 1e300),
    ],
)
def test_bad_values_are_configuration_errors_naming_the_setting(name: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(**{name: value})
    assert caught.value.setting == name
    assert name in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("MAX_CHANNEL_MESSAGE_BROKER_THREADS", "2", 2),
        ("MAX_CHANNEL_TASK_WORKER_THREADS", " 7 ", 7),
        ("CHANNEL_MESSAGE_BROKER_CLASS", "my.module.Broker", "my.module.Broker"),
        ("CHANNEL_TASK_WORKER_CLASS", "tidings.TaskWorker", "tidings.TaskWorker"),
        ("CHANNEL_WORKER_TIMEOUT", "0.5", 0.5),
        ("CHANNEL_SHUTDOWN_TIMEOUT", "3", 3.0),
    ],
)
def test_each_setting_comes_from_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, text: str, value: object
) -> None:
    monkeypatch.setenv(f"TIDINGS_{name}", text)
    assert getattr(Settings(), name) == value
    # A value given in code wins over the environment.
    assert getattr(Settings(**{name: DEFAULTS[name]}), name) == DEFAULTS[name]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("MAX_CHANNEL_MESSAGE_BROKER_THREADS", "many"),
        ("MAX_CHANNEL_TASK_WORKER_THREADS", "0"),
        ("MAX_CHANNEL_TASK_WORKER_THREADS", "2.5"),
        ("MAX_CHANNEL_TASK_WORKER_THREADS", ""),
        ("CHANNEL_MESSAGE_BROKER_CLASS", "nodots"),
        ("CHANNEL_TASK_WORKER_CLASS", " "),
        ("CHANNEL_WORKER_TIMEOUT", "soon"),
        ("CHANNEL_WORKER_TIMEOUT", "-1"),
        ("CHANNEL_WORKER_TIMEOUT", "nan"),
        ("CHANNEL_SHUTDOWN_TIMEOUT", "inf"),
    ],
)
def test_bad_environment_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, text: str) -> None:
    monkeypatch.setenv(f"TIDINGS_{name}", text)
    with pytest.raises(ConfigurationError) as caught:
        Settings()
    assert name in caught.value.setting
    assert name in str(caught.value)


def test_hub_without_settings_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_MAX_CHANNEL_TASK_WORKER_THREADS", "3")
    assert Hub().settings.MAX_CHANNEL_TASK_WORKER_THREADS == 3


def test_settings_are_read_only_and_replaceable() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.MAX_CHANNEL_TASK_WORKER_THREADS = 2
    changed = settings.replace(MAX_CHANNEL_TASK_WORKER_THREADS=2)
    assert changed.MAX_CHANNEL_TASK_WORKER_THREADS == 2
    assert settings.MAX_CHANNEL_TASK_WORKER_THREADS == 4
    assert changed == Settings(MAX_CHANNEL_TASK_WORKER_THREADS=2)
    assert changed != settings


def _run_barrier(hub: Hub, parties: int, timeout: float = TIMEOUT) -> list[bool]:
    """``parties`` subscriptions each wait at a barrier of ``parties``.

    The barrier is passed only when that many handlers run at the same
    time, which needs that many task-worker threads.
    """
    barrier = threading.Barrier(parties, timeout=timeout)
    results: list[bool] = []
    lock = threading.Lock()

    def handler(message: Message) -> None:
        try:
            barrier.wait()
            passed = True
        except threading.BrokenBarrierError:
            passed = False
        with lock:
            results.append(passed)

    for number in range(parties):
        Channel(f"barrier.{number}", handler, hub=hub)
    Channel("barrier.*", hub=hub).send()
    assert hub.join(2 * TIMEOUT)
    return results


@pytest.mark.parametrize("workers", [1, 3])
def test_task_worker_threads_setting_is_honoured(make_hub: HubFactory, workers: int) -> None:
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=workers)
    assert _run_barrier(hub, workers) == [True] * workers
    # One more party than there are threads can never meet (the short
    # timeout is how long we give them to prove otherwise).
    assert not all(_run_barrier(hub, workers + 1, timeout=0.3))


def test_task_worker_threads_from_the_environment_are_honoured(
    monkeypatch: pytest.MonkeyPatch, make_hub: HubFactory
) -> None:
    monkeypatch.setenv("TIDINGS_MAX_CHANNEL_TASK_WORKER_THREADS", "3")
    hub = make_hub()
    assert _run_barrier(hub, 3) == [True] * 3
    assert not all(_run_barrier(hub, 4, timeout=0.3))
