"""The channel API: subscribe, unsubscribe, send, and the message it returns."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import pytest

from support import TIMEOUT, HubFactory, Recorder
from tidings import Channel, Hub, Message


class ReadOnlyMapping(Mapping[str, Any]):
    def __init__(self, **items: Any) -> None:
        self._items = items

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def test_handler_and_topic_properties(hub: Hub) -> None:
    def handler(message: Message) -> None:
        pass

    channel = Channel("chat", hub=hub)
    assert channel.topic == "chat"
    assert channel.handler is None
    channel.subscribe(handler)
    assert channel.handler is handler
    channel.unsubscribe()
    assert channel.handler is None
    assert Channel("chat", handler, hub=hub).handler is handler


def test_subscribing_twice_is_a_runtime_error(hub: Hub) -> None:
    channel = Channel("chat", lambda message: None, hub=hub)
    with pytest.raises(RuntimeError):
        channel.subscribe(lambda message: None)


def test_handler_must_be_callable(hub: Hub) -> None:
    with pytest.raises(TypeError):
        Channel("chat", "not callable", hub=hub)  # type: ignore[arg-type]


def test_hub_must_be_a_hub_given_by_keyword(hub: Hub) -> None:
    with pytest.raises(TypeError):
        Channel("chat", hub="default")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Channel("chat", None, hub)  # type: ignore[call-arg]


def test_unsubscribe_is_idempotent(hub: Hub) -> None:
    channel = Channel("chat", lambda message: None, hub=hub)
    channel.unsubscribe()
    channel.unsubscribe()
    Channel("never-subscribed", hub=hub).unsubscribe()
    assert hub.join(TIMEOUT)
    assert hub.stats()["subscriptions"] == 0


def test_subscription_starts_when_subscribe_returns(hub: Hub) -> None:
    recorder = Recorder()
    sender = Channel("chat", hub=hub)
    sender.send({"n": 0})
    channel = Channel("chat", recorder, hub=hub)
    sender.send({"n": 1})
    assert hub.join(TIMEOUT)
    channel.unsubscribe()
    sender.send({"n": 2})
    assert hub.join(TIMEOUT)
    assert recorder.values() == [1]


def test_resubscribed_channel_never_gets_messages_of_its_earlier_life(hub: Hub) -> None:
    # The first handler blocks on message 0 while message 1 waits behind it;
    # the channel unsubscribes (from another thread, which waits for the call
    # in progress) and subscribes a new handler. Message 1 belonged to the
    # first subscription: neither handler may get it.
    started = threading.Event()
    release = threading.Event()
    first: list[int] = []

    def blocking(message: Message) -> None:
        first.append(message.data["n"])
        started.set()
        release.wait(TIMEOUT)

    second = Recorder()
    channel = Channel("chat", blocking, hub=hub)
    sender = Channel("chat", hub=hub)
    sender.send({"n": 0})
    sender.send({"n": 1})
    assert started.wait(TIMEOUT)
    unsubscriber = threading.Thread(target=channel.unsubscribe)
    unsubscriber.start()
    release.set()
    unsubscriber.join(TIMEOUT)
    assert not unsubscriber.is_alive()
    channel.subscribe(second)
    sender.send({"n": 2})
    assert hub.join(TIMEOUT)
    assert first == [0]
    assert second.values() == [2]


# -- send ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [None, {}, {"a": 1}, OrderedDict(a=1), MappingProxyType({"a": 1}), ReadOnlyMapping(a=1)]
)
def test_send_accepts_any_mapping_or_none(hub: Hub, data: Mapping[str, Any] | None) -> None:
    recorder = Recorder()
    Channel("chat", recorder, hub=hub)
    message = Channel("chat", hub=hub).send(data)
    assert hub.join(TIMEOUT)
    expected = {} if data is None else dict(data)
    assert message.data == expected
    assert recorder.data == [expected]
    assert type(recorder.messages[0].data) is dict


@pytest.mark.parametrize("data", [[("a", 1)], "a=1", 1, object(), {"a", "b"}, b"data"])
def test_send_rejects_non_mappings_itself(hub: Hub, data: object) -> None:
    recorder = Recorder()
    Channel("chat", recorder, hub=hub)
    with pytest.raises(TypeError):
        Channel("chat", hub=hub).send(data)  # type: ignore[arg-type]
    assert hub.join(TIMEOUT)
    assert recorder.messages == []
    assert hub.stats()["sent"] == 1  # only the subscribe notification


@pytest.mark.parametrize("flag", ["local", "droppable"])
@pytest.mark.parametrize("value", [1, "yes", None])
def test_send_flags_must_be_bools(hub: Hub, flag: str, value: object) -> None:
    arguments: dict[str, Any] = {flag: value}
    with pytest.raises(TypeError):
        Channel("chat", hub=hub).send({}, **arguments)


@pytest.mark.parametrize("expiry", [1, 1.5, "2030-01-01", time.time()])
def test_expiry_must_be_a_datetime_or_timedelta(hub: Hub, expiry: object) -> None:
    with pytest.raises(TypeError):
        Channel("chat", hub=hub).send({}, expiry=expiry)  # type: ignore[arg-type]


def test_send_never_blocks_when_nothing_consumes(make_hub: HubFactory) -> None:
    # An unstarted hub has no broker and a blocked handler holds the only
    # worker of a started one: send() must return either way.
    idle = make_hub(start=False)
    sender = Channel("chat", hub=idle)
    for n in range(20_000):
        sender.send({"n": n})
    assert idle.stats()["pending"] == 20_000

    busy = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=1)
    release = threading.Event()
    started = threading.Event()

    def blocking(message: Message) -> None:
        started.set()
        release.wait(TIMEOUT)

    Channel("chat", blocking, hub=busy)
    busy_sender = Channel("chat", hub=busy)
    busy_sender.send()
    assert started.wait(TIMEOUT)
    for n in range(20_000):
        busy_sender.send({"n": n})
    release.set()
    assert busy.join(TIMEOUT)


def test_message_attributes(hub: Hub) -> None:
    recorder = Recorder()
    Channel("chat.*", recorder, hub=hub)
    before = time.time()
    sent = Channel("chat.rooms", hub=hub).send({"text": "hi"}, local=True, droppable=True)
    after = time.time()
    assert hub.join(TIMEOUT)
    (got,) = recorder.messages
    for message in (sent, got):
        assert message.topic == "chat.rooms"
        assert message.data == {"text": "hi"}
        assert message.local is True
        assert message.droppable is True
        assert message.expiry is None
        assert message.is_expired() is False
        assert message.is_dropped() is False
        assert before <= message.time <= after
        assert isinstance(message.id, str)
    assert got.id == sent.id
    assert got.time == sent.time
    assert got is not sent
    assert got.data is not sent.data
    plain = Channel("chat.rooms", hub=hub).send()
    assert plain.local is False
    assert plain.droppable is False


def test_message_ids_are_unique(make_hub: HubFactory) -> None:
    first, second = make_hub(), make_hub()
    ids = [Channel("chat", hub=hub).send().id for hub in (first, second) for _ in range(1000)]
    assert len(set(ids)) == len(ids)


def test_message_expiry_is_an_aware_utc_datetime(hub: Hub) -> None:
    channel = Channel("chat", hub=hub)
    before = datetime.now(UTC)
    relative = channel.send(expiry=timedelta(hours=1)).expiry
    after = datetime.now(UTC)
    assert relative is not None
    assert relative.utcoffset() == timedelta(0)
    assert before + timedelta(hours=1) <= relative <= after + timedelta(hours=1)

    plus_two = timezone(timedelta(hours=2))
    aware = datetime(2100, 1, 1, 12, 0, tzinfo=plus_two)
    converted = channel.send(expiry=aware).expiry
    assert converted is not None
    assert converted.utcoffset() == timedelta(0)
    assert converted == aware
    assert converted.hour == 10

    naive = datetime(2100, 1, 1, 12, 0)  # local time, like datetime.now()
    from_naive = channel.send(expiry=naive).expiry
    assert from_naive is not None
    assert from_naive.utcoffset() == timedelta(0)
    assert from_naive == naive.astimezone(UTC)
