"""The WebSocket bridge's protocol, against a real uvicorn and a real WebSocket client.

Each test serves a :class:`tidings.asgi.WebSocketBridge` on the test's own
hub and talks to it as a browser would: well-formed requests, garbage,
floods, oversize frames and clients that stop reading. After each bad
input the server must answer with the documented error and go on serving,
that client (until its error allowance is spent) and every other.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest

from support import TIMEOUT
from tidings import SUBSCRIBE_TOPIC, Channel, Hub
from tidings.testing import CheckedHub, Recorder
from web_support import Serve, StuckClient, WsClient, need_web, wait_until

pytest_plugins = ["web_support"]

Make = Callable[..., tuple[str, Any]]


@pytest.fixture
def bridge_url(hub: CheckedHub, serve: Serve) -> Make:
    """``make(**bridge_options) -> (ws URL, bridge)``: a bridge on the hub fixture, served by uvicorn."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    from tidings.asgi import WebSocketBridge

    def make(hub: Hub = hub, uvicorn_options: dict[str, Any] | None = None, **options: Any) -> tuple[str, Any]:
        bridge = WebSocketBridge(hub=hub, **options)
        app = Starlette(routes=[WebSocketRoute("/ws", bridge)])
        return serve(app, **(uvicorn_options or {})) + "/ws", bridge

    return make


def allow_all(connection: Any, action: str, topic: str) -> bool:
    return True


def test_welcome_frame_names_the_connection_and_its_limits(bridge_url: Make) -> None:
    url, bridge = bridge_url(max_message_bytes=2048, max_subscriptions=7)
    with WsClient(url) as client:
        welcome = client.welcome
        assert len(welcome["connection"]) == 32
        assert welcome["limits"]["max_message_bytes"] == 2048
        assert welcome["limits"]["max_subscriptions"] == 7
        assert [c.id for c in bridge.connections] == [welcome["connection"]]


def test_messages_arrive_in_order_with_their_fields(hub: CheckedHub, bridge_url: Make) -> None:
    url, _ = bridge_url()
    with WsClient(url) as client:
        client.subscribe("chat.rooms.*")
        sent = [Channel(f"chat.rooms.r{n % 3}", hub=hub).send({"n": n, "text": "héllo"}) for n in range(200)]
        received = [client.next_message() for _ in sent]
        assert [frame["data"] for frame in received] == [{"n": n, "text": "héllo"} for n in range(200)]
        assert [frame["topic"] for frame in received] == [message.topic for message in sent]
        assert [frame["id"] for frame in received] == [message.id for message in sent]
        assert [frame["time"] for frame in received] == [message.time for message in sent]
        assert {frame["subscription"] for frame in received} == {"chat.rooms.*"}
        assert all("dropped" not in frame for frame in received)


def test_each_matching_subscription_gets_its_own_frame(hub: CheckedHub, bridge_url: Make) -> None:
    url, _ = bridge_url()
    with WsClient(url) as client:
        client.subscribe("chat.rooms.*")
        client.subscribe("chat.rooms.lona")
        again = client.request({"action": "subscribe", "topic": "chat.rooms.lona"})
        assert again["type"] == "ok"  # already subscribed: changes nothing
        Channel("chat.rooms.lona", hub=hub).send({"text": "hi"})
        frames = [client.next_message(), client.next_message()]
        assert sorted(frame["subscription"] for frame in frames) == ["chat.rooms.*", "chat.rooms.lona"]
        Channel("chat.rooms.other", hub=hub).send({"text": "only the pattern"})
        assert client.next_message()["subscription"] == "chat.rooms.*"


def test_no_message_of_a_subscription_follows_its_unsubscribe_ok(hub: CheckedHub, bridge_url: Make) -> None:
    url, _ = bridge_url()
    with WsClient(url) as client:
        client.subscribe("a")
        client.subscribe("marker")
        channel = Channel("a", hub=hub)
        for n in range(50):
            channel.send({"n": n})
        reply = client.request({"action": "unsubscribe", "topic": "a"})
        assert reply == {"type": "ok", "action": "unsubscribe", "topic": "a", "id": 3}
        before_ok = [frame["data"]["n"] for frame in client.messages]
        assert before_ok == list(range(len(before_ok)))  # a prefix, in order
        client.messages.clear()
        for n in range(50, 60):
            channel.send({"n": n})
        Channel("marker", hub=hub).send({"end": True})
        assert client.next_message()["topic"] == "marker"  # nothing of "a" after the ok
        again = client.request({"action": "unsubscribe", "topic": "a"})
        assert again["type"] == "error"
        assert again["code"] == "not_subscribed"


