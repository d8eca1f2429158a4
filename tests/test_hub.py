"""The hub: lifecycle, join(), stop() with and without draining, stats()."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest

from support import TIMEOUT, Gate, HubFactory, Recorder
from tidings import Channel, Hub, HubClosedError, Message, Settings, TaskWorker


def stop_in_thread(hub: Hub, **kwargs: Any) -> tuple[threading.Thread, list[bool]]:
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(hub.stop(**kwargs)))
    thread.start()
    return thread, result


# -- lifecycle -----------------------------------------------------------------


def test_settings_must_be_settings() -> None:
    with pytest.raises(TypeError):
        Hub({"MAX_CHANNEL_TASK_WORKER_THREADS": 2})  # type: ignore[arg-type]


def test_a_hub_has_a_name() -> None:
    assert Hub(name="chat").name == "chat"
    assert Hub().name != Hub().name
    with pytest.raises(TypeError):
        Hub(name=42)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [-1, float("nan")])
def test_negative_or_nan_timeouts_are_value_errors(hub: Hub, timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        hub.join(timeout)
    with pytest.raises(ValueError, match="timeout"):
        hub.stop(timeout)


@pytest.mark.parametrize("timeout", ["1", True, [1]])
def test_non_numeric_timeouts_are_type_errors(hub: Hub, timeout: object) -> None:
    with pytest.raises(TypeError):
        hub.join(timeout)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        hub.stop(timeout)  # type: ignore[arg-type]


def test_huge_timeouts_are_accepted(hub: Hub) -> None:
    Channel("chat", hub=hub).send()
    assert hub.join(1e300)
    assert hub.stop(float("inf"))


def test_start_is_idempotent_and_returns_the_hub(make_hub: HubFactory) -> None:
    hub = make_hub(start=False)
    assert hub.start() is hub
    assert hub.start() is hub
    recorder = Recorder()
    Channel("chat", recorder, hub=hub)
    Channel("chat", hub=hub).send()
    assert hub.join(TIMEOUT)
    assert len(recorder.messages) == 1


def test_messages_sent_before_start_are_delivered_after(make_hub: HubFactory) -> None:
    hub = make_hub(start=False)
    recorder = Recorder()
    Channel("chat", recorder, hub=hub)
    for n in range(10):
        Channel("chat", hub=hub).send({"n": n})
    assert recorder.messages == []
    hub.start()
    assert hub.join(TIMEOUT)
    assert recorder.values() == list(range(10))


def test_context_manager_starts_and_stops() -> None:
    recorder = Recorder()
    with Hub() as hub:
        Channel("chat", recorder, hub=hub)
        for n in range(100):
            Channel("chat", hub=hub).send({"n": n})
    # Leaving the block drains.
    assert recorder.values() == list(range(100))
    with pytest.raises(HubClosedError):
        Channel("chat", hub=hub).send()


def test_a_stopped_hub_refuses_messages_subscriptions_and_restarts(hub: Hub) -> None:
    channel = Channel("chat", lambda message: None, hub=hub)
    assert hub.stop(timeout=TIMEOUT)
    assert hub.stop(timeout=TIMEOUT), "stop() again is harmless"
    with pytest.raises(HubClosedError):
        Channel("chat", hub=hub).send()
    with pytest.raises(HubClosedError):
        Channel("chat", lambda message: None, hub=hub)
    with pytest.raises(HubClosedError):
        Channel("chat", hub=hub).subscribe(lambda message: None)
    with pytest.raises(HubClosedError):
        hub.start()
    channel.unsubscribe()  # ending a subscription is always allowed
    assert hub.join(TIMEOUT)


def test_stopping_a_hub_that_never_started_drops_what_was_sent(make_hub: HubFactory) -> None:
    hub = make_hub(start=False)
    recorder = Recorder()
    Channel("chat", recorder, hub=hub)
    sent = [Channel("chat", hub=hub).send() for _ in range(5)]
    assert hub.stop(timeout=TIMEOUT)
    assert recorder.messages == []
    assert all(message.is_dropped() for message in sent)
    assert hub.stats()["dropped_shutdown"] == 5


# -- join ------------------------------------------------------------------------


def test_join_before_start_is_an_error(make_hub: HubFactory) -> None:
    with pytest.raises(RuntimeError):
        make_hub(start=False).join(0)


def test_join_waits_for_every_earlier_message(make_hub: HubFactory) -> None:
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=3)
    counts = [0] * 6
    slow = threading.Event()  # never set: wait(0.0005) is a jitter, not a wait for anything

    def handler(number: int) -> Any:
        def handle(message: Message) -> None:
            if message.data["n"] % 97 == number:
                slow.wait(0.001)
            counts[number] += 1

        return handle

    for number in range(6):
        Channel("chat.*" if number % 2 else "chat.room", handler(number), hub=hub)
    for n in range(2000):
        Channel("chat.room", hub=hub).send({"n": n})
    assert hub.join(TIMEOUT)
    # Checked at once, with no further waiting: join() returned only after
    # every handler call was made.
    assert counts == [2000] * 6
    assert hub.stats()["pending"] == 0


def test_join_from_several_threads(make_hub: HubFactory) -> None:
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=2)
    recorder = Recorder()
    Channel("chat", recorder, hub=hub)

    together = threading.Barrier(3, timeout=TIMEOUT)
    results: dict[int, tuple[bool, int]] = {}

    def send_and_join(s: int) -> None:
        together.wait()
        for n in range(200):
            Channel("chat", hub=hub).send({"s": s, "n": n})
        joined = hub.join(TIMEOUT)
        # Counted at once: join() covered every message this thread sent.
        results[s] = (joined, sum(1 for data in list(recorder.data) if data["s"] == s))

    threads = [threading.Thread(target=send_and_join, args=(s,)) for s in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(2 * TIMEOUT)
    assert results == {0: (True, 200), 1: (True, 200), 2: (True, 200)}


def test_join_times_out_while_a_handler_blocks(hub: Hub) -> None:
    gate = Gate()
    Channel("chat", gate, hub=hub)
    Channel("chat", hub=hub).send()
    assert gate.entered.wait(TIMEOUT)
    assert hub.join(timeout=0.1) is False
    assert hub.join(timeout=0) is False
    gate.opened.set()
    assert hub.join(TIMEOUT) is True


def test_join_and_stop_from_a_handler_are_errors(hub: Hub) -> None:
    errors: list[type[BaseException]] = []

    def handler(message: Message) -> None:
        for call in (hub.join, hub.stop):
            try:
                call()
            except RuntimeError as exc:
                errors.append(type(exc))

    Channel("chat", handler, hub=hub)
    Channel("chat", hub=hub).send()
    assert hub.join(TIMEOUT)
    assert errors == [RuntimeError, RuntimeError]
    # The hub is unharmed.
    recorder = Recorder()
    Channel("other", recorder, hub=hub)
    Channel("other", hub=hub).send()
    assert hub.join(TIMEOUT)
    assert len(recorder.messages) == 1


def test_stop_releases_a_thread_blocked_in_join(hub: Hub) -> None:
    gate = Gate()
    Channel("chat", gate, hub=hub)
    for _ in range(3):
        Channel("chat", hub=hub).send()
    assert gate.entered.wait(TIMEOUT)
    joined: list[bool] = []
    joiner = threading.Thread(target=lambda: joined.append(hub.join()))  # no timeout
    joiner.start()
    thread, result = stop_in_thread(hub, timeout=TIMEOUT, drain=False)
    gate.opened.set()
    thread.join(2 * TIMEOUT)
    joiner.join(TIMEOUT)
    assert result == [True]
    assert joined == [True]


def test_stop_from_two_threads_at_once(hub: Hub) -> None:
    gate = Gate()
    Channel("chat", gate, hub=hub)
    Channel("chat", hub=hub).send()
    assert gate.entered.wait(TIMEOUT)
    stoppers = [stop_in_thread(hub, timeout=TIMEOUT) for _ in range(2)]
    gate.opened.set()
    for thread, _ in stoppers:
        thread.join(2 * TIMEOUT)
    assert [result for _, result in stoppers] == [[True], [True]]


def test_a_failed_start_leaves_no_threads_behind(make_hub: HubFactory) -> None:
    class Broken(TaskWorker):
        made = 0

        def __init__(self, hub: Hub, name: str) -> None:
            Broken.made += 1
            if Broken.made == 3:
                raise OSError("no more threads")
            super().__init__(hub, name)

    before = threading.active_count()
    hub = make_hub(CHANNEL_TASK_WORKER_CLASS=Broken, start=False)
    recorder = Recorder()
    Channel("chat", recorder, hub=hub)
    sent = Channel("chat", hub=hub).send()
    with pytest.raises(OSError, match="no more threads"):
        hub.start()
    assert not hub.running
    assert threading.active_count() == before
    assert hub.stop(timeout=TIMEOUT)
    assert recorder.messages == []
    assert sent.is_dropped()


def test_join_after_stop_returns_at_once(hub: Hub) -> None:
    assert hub.stop(timeout=TIMEOUT)
    assert hub.join(0) is True


# -- stop --------------------------------------------------------------------------


def test_stop_drains_everything_queued_behind_a_slow_handler(make_hub: HubFactory) -> None:
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=2)
    gate = Gate()
    others = [Recorder(), Recorder()]
    Channel("chat", gate, hub=hub)
    for other in others:
        Channel("chat*", other, hub=hub)
    sender = Channel("chat", hub=hub)
    for n in range(2000):
        sender.send({"n": n})
    assert gate.entered.wait(TIMEOUT)
    thread, result = stop_in_thread(hub, timeout=TIMEOUT)
    gate.opened.set()
    thread.join(2 * TIMEOUT)
    assert result == [True]
    assert gate.recorder.values() == list(range(2000))
    for other in others:
        assert other.values() == list(range(2000))
    stats = hub.stats()
    assert stats["dropped_shutdown"] == 0
    assert stats["pending"] == 0


def test_stop_drains_messages_that_handlers_send_while_draining(make_hub: HubFactory) -> None:
    hub = make_hub()
    final = Recorder()

    def relay(message: Message) -> None:
        hops = message.data["hops"]
        if hops:
            Channel("relay", hub=hub).send({"hops": hops - 1, "n": message.data["n"]})
        else:
            final(message)

    Channel("relay", relay, hub=hub)
    for n in range(20):
        Channel("relay", hub=hub).send({"hops": 5, "n": n})
    assert hub.stop(timeout=TIMEOUT)
    assert final.values() == list(range(20))


def test_droppable_messages_never_cost_the_ones_behind_them(make_hub: HubFactory) -> None:
    # Lona's task worker stopped at a dropped message; here each one is
    # dropped on its own and everything behind it is still delivered.
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=2)
    gate = Gate()
    Channel("chat", gate, hub=hub)
    sender = Channel("chat", hub=hub)
    sender.send({"n": -1})
    assert gate.entered.wait(TIMEOUT)
    droppable, expired = [], []
    for n in range(300):
        if n % 3 == 0:
            droppable.append(sender.send({"n": n}, droppable=True))
        elif n % 3 == 1:
            expired.append(sender.send({"n": n}, expiry=timedelta(0)))
        else:
            sender.send({"n": n})
    thread, result = stop_in_thread(hub, timeout=TIMEOUT)
    gate.opened.set()
    thread.join(2 * TIMEOUT)
    assert result == [True]
    got = gate.recorder.values()[1:]
    assert [n for n in got if n % 3 == 2] == list(range(2, 300, 3)), "a non-droppable message was lost"
    assert all(n % 3 != 1 for n in got), "an expired message was delivered"
    # A droppable message is delivered or dropped, never both or neither.
    delivered_droppable = {n for n in got if n % 3 == 0}
    for message in droppable:
        assert message.is_dropped() != (message.data["n"] in delivered_droppable)
    stats = hub.stats()
    assert stats["dropped_shutdown"] == sum(message.is_dropped() for message in droppable)
    assert stats["dropped_expired"] == 100
    assert got == sorted(got)


def test_stop_without_draining_drops_and_counts(make_hub: HubFactory) -> None:
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=2)
    gate = Gate()
    other = Gate()
    Channel("chat", gate, hub=hub)
    Channel("chat", other, hub=hub)
    sender = Channel("chat", hub=hub)
    sent = [sender.send({"n": n}) for n in range(100)]
    assert gate.entered.wait(TIMEOUT)
    assert other.entered.wait(TIMEOUT)
    thread, result = stop_in_thread(hub, timeout=TIMEOUT, drain=False)
    gate.opened.set()
    other.opened.set()
    thread.join(2 * TIMEOUT)
    assert result == [True]
    # The calls in progress finished; nothing else started.
    assert gate.recorder.values() == [0]
    assert other.recorder.values() == [0]
    assert not sent[0].is_dropped()
    assert all(message.is_dropped() for message in sent[1:])
    stats = hub.stats()
    assert stats["dropped_shutdown"] == 2 * 99
    assert stats["delivered"] == 2
    assert stats["pending"] == 0


def test_stop_returns_false_when_the_timeout_passes(hub: Hub) -> None:
    gate = Gate()
    Channel("chat", gate, hub=hub)
    Channel("chat", hub=hub).send()
    Channel("chat", hub=hub).send()
    assert gate.entered.wait(TIMEOUT)
    try:
        assert hub.stop(timeout=0.2) is False
        with pytest.raises(HubClosedError):
            Channel("chat", hub=hub).send()
    finally:
        gate.opened.set()


def test_stop_after_a_timed_out_stop_still_waits_for_the_threads(hub: Hub) -> None:
    # The first stop() gives up while a handler blocks; a second stop() must
    # not report success while that handler is still running.
    returned = threading.Event()
    gate = Gate()

    def handler(message: Message) -> None:
        gate(message)
        returned.set()

    Channel("chat", handler, hub=hub)
    Channel("chat", hub=hub).send()
    assert gate.entered.wait(TIMEOUT)
    try:
        assert hub.stop(timeout=0.1) is False
        assert hub.stop(timeout=0.1) is False, "stop() reported success while a handler was still running"
    finally:
        gate.opened.set()
    assert hub.stop(timeout=TIMEOUT) is True
    assert returned.is_set()


def test_sends_racing_stop_are_delivered_or_dropped(make_hub: HubFactory) -> None:
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=2)
    recorder = Recorder()
    Channel("chat", recorder, hub=hub)
    sent: list[Message] = []
    refused = threading.Event()
    sending = threading.Event()

    def send() -> None:
        channel = Channel("chat", hub=hub)
        try:
            for n in range(1_000_000):
                sent.append(channel.send({"n": n}))
                sending.set()
        except HubClosedError:
            refused.set()

    thread = threading.Thread(target=send)
    thread.start()
    assert sending.wait(TIMEOUT)
    assert hub.stop(timeout=TIMEOUT, drain=False)
    thread.join(TIMEOUT)
    assert refused.is_set()
    delivered = set(recorder.ids)
    for message in sent:
        assert (message.id in delivered) != message.is_dropped(), message
    stats = hub.stats()
    assert stats["delivered"] == len(delivered)
    assert stats["delivered"] + stats["dropped_shutdown"] == len(sent)


# -- stats -------------------------------------------------------------------------


def test_stats_add_up(make_hub: HubFactory) -> None:
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=2)
    assert hub.stats() == {
        "sent": 0,
        "delivered": 0,
        "dropped_expired": 0,
        "dropped_shutdown": 0,
        "dropped_unsubscribed": 0,
        "dropped_overflow": 0,
        "ended_loop_closed": 0,
        "handler_errors": 0,
        "pending": 0,
        "subscriptions": 0,
    }

    def failing(message: Message) -> None:
        if message.data["n"] % 2:
            raise ValueError("odd")

    gate = Gate()
    quitter = Gate()
    plain = Recorder()
    Channel("a", failing, hub=hub)
    Channel("a", plain, hub=hub)
    Channel("b", gate, hub=hub)
    quitter_channel = Channel("c", quitter, hub=hub)
    # subscriptions: 4 subscribe notifications so far, matched by no one
    for n in range(10):
        Channel("a", hub=hub).send({"n": n})  # 2 deliveries each, 5 raise
    for n in range(4):
        Channel("a", hub=hub).send({"n": n}, expiry=timedelta(0))  # 2 expired drops each
    Channel("c", hub=hub).send({"n": 0})
    assert quitter.entered.wait(TIMEOUT)
    for n in range(1, 6):
        Channel("c", hub=hub).send({"n": n})  # queued behind the blocked call
    assert hub.join(timeout=0.05) is False
    # Unsubscribed from another thread while blocked: 5 deliveries dropped.
    unsubscribing = threading.Thread(target=quitter_channel.unsubscribe)
    unsubscribing.start()
    quitter.opened.set()
    unsubscribing.join(TIMEOUT)
    assert hub.join(TIMEOUT)
    assert hub.stats()["subscriptions"] == 3
    Channel("b", hub=hub).send({"n": 0})
    assert gate.entered.wait(TIMEOUT)
    for n in range(1, 8):
        Channel("b", hub=hub).send({"n": n}, droppable=n % 2 == 0)
    thread, result = stop_in_thread(hub, timeout=TIMEOUT, drain=False)
    gate.opened.set()
    thread.join(2 * TIMEOUT)
    assert result == [True]
    stats = hub.stats()
    sends = 10 + 4 + 6 + 8
    notifications = 4 + 1  # four subscribes, one unsubscribe
    assert stats["sent"] == sends + notifications
    assert stats["handler_errors"] == 5
    assert [error.message.data["n"] for error in hub.take_handler_errors()] == [1, 3, 5, 7, 9]
    assert stats["dropped_expired"] == 8
    assert stats["dropped_unsubscribed"] == 5
    assert stats["dropped_shutdown"] == 7
    assert stats["delivered"] == 20 + 1 + 1
    assert stats["pending"] == 0
    # Every delivery owed was made or dropped, each counted once.
    owed = 2 * 14 + 6 + 8
    counted = ["delivered", "dropped_expired", "dropped_unsubscribed", "dropped_shutdown", "pending"]
    assert sum(stats[name] for name in counted) == owed


def test_pending_counts_deliveries_a_worker_has_taken_but_not_made(make_hub: HubFactory) -> None:
    # All ten messages are queued before the hub starts, so a worker takes
    # them together; while the first call blocks, nine deliveries are pending.
    hub = make_hub(Settings(MAX_CHANNEL_TASK_WORKER_THREADS=1), start=False)
    gate = Gate()
    Channel("chat", gate, hub=hub)
    for n in range(10):
        Channel("chat", hub=hub).send({"n": n})
    hub.start()
    assert gate.entered.wait(TIMEOUT)
    try:
        stats = hub.stats()
        assert stats["pending"] == 9, stats
    finally:
        gate.opened.set()
    assert hub.join(TIMEOUT)
    assert hub.stats()["pending"] == 0
