"""What others put in the stream, and what tidings must never show.

Entries written by someone else (garbage, truncated, forged, hostile) are
dropped, logged and counted while everything else is delivered and the
reader keeps going. A password in the broker URL never appears in a log
record, a repr, the stats, an internal message or an exception.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from redis_support import (
    DISCONNECTED_TOPIC,
    RECONNECTED_TOPIC,
    RawRedis,
    RedisHubFactory,
    RedisServer,
    announced,
    internal,
    wait_until,
)
from support import TIMEOUT, Recorder
from tidings import BrokerUnavailableError, Channel, ConfigurationError, Hub, Settings

pytest_plugins = ["redis_support"]

ServerFactory = Callable[..., RedisServer]

SECRET = "s3cret-for-signing-" + uuid.uuid4().hex
OTHER_SECRET = "another-secret-key-" + uuid.uuid4().hex


def message(topic: Any = "news", data: Any = None, token: Any = "tok", seq: Any = 1, sent: Any = 1.0,
            expiry: Any = None, droppable: Any = False) -> list[Any]:  # fmt: skip
    """One message as the documented wire array."""
    return [topic, {"n": "garbage"} if data is None else data, token, seq, sent, expiry, droppable]


def entry(body: bytes | list[Any], *, v: bytes = b"1", p: bytes = b"intruder", s: bytes = b"1",
          n: bytes | None = None) -> dict[bytes, bytes]:  # fmt: skip
    """An entry in the documented format (fields v, p, s, n, b), unsigned."""
    if isinstance(body, list):
        count = str(len(body)).encode()
        body = json.dumps(body).encode()
    else:
        count = b"1"
    return {b"v": v, b"p": p, b"s": s, b"n": count if n is None else n, b"b": body}


def signed(fields: dict[bytes, bytes], secret: str) -> dict[bytes, bytes]:
    """``fields`` with the documented HMAC-SHA256 (over v, p, s, n, b joined by NUL)."""
    parts = [fields[key] for key in (b"v", b"p", b"s", b"n", b"b")]
    mac = hmac.new(secret.encode(), b"\x00".join(parts), hashlib.sha256).hexdigest().encode()
    return {**fields, b"h": mac}


GOOD_BODY = json.dumps([message()]).encode()

GARBAGE: list[tuple[str, dict[bytes, bytes]]] = [
    ("unrelated fields", {b"foo": b"bar", b"hello": b"world"}),
    ("version only", {b"v": b"1"}),
    ("unknown version", entry(GOOD_BODY, v=b"2")),
    ("truncated JSON", entry(GOOD_BODY[:-7])),
    ("not JSON", entry(b"hello, stream")),
    ("binary junk", entry(bytes(range(256)))),
    ("JSON object instead of array", entry(b'{"topic": "news"}')),
    ("count does not match", entry([message()], n=b"2")),
    ("sequence not a number", entry([message()], s=b"one")),
    ("sequence zero", entry([message()], s=b"0")),
    ("publisher not UTF-8", entry([message()], p=b"\xff\xfe")),
    ("empty publisher", entry([message()], p=b"")),
    ("message not an array", entry([{"topic": "news", "data": {}}])),
    ("message too short", entry([message()[:6]])),
    ("data not an object", entry([message(data=[1, 2])])),
    ("topic not a string", entry([message(topic=42)])),
    ("topic with a space", entry([message(topic="news flash")])),
    ("empty topic", entry([message(topic="")])),
    ("token not a string", entry([message(token=7)])),
    ("seq not an int", entry([message(seq="1")])),
    ("time not a number", entry([message(sent="yesterday")])),
    ("expiry not ISO 8601", entry([message(expiry="tomorrow")])),
    ("expiry without time zone", entry([message(expiry="2999-01-01T00:00:00")])),
    ("expiry a number", entry([message(expiry=1e12)])),
    ("droppable not a bool", entry([message(droppable=1)])),
    ("one good message, one bad", entry([message(), message(topic=None)])),
]


def test_garbage_entries_are_dropped_counted_and_logged(
    redis_url: str, namespace: str, make_redis_hub: RedisHubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Each kind of garbage between real messages: all real ones arrive in order, each garbage entry is counted."""
    caplog.set_level(logging.WARNING, logger="tidings")
    hub, other = make_redis_hub(redis_url), make_redis_hub(redis_url)
    mine, theirs = Recorder(), Recorder()
    Channel("news", mine, hub=hub)
    Channel("news", theirs, hub=other)
    channel = Channel("news", hub=hub)
    raw = RawRedis(redis_url)
    try:
        for n, (_name, fields) in enumerate(GARBAGE):
            channel.send({"n": n})
            assert hub.join(TIMEOUT)
            raw.xadd(f"{namespace}:stream", fields)
    finally:
        raw.close()
    channel.send({"n": "end"})
    assert hub.join(TIMEOUT)
    wait_until(lambda: "end" in theirs.values(), "the other hub to read to the end")

    expected = [*range(len(GARBAGE)), "end"]
    assert mine.values() == expected
    assert theirs.values() == expected
    for receiver in (hub, other):
        stats = receiver.stats()
        assert stats["broker_rejected"] == len(GARBAGE), stats
        assert stats["broker_received"] == len(expected)
    dropped = [r for r in caplog.records if r.name == "tidings.redis" and "dropped stream entry" in r.getMessage()]
    assert len(dropped) == 2 * len(GARBAGE)  # logged by each reader
    assert not [r for r in caplog.records if "crashed" in r.getMessage()]