def test_sends_are_refused_without_authorize(hub: CheckedHub, bridge_url: Make, recorder: Any) -> None:
    url, bridge = bridge_url()
    rooms: Recorder = recorder("chat.*")
    with WsClient(url) as client:
        reply = client.request({"action": "send", "topic": "chat.rooms.lona", "data": {"text": "hi"}})
        assert reply["type"] == "error"
        assert reply["code"] == "forbidden"
        client.subscribe("chat.rooms.lona")  # subscribing is allowed
    assert hub.join(TIMEOUT)
    assert rooms.messages == []
    assert bridge.stats()["sends"] == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_authorize_decides_sends_and_subscribes(kind: str, hub: CheckedHub, bridge_url: Make, recorder: Any) -> None:
    calls: list[tuple[str, str, str]] = []

    def decide(connection: Any, action: str, topic: str) -> bool:
        calls.append((connection.websocket.query_params.get("user", ""), action, topic))
        return topic.startswith("chat.") and connection.websocket.query_params.get("user") == "alice"

    async def decide_async(connection: Any, action: str, topic: str) -> bool:
        await asyncio.sleep(0)
        return decide(connection, action, topic)

    url, bridge = bridge_url(authorize=decide if kind == "sync" else decide_async)
    rooms: Recorder = recorder("chat.*")
    with WsClient(url + "?user=alice") as alice, WsClient(url + "?user=mallory") as mallory:
        reply = alice.request({"action": "send", "topic": "chat.rooms.lona", "data": {"text": "hi"}})
        assert reply["type"] == "ok"
        assert reply["action"] == "send"
        [message] = rooms.wait_for(1)
        assert reply["message_id"] == message.id
        assert message.data == {"text": "hi"}
        assert alice.request({"action": "subscribe", "topic": "news"})["code"] == "forbidden"
        assert mallory.request({"action": "send", "topic": "chat.rooms.lona", "data": {}})["code"] == "forbidden"
        assert mallory.request({"action": "subscribe", "topic": "chat.*"})["code"] == "forbidden"
    assert hub.join(TIMEOUT)
    assert len(rooms.messages) == 1
    assert calls == [
        ("alice", "send", "chat.rooms.lona"),
        ("alice", "subscribe", "news"),
        ("mallory", "send", "chat.rooms.lona"),
        ("mallory", "subscribe", "chat.*"),
    ]
    assert bridge.stats()["sends"] == 1


def test_an_authorize_that_raises_refuses_and_is_logged(bridge_url: Make, caplog: pytest.LogCaptureFixture) -> None:
    def broken(connection: Any, action: str, topic: str) -> bool:
        raise RuntimeError("the session store is down")

    url, _ = bridge_url(authorize=broken)
    with WsClient(url) as client, caplog.at_level(logging.ERROR, logger="tidings.asgi"):
        reply = client.request({"action": "subscribe", "topic": "news"})
        assert reply["code"] == "internal"
        assert client.request({"action": "ping"})["type"] == "pong"
    assert "the session store is down" in caplog.text


def test_internal_topics_never_cross_the_bridge(hub: CheckedHub, bridge_url: Make) -> None:
    url, _ = bridge_url(authorize=allow_all)
    with WsClient(url) as client, WsClient(url) as other:
        for action in ("subscribe", "send"):
            reply = client.request({"action": action, "topic": SUBSCRIBE_TOPIC, "data": {}})
            assert reply["code"] == "forbidden", reply
        client.subscribe("*")
        other.subscribe("news")  # announces itself on tidings.channels.subscribe
        Channel("news", hub=hub).send({"headline": "first"})
        frame = client.next_message()
        assert frame["topic"] == "news"  # the announcement was not forwarded


