"""Expiry: an expired message is never delivered; expiry is measured on the monotonic clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from support import TIMEOUT, FakeClock, Gate, Recorder, WallClock
from tidings import Channel, Hub


@pytest.mark.parametrize(
    "expiry",
    [
        timedelta(0),
        timedelta(seconds=-1),
        timedelta(days=-1),
        datetime.now(UTC) - timedelta(seconds=1),
        datetime(2000, 1, 1, tzinfo=UTC),
        datetime(2000, 1, 1),  # naive: local time
    ],
    ids=["zero", "minus-1s", "minus-1d", "aware-past", "aware-2000", "naive-2000"],
)
def test_an_expired_message_is_never_delivered(hub: Hub, expiry: datetime | timedelta) -> None:
    recorders = [Recorder(), Recorder()]
    for recorder in recorders:
        Channel("chat", recorder, hub=hub)
    sender = Channel("chat", hub=hub)
    sent = []
    for n in range(50):
        sent.append(sender.send({"n": n, "expired": True}, expiry=expiry))
        sender.send({"n": n})
    assert hub.join(TIMEOUT)
    for recorder in recorders:
        # Nothing behind an expired message is lost.
        assert recorder.data == [{"n": n} for n in range(50)]
    assert all(message.is_expired() and message.is_dropped() for message in sent)
    assert hub.stats()["dropped_expired"] == 100


def test_a_message_that_expires_while_queued_is_dropped(hub: Hub, fake_clock: FakeClock) -> None:
    gate = Gate()
    Channel("chat", gate, hub=hub)
    sender = Channel("chat", hub=hub)
    sender.send({"n": 0})  # blocks the handler
    assert gate.entered.wait(TIMEOUT)
    short = sender.send({"n": 1}, expiry=timedelta(seconds=5))
    sender.send({"n": 2})
    long = sender.send({"n": 3}, expiry=timedelta(seconds=60))
    at = sender.send({"n": 4}, expiry=datetime.now(UTC) + timedelta(seconds=5))
    assert not short.is_expired()
    fake_clock.advance(10)
    assert short.is_expired()
    assert at.is_expired()
    assert not long.is_expired()
    gate.opened.set()
    assert hub.join(TIMEOUT)
    assert gate.recorder.values() == [0, 2, 3]
    assert short.is_dropped()
    assert at.is_dropped()
    assert not long.is_dropped()
    assert hub.stats()["dropped_expired"] == 2


def test_a_message_is_delivered_until_its_expiry(hub: Hub, fake_clock: FakeClock) -> None:
    gate = Gate()
    Channel("chat", gate, hub=hub)
    sender = Channel("chat", hub=hub)
    sender.send({"n": 0})
    assert gate.entered.wait(TIMEOUT)
    message = sender.send({"n": 1}, expiry=timedelta(seconds=5))
    fake_clock.advance(4.5)
    gate.opened.set()
    assert hub.join(TIMEOUT)
    assert gate.recorder.values() == [0, 1]
    assert not message.is_dropped()


def test_a_wall_clock_jump_forward_does_not_expire_messages(
    hub: Hub, fake_clock: FakeClock, wall_clock: WallClock
) -> None:
    gate = Gate()
    Channel("chat", gate, hub=hub)
    sender = Channel("chat", hub=hub)
    sender.send({"n": 0})
    assert gate.entered.wait(TIMEOUT)
    relative = sender.send({"n": 1}, expiry=timedelta(minutes=1))
    absolute = sender.send({"n": 2}, expiry=datetime.now(UTC) + timedelta(minutes=1))
    wall_clock.jump(2 * 3600)  # e.g. an NTP correction
    assert not relative.is_expired()
    assert not absolute.is_expired()
    gate.opened.set()
    assert hub.join(TIMEOUT)
    assert gate.recorder.values() == [0, 1, 2]


def test_a_wall_clock_jump_back_does_not_revive_messages(
    hub: Hub, fake_clock: FakeClock, wall_clock: WallClock
) -> None:
    gate = Gate()
    Channel("chat", gate, hub=hub)
    sender = Channel("chat", hub=hub)
    sender.send({"n": 0})
    assert gate.entered.wait(TIMEOUT)
    relative = sender.send({"n": 1}, expiry=timedelta(seconds=30))
    absolute = sender.send({"n": 2}, expiry=datetime.now(UTC) + timedelta(seconds=30))
    fake_clock.advance(60)
    wall_clock.jump(-2 * 3600)
    assert relative.is_expired()
    assert absolute.is_expired()
    gate.opened.set()
    assert hub.join(TIMEOUT)
    assert gate.recorder.values() == [0]


def test_the_wall_clock_is_what_a_datetime_expiry_is_measured_from(hub: Hub, wall_clock: WallClock) -> None:
    # A datetime is an absolute wall-clock instant: when the wall clock at
    # send time is already past it, the message is expired on arrival.
    wall_clock.jump(3600)
    message = Channel("chat", hub=hub).send(expiry=datetime.now(UTC) + timedelta(minutes=1))
    assert message.is_expired()