NOT_JSON = [
    ("NaN in data", b'[["news",{"x":NaN},"tok",1,1.0,null,false]]'),
    ("Infinity in data", b'[["news",{"x":[Infinity]},"tok",1,1.0,null,false]]'),
    ("-Infinity as time", b'[["news",{},"tok",1,-Infinity,null,false]]'),
]


def test_non_standard_json_in_an_entry_is_garbage(
    redis_url: str, namespace: str, make_redis_hub: RedisHubFactory
) -> None:
    """NaN and Infinity are not JSON: send() refuses them, so an entry holding them is not tidings'.

    Python's json.loads accepts them by default; a reader that does would
    hand handlers values no send() can produce.
    """
    hub = make_redis_hub(redis_url)
    recorder = Recorder()
    Channel("news", recorder, hub=hub)
    channel = Channel("news", hub=hub)
    channel.send({"n": 0})
    assert hub.join(TIMEOUT)
    raw = RawRedis(redis_url)
    try:
        for _name, body in NOT_JSON:
            raw.xadd(f"{namespace}:stream", entry(body))
    finally:
        raw.close()
    channel.send({"n": 1})
    assert hub.join(TIMEOUT)
    assert recorder.data == [{"n": 0}, {"n": 1}], "an entry with NaN or Infinity was delivered"
    assert hub.stats()["broker_rejected"] == len(NOT_JSON)


HOSTILE: list[tuple[str, dict[bytes, bytes]]] = [
    # json.loads raises RecursionError (not ValueError) on deep nesting.
    ("deeply nested JSON", entry(b"[" * 100_000 + b"]" * 100_000)),
    ("deeply nested data", entry(b'[["news",' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b',"tok",1,1.0,null,false]]')),
    # float() of a huge JSON integer raises OverflowError.
    ("time too big for a float", entry([message(sent=10**400)])),
]


@pytest.mark.parametrize(("name", "fields"), HOSTILE, ids=[name for name, _ in HOSTILE])
def test_hostile_entries_do_not_derail_the_reader(
    redis_url: str,
    namespace: str,
    make_redis_hub: RedisHubFactory,
    caplog: pytest.LogCaptureFixture,
    name: str,
    fields: dict[bytes, bytes],
) -> None:
    """An entry that makes the decoder raise something other than ValueError is dropped like any other.

    The reader must not crash: its supervisor restarts it at the stream's
    newest entry, silently skipping everything in between.
    """
    caplog.set_level(logging.WARNING, logger="tidings")
    hub = make_redis_hub(redis_url)
    recorder = Recorder()
    Channel("news", recorder, hub=hub)
    channel = Channel("news", hub=hub)
    channel.send({"n": 0})
    assert hub.join(TIMEOUT)
    raw = RawRedis(redis_url)
    try:
        raw.xadd(f"{namespace}:stream", fields)
    finally:
        raw.close()
    try:
        for n in range(1, 6):
            channel.send({"n": n})
        assert hub.join(TIMEOUT), f"join() never returned: the reader is stuck on the {name} entry"
        assert recorder.values() == list(range(6)), f"messages lost behind the {name} entry"
        assert hub.stats()["broker_rejected"] == 1
        assert not [r for r in caplog.records if "crashed" in r.getMessage()]
    finally:
        # A reader stuck on the entry cannot drain; stop it anyway, so that
        # it does not go on crashing through the tests that follow.
        hub.stop(timeout=TIMEOUT, drain=False)