BAD_FRAMES: list[tuple[str, str | bytes, str]] = [
    ("not JSON", "hello", "bad_json"),
    ("truncated JSON", '{"action": "ping"', "bad_json"),
    ("a JSON array", "[1, 2]", "bad_json"),
    ("a JSON string", '"ping"', "bad_json"),
    ("NaN", '{"action": "send", "topic": "a", "data": {"x": NaN}}', "bad_json"),
    ("deep nesting", "[" * 30_000 + "]" * 30_000, "bad_json"),
    ("binary", b'{"action": "ping"}', "bad_frame"),
    ("no action", '{"topic": "a"}', "bad_request"),
    ("action not a string", '{"action": 5}', "bad_request"),
    ("unknown action", '{"action": "explode"}', "unknown_action"),
    ("id an object", '{"action": "ping", "id": {"a": 1}}', "bad_request"),
    ("id too long", json.dumps({"action": "ping", "id": "x" * 200}), "bad_request"),
    ("id beyond 2**53", '{"action": "ping", "id": 9007199254740993}', "bad_request"),
    ("no topic", '{"action": "subscribe"}', "bad_request"),
    ("topic a number", '{"action": "subscribe", "topic": 7}', "bad_request"),
    ("empty topic", '{"action": "subscribe", "topic": ""}', "bad_topic"),
    ("topic with a space", '{"action": "subscribe", "topic": "a b"}', "bad_topic"),
    ("topic with a control character", '{"action": "unsubscribe", "topic": "a\\u0000"}', "bad_topic"),
    ("data a list", '{"action": "send", "topic": "a", "data": [1]}', "bad_request"),
    ("data a string", '{"action": "send", "topic": "a", "data": "x"}', "bad_request"),
]


def test_bad_frames_get_their_error_and_the_connection_goes_on(bridge_url: Make) -> None:
    url, bridge = bridge_url(authorize=allow_all, max_errors=1000, max_messages_per_second=1000)
    with WsClient(url) as client:
        for what, frame, code in BAD_FRAMES:
            client.send(frame)
            error = client.recv()
            assert (error["type"], error["code"]) == ("error", code), (what, error)
            assert error["message"]
            assert client.request({"action": "ping"})["type"] == "pong", what
    stats = bridge.stats()
    assert stats["errors"] == len(BAD_FRAMES)
    assert sum(stats["errors_by_code"].values()) == len(BAD_FRAMES)


def test_an_error_carries_the_request_id(bridge_url: Make) -> None:
    url, _ = bridge_url()
    with WsClient(url) as client:
        client.send({"action": "subscribe", "topic": "a b", "id": "req-1"})
        error = client.recv()
        assert (error["code"], error["id"]) == ("bad_topic", "req-1")
        client.send({"action": "explode", "id": 42})
        error = client.recv()
        assert (error["code"], error["id"]) == ("unknown_action", 42)


def test_oversize_frames_are_refused_and_the_server_stays_up(bridge_url: Make) -> None:
    url, bridge = bridge_url(max_message_bytes=1024, uvicorn_options={"ws_max_size": 64 * 1024})
    with WsClient(url) as client:
        fits = json.dumps({"action": "ping", "id": 1, "pad": "é" * 480}, ensure_ascii=False)  # 990 bytes of UTF-8
        client.send(fits)
        assert client.recv()["type"] == "pong"
        for text in ("a" * 1025, json.dumps({"action": "ping", "pad": "€" * 400}, ensure_ascii=False)):
            client.send(text)  # the second is 400 characters but 1,200 bytes
            error = client.recv()
            assert error["code"] == "too_large", error
        assert client.request({"action": "ping"})["type"] == "pong"
    with WsClient(url) as client:
        client.send("x" * 100_000)  # past uvicorn's own limit: it closes the connection
        assert client.close_code() == 1009
    with WsClient(url) as client:  # the server is still up
        assert client.request({"action": "ping"})["type"] == "pong"
    assert bridge.stats()["errors_by_code"] == {"too_large": 2}


