"""Handlers may send, subscribe and unsubscribe; unsubscribe() and calls in progress."""

from __future__ import annotations

import random
import threading

import pytest

from support import TIMEOUT, HubFactory, Recorder, call_in_thread
from tidings import SUBSCRIBE_TOPIC, UNSUBSCRIBE_TOPIC, Channel, Hub, Message


@pytest.mark.parametrize("workers", [1, 4])
def test_a_handler_may_send_subscribe_and_unsubscribe(make_hub: HubFactory, workers: int) -> None:
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=workers)
    late = Recorder()
    mine: list[int] = []
    channels: list[Channel] = []

    def handler(message: Message) -> None:
        n = message.data["n"]
        mine.append(n)
        if n == 0:
            # Subscribed from a handler: gets what is sent after this returns.
            channels.append(Channel("late", late, hub=hub))
            Channel("late", hub=hub).send({"n": "from the handler"})
        if n < 5:
            Channel("loop", hub=hub).send({"n": n + 1})
        else:
            me.unsubscribe()
            Channel("loop", hub=hub).send({"n": n + 1})  # sent after: not delivered

    me = Channel("loop", handler, hub=hub)
    Channel("loop", hub=hub).send({"n": 0})

    def settled() -> bool:
        # Each join covers what was sent before it; the chain needs a few.
        return all(hub.join(TIMEOUT) for _ in range(8))

    assert call_in_thread(settled, 2 * TIMEOUT)
    assert mine == [0, 1, 2, 3, 4, 5]
    assert late.values() == ["from the handler"]


def test_a_handler_unsubscribing_itself_gets_nothing_more(hub: Hub) -> None:
    got: list[int] = []

    def handler(message: Message) -> None:
        got.append(message.data["n"])
        if message.data["n"] == 5:
            channel.unsubscribe()
            channel.unsubscribe()

    channel = Channel("chat", handler, hub=hub)
    for n in range(50):
        Channel("chat", hub=hub).send({"n": n})
    assert hub.join(TIMEOUT)
    assert got == [0, 1, 2, 3, 4, 5]
    assert channel.handler is None
    assert hub.stats()["subscriptions"] == 0


@pytest.mark.parametrize("round_", range(10))
def test_two_handlers_unsubscribing_each_other_do_not_deadlock(make_hub: HubFactory, round_: int) -> None:
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=2)
    both_in = threading.Barrier(2, timeout=TIMEOUT)
    channels: dict[str, Channel] = {}
    calls = {"a": 0, "b": 0}

    def handler(name: str, other: str) -> Recorder:
        class Handler(Recorder):
            def __call__(self, message: Message) -> None:
                calls[name] += 1
                if calls[name] == 1:
                    both_in.wait()  # both first calls are in progress now
                    channels[other].unsubscribe()

        return Handler()

    channels["a"] = Channel("a", handler("a", "b"), hub=hub)
    channels["b"] = Channel("b", handler("b", "a"), hub=hub)
    for _ in range(5):
        Channel("a", hub=hub).send()
        Channel("b", hub=hub).send()
    assert hub.join(TIMEOUT)
    # Each may get another call in before the other's unsubscribe() lands
    # (unsubscribe from a handler does not wait), but both end.
    assert calls["a"] >= 1
    assert calls["b"] >= 1
    assert hub.stats()["subscriptions"] == 0


def test_unsubscribing_another_subscription_mid_call_does_not_wait_for_it(make_hub: HubFactory) -> None:
    # B's call waits for A's handler to go on after its unsubscribe(); if
    # unsubscribe() from a handler waited for B's call, neither would return.
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=2)
    b_entered = threading.Event()
    a_done = threading.Event()
    b_calls: list[int] = []

    def a(message: Message) -> None:
        assert b_entered.wait(TIMEOUT)
        channel_b.unsubscribe()
        a_done.set()

    def b(message: Message) -> None:
        b_calls.append(message.data["n"])
        b_entered.set()
        assert a_done.wait(TIMEOUT)

    Channel("a", a, hub=hub)
    channel_b = Channel("b", b, hub=hub)
    for n in range(10):
        Channel("b", hub=hub).send({"n": n})
    assert b_entered.wait(TIMEOUT)
    Channel("a", hub=hub).send()
    assert hub.join(TIMEOUT)
    assert a_done.is_set()
    # The call in progress finished; no other call started.
    assert b_calls == [0]
    assert hub.stats()["handler_errors"] == 0


def test_unsubscribe_from_outside_waits_for_the_call_in_progress(hub: Hub) -> None:
    entered = threading.Event()
    release = threading.Event()
    finished = threading.Event()
    calls: list[int] = []

    def handler(message: Message) -> None:
        calls.append(message.data["n"])
        entered.set()
        release.wait(TIMEOUT)
        finished.set()

    channel = Channel("chat", handler, hub=hub)
    for n in range(10):
        Channel("chat", hub=hub).send({"n": n})
    assert entered.wait(TIMEOUT)
    finished_when_returned: list[bool] = []

    def unsubscribe() -> None:
        channel.unsubscribe()
        finished_when_returned.append(finished.is_set())

    thread = threading.Thread(target=unsubscribe)
    thread.start()
    thread.join(0.1)  # gives a wrong unsubscribe() the chance to return early
    release.set()
    thread.join(TIMEOUT)
    assert finished_when_returned == [True], "unsubscribe() returned while the handler was still running"
    assert hub.join(TIMEOUT)
    assert calls == [0]