def test_with_a_secret_only_correctly_signed_entries_count(
    redis_url: str, namespace: str, make_redis_hub: RedisHubFactory
) -> None:
    """CHANNEL_BROKER_SECRET: unsigned, wrongly signed and tampered entries are dropped and counted."""
    hub = make_redis_hub(redis_url, CHANNEL_BROKER_SECRET=SECRET)
    stranger = make_redis_hub(redis_url, CHANNEL_BROKER_SECRET=OTHER_SECRET)
    mine, strangers = Recorder(), Recorder()
    Channel("news", mine, hub=hub)
    Channel("news", strangers, hub=stranger)
    channel = Channel("news", hub=hub)
    stream = f"{namespace}:stream"
    channel.send({"n": 0})
    assert hub.join(TIMEOUT)

    raw = RawRedis(redis_url)
    try:
        [(_, genuine)] = raw.xrange(stream)
        assert b"h" in genuine, "entries are not signed"
        forged_body = json.dumps([message(data={"n": "forged"}, token="x", seq=99)]).encode()
        forgeries = [
            entry([message(data={"n": "unsigned"})], p=b"mallory"),
            {**entry([message(data={"n": "bad mac"})], p=b"mallory"), b"h": b"0" * 64},
            signed(entry([message(data={"n": "other key"})], p=b"mallory"), OTHER_SECRET),
            {**genuine, b"b": forged_body},  # a genuine signature on another body
            {**genuine, b"s": b"1000"},  # ... or another sequence number
            {**{k: v for k, v in genuine.items() if k != b"h"}, b"h": genuine[b"h"].upper()},
        ]
        for fields in forgeries:
            raw.xadd(stream, fields)
        # The control: signed by hand with the right key, per the documented format.
        raw.xadd(stream, signed(entry([message(data={"n": "hand-signed"}, token="hand", seq=1)], p=b"carol"), SECRET))
        raw.xadd(stream, genuine)  # a replay of a genuine entry: a duplicate, not a forgery
    finally:
        raw.close()
    Channel("news", hub=stranger).send({"n": "stranger"})  # signed with another secret
    assert stranger.join(TIMEOUT)
    channel.send({"n": 1})
    assert hub.join(TIMEOUT)

    assert mine.values() == [0, "hand-signed", 1]
    stats = hub.stats()
    assert stats["broker_rejected"] == len(forgeries) + 1, stats  # + the stranger's entry
    assert stats["broker_duplicates"] == 1
    # The stranger (the other secret) accepts only what that secret signed.
    assert strangers.values() == ["other key", "stranger"]


def test_a_short_secret_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(CHANNEL_BROKER_URL="redis://127.0.0.1:6379/0", CHANNEL_BROKER_SECRET="short-secret")
    assert "short-secret" not in str(caught.value)
    assert SECRET not in repr(Settings(CHANNEL_BROKER_SECRET=SECRET))


# -- passwords ------------------------------------------------------------------------


URL_FORMS: dict[str, Callable[[int, str], str]] = {
    "userinfo": lambda port, password: f"redis://:{password}@127.0.0.1:{port}/0",
    "user and password": lambda port, password: f"redis://default:{password}@127.0.0.1:{port}/0",
    # redis-py also takes the password from the query string.
    "query string": lambda port, password: f"redis://127.0.0.1:{port}/0?password={password}",
}


def _texts_showing(secret: str, places: dict[str, str]) -> list[str]:
    """``where: ...context...`` for each place whose text contains ``secret``."""
    shown = []
    for where, text in places.items():
        at = text.find(secret)
        if at >= 0:
            shown.append(f"{where}: ...{text[max(0, at - 80) : at + len(secret) + 20]!r}...")
    return shown