def test_a_flood_is_limited_then_disconnected_and_others_are_not_affected(hub: CheckedHub, bridge_url: Make) -> None:
    url, bridge = bridge_url(max_messages_per_second=10, max_errors=5)
    with WsClient(url, max_queue=None) as flooder, WsClient(url) as bystander:
        bystander.subscribe("news")
        from websockets.exceptions import ConnectionClosed

        def flood() -> None:
            for n in range(10_000):
                flooder.send({"action": "ping", "id": n})

        with pytest.raises(ConnectionClosed):  # cut off before the end of the flood
            flood()
        assert flooder.close_code() == 1008
        frames = flooder.others
        pongs = [frame for frame in frames if frame["type"] == "pong"]
        codes = [frame["code"] for frame in frames if frame["type"] == "error"]
        assert 10 <= len(pongs) < 20  # the burst, and what the rate refilled meanwhile
        assert codes == ["rate_limited"] * 6 + ["policy_violation"]
        for n in range(20):
            Channel("news", hub=hub).send({"n": n})
        assert [bystander.next_message()["data"]["n"] for _ in range(20)] == list(range(20))
        assert bystander.request({"action": "ping"})["type"] == "pong"
    wait_until(lambda: bridge.stats()["connections"] == 0, "both connections to end")
    stats = bridge.stats()
    assert stats["disconnected_errors"] == 1
    assert stats["errors_by_code"] == {"rate_limited": 6, "policy_violation": 1}


def test_subscriptions_per_connection_are_limited(bridge_url: Make) -> None:
    url, _ = bridge_url(max_subscriptions=3)
    with WsClient(url) as client:
        for topic in ("a", "b", "c"):
            client.subscribe(topic)
        reply = client.request({"action": "subscribe", "topic": "d"})
        assert reply["code"] == "too_many_subscriptions"
        client.subscribe("a")  # already there: fine
        assert client.request({"action": "unsubscribe", "topic": "b"})["type"] == "ok"
        client.subscribe("d")


def test_closing_the_socket_unsubscribes_everything(hub: CheckedHub, bridge_url: Make) -> None:
    seen: list[tuple[str, str, list[str]]] = []

    async def connected(connection: Any) -> None:
        connection.state["user"] = connection.websocket.query_params["user"]
        seen.append(("connect", connection.state["user"], connection.subscriptions))

    def disconnected(connection: Any) -> None:
        seen.append(("disconnect", connection.state["user"], connection.subscriptions))

    url, bridge = bridge_url(on_connect=connected, on_disconnect=disconnected)
    baseline = hub.stats()["subscriptions"]
    with WsClient(url + "?user=ann") as client:
        for topic in ("a", "b.*", "c", "*"):
            client.subscribe(topic)
        assert hub.stats()["subscriptions"] == baseline + 4
        assert bridge.stats()["subscriptions"] == 4
    wait_until(lambda: bridge.stats()["connections"] == 0, "the connection to end")
    assert hub.stats()["subscriptions"] == baseline
    assert seen == [("connect", "ann", []), ("disconnect", "ann", [])]


def test_a_stopping_hub_closes_the_connections(make_hub: Callable[..., CheckedHub], bridge_url: Make) -> None:
    own = make_hub()
    url, bridge = bridge_url(hub=own)
    with WsClient(url) as client:
        client.subscribe("news")
        Channel("news", hub=own).send({"n": 1})
        assert own.stop(TIMEOUT)
        assert client.close_code() == 1001
        assert [frame["data"] for frame in client.messages] == [{"n": 1}]
    wait_until(lambda: bridge.stats()["connections"] == 0, "the connection to end")
    assert own.stats()["subscriptions"] == 0
    from websockets.exceptions import ConnectionClosed

    with pytest.raises(ConnectionClosed) as refused:  # while the hub is down: accepted, then closed
        WsClient(url)
    assert refused.value.rcvd is not None
    assert refused.value.rcvd.code == 1001


def test_data_that_is_not_json_is_skipped_and_counted(
    hub: CheckedHub, bridge_url: Make, caplog: pytest.LogCaptureFixture
) -> None:
    url, bridge = bridge_url()
    with WsClient(url) as first, WsClient(url) as second, caplog.at_level(logging.WARNING, logger="tidings.asgi"):
        first.subscribe("news")
        second.subscribe("news")
        Channel("news", hub=hub).send({"when": object()})
        Channel("news", hub=hub).send({"nan": float("nan")})
        Channel("news", hub=hub).send({"n": 1})
        assert first.next_message()["data"] == {"n": 1}
        assert second.next_message()["data"] == {"n": 1}
    assert bridge.stats()["unencodable"] == 2  # once per message, however many connections
    assert caplog.text.count("not forwarded to WebSocket clients") == 2


