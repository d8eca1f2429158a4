"""The ``tidings`` command line (``python -m tidings``), against a real Redis.

listen prints one JSON line per message and ends cleanly on SIGTERM; send
prints the message's id once it went through; stats shows the stream and
its readers. Errors are one line on stderr, exit code 2 for bad input and 1
for the rest, and never show the broker's password.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from redis_support import RawRedis, RedisHubFactory, child_env, free_port, wait_until
from support import TIMEOUT
from tidings import Channel

pytest_plugins = ["redis_support"]


def tidings(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env if env is not None else child_env(),
        check=False,
    )


class Listener:
    """``tidings listen`` in the background; its stdout lines arrive on a queue."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tidings", "listen", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def next_record(self) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"tidings listen printed nothing within {TIMEOUT} s") from None
        record: dict[str, Any] = json.loads(line)
        return record

    def terminate(self) -> tuple[int, str]:
        """SIGTERM; (exit code, stderr)."""
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=TIMEOUT)
        self._reader.join(TIMEOUT)
        return self.process.returncode, err

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    started: list[Listener] = []
    yield started
    for listener in started:
        listener.kill()


def test_send_reaches_a_listener_and_stats_shows_it(
    redis_url: str, namespace: str, listeners: list[Listener], make_redis_hub: RedisHubFactory
) -> None:
    common = ("--broker", redis_url, "--namespace", namespace)
    listener = Listener("chat.*", *common)
    listeners.append(listener)
    raw = RawRedis(redis_url)
    try:
        # Its reader registers (a heartbeat) once it reads the stream.
        wait_until(lambda: raw.client.hlen(f"{namespace}:readers") >= 1, "the listener to start reading")
    finally:
        raw.close()

    sent = tidings("send", "chat.rooms.lona", '{"text": "hi \u2603", "n": [1, 2.5, null]}', *common)
    assert sent.returncode == 0, sent.stderr
    message_id = sent.stdout.strip()
    record = listener.next_record()
    assert record["topic"] == "chat.rooms.lona"
    assert record["data"] == {"text": "hi \u2603", "n": [1, 2.5, None]}
    assert record["id"] == message_id
    assert isinstance(record["time"], float)

    # A process using the library reaches the command line, and vice versa.
    hub = make_redis_hub(redis_url)
    Channel("chat.library", hub=hub).send({"from": "library"})
    Channel("other.topic", hub=hub).send({"not": "matching"})
    assert hub.join(TIMEOUT)
    assert listener.next_record()["data"] == {"from": "library"}

    stats = tidings("stats", "--json", *common)
    assert stats.returncode == 0, stats.stderr
    shown = json.loads(stats.stdout)
    assert shown["stream"] == f"{namespace}:stream"
    assert shown["length"] >= 2
    assert shown["broker"] == redis_url
    assert len(shown["readers"]) >= 2  # the listener and the hub
    human = tidings("stats", *common)
    assert human.returncode == 0, human.stderr
    assert f"{namespace}:stream" in human.stdout

    code, err = listener.terminate()
    assert code == 0, err
    assert listener.lines.empty(), "the non-matching message was printed"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["news", "{not json"], "not JSON"),
        (["news", "[1, 2]"], "JSON object"),
        (["news", '{"x": NaN}'], "NaN"),
        (["bad topic", "{}"], "topic"),
    ],
    ids=["bad JSON", "not an object", "NaN", "bad topic"],
)
def test_send_refuses_bad_input_with_exit_code_2(
    redis_url: str, namespace: str, args: list[str], expected: str
) -> None:
    result = tidings("send", *args, "--broker", redis_url, "--namespace", namespace)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert expected in result.stderr
    assert result.stderr.startswith("tidings send: ")
    assert result.stderr.count("\n") == 1, "not one line"
    raw = RawRedis(redis_url)
    try:
        assert raw.xlen(f"{namespace}:stream") == 0, "something was sent anyway"
    finally:
        raw.close()


def test_the_broker_comes_from_the_option_or_the_environment(redis_url: str, namespace: str) -> None:
    missing = tidings("send", "news", "{}")
    assert missing.returncode == 2
    assert "no broker" in missing.stderr
    from_env = tidings(
        "send",
        "news",
        '{"n": 1}',
        env=child_env(TIDINGS_CHANNEL_BROKER_URL=redis_url, TIDINGS_CHANNEL_NAMESPACE=namespace),
    )
    assert from_env.returncode == 0, from_env.stderr
    raw = RawRedis(redis_url)
    try:
        assert raw.xlen(f"{namespace}:stream") == 1
    finally:
        raw.close()


@pytest.mark.parametrize("form", ["userinfo", "query string"])
@pytest.mark.parametrize(
    "command", [["send", "news", "{}"], ["listen", "news"], ["stats"]], ids=["send", "listen", "stats"]
)
def test_an_unreachable_broker_is_one_line_without_the_password(command: list[str], form: str) -> None:
    password = "pw-" + uuid.uuid4().hex
    port = free_port()
    if form == "userinfo":
        url = f"redis://:{password}@127.0.0.1:{port}/0"
    else:  # redis-py takes the password from the query string too
        url = f"redis://127.0.0.1:{port}/0?password={password}"
    result = tidings(*command, "--broker", url)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.startswith(f"tidings {command[0]}: cannot reach redis://")
    assert result.stderr.count("\n") == 1
    assert password not in result.stdout + result.stderr, result.stderr


def test_a_bad_pattern_or_url_is_exit_code_2(redis_url: str) -> None:
    pattern = tidings("listen", "bad pattern", "--broker", redis_url)
    assert pattern.returncode == 2, pattern.stderr
    url = tidings("send", "news", "{}", "--broker", "http://127.0.0.1:6379/0")
    assert url.returncode == 2, url.stderr
    assert "CHANNEL_BROKER_URL" in url.stderr