def test_unsubscribe_without_waiting(hub: Hub) -> None:
    # wait=False: returns at once even with a call in progress, and still
    # no new call starts.
    entered = threading.Event()
    release = threading.Event()
    calls: list[int] = []

    def handler(message: Message) -> None:
        calls.append(message.data["n"])
        entered.set()
        release.wait(TIMEOUT)

    channel = Channel("chat", handler, hub=hub)
    for n in range(10):
        Channel("chat", hub=hub).send({"n": n})
    assert entered.wait(TIMEOUT)
    try:
        call_in_thread(lambda: channel.unsubscribe(wait=False), timeout=TIMEOUT / 2)
        assert not release.is_set()
    finally:
        release.set()
    assert hub.join(TIMEOUT)
    assert calls == [0]


def test_no_call_starts_after_unsubscribe_returns(make_hub: HubFactory) -> None:
    # Many sends, unsubscribed from outside at a random point: after
    # unsubscribe() returns, the call count never moves again.
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=4)
    rng = random.Random(7)
    for attempt in range(20):
        calls = Recorder()
        channel = Channel(f"chat.{attempt}", calls, hub=hub)
        sender = Channel(f"chat.{attempt}", hub=hub)
        for _ in range(rng.randrange(1, 400)):
            sender.send()
        channel.unsubscribe()
        count = len(calls.messages)
        assert hub.join(TIMEOUT)
        late = len(calls.messages) - count
        assert late == 0, f"attempt {attempt}: {late} calls after unsubscribe() returned"


def test_subscribe_and_unsubscribe_are_announced_on_internal_topics(hub: Hub) -> None:
    subscribed = Recorder()
    unsubscribed = Recorder()
    Channel(SUBSCRIBE_TOPIC, subscribed, hub=hub)
    Channel(UNSUBSCRIBE_TOPIC, unsubscribed, hub=hub)
    channel = Channel("chat.rooms.lona", lambda message: None, hub=hub)
    pattern = Channel("chat.*", lambda message: None, hub=hub)
    channel.unsubscribe()
    channel.unsubscribe()  # already unsubscribed: announced once
    Channel("never", hub=hub).unsubscribe()
    assert hub.join(TIMEOUT)
    # Like Lona, a subscription is in place before its announcement is sent,
    # so a channel on the internal topic hears its own.
    assert [m.data for m in subscribed.messages] == [
        {"topic": SUBSCRIBE_TOPIC},
        {"topic": UNSUBSCRIBE_TOPIC},
        {"topic": "chat.rooms.lona"},
        {"topic": "chat.*"},
    ]
    assert [m.data for m in unsubscribed.messages] == [{"topic": "chat.rooms.lona"}]
    for message in [*subscribed.messages, *unsubscribed.messages]:
        assert message.local is True
    pattern.unsubscribe()
    assert hub.join(TIMEOUT)
    assert [m.data for m in unsubscribed.messages] == [{"topic": "chat.rooms.lona"}, {"topic": "chat.*"}]


@pytest.mark.parametrize("workers", [1, 3])
def test_reentrant_chaos_does_not_deadlock(make_hub: HubFactory, workers: int) -> None:
    # Handlers that send, subscribe, unsubscribe themselves and each other at
    # random, with a fixed seed per subscription.
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=workers)
    seed = 11 * workers
    channels: list[Channel] = []
    lock = threading.Lock()
    budget = [3000]

    def make_handler(rng: random.Random) -> Recorder:
        class Handler(Recorder):
            def __call__(self, message: Message) -> None:
                with lock:
                    if budget[0] <= 0:
                        return
                    budget[0] -= 1
                    victim = rng.choice(channels) if channels else None
                action = rng.random()
                topic = f"t.{rng.randrange(4)}"
                if action < 0.5:
                    Channel(topic, hub=hub).send({"n": rng.random()})
                elif action < 0.7:
                    new = Channel(rng.choice([topic, "t.*", "*"]), make_handler(random.Random(rng.random())), hub=hub)
                    with lock:
                        channels.append(new)
                elif victim is not None:
                    victim.unsubscribe()

        return Handler()

    rng = random.Random(seed)
    for number in range(8):
        channels.append(Channel(f"t.{number % 4}", make_handler(random.Random(rng.random())), hub=hub))
    for number in range(20):
        Channel(f"t.{number % 4}", hub=hub).send()

    def settle() -> bool:
        while hub.stats()["pending"] and budget[0] > 0:
            if not hub.join(TIMEOUT):
                return False
        return hub.join(TIMEOUT)

    assert call_in_thread(settle, 3 * TIMEOUT), f"seed {seed}"
