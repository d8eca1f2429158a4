"""Custom broker and task-worker classes named in the settings are used.

Includes a toy broker and task worker written against :class:`tidings.Worker`
alone, which proves the base class can be implemented by users.
"""

from __future__ import annotations

import fnmatch
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from support import TIMEOUT, HubFactory, Recorder
from tidings import Channel, ConfigurationError, Hub, Message, MessageBroker, Settings, TaskWorker, Worker

# What the plugin classes below saw, per hub (each test has its own hub).
SEEN: defaultdict[Hub, list[Any]] = defaultdict(list)


@pytest.fixture(autouse=True)
def _forget_what_was_seen() -> Iterator[None]:
    yield
    SEEN.clear()


def dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class RecordingBroker(MessageBroker):
    """Records every message it routes, and stamps it on the way."""

    def run(self) -> None:
        message = self.get_message()
        if message is None:
            return
        SEEN[self.hub].append(("broker", self.name, message.topic, dict(message.data)))
        message.data["via"] = "RecordingBroker"
        for channel in self.get_channels(message):
            self.schedule_task(channel, message)


class AuditBroker(MessageBroker):
    """Routes 'audit.*' to an audit log instead of to subscribers."""

    def run(self) -> None:
        message = self.get_message()
        if message is None:
            return
        if fnmatch.fnmatchcase(message.topic, "audit.*"):
            SEEN[self.hub].append(message)
            return
        for channel in self.get_channels(message):
            self.schedule_task(channel, message)


class RecordingTaskWorker(TaskWorker):
    """Records which thread ran which messages of which channel."""

    def run(self) -> None:
        task = self.get_task()
        if task is None:
            return
        SEEN[self.hub].append(
            (threading.current_thread().name, self.name, task.channel.topic, [m.data["n"] for m in task.messages])
        )
        self.run_task(task)


class ToyBroker(Worker):
    """A broker from scratch: one message per turn, straight to its channels."""

    def run(self) -> None:
        message = self.get_message()
        if message is None:
            SEEN[self.hub].append("idle")
            return
        for channel in self.get_channels(message):
            self.schedule_task(channel, message)


class ToyTaskWorker(Worker):
    """A task worker from scratch."""

    def run(self) -> None:
        task = self.get_task()
        if task is not None:
            self.run_task(task)


class NotAWorker:
    def __init__(self, hub: Hub, name: str) -> None:
        pass

    def run(self) -> None:
        pass


def _exchange(hub: Hub, count: int = 50) -> tuple[Recorder, Recorder]:
    exact, pattern = Recorder(), Recorder()
    Channel("chat.lona", exact, hub=hub)
    Channel("chat.*", pattern, hub=hub)
    for n in range(count):
        Channel("chat.lona", hub=hub).send({"n": n})
    assert hub.join(TIMEOUT)
    return exact, pattern


@pytest.mark.parametrize("by", ["class", "dotted path"])
def test_a_custom_broker_is_used(make_hub: HubFactory, by: str) -> None:
    broker: Any = RecordingBroker if by == "class" else dotted(RecordingBroker)
    hub = make_hub(CHANNEL_MESSAGE_BROKER_CLASS=broker)
    exact, pattern = _exchange(hub)
    assert exact.data == [{"n": n, "via": "RecordingBroker"} for n in range(50)]
    assert pattern.data == exact.data
    routed = [entry for entry in SEEN.pop(hub) if entry[2] == "chat.lona"]
    assert [entry[3] for entry in routed] == [{"n": n} for n in range(50)]


def test_a_custom_broker_may_route_messages_elsewhere(make_hub: HubFactory) -> None:
    hub = make_hub(CHANNEL_MESSAGE_BROKER_CLASS=AuditBroker)
    everything, audit = Recorder(), Recorder()
    Channel("*", everything, hub=hub)
    Channel("audit.*", audit, hub=hub)
    Channel("audit.login", hub=hub).send({"user": "ada"})
    Channel("chat", hub=hub).send({"text": "hi"})
    Channel("audit.logout", hub=hub).send({"user": "ada"})
    assert hub.join(TIMEOUT)
    assert audit.messages == []
    assert [m.topic for m in everything.messages if not m.topic.startswith("tidings.")] == ["chat"]
    assert [(m.topic, m.data) for m in SEEN.pop(hub)] == [
        ("audit.login", {"user": "ada"}),
        ("audit.logout", {"user": "ada"}),
    ]


