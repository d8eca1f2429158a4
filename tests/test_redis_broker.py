"""The Redis Streams broker without faults: one channel space across processes.

Every test here would fail if its guarantee did not hold: processes that
miss, double or reorder messages; join() returning before the handler ran;
stop() not draining; bad data reaching the stream; local messages leaving
the process; expiry crossing as a relative time; redis-py imported by
``import tidings``. Faults (killed connections, restarts, full buffers,
trimming) are in test_redis_faults.py; hostile stream entries and passwords
in test_redis_hostile.py.
"""

from __future__ import annotations

import enum
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from redis_support import (
    RawRedis,
    RedisHubFactory,
    child_env,
    python_command,
    stop_all,
    wait_placed,
    wait_until,
)
from support import TIMEOUT, WORKER_TIMEOUT, Recorder, run_python
from tidings import Channel, Hub, Message, Settings

pytest_plugins = ["redis_support"]

PEER_SCRIPT = Path(__file__).with_name("redis_peer.py")


def stream_of(namespace: str) -> str:
    return f"{namespace}:stream"


def decode_stream(raw: RawRedis, namespace: str) -> list[list[Any]]:
    """Every message in the stream, in stream order, as the documented wire arrays.

    Decoded by hand from the documented entry format (fields v, p, s, n, b;
    b a JSON array of [topic, data, token, seq, time, expiry, droppable]),
    first copy of each (publisher, number) only.
    """
    seen: set[tuple[bytes, int]] = set()
    messages: list[list[Any]] = []
    for _entry_id, fields in raw.xrange(stream_of(namespace)):
        first = int(fields[b"s"])
        for i, item in enumerate(json.loads(fields[b"b"])):
            key = (fields[b"p"], first + i)
            if key not in seen:
                seen.add(key)
                messages.append(item)
    return messages


# -- many processes, one order -------------------------------------------------


