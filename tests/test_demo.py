"""The web demo without a browser: its rules, the watcher count across processes, the command.

The watcher count is tested with several :class:`Watchers` on one hub,
each standing for one demo process: on a shared broker every process sees
every announcement, as they all do here.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from typing import Any

import pytest

from support import TIMEOUT, FakeClock
from tidings import Channel
from tidings.testing import CheckedHub
from web_support import DemoProcess, need_web

pytest_plugins = ["web_support"]


@pytest.fixture(autouse=True)
def _web() -> None:
    need_web()


def test_pages_may_read_the_clock_and_rooms_and_write_to_one_room() -> None:
    from tidings._demo.app import authorize

    connection: Any = None
    allowed = [
        ("subscribe", "clock.tick"),
        ("subscribe", "clock.watchers"),
        ("subscribe", "chat.rooms.*"),
        ("subscribe", "chat.rooms.lona"),
        ("send", "chat.rooms.lona"),
        ("send", "chat.rooms.Room_2-b"),
    ]
    refused = [
        ("subscribe", "*"),
        ("subscribe", "clock.*"),
        ("subscribe", "clock.watchers.join"),
        ("subscribe", "chat.rooms.a*"),
        ("subscribe", "chat.*"),
        ("send", "chat.rooms.*"),
        ("send", "chat.rooms.[ab]"),
        ("send", "chat.rooms.a.b"),
        ("send", "chat.rooms." + "x" * 33),
        ("send", "clock.tick"),
        ("send", "clock.watchers.join"),
        ("unsubscribe", "chat.rooms.lona"),
    ]
    assert [authorize(connection, action, topic) for action, topic in allowed] == [True] * len(allowed)
    assert [authorize(connection, action, topic) for action, topic in refused] == [False] * len(refused)


def test_the_watcher_count_adds_up_across_processes(hub: CheckedHub, fake_clock: FakeClock) -> None:
    from tidings._demo.app import Watchers

    async def main() -> None:
        first, second = Watchers(hub), Watchers(hub)
        totals = Channel("clock.watchers", hub=hub)
        seen: list[int] = []

        async def show(message: Any) -> None:
            seen.append(message.data["count"])

        totals.subscribe(show)
        await first.start()
        await second.start()
        first.join()
        second.join()
        second.join()
        assert await hub.ajoin(TIMEOUT)
        assert (first.total, second.total) == (3, 3)

        # A process that starts later learns the count at once: its hello is answered.
        third = Watchers(hub)
        await third.start()
        assert await hub.ajoin(TIMEOUT)  # the hello, and the answers it got
        assert await hub.ajoin(TIMEOUT)
        assert third.total == 3

        second.leave()
        assert await hub.ajoin(TIMEOUT)
        assert (first.total, second.total, third.total) == (2, 2, 2)

        # A process that stops says goodbye; one that dies is forgotten after ttl.
        third.join()
        third.close()
        assert await hub.ajoin(TIMEOUT)
        assert first.total == 2
        second._scope.close()  # "dies": no more heartbeats, no goodbye
        fake_clock.advance(first.ttl / 2)
        first.beat()
        assert await hub.ajoin(TIMEOUT)
        assert first.total == 2  # not yet
        fake_clock.advance(first.ttl / 2 + 0.1)
        first.beat()
        assert await hub.ajoin(TIMEOUT)
        assert first.total == 1
        first.close()
        totals.unsubscribe()
        # Each process sends the total when it changes: the first process's view.
        assert seen[-1] == 1

    asyncio.run(main())


def test_malformed_announcements_are_ignored(hub: CheckedHub, caplog: pytest.LogCaptureFixture) -> None:
    from tidings._demo.app import Watchers

    async def main() -> None:
        watchers = Watchers(hub)
        await watchers.start()
        watchers.join()
        for data in ({"process": 5, "count": 1}, {"process": "x", "count": -1}, {"process": "x"}, {}):
            Channel("clock.watchers.presence", hub=hub).send(data)
        assert await hub.ajoin(TIMEOUT)
        assert watchers.total == 1
        watchers.close()

    with caplog.at_level(logging.WARNING, logger="tidings.demo"):
        asyncio.run(main())
    assert caplog.text.count("ignored a malformed announcement") == 4


def test_the_demo_command_serves_the_page_and_stops_on_ctrl_c() -> None:
    demo = DemoProcess()
    try:
        assert "in-process broker" in demo.banner
        with urllib.request.urlopen(demo.url + "/", timeout=TIMEOUT) as response:
            policy = response.headers["Content-Security-Policy"]
            html = response.read().decode()
        nonce = policy.split("'nonce-", 1)[1].split("'", 1)[0]
        assert f'<script nonce="{nonce}">' in html
        assert "{{nonce}}" not in html
        assert "connect-src 'self'" in policy
        with urllib.request.urlopen(demo.url + "/health", timeout=TIMEOUT) as response:
            assert response.read() == b"ok\n"
    finally:
        demo.stop()


def test_the_demo_command_says_when_it_cannot_listen(capsys: pytest.CaptureFixture[str]) -> None:
    from tidings._cli import main
    from web_support import listening_socket

    with listening_socket() as taken:
        port = taken.getsockname()[1]
        assert main(["demo", "--port", str(port)]) == 1
    assert f"tidings demo: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
