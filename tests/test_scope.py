"""Scopes: subscriptions that end together; a raising handler ends its channel."""

from __future__ import annotations

import logging
import threading

import pytest

from support import TIMEOUT, HubFactory, Recorder
from tidings import Channel, Hub, Message, Scope


def test_close_unsubscribes_every_channel(hub: Hub) -> None:
    scope = Scope(hub=hub)
    recorders = [Recorder() for _ in range(3)]
    channels = [scope.subscribe(f"chat.{n}", recorder) for n, recorder in enumerate(recorders)]
    assert all(isinstance(channel, Channel) for channel in channels)
    assert [channel.topic for channel in channels] == ["chat.0", "chat.1", "chat.2"]
    assert scope.channels == channels
    Channel("chat.*", hub=hub).send({"n": 0})
    assert hub.join(TIMEOUT)
    scope.close()
    scope.close()  # idempotent
    Channel("chat.*", hub=hub).send({"n": 1})
    assert hub.join(TIMEOUT)
    assert [recorder.values() for recorder in recorders] == [[0], [0], [0]]
    assert all(channel.handler is None for channel in channels)
    assert scope.channels == []
    assert hub.stats()["subscriptions"] == 0
    with pytest.raises(RuntimeError):
        scope.subscribe("chat.3", Recorder())


def test_with_block_unsubscribes_on_exit(hub: Hub) -> None:
    channels: list[Channel] = []

    def owner() -> None:
        with Scope(hub=hub) as scope:
            channels.append(scope.subscribe("chat", Recorder()))
            raise KeyError("the owner failed")

    with pytest.raises(KeyError):
        owner()
    assert channels[0].handler is None
    assert hub.join(TIMEOUT)
    assert hub.stats()["subscriptions"] == 0


def test_a_raising_handler_calls_on_error_and_is_unsubscribed(hub: Hub) -> None:
    errors: list[tuple[BaseException, Message, Channel, str]] = []

    def on_error(exception: BaseException, message: Message, channel: Channel) -> None:
        errors.append((exception, message, channel, threading.current_thread().name))

    failing_calls: list[int] = []

    def failing(message: Message) -> None:
        failing_calls.append(message.data["n"])
        if message.data["n"] == 3:
            raise ValueError("bad message")

    healthy = Recorder()
    outside = Recorder()
    scope = Scope(hub=hub, on_error=on_error)
    failing_channel = scope.subscribe("chat", failing)
    healthy_channel = scope.subscribe("chat", healthy)
    Channel("chat", outside, hub=hub)
    for n in range(10):
        Channel("chat", hub=hub).send({"n": n})
    assert hub.join(TIMEOUT)
    assert failing_calls == [0, 1, 2, 3], "unsubscribed at the first error"
    ((exception, message, channel, thread),) = errors
    assert isinstance(exception, ValueError)
    assert str(exception) == "bad message"
    assert message.data == {"n": 3}
    assert channel is failing_channel
    assert thread != threading.current_thread().name
    assert failing_channel.handler is None
    assert scope.channels == [healthy_channel]
    # Nothing else was disturbed.
    assert healthy.values() == list(range(10))
    assert outside.values() == list(range(10))
    scope.close()


def test_without_on_error_the_scope_logs_and_unsubscribes(hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    def failing(message: Message) -> None:
        raise ValueError("bad message")

    scope = Scope(hub=hub)
    channel = scope.subscribe("chat", failing)
    with caplog.at_level(logging.ERROR, logger="tidings"):
        for _ in range(3):
            Channel("chat", hub=hub).send()
        assert hub.join(TIMEOUT)
    records = [r for r in caplog.records if r.name == "tidings" and r.exc_info]
    assert len(records) == 1
    assert channel.handler is None


def test_hub_must_be_a_hub() -> None:
    with pytest.raises(TypeError):
        Scope(hub="default")  # type: ignore[arg-type]


def test_on_error_must_be_callable(hub: Hub) -> None:
    with pytest.raises(TypeError):
        Scope(hub=hub, on_error="print")  # type: ignore[arg-type]


def test_a_raising_on_error_is_logged_and_changes_nothing_else(
    make_hub: HubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=1)

    def on_error(exception: BaseException, message: Message, channel: Channel) -> None:
        raise RuntimeError("the error handler failed too")

    def failing(message: Message) -> None:
        raise ValueError("bad message")

    healthy = Recorder()
    scope = Scope(hub=hub, on_error=on_error)
    failing_channel = scope.subscribe("chat", failing)
    Channel("chat", healthy, hub=hub)
    with caplog.at_level(logging.ERROR, logger="tidings"):
        for n in range(5):
            Channel("chat", hub=hub).send({"n": n})
        assert hub.join(TIMEOUT)
    assert healthy.values() == list(range(5))
    assert failing_channel.handler is None
    assert any("the error handler failed too" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


def test_an_on_error_raising_base_exception_does_not_end_a_worker(
    make_hub: HubFactory, caplog: pytest.LogCaptureFixture, thread_deaths: list[threading.ExceptHookArgs]
) -> None:
    # With one task worker, losing it would stop every delivery.
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=1)

    def on_error(error: BaseException, message: Message, channel: Channel) -> None:
        raise SystemExit(1)  # e.g. sys.exit() in an error callback

    def failing(message: Message) -> None:
        raise ValueError("bad message")

    healthy = Recorder()
    scope = Scope(hub=hub, on_error=on_error)
    scope.subscribe("bad", failing)
    Channel("good", healthy, hub=hub)
    with caplog.at_level(logging.CRITICAL + 1, logger="tidings"):
        Channel("bad", hub=hub).send()
        for n in range(5):
            Channel("good", hub=hub).send({"n": n})
        joined = hub.join(TIMEOUT)
    assert [death.thread.name for death in thread_deaths if death.thread] == [], "a worker thread died"
    assert joined
    assert healthy.values() == list(range(5))


def test_on_error_may_close_the_scope(hub: Hub) -> None:
    closed = threading.Event()

    def on_error(exception: BaseException, message: Message, channel: Channel) -> None:
        scope.close()
        closed.set()

    def failing(message: Message) -> None:
        raise ValueError("bad message")

    others = [Recorder(), Recorder()]
    scope = Scope(hub=hub, on_error=on_error)
    scope.subscribe("chat.bad", failing)
    for other in others:
        scope.subscribe("chat.good", other)
    Channel("chat.bad", hub=hub).send()
    assert closed.wait(TIMEOUT)
    Channel("chat.good", hub=hub).send()
    assert hub.join(TIMEOUT)
    assert scope.channels == []
    assert all(other.messages == [] for other in others)
    assert hub.stats()["subscriptions"] == 0


def test_scopes_are_independent(hub: Hub) -> None:
    first, second = Scope(hub=hub), Scope(hub=hub)
    a, b = Recorder(), Recorder()
    first.subscribe("chat", a)
    second.subscribe("chat", b)
    first.close()
    Channel("chat", hub=hub).send()
    assert hub.join(TIMEOUT)
    assert a.messages == []
    assert len(b.messages) == 1
    second.close()


def test_closing_from_another_thread_while_handlers_run(make_hub: HubFactory) -> None:
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=4)
    scope = Scope(hub=hub)
    calls: list[int] = []
    for number in range(20):
        scope.subscribe(f"chat.{number}", lambda message: calls.append(1))
    for _ in range(50):
        Channel("chat.*", hub=hub).send()
    scope.close()
    count = len(calls)
    assert hub.join(TIMEOUT)
    assert len(calls) == count, "a handler ran after close() returned"