def test_processes_receive_everything_once_in_one_order(redis_url: str, namespace: str, tmp_path: Path) -> None:
    """Three processes each send 5,000 messages; each receives all 15,000 once, in the stream's order."""
    peers, count = 3, 5000
    outputs = [tmp_path / f"peer-{peer}.json" for peer in range(peers)]
    errors = [tmp_path / f"peer-{peer}.err" for peer in range(peers)]
    processes = []
    for peer in range(peers):
        with errors[peer].open("wb") as err:
            command = python_command(
                PEER_SCRIPT,
                *("--url", redis_url, "--namespace", namespace),
                *("--peer", str(peer), "--peers", str(peers), "--count", str(count), "--out", str(outputs[peer])),
            )
            processes.append(subprocess.Popen(command, env=child_env(), stdout=subprocess.DEVNULL, stderr=err))
    try:
        for peer, process in enumerate(processes):
            process.wait(timeout=120)
            assert process.returncode == 0, f"peer {peer} failed:\n{errors[peer].read_text(errors='replace')}"
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    reports = [json.loads(path.read_text()) for path in outputs]
    expected = {(peer, n) for peer in range(peers) for n in range(count)}
    orders = []
    for peer, report in enumerate(reports):
        received = [tuple(item) for item in report["received"]]
        for flag in ("complete", "joined", "stopped"):
            assert report[flag], f"peer {peer} not {flag}: {report['stats']}"
        assert len(received) == len(set(received)), f"peer {peer} received duplicates"
        assert set(received) == expected, f"peer {peer} lost {len(expected - set(received))} messages"
        for sender in range(peers):
            numbers = [n for p, n in received if p == sender]
            assert numbers == list(range(count)), f"peer {peer} got peer {sender}'s messages out of order"
        stats = report["stats"]
        assert stats["broker_published"] == count + 1  # and the warm-up message
        assert stats["broker_received"] >= peers * count
        for counter in ("broker_duplicates", "broker_rejected", "broker_gaps", "broker_lost"):
            assert stats[counter] == 0, f"peer {peer}: {counter}={stats[counter]}"
        orders.append(received)
    assert orders[0] == orders[1] == orders[2], "the processes saw different orders"

    raw = RawRedis(redis_url)
    try:
        in_stream = [
            (item[1]["peer"], item[1]["n"]) for item in decode_stream(raw, namespace) if item[0].startswith("peers.")
        ]
    finally:
        raw.close()
    assert orders[0] == in_stream, "the common order is not the stream's order"
    # All three interleave: the order is a real merge, not one peer after another.
    assert len({p for p, _ in orders[0][: count // 2]}) > 1 or len({p for p, _ in orders[0][-count // 2 :]}) > 1


def test_a_hub_sees_what_others_send_after_it_started(
    redis_url: str, make_redis_hub: RedisHubFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message sent by another hub after this hub started (and subscribed) reaches it.

    README: "A process sees messages sent after its hub started". The
    reader's connection is made slow here (it waits for a gate), as on a
    loaded machine or a distant Redis; the other hub's message is appended
    meanwhile. The reader must start reading from where the hub was when it
    started, not from wherever the stream is once it gets connected.
    """
    import tidings.brokers.redis as redis_broker

    gate_open = threading.Event()
    real_connect = redis_broker.connect

    def slow_connect(url: str, name: str) -> Any:
        if name.startswith("tidings-reader-"):
            assert gate_open.wait(TIMEOUT)
        return real_connect(url, name)

    sender = make_redis_hub(redis_url)
    monkeypatch.setattr(redis_broker, "connect", slow_connect)
    late = make_redis_hub(redis_url, placed=False)
    recorder = Recorder()
    Channel("news", recorder, hub=late)  # subscribed: everything sent from now on is due

    Channel("news", hub=sender).send({"n": 1})
    assert sender.join(TIMEOUT)  # appended to the stream (and read back by the sender)
    gate_open.set()
    wait_placed(late)
    Channel("news", hub=sender).send({"n": 2})
    assert sender.join(TIMEOUT)
    wait_until(lambda: 2 in recorder.values(), "the second message at the late hub")
    assert recorder.values() == [1, 2], "the late hub skipped a message sent after it had started"


# -- join, stop ---------------------------------------------------------------------


def test_join_returns_after_the_round_trip(redis_url: str, make_redis_hub: RedisHubFactory) -> None:
    """After join() returns, the handler has every message sent before it (via Redis)."""
    hub = make_redis_hub(redis_url)
    recorder = Recorder()
    Channel("news", recorder, hub=hub)
    channel = Channel("news", hub=hub)
    for n in range(3000):
        channel.send({"n": n})
    assert hub.join(TIMEOUT)
    assert recorder.values() == list(range(3000))  # no waiting: join() already did
    stats = hub.stats()
    assert stats["broker_published"] == stats["broker_received"] == 3000
    for n in range(3000, 3010):  # and again, with the connection warm
        channel.send({"n": n})
    assert hub.join(TIMEOUT)
    assert recorder.values() == list(range(3010))


def test_stop_drains_through_redis(redis_url: str, make_redis_hub: RedisHubFactory) -> None:
    """stop() delivers everything sent before it, round trip included; nothing is dropped."""
    hub = make_redis_hub(redis_url)
    other = make_redis_hub(redis_url)
    mine, theirs = Recorder(), Recorder()
    Channel("news", mine, hub=hub)
    Channel("news", theirs, hub=other)
    channel = Channel("news", hub=hub)
    for n in range(3000):
        channel.send({"n": n})
    assert hub.stop(TIMEOUT)
    assert mine.values() == list(range(3000))
    stats = hub.stats()
    assert stats["dropped_shutdown"] == 0
    assert stats["broker_published"] == 3000
    # What the stopped hub published reaches the others too.
    assert theirs.wait_for(3000)
    assert theirs.values() == list(range(3000))


# -- local messages, JSON strictness -----------------------------------------------


def test_local_messages_never_leave_the_process(
    redis_url: str, namespace: str, make_redis_hub: RedisHubFactory
) -> None:
    """local=True: delivered here as is (JSON or not), never written to the stream, unseen elsewhere."""
    here, elsewhere = make_redis_hub(redis_url), make_redis_hub(redis_url)
    mine, theirs = Recorder(), Recorder()
    Channel("news", mine, hub=here)
    Channel("news", theirs, hub=elsewhere)
    marker = object()
    channel = Channel("news", hub=here)
    anything: dict[Any, Any] = {"n": "local", "tuple": (1, 2), "object": marker, 3: {1, 2}}
    channel.send(anything, local=True)
    channel.send({"n": "network"})
    assert here.join(TIMEOUT)
    assert mine.values() == ["local", "network"]
    local = mine.messages[0]
    assert local.local
    assert local.data["object"] is marker
    assert local.data["tuple"] == (1, 2)
    assert theirs.wait_for(1)
    raw = RawRedis(redis_url)
    try:
        assert raw.xlen(stream_of(namespace)) == 1
        assert [item[1]["n"] for item in decode_stream(raw, namespace)] == ["network"]
    finally:
        raw.close()
    # Had the local message gone out, it would have come before "network".
    assert theirs.values() == ["network"]


class Color(enum.IntEnum):
    RED = 1


class Text(str):
    pass


def _cycle() -> list[Any]:
    items: list[Any] = []
    items.append(items)
    return items


def _nested(depth: int) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for _ in range(depth):
        data = {"d": data}
    return data


MAX_BYTES = 4096

BAD_DATA: list[tuple[str, dict[Any, Any], type[Exception]]] = [
    ("tuple", {"t": (1, 2)}, TypeError),
    ("tuple in a list", {"l": [1, [2, (3,)]]}, TypeError),
    ("int key", {"d": {1: "one"}}, TypeError),
    ("top-level int key", {1: "one"}, TypeError),
    ("bool key", {"d": {True: "yes"}}, TypeError),
    ("None key", {"d": {None: "none"}}, TypeError),
    ("NaN", {"x": float("nan")}, ValueError),
    ("infinity", {"x": [float("inf")]}, ValueError),
    ("minus infinity", {"x": {"y": float("-inf")}}, ValueError),
    ("set", {"s": {1, 2}}, TypeError),
    ("frozenset", {"s": frozenset()}, TypeError),
    ("bytes", {"b": b"raw"}, TypeError),
    ("object", {"o": object()}, TypeError),
    ("datetime", {"when": datetime(2024, 1, 1, tzinfo=UTC)}, TypeError),
    ("Decimal", {"price": Decimal("1.10")}, TypeError),
    ("IntEnum", {"color": Color.RED}, TypeError),
    ("str subclass", {"text": Text("hi")}, TypeError),
    ("cycle", {"c": _cycle()}, ValueError),
    ("nested too deep", _nested(150), ValueError),
    ("oversize", {"s": "x" * MAX_BYTES}, ValueError),
    ("oversize in UTF-8 only", {"s": "\u00e9" * (MAX_BYTES * 2 // 3)}, ValueError),
]


@dataclass
class JsonRig:
    hub: Hub  # sends
    recorder: Recorder  # receives, on another hub: it decodes what the stream holds
    raw: RawRedis
    namespace: str


@pytest.fixture(scope="module")
def json_rig(redis_url: str) -> Iterator[JsonRig]:
    """Two hubs for the many small JSON cases (a Redis hub takes a while to stop).

    The receiver is another hub: a hub delivers its own messages from
    memory, so only another hub shows what crossed the network.
    """
    namespace = f"tidings-test-json-{uuid.uuid4().hex[:16]}"
    settings = Settings(
        CHANNEL_BROKER_URL=redis_url,
        CHANNEL_NAMESPACE=namespace,
        CHANNEL_MAX_MESSAGE_BYTES=MAX_BYTES,
        CHANNEL_WORKER_TIMEOUT=WORKER_TIMEOUT,
    )
    hub, receiver = Hub(settings).start(), Hub(settings).start()
    wait_placed(hub)
    wait_placed(receiver)
    recorder = Recorder()
    Channel("json", recorder, hub=receiver)
    raw = RawRedis(redis_url)
    try:
        yield JsonRig(hub, recorder, raw, namespace)
    finally:
        assert not stop_all([hub, receiver])
        raw.delete_namespace(namespace)
        raw.close()


@pytest.mark.parametrize(("case", "data", "error"), BAD_DATA, ids=[case for case, _, _ in BAD_DATA])
def test_send_refuses_data_that_is_not_plain_json(
    json_rig: JsonRig, case: str, data: dict[Any, Any], error: type[Exception]
) -> None:
    """send() raises; nothing reaches the stream or a handler; the next message goes through."""
    channel = Channel("json", hub=json_rig.hub)
    stream = stream_of(json_rig.namespace)
    before, delivered = json_rig.raw.xlen(stream), len(json_rig.recorder.messages)
    with pytest.raises(error):
        channel.send(data)
    channel.send({"after": case})  # a sentinel behind it, in stream order
    wait_until(lambda: len(json_rig.recorder.messages) > delivered, "the sentinel")
    assert json_rig.raw.xlen(stream) == before + 1
    assert [m.data for m in json_rig.recorder.messages[delivered:]] == [{"after": case}]
    entries = json_rig.raw.xrange(stream)
    assert json.loads(entries[-1][1][b"b"])[0][1] == {"after": case}


def test_plain_json_data_arrives_unchanged(json_rig: JsonRig) -> None:
    """What JSON can carry arrives equal, with the same types (int stays int, 1.0 stays float)."""
    data: dict[str, Any] = {
        "int": 1,
        "big": 2**70,
        "negative": -5,
        "float": 1.0,
        "tenth": 0.1,
        "minus zero": -0.0,
        "true": True,
        "none": None,
        "text": 'h\u00e9llo \u2603 \U0001f600 "quoted" \\ \n',
        "": "empty key",
        "list": [1, "two", [3.5, {"four": None}], []],
        "dict": {"a": {"b": {"c": []}}},
        "deep": _nested(90),
    }
    delivered = len(json_rig.recorder.messages)
    Channel("json", hub=json_rig.hub).send(data)
    wait_until(lambda: len(json_rig.recorder.messages) > delivered, "the message")
    [received] = json_rig.recorder.messages[delivered:]
    assert received.data == data

    def types(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: types(item) for key, item in value.items()}
        if isinstance(value, list):
            return [types(item) for item in value]
        return type(value).__name__

    assert types(received.data) == types(data)
    assert str(received.data["minus zero"]) == "-0.0"


# -- expiry ---------------------------------------------------------------------------


def _entry(publisher: str, first: int, messages: list[list[Any]]) -> dict[bytes, bytes]:
    """A stream entry built by hand from the documented format (see tidings.brokers._base)."""
    return {
        b"v": b"1",
        b"p": publisher.encode(),
        b"s": str(first).encode(),
        b"n": str(len(messages)).encode(),
        b"b": json.dumps(messages).encode(),
    }


def test_expiry_crosses_the_network_as_absolute_utc(
    redis_url: str, namespace: str, make_redis_hub: RedisHubFactory
) -> None:
    """The receiver compares the absolute UTC expiry with its own clock.

    A hub's own expiry arrives as the same instant, in UTC. Entries from a
    process whose clock runs differently are judged by the receiver's
    clock: an expiry already past here is dropped, one in the future is
    delivered, however long the sender thought was left.
    """
    sender, receiver = make_redis_hub(redis_url), make_redis_hub(redis_url)
    recorder = Recorder()
    Channel("news", recorder, hub=receiver)
    channel = Channel("news", hub=sender)
    in_an_hour = channel.send({"n": "relative"}, expiry=timedelta(hours=1))
    tokyo = timezone(timedelta(hours=9))
    aware = datetime.now(tokyo).replace(microsecond=0) + timedelta(hours=2)
    channel.send({"n": "aware"}, expiry=aware)
    assert sender.join(TIMEOUT)
    assert recorder.wait_for(2)
    relative, absolute = recorder.messages
    assert relative.expiry == in_an_hour.expiry
    assert relative.expiry is not None
    assert relative.expiry.utcoffset() == timedelta(0)
    assert absolute.expiry == aware
    assert absolute.expiry is not None
    assert absolute.expiry.utcoffset() == timedelta(0)
    assert not relative.is_expired()
    assert not absolute.is_expired()

    now = datetime.now(UTC)
    past = (now - timedelta(seconds=30)).isoformat()
    future = (now + timedelta(hours=1)).isoformat()
    sent_at = time.time() - 3600  # the sender's clock is an hour behind
    raw = RawRedis(redis_url)
    try:
        raw.xadd(
            stream_of(namespace),
            _entry(
                "other-process",
                1,
                [
                    ["news", {"n": "past"}, "tok", 1, sent_at, past, False],
                    ["news", {"n": "future"}, "tok", 2, sent_at, future, False],
                    ["news", {"n": "never"}, "tok", 3, sent_at, None, False],
                ],
            ),
        )
    finally:
        raw.close()
    channel.send({"n": "last"})
    assert sender.join(TIMEOUT)
    wait_until(lambda: "last" in recorder.values(), "the last message at the receiver")
    assert recorder.values() == ["relative", "aware", "future", "never", "last"]
    assert receiver.stats()["dropped_expired"] == 1


# -- import, installation, settings -------------------------------------------------


def test_import_tidings_does_not_import_redis() -> None:
    """Neither import tidings nor building a hub for a redis:// URL imports redis-py."""
    result = run_python(
        "import sys\n"
        "import tidings, tidings.brokers\n"
        "from tidings import Hub, Settings\n"
        "hub = Hub(Settings(CHANNEL_BROKER_URL='redis://127.0.0.1:1/0'))\n"
        "print(sorted(name for name in sys.modules if name == 'redis' or name.startswith('redis.')))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_without_redis_py_start_says_what_to_install() -> None:
    """With redis-py missing, start() raises ImportError with the pip hint; the hub does not run."""
    result = run_python(
        "import sys\n"
        "sys.modules['redis'] = None  # as if not installed\n"
        "from tidings import Hub, Settings\n"
        "hub = Hub(Settings(CHANNEL_BROKER_URL='redis://127.0.0.1:1/0'))\n"
        "try:\n"
        "    hub.start()\n"
        "except ImportError as exc:\n"
        "    print('ImportError:', exc)\n"
        "print('running:', hub.running)\n"
    )
    assert result.returncode == 0, result.stderr
    assert "ImportError:" in result.stdout
    assert "pip install 'tidings[redis]'" in result.stdout
    assert "running: False" in result.stdout


def test_the_url_scheme_chooses_the_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """redis://, rediss://, unix:// pick the Redis broker; an explicit class wins; the env var works."""
    for url in ("redis://127.0.0.1:6379/0", "rediss://127.0.0.1:6380/0", "unix:///tmp/redis.sock"):
        assert Settings(CHANNEL_BROKER_URL=url).broker_class() == "tidings.brokers.redis.RedisBroker"
    explicit = Settings(CHANNEL_BROKER_URL="redis://127.0.0.1:6379/0", CHANNEL_MESSAGE_BROKER_CLASS="my.Broker")
    assert explicit.broker_class() == "my.Broker"
    assert Settings().broker_class() == "tidings.MessageBroker"
    monkeypatch.setenv("TIDINGS_CHANNEL_BROKER_URL", "redis://127.0.0.1:6379/3")
    from_env = Settings()
    assert from_env.CHANNEL_BROKER_URL == "redis://127.0.0.1:6379/3"
    assert from_env.broker_class() == "tidings.brokers.redis.RedisBroker"


def test_the_environment_variable_alone_connects_processes(
    redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch, make_redis_hub: RedisHubFactory
) -> None:
    """A hub with default Settings() and TIDINGS_CHANNEL_BROKER_URL set talks through Redis."""
    monkeypatch.setenv("TIDINGS_CHANNEL_BROKER_URL", redis_url)
    monkeypatch.setenv("TIDINGS_CHANNEL_NAMESPACE", namespace)
    listener = make_redis_hub(redis_url)
    recorder = Recorder()
    Channel("news", recorder, hub=listener)
    with Hub(Settings(CHANNEL_WORKER_TIMEOUT=WORKER_TIMEOUT)) as hub:
        Channel("news", hub=hub).send({"n": "from env"})
        assert hub.join(TIMEOUT)
    assert recorder.wait_for(1)
    assert recorder.values() == ["from env"]


# -- connection state, fork -----------------------------------------------------------


def test_broker_connected_is_true_for_a_hub_that_only_listens(redis_url: str, make_redis_hub: RedisHubFactory) -> None:
    """stats()['broker_connected'] tells whether the hub is connected, also before it ever sent."""
    hub = make_redis_hub(redis_url)
    Channel("news", Recorder(), hub=hub)
    wait_until(lambda: hub.stats()["broker_connected"] is True, "broker_connected on a listening hub", timeout=3.0)


FORK_SCRIPT = """
import json, os, sys, threading, time
from tidings import Channel, Hub, Settings

url, namespace = sys.argv[1], sys.argv[2]
hub = Hub(Settings(CHANNEL_BROKER_URL=url, CHANNEL_NAMESPACE=namespace)).start()
got = []
arrived = threading.Condition()

def on_message(message):
    with arrived:
        got.append(message.data["who"])
        arrived.notify_all()

Channel("news", on_message, hub=hub)
Channel("news", hub=hub).send({"who": "parent before fork"})
assert hub.join(10)
read, write = os.pipe()
pid = os.fork()
who = "child" if pid == 0 else "parent"
Channel("news", hub=hub).send({"who": who})
joined = hub.join(3)
with arrived:
    arrived.wait_for(lambda: {"child", "parent"} <= set(got), 3)
report = {"who": who, "joined": joined, "got": got}
if pid == 0:
    os.write(write, json.dumps(report).encode())
    os._exit(0)
os.close(write)
child = json.loads(os.read(read, 65536))
os.waitpid(pid, 0)
print(json.dumps([report, child]))
hub.stop(5)
"""


def test_a_forked_child_sends_and_receives(redis_url: str, namespace: str) -> None:
    """After os.fork() the child's hub has a Redis connection (and a publisher id) of its own.

    The hub survives fork (pre-forking servers subscribe at import time,
    docs/architecture.md); with a Redis broker its writer and reader
    threads must too, and the child must not reuse the parent's publisher
    id, or readers would drop its messages as duplicates.
    """
    result = run_python(FORK_SCRIPT, redis_url, namespace, timeout=60)
    assert result.returncode == 0, result.stderr
    parent, child = json.loads(result.stdout.strip().splitlines()[-1])
    assert child["joined"], f"join() timed out in the child: {child}"
    assert {"child", "parent"} <= set(child["got"]), f"the child received {child['got']}"
    assert {"child", "parent"} <= set(parent["got"]), f"the parent received {parent['got']}"
    raw = RawRedis(redis_url)
    try:
        publishers = {fields[b"p"] for _, fields in raw.xrange(stream_of(namespace))}
    finally:
        raw.close()
    assert len(publishers) == 2, "parent and child share a publisher id"


def test_messages_carry_their_origin(redis_url: str, make_redis_hub: RedisHubFactory) -> None:
    """id, time, flags and topic survive the trip; wildcard topics route on arrival."""
    sender, receiver = make_redis_hub(redis_url), make_redis_hub(redis_url)
    exact, pattern = Recorder(), Recorder()
    Channel("chat.rooms.lona", exact, hub=receiver)
    Channel("chat.*", pattern, hub=receiver)
    before = time.time()
    sent: list[Message] = [
        Channel("chat.rooms.lona", hub=sender).send({"n": 1}, droppable=True),
        Channel("chat.rooms.*", hub=sender).send({"n": 2}),  # a wildcard send reaches both
    ]
    assert sender.join(TIMEOUT)
    assert pattern.wait_for(2)
    assert exact.wait_for(2)
    for recorder in (exact, pattern):
        assert recorder.ids == [m.id for m in sent]
        assert [m.topic for m in recorder.messages] == ["chat.rooms.lona", "chat.rooms.*"]
        first = recorder.messages[0]
        assert first.droppable
        assert not first.local
        assert before <= first.time <= time.time()
