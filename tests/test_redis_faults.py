"""The Redis broker across faults: nothing lost, nothing doubled, gaps reported.

Each test runs its own redis-server (``redis_servers``), some behind a
``FaultyProxy`` that can swallow a reply, cut a hub off from Redis, or count
its reconnection attempts. Flows are paced (``PacedSender``, against a
receiver or the writer), so faults land in the middle of them, and end with
a sentinel: anything doubled would arrive before it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from redis_support import (
    DISCONNECTED_TOPIC,
    GAP_TOPIC,
    RECONNECTED_TOPIC,
    FaultyProxy,
    PacedSender,
    RedisHubFactory,
    RedisServer,
    announced,
    internal,
    received_last,
    stat_at_least,
    wait_until,
)
from support import TIMEOUT, Recorder
from tidings import BrokerUnavailableError, Channel, Hub, TidingsError

pytest_plugins = ["redis_support"]

ServerFactory = Callable[..., RedisServer]
ProxyFactory = Callable[[RedisServer], FaultyProxy]

LONG = 60.0  # bound for waits on the big flows (2 cores, several processes)


def finish_with_sentinel(sender: Hub, topic: str, *recorders: Recorder) -> None:
    """Send a last message; return once every recorder has it (nothing doubled can come after)."""
    Channel(topic, hub=sender).send({"n": "end"})
    for recorder in recorders:
        wait_until(received_last(recorder, "end"), "the sentinel", LONG)


def assert_exactly(recorder: Recorder, expected: list[object], who: str) -> None:
    values = recorder.values()
    if values == expected:
        return
    duplicates = len(values) - len(set(map(str, values)))
    missing = len({str(v) for v in expected} - {str(v) for v in values})
    raise AssertionError(
        f"{who}: {len(values)} received for {len(expected)} sent: {missing} lost, {duplicates} doubled"
        + ("" if missing or duplicates else ", out of order")
    )


def test_killed_connections_lose_and_double_nothing(
    redis_servers: ServerFactory, make_redis_hub: RedisHubFactory
) -> None:
    """CLIENT KILL the readers' and the writer's connections six times while 20,000 messages flow."""
    server = redis_servers()
    sender, listener = make_redis_hub(server.url), make_redis_hub(server.url)
    mine, theirs, events = Recorder(), Recorder(), Recorder()
    Channel("flow", mine, hub=sender)
    Channel("flow", theirs, hub=listener)
    Channel("tidings.channels.*", events, hub=sender)
    raw = server.raw()
    total = 20_000
    flow = PacedSender(Channel("flow", hub=sender), total, lambda: len(theirs.messages), window=1500).start()
    kills = {"reader": 0, "writer": 0}
    try:
        for step in range(1, 7):
            assert theirs.wait_for(step * 2800, LONG), f"the flow stalled before kill {step}"
            for role in kills:
                kills[role] += raw.kill_tidings_clients(role)
        flow.finish()
    finally:
        raw.close()
    finish_with_sentinel(sender, "flow", mine, theirs)

    assert kills["reader"] >= 6, kills  # the faults really happened
    assert kills["writer"] >= 3, kills
    assert_exactly(mine, [*range(total), "end"], "the sender's own subscription")
    assert_exactly(theirs, [*range(total), "end"], "the other hub's subscription")
    assert sender.join(TIMEOUT)  # the announcements made so far have been handled
    for topic in (DISCONNECTED_TOPIC, RECONNECTED_TOPIC):
        for role in ("reader", "writer"):
            assert internal(events.messages, topic, role), f"no {topic} message for the {role}"
    for hub in (sender, listener):
        stats = hub.stats()
        assert stats["broker_reconnects"] >= 2, stats
        assert stats["broker_gaps"] == stats["broker_lost"] == stats["broker_rejected"] == 0, stats


def test_a_lost_xadd_reply_is_retried_and_the_copy_dropped(
    redis_servers: ServerFactory, faulty_proxies: ProxyFactory, make_redis_hub: RedisHubFactory, namespace: str
) -> None:
    """XADD executed but its reply lost: the writer appends again; readers deliver once."""
    server = redis_servers()
    proxy = faulty_proxies(server)
    sender = make_redis_hub(proxy.url())
    listener = make_redis_hub(server.url)
    mine, theirs = Recorder(), Recorder()
    Channel("flow", mine, hub=sender)
    Channel("flow", theirs, hub=listener)
    channel = Channel("flow", hub=sender)
    for n in range(10):
        channel.send({"n": n})
    assert sender.join(TIMEOUT)

    proxy.swallow_reply_to(b"XADD")
    for n in range(10, 110):
        channel.send({"n": n})
    assert sender.join(TIMEOUT)
    assert proxy.swallowed.is_set(), "the proxy did not swallow a reply"
    raw = server.raw()
    try:
        entries = [fields for _, fields in raw.xrange(f"{namespace}:stream")]
    finally:
        raw.close()
    keys = [(fields[b"p"], fields[b"s"]) for fields in entries]
    doubled = [fields for fields in entries if keys.count((fields[b"p"], fields[b"s"])) > 1]
    assert doubled, "the writer did not append the entry again after losing the reply"
    copies = int(doubled[0][b"n"])

    finish_with_sentinel(sender, "flow", mine, theirs)
    assert_exactly(mine, [*range(110), "end"], "the sender's own subscription")
    assert_exactly(theirs, [*range(110), "end"], "the other hub's subscription")
    assert sender.stats()["broker_duplicates"] == copies
    assert listener.stats()["broker_duplicates"] == copies


def test_a_restart_with_persistence_loses_and_doubles_nothing(
    redis_servers: ServerFactory, faulty_proxies: ProxyFactory, make_redis_hub: RedisHubFactory
) -> None:
    """redis-server (appendonly yes) stopped mid-flow for a few seconds, started again on the same port and dir.

    The sender talks to Redis through a proxy, which counts its failed
    reconnection attempts: the outage lasts until there have been ten (with
    the backoff growing from 50 ms, a second or two), not a fixed time.
    """
    server = redis_servers(appendonly=True)
    proxy = faulty_proxies(server)
    sender, listener = make_redis_hub(proxy.url()), make_redis_hub(server.url)
    mine, theirs, events = Recorder(), Recorder(), Recorder()
    Channel("flow", mine, hub=sender)
    Channel("flow", theirs, hub=listener)
    Channel("tidings.channels.*", events, hub=sender)
    total = 10_000
    # Paced by what the writer appended: while Redis is away the writer
    # always has messages to retry, so it notices the outage too.
    flow = PacedSender(
        Channel("flow", hub=sender), total, lambda: int(sender.stats()["broker_published"]), window=1500
    ).start()
    assert theirs.wait_for(3000, LONG)
    server.stop()
    for role in ("writer", "reader"):
        wait_until(announced(events, DISCONNECTED_TOPIC, role), f"the {role} to notice")
    wait_until(lambda: sender.stats()["broker_buffered"] > 0, "messages waiting for Redis")
    assert not sender.stats()["broker_connected"]
    wait_until(lambda: proxy.refused >= 10, "ten failed reconnection attempts", LONG)
    server.start()
    flow.finish()
    finish_with_sentinel(sender, "flow", mine, theirs)

    assert_exactly(mine, [*range(total), "end"], "the sender's own subscription")
    assert_exactly(theirs, [*range(total), "end"], "the other hub's subscription")
    assert sender.join(TIMEOUT)  # the announcements made so far have been handled
    for role in ("writer", "reader"):
        assert internal(events.messages, RECONNECTED_TOPIC, role), f"no reconnected message for the {role}"
    for hub in (sender, listener):
        stats = hub.stats()
        assert stats["broker_gaps"] == stats["broker_lost"] == 0, f"a gap reported, but the stream survived: {stats}"
        assert stats["broker_buffered"] == 0
    assert sender.stats()["broker_connected"]


def test_a_full_send_buffer_refuses_and_keeps_what_it_accepted(
    redis_servers: ServerFactory, make_redis_hub: RedisHubFactory
) -> None:
    """Redis away longer than CHANNEL_SEND_BUFFER lasts: send() raises; what it accepted arrives later."""
    from tidings.brokers.redis import ENTRY_MESSAGES

    limit = 50
    server = redis_servers(appendonly=True)
    hub = make_redis_hub(server.url, CHANNEL_SEND_BUFFER=limit)
    recorder, here = Recorder(), Recorder()
    Channel("flow", recorder, hub=hub)
    Channel("here", here, hub=hub)
    channel = Channel("flow", hub=hub)
    for n in range(100):
        channel.send({"n": n})
    assert hub.join(TIMEOUT)

    server.stop()
    accepted = 100
    refused: BrokerUnavailableError | None = None
    for n in range(100, 100 + limit + ENTRY_MESSAGES + 100):
        try:
            channel.send({"n": n})
        except BrokerUnavailableError as exc:
            refused = exc
            break
        accepted += 1
        wait_until(lambda: hub.stats()["pending"] == 0, "the broker thread to take the message")
    assert refused is not None, f"send() accepted {accepted - 100} messages while Redis was away"
    assert isinstance(refused, TidingsError)
    assert refused.limit == limit
    assert "CHANNEL_SEND_BUFFER" in str(refused)
    # The writer holds at most one entry's messages; the rest wait in the buffer.
    assert accepted - 100 <= limit + ENTRY_MESSAGES
    assert hub.stats()["broker_buffered"] >= limit - 1
    with pytest.raises(BrokerUnavailableError):
        channel.send({"n": "still refused"})
    Channel("here", hub=hub).send({"n": "local"}, local=True)  # local messages are not held up
    assert here.wait_for(1)

    server.start()
    assert recorder.wait_for(accepted, LONG)

    def accepts_again() -> bool:
        try:
            channel.send({"n": "after"})
        except BrokerUnavailableError:
            return False
        return True

    wait_until(accepts_again, "send() to accept messages again")
    assert hub.join(TIMEOUT)
    assert_exactly(recorder, [*range(accepted), "after"], "the subscription")


def test_a_restart_without_persistence_reports_the_gap(
    redis_servers: ServerFactory, faulty_proxies: ProxyFactory, make_redis_hub: RedisHubFactory
) -> None:
    """Redis restarts empty while a reader is behind: the loss is reported.

    ``behind`` is cut off (through a proxy) while ``sender`` appends 100
    messages and ``one_shot`` 50 more, then stops for good. Redis restarts
    without persistence, losing them all, and ``sender`` appends again
    (recreating the stream) before ``behind`` is back. ``behind`` must report
    the reset: ``sender``'s numbers show 100 lost, but only the stream itself
    can tell that ``one_shot``'s messages are gone. What is sent after the
    restart arrives.
    """
    server = redis_servers(appendonly=False)
    proxy = faulty_proxies(server)
    sender, behind = make_redis_hub(server.url), make_redis_hub(proxy.url())
    one_shot = make_redis_hub(server.url)
    mine, theirs, their_events, its_one_shots = Recorder(), Recorder(), Recorder(), Recorder()
    Channel("flow", mine, hub=sender)
    Channel("flow", theirs, hub=behind)
    Channel("one-shot", its_one_shots, hub=behind)
    Channel("tidings.channels.*", their_events, hub=behind)
    channel = Channel("flow", hub=sender)
    for n in range(100):
        channel.send({"n": n})
    assert sender.join(TIMEOUT)
    assert theirs.wait_for(100)

    proxy.block()
    wait_until(lambda: internal(their_events.messages, DISCONNECTED_TOPIC, "reader"), "behind to lose Redis")
    for n in range(100, 200):
        channel.send({"n": n})
    assert sender.join(TIMEOUT)
    for n in range(50):
        Channel("one-shot", hub=one_shot).send({"n": n})
    assert one_shot.stop(TIMEOUT)
    server.stop()
    server.start()
    for n in range(200, 300):  # appended before behind is back
        channel.send({"n": n})
    assert sender.join(TIMEOUT)
    proxy.unblock()
    wait_until(lambda: 299 in theirs.values(), "behind to read what was sent after the restart", LONG)

    assert_exactly(mine, list(range(300)), "the sender's own subscription")
    assert_exactly(theirs, [*range(100), *range(200, 300)], "the subscription that was behind")
    assert not its_one_shots.messages
    wait_until(lambda: behind.stats()["broker_lost"] >= 100, "behind to count sender's lost messages")
    stats = behind.stats()
    assert 100 <= stats["broker_lost"] <= 150, stats  # sender's 100 (+ one_shot's 50, if counted)
    # A gap is counted, then announced: wait for the announcements counted so far.
    assert behind.join(TIMEOUT)
    gaps = internal(their_events.messages, GAP_TOPIC)
    reasons = {gap["reason"] for gap in gaps}
    assert reasons <= {"reset", "trimmed", "sequence"}, gaps
    assert reasons & {"reset", "trimmed"}, f"the reset went unreported (one_shot's loss is silent): {gaps}"
    # Every counted gap was announced, and every announced one counted.
    assert stats["broker_gaps"] <= len(gaps) <= behind.stats()["broker_gaps"]


def test_a_reader_trimmed_past_reports_the_gap_and_counts_the_loss(
    redis_servers: ServerFactory, faulty_proxies: ProxyFactory, make_redis_hub: RedisHubFactory, namespace: str
) -> None:
    """CHANNEL_STREAM_MAXLEN trims the stream; a reader further behind is told exactly what it lost."""
    server = redis_servers()
    proxy = faulty_proxies(server)
    maxlen = 100
    sender = make_redis_hub(server.url, CHANNEL_STREAM_MAXLEN=maxlen)
    behind = make_redis_hub(proxy.url())
    theirs, their_events = Recorder(), Recorder()
    Channel("flow", theirs, hub=behind)
    Channel("tidings.channels.*", their_events, hub=behind)
    channel = Channel("flow", hub=sender)
    for n in range(10):
        channel.send({"n": n})
    assert sender.join(TIMEOUT)
    assert theirs.wait_for(10)

    proxy.block()
    wait_until(lambda: internal(their_events.messages, DISCONNECTED_TOPIC, "reader"), "behind to lose Redis")
    total = 10 + 4 * maxlen
    for n in range(10, total):  # one entry each: the stream outgrows MAXLEN
        channel.send({"n": n})
        wait_until(stat_at_least(sender, "broker_published", n + 1), "the entry to be appended")
    raw = server.raw()
    try:
        length = raw.xlen(f"{namespace}:stream")
    finally:
        raw.close()
    assert maxlen <= length < 3 * maxlen, f"the stream holds {length} entries with MAXLEN ~{maxlen}"

    proxy.unblock()
    channel.send({"n": "end"})
    assert sender.join(TIMEOUT)
    wait_until(lambda: "end" in theirs.values(), "behind to catch up", LONG)
    wait_until(lambda: behind.stats()["broker_lost"] > 0, "behind to count the loss")

    values = theirs.values()
    tail = values[10:-1]
    assert values[:10] == list(range(10))
    assert values[-1] == "end"
    assert tail, "nothing survived the trimming"
    assert tail == list(range(total - len(tail), total)), "the survivors arrive once, in order"
    stats = behind.stats()
    assert stats["broker_lost"] == total - 10 - len(tail), stats
    assert stats["broker_gaps"] >= 1
    assert behind.join(TIMEOUT)  # the announcements of the gaps counted so far
    gaps = internal(their_events.messages, GAP_TOPIC)
    assert "trimmed" in {gap["reason"] for gap in gaps}, gaps


def test_join_and_stop_do_not_wait_for_an_unreachable_redis_when_nothing_is_due(
    make_redis_hub: RedisHubFactory,
) -> None:
    """Redis away from the start: local messages still flow; join() and stop() owe Redis nothing.

    join() waits for "every message sent before this call"; with only
    local messages sent (delivered at once), nothing is outstanding, so
    neither join() nor stop() (which drains by joining) has to wait for a
    connection that may never come.
    """
    from redis_support import free_port

    hub = make_redis_hub(f"redis://127.0.0.1:{free_port()}/0", placed=False)
    recorder = Recorder()
    Channel("here", recorder, hub=hub)
    Channel("here", hub=hub).send({"n": "local"}, local=True)
    try:
        assert recorder.wait_for(1)
        assert hub.join(3.0), "join() waited for Redis with nothing outstanding"
        assert hub.stop(timeout=3.0), "stop() could not drain with nothing to send"
    finally:
        hub.stop(timeout=TIMEOUT, drain=False)  # so that teardown does not report it again