@pytest.mark.parametrize("overflow", ["error", "drop_oldest"])
def test_a_client_that_stops_reading_is_bounded_by_the_overflow_policy(
    overflow: str, hub: CheckedHub, bridge_url: Make
) -> None:
    # The client reads nothing: its socket buffers fill, writes to it block,
    # and messages wait in the subscription's inbox, at most max_pending.
    url, bridge = bridge_url(max_pending=10, overflow=overflow)
    count, payload = 1000, "x" * 32 * 1024
    with StuckClient(url) as client:
        client.send({"action": "subscribe", "topic": "feed"})
        assert client.recv()["type"] == "ok"
        channel = Channel("feed", hub=hub)
        for n in range(count):
            channel.send({"n": n, "pad": payload})
        assert hub.join(TIMEOUT)
        if overflow == "error":
            wait_until(lambda: bridge.stats()["slow_consumers"] == 1, "the subscription to end")
        else:
            wait_until(lambda: bridge.stats()["dropped"] > 0, "the inbox to drop")
        assert hub.stats()["dropped_overflow"] > 0
        received: list[dict[str, Any]] = []
        while True:
            frame = client.recv()
            if frame["type"] == "error":
                assert overflow == "error"
                assert (frame["code"], frame["topic"]) == ("slow_consumer", "feed")
                break
            received.append(frame)
            if frame["data"]["n"] == count - 1:
                break
    numbers = [frame["data"]["n"] for frame in received]
    if overflow == "error":
        assert numbers == list(range(len(numbers)))  # in order, then the end of the subscription
        assert len(numbers) < count
    else:
        skipped = sum(frame.get("dropped", 0) for frame in received)
        assert skipped > 0
        assert len(numbers) + skipped == count  # every message arrived or was reported dropped
        assert numbers == sorted(numbers)


def test_a_write_blocked_too_long_closes_the_connection(hub: CheckedHub, bridge_url: Make) -> None:
    url, bridge = bridge_url(max_pending=10, overflow="drop_oldest", send_timeout=1.0)
    with StuckClient(url) as stuck, WsClient(url) as reader:
        stuck.send({"action": "subscribe", "topic": "feed"})
        assert stuck.recv()["type"] == "ok"
        reader.subscribe("feed")
        channel = Channel("feed", hub=hub)
        payload = "x" * 32 * 1024
        for batch in range(1000):
            for n in range(10):
                channel.send({"n": batch * 10 + n, "pad": payload})
            for _ in range(10):  # this client keeps up
                reader.next_message()
            if bridge.stats()["disconnected_send_timeout"]:
                break
        wait_until(lambda: bridge.stats()["disconnected_send_timeout"] == 1, "the stuck client to be cut off")
        assert reader.request({"action": "ping"})["type"] == "pong"
        wait_until(lambda: bridge.stats()["connections"] == 1, "the stuck connection to end")


def test_http_requests_are_told_to_upgrade(hub: CheckedHub, serve: Serve) -> None:
    import urllib.error
    import urllib.request

    from tidings.asgi import WebSocketBridge

    url = serve(WebSocketBridge(hub=hub))
    with pytest.raises(urllib.error.HTTPError) as failure:
        urllib.request.urlopen(url, timeout=TIMEOUT)
    failure.value.close()
    assert failure.value.code == 426


def test_arguments_are_checked() -> None:
    need_web()
    from tidings.asgi import WebSocketBridge

    bad: list[tuple[dict[str, Any], type[Exception]]] = [
        ({"hub": "default"}, TypeError),
        ({"authorize": True}, TypeError),
        ({"on_connect": "x"}, TypeError),
        ({"max_message_bytes": 0}, ValueError),
        ({"max_message_bytes": 1.5}, TypeError),
        ({"max_subscriptions": True}, TypeError),
        ({"max_errors": -1}, ValueError),
        ({"max_pending": 0}, ValueError),
        ({"max_messages_per_second": 0.5}, ValueError),
        ({"max_messages_per_second": float("inf")}, ValueError),
        ({"max_messages_per_second": "10"}, TypeError),
        ({"send_timeout": 0}, ValueError),
        ({"send_timeout": float("nan")}, ValueError),
        ({"overflow": "block"}, ValueError),
    ]
    for options, error in bad:
        with pytest.raises(error):
            WebSocketBridge(**options)