@pytest.mark.parametrize("by", ["class", "dotted path", "environment"])
def test_a_custom_task_worker_is_used(make_hub: HubFactory, monkeypatch: pytest.MonkeyPatch, by: str) -> None:
    if by == "environment":
        monkeypatch.setenv("TIDINGS_CHANNEL_TASK_WORKER_CLASS", dotted(RecordingTaskWorker))
        hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=3)
    else:
        worker: Any = RecordingTaskWorker if by == "class" else dotted(RecordingTaskWorker)
        hub = make_hub(CHANNEL_TASK_WORKER_CLASS=worker, MAX_CHANNEL_TASK_WORKER_THREADS=3)
    exact, pattern = _exchange(hub)
    tasks = SEEN.pop(hub)
    # Every handler call ran inside a task this class handed to run_task(),
    # on the thread that took the task.
    for recorder, topic in ((exact, "chat.lona"), (pattern, "chat.*")):
        ran_on = {n: thread for thread, _, task_topic, numbers in tasks if task_topic == topic for n in numbers}
        assert [ran_on[n] for n in recorder.values()] == recorder.threads
        assert sorted(ran_on) == list(range(50))


def test_custom_broker_class_from_the_environment(make_hub: HubFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_CHANNEL_MESSAGE_BROKER_CLASS", dotted(RecordingBroker))
    hub = make_hub()
    exact, _ = _exchange(hub, 3)
    assert exact.data == [{"n": n, "via": "RecordingBroker"} for n in range(3)]


@pytest.mark.parametrize(("brokers", "workers"), [(1, 1), (3, 4)])
def test_a_toy_broker_and_worker_built_on_worker_alone(make_hub: HubFactory, brokers: int, workers: int) -> None:
    hub = make_hub(
        CHANNEL_MESSAGE_BROKER_CLASS=ToyBroker,
        CHANNEL_TASK_WORKER_CLASS=dotted(ToyTaskWorker),
        MAX_CHANNEL_MESSAGE_BROKER_THREADS=brokers,
        MAX_CHANNEL_TASK_WORKER_THREADS=workers,
    )
    recorders = [Recorder() for _ in range(4)]
    for number, recorder in enumerate(recorders):
        Channel("chat.lona" if number % 2 else "chat.*", recorder, hub=hub)

    def send(s: int) -> None:
        for n in range(300):
            Channel("chat.lona", hub=hub).send({"s": s, "n": n})

    threads = [threading.Thread(target=send, args=(s,)) for s in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert hub.join(TIMEOUT)
    orders = [[(m.data["s"], m.data["n"]) for m in recorder.messages] for recorder in recorders]
    assert all(order == orders[0] for order in orders), "subscriptions disagree on the order"
    for s in range(3):
        assert [n for sender, n in orders[0] if sender == s] == list(range(300))


def test_run_is_called_again_after_an_idle_tick(make_hub: HubFactory) -> None:
    # get_message() gives up after CHANNEL_WORKER_TIMEOUT and returns None;
    # the base class calls run() again.
    ticks = threading.Semaphore(0)

    class CountingBroker(ToyBroker):
        def run(self) -> None:
            super().run()
            ticks.release()

    hub = make_hub(CHANNEL_MESSAGE_BROKER_CLASS=CountingBroker, CHANNEL_WORKER_TIMEOUT=0.01)
    for _ in range(5):
        assert ticks.acquire(timeout=TIMEOUT)
    assert "idle" in SEEN.pop(hub)
    exact, _ = _exchange(hub, 3)
    assert exact.values() == [0, 1, 2]


def test_an_exception_in_run_is_logged_and_the_loop_goes_on(
    make_hub: HubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    failures = threading.Semaphore(0)

    class FlakyBroker(MessageBroker):
        calls = 0

        def run(self) -> None:
            FlakyBroker.calls += 1
            if FlakyBroker.calls <= 3:
                failures.release()
                raise OSError("network down")
            super().run()

    with caplog.at_level("ERROR", logger="tidings"):
        hub = make_hub(CHANNEL_MESSAGE_BROKER_CLASS=FlakyBroker, CHANNEL_WORKER_TIMEOUT=0.01)
        for _ in range(3):
            assert failures.acquire(timeout=TIMEOUT)
        exact, _ = _exchange(hub, 3)
    assert exact.values() == [0, 1, 2]
    assert sum("network down" in str(record.exc_info[1]) for record in caplog.records if record.exc_info) == 3


@pytest.mark.parametrize("setting", ["CHANNEL_MESSAGE_BROKER_CLASS", "CHANNEL_TASK_WORKER_CLASS"])
@pytest.mark.parametrize(
    "value",
    [NotAWorker, OrderedDict, dotted(NotAWorker), "collections.OrderedDict", "tidings.no_such_class", "no.such.Module"],
)
def test_a_bad_class_is_a_configuration_error_at_start(setting: str, value: Any) -> None:
    hub = Hub(Settings(**{setting: value}))
    with pytest.raises(ConfigurationError) as caught:
        hub.start()
    assert caught.value.setting == setting
    assert setting in str(caught.value)
    assert hub.stop(timeout=TIMEOUT)


def test_a_dotted_path_naming_a_function_is_a_configuration_error() -> None:
    hub = Hub(Settings(CHANNEL_TASK_WORKER_CLASS=f"{__name__}.dotted"))
    with pytest.raises(ConfigurationError):
        hub.start()
    assert hub.stop(timeout=TIMEOUT)


def test_a_custom_broker_may_ask_for_stats_and_topics_mid_run(make_hub: HubFactory) -> None:
    # run() holds the broker lock from its first get_message(); stats() and
    # topics() take it too, so it must be re-entrant.
    seen: list[tuple[int, list[str]]] = []

    class Introspecting(MessageBroker):
        def run(self) -> None:
            message = self.get_message()
            if message is None:
                return
            seen.append((self.hub.stats()["subscriptions"], sorted(self.hub.topics())))
            for channel in self.get_channels(message):
                self.schedule_task(channel, message)

    hub = make_hub(CHANNEL_MESSAGE_BROKER_CLASS=Introspecting)
    exact, _ = _exchange(hub, 3)
    assert exact.values() == [0, 1, 2]
    assert seen[-1] == (2, ["chat.*", "chat.lona"])


def test_workers_know_their_hub(make_hub: HubFactory) -> None:
    seen: list[tuple[Hub, str, float, bool]] = []

    class Inspecting(TaskWorker):
        def run(self) -> None:
            if not seen:
                seen.append((self.hub, self.name, self.timeout, self.running))
            super().run()

    hub = make_hub(CHANNEL_TASK_WORKER_CLASS=Inspecting, CHANNEL_WORKER_TIMEOUT=0.5)
    _exchange(hub, 1)
    (owner, name, timeout, running), *_ = seen
    assert owner is hub
    assert isinstance(name, str)
    assert name
    assert timeout == 0.5
    assert running is True


def test_a_task_exposes_its_channel_and_messages(make_hub: HubFactory) -> None:
    tasks: list[tuple[Channel, list[Message]]] = []

    class Peeking(TaskWorker):
        def run(self) -> None:
            task = self.get_task()
            if task is not None:
                tasks.append((task.channel, task.messages))
                self.run_task(task)

    hub = make_hub(CHANNEL_TASK_WORKER_CLASS=Peeking, start=False)
    recorder = Recorder()
    channel = Channel("chat", recorder, hub=hub)
    for n in range(5):
        Channel("chat", hub=hub).send({"n": n})
    hub.start()
    assert hub.join(TIMEOUT)
    assert all(task_channel is channel for task_channel, _ in tasks)
    assert [m.data["n"] for _, messages in tasks for m in messages] == [0, 1, 2, 3, 4]
    assert recorder.values() == [0, 1, 2, 3, 4]