@pytest.mark.parametrize("form", list(URL_FORMS))
def test_the_password_never_shows(
    form: str, redis_servers: ServerFactory, make_redis_hub: RedisHubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Disconnects, reconnects, a restart, a wrong password, a full buffer: the password appears nowhere.

    (Gap reports, if the restart produced any, are among the internal
    messages checked; that a restart is reported is test_redis_faults.py's.)
    """
    caplog.set_level(logging.DEBUG)
    password = "pw-" + uuid.uuid4().hex
    wrong = "wrong-" + uuid.uuid4().hex
    server = redis_servers(password=password, appendonly=False)
    url = URL_FORMS[form](server.port, password)
    hub = make_redis_hub(url, CHANNEL_SEND_BUFFER=1)
    events, recorder = Recorder(), Recorder()
    Channel("tidings.channels.*", events, hub=hub)
    Channel("news", recorder, hub=hub)
    channel = Channel("news", hub=hub)
    channel.send({"n": 0})
    assert hub.join(TIMEOUT)

    raw = server.raw()
    try:  # disconnect both connections: log lines and internal messages
        assert raw.kill_tidings_clients("reader")
        assert raw.kill_tidings_clients("writer")
    finally:
        raw.close()
    channel.send({"n": 1})
    assert hub.join(TIMEOUT)
    for role in ("reader", "writer"):
        wait_until(announced(events, RECONNECTED_TOPIC, role), f"the {role} to reconnect")

    server.stop()  # a gap (no persistence) and a full send buffer meanwhile
    errors: list[str] = []
    wait_until(lambda: internal(events.messages, DISCONNECTED_TOPIC, "reader"), "the reader to notice")
    for n in range(2, 1000):
        try:
            channel.send({"n": n})
        except BrokerUnavailableError as exc:
            errors.append(f"{exc!r} {exc}")
            break
        wait_until(lambda: hub.stats()["pending"] == 0, "the broker thread")
    server.start()
    wait_until(
        lambda: len(internal(events.messages, RECONNECTED_TOPIC, "reader")) >= 2, "the reader to reconnect again"
    )
    assert errors, "send() never refused"

    bad_url = URL_FORMS[form](server.port, wrong)
    locked_out = make_redis_hub(bad_url, placed=False)
    wait_until(lambda: any("cannot open" in r.getMessage() for r in caplog.records), "the failed login to be logged")
    locked_out_stats = repr(locked_out.stats())
    # Never connected, nothing sent: no drain (see test_redis_faults.py for stop() with Redis away).
    assert locked_out.stop(timeout=TIMEOUT, drain=False)

    formatter = logging.Formatter()
    places: dict[str, str] = {
        "repr(settings)": repr(hub.settings),
        "str(settings)": str(hub.settings),
        "repr(settings.replace())": repr(hub.settings.replace(CHANNEL_SEND_BUFFER=2)),
        "repr(hub)": repr(hub),
        "stats": repr(hub.stats()) + locked_out_stats,
        "internal messages": repr([(m.topic, m.data) for m in events.messages]),
        "BrokerUnavailableError": " ".join(errors),
    }
    for i, record in enumerate(caplog.records):
        text = record.getMessage()
        if record.exc_info:
            text += formatter.formatException(record.exc_info)
        places[f"log record {i} ({record.name})"] = text
    for secret in (password, wrong):
        leaks = _texts_showing(secret, places)
        assert not leaks, f"the password shows in {len(leaks)} places:\n" + "\n".join(leaks)


def test_settings_repr_never_fails_or_shows_the_password() -> None:
    """A URL Settings accepts can be shown: repr() neither raises nor shows the password."""
    password = "pw-" + uuid.uuid4().hex
    for url in (
        f"redis://:{password}@127.0.0.1:99999/0",  # port out of range
        f"redis://:{password}@127.0.0.1:port/0",  # port not a number
    ):
        try:
            text = repr(Settings(CHANNEL_BROKER_URL=url))
        except ConfigurationError as exc:  # refusing the URL is fine too
            text = str(exc)
        assert password not in text


def test_connection_errors_at_start_name_the_broker_without_the_password(
    make_redis_hub: RedisHubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listening: the hub says so (log, disconnected message) with the URL redacted."""
    from redis_support import free_port

    caplog.set_level(logging.WARNING, logger="tidings")
    password = "pw-" + uuid.uuid4().hex
    hub: Hub = make_redis_hub(f"redis://:{password}@127.0.0.1:{free_port()}/0", placed=False)
    events = Recorder()
    Channel(DISCONNECTED_TOPIC, events, hub=hub)
    wait_until(lambda: any("cannot open" in r.getMessage() for r in caplog.records), "a log line")
    assert not hub.stats()["broker_connected"]
    assert hub.stop(timeout=TIMEOUT, drain=False)
    texts = [r.getMessage() for r in caplog.records] + [repr(m.data) for m in events.messages]
    assert not [text for text in texts if password in text]
    assert any(":***@127.0.0.1" in text for text in texts)
