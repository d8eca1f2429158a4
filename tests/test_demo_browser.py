"""The web demo in a real browser: headless Chromium driven by Playwright.

Pages load the demo from a real uvicorn (in this process, on the test's
hub; or two ``tidings demo`` processes sharing Redis) and are used as a
person would: typing, pressing Enter, switching rooms, closing tabs. Every
wait is Playwright's ``expect(...)`` with a bound.

Set ``UPDATE_DEMO_SCREENSHOT=1`` to refresh ``docs/demo.png``, the
README's picture, from the chat test.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import pytest

from support import TIMEOUT
from tidings.testing import CheckedHub, Recorder
from web_support import DemoProcess, Serve

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page

pytest_plugins = ["web_support", "redis_support"]

SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "demo.png"
WAIT = TIMEOUT * 1000  # Playwright counts milliseconds

OpenPage = Callable[..., "Page"]


@pytest.fixture
def demo_url(hub: CheckedHub, serve: Serve) -> str:
    """The demo app on the test's hub, served by uvicorn."""
    from tidings._demo.app import create_app

    return serve(create_app(hub=hub))


@pytest.fixture
def open_page(browser: Browser) -> Iterator[OpenPage]:
    """``open_page(url, room=..., name=...)``: a page in a browser context of its own (like another person)."""
    contexts = []
    # Script errors and console errors (a Content-Security-Policy violation
    # is one), except a WebSocket that cannot reconnect to a stopped server.
    errors: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if message.type == "error" and "WebSocket connection to" not in message.text:
            errors.append(message.text)

    def open_(url: str, **params: str) -> Page:
        context = browser.new_context(viewport={"width": 1060, "height": 600})
        context.set_default_timeout(WAIT)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", console)
        page.goto(f"{url}/?{urlencode(params)}")
        return page

    yield open_
    for context in contexts:
        context.close()
    assert errors == []


def in_room(page: Page, room: str) -> None:
    """Wait until the page's subscription to ``room`` is confirmed."""
    from playwright.sync_api import expect

    expect(page.locator("#log")).to_have_attribute("data-subscribed", f"chat.rooms.{room}", timeout=WAIT)


def say(page: Page, text: str) -> None:
    page.fill("#text", text)
    page.press("#text", "Enter")


def room_name() -> str:
    return "r" + uuid.uuid4().hex[:12]


def test_two_pages_chat_in_order_and_the_watcher_count_follows_them(open_page: OpenPage, demo_url: str) -> None:
    from playwright.sync_api import expect

    room = room_name()
    ann = open_page(demo_url, room=room, name="ann")
    expect(ann.locator("#watchers")).to_have_text("1", timeout=WAIT)
    expect(ann.locator("#clock")).to_have_text(re.compile(r"\d\d:\d\d:\d\d"), timeout=WAIT)
    bob = open_page(demo_url, room=room, name="bob")
    in_room(ann, room)
    in_room(bob, room)
    for page in (ann, bob):
        expect(page.locator("#watchers")).to_have_text("2", timeout=WAIT)
        expect(page.locator("#watchers-label")).to_have_text("people watching")

    lines = ["hello from the first page", "both pages see this, live"]
    for text in lines:
        say(ann, text)
    expect(bob.locator("#log .text")).to_have_text(lines, timeout=WAIT)
    replies = ["hi ann! one channel per room", "and the * view follows them all"]
    for text in replies:
        say(bob, text)
    for page in (ann, bob):
        expect(page.locator("#log .text")).to_have_text(lines + replies, timeout=WAIT)
        expect(page.locator("#log .name")).to_have_text(["ann", "ann", "bob", "bob"])
    if os.environ.get("UPDATE_DEMO_SCREENSHOT"):
        ann.screenshot(path=str(SCREENSHOT))

    # The "*" view follows every room through the pattern chat.rooms.*.
    ann.click('#rooms button[data-room="*"]')
    in_room(ann, "*")
    expect(ann.locator("#send")).to_be_disabled()
    other = room_name()
    bob.fill("#room-name", other)
    bob.press("#room-name", "Enter")
    in_room(bob, other)
    say(bob, "a new room")
    expect(ann.locator("#log .room")).to_have_text([f"#{other}"], timeout=WAIT)
    expect(ann.locator("#log .text")).to_have_text(["a new room"])

    bob.close()
    expect(ann.locator("#watchers")).to_have_text("1", timeout=WAIT)
    expect(ann.locator("#watchers-label")).to_have_text("person watching")


def test_markup_in_a_message_shows_as_text(open_page: OpenPage, demo_url: str) -> None:
    from playwright.sync_api import expect

    room = room_name()
    page = open_page(demo_url, room=room, name="<b>mallory</b>")
    in_room(page, room)
    text = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"><b>bold?</b>'
    say(page, text)
    expect(page.locator("#log .text")).to_have_text([text], timeout=WAIT)
    expect(page.locator("#log .name")).to_have_text(["<b>mallory</b>"])
    assert page.locator("#log script, #log img, #log b").count() == 0
    assert page.evaluate("window.pwned") is None


def test_a_send_the_page_may_not_make_gets_an_error_frame_and_reaches_nobody(
    open_page: OpenPage, demo_url: str, hub: CheckedHub, recorder: Callable[[str], Recorder]
) -> None:
    from playwright.sync_api import expect

    everything = recorder("chat.*")
    room = room_name()
    sender = open_page(demo_url, room=room, name="eve")
    watcher = open_page(demo_url, room="*", name="wendy")
    in_room(sender, room)
    in_room(watcher, "*")
    for topic in ("chat.rooms.*", "clock.tick", "clock.watchers.join", "tidings.channels.subscribe"):
        sender.evaluate(
            "topic => window.tidingsDemo.raw({action: 'send', topic, data: {text: 'forged'}, id: topic})", topic
        )
        expect(sender.locator("#error")).to_have_text(re.compile(f"^forbidden: .*'{re.escape(topic)}'"), timeout=WAIT)
    errors = sender.evaluate("window.tidingsDemo.state.errors")
    assert [(error["code"], error["id"]) for error in errors] == [
        ("forbidden", "chat.rooms.*"),
        ("forbidden", "clock.tick"),
        ("forbidden", "clock.watchers.join"),
        ("forbidden", "tidings.channels.subscribe"),
    ]
    say(sender, "an allowed line")
    # Had a forged message gone through, it would stand before this line.
    expect(watcher.locator("#log .text")).to_have_text(["an allowed line"], timeout=WAIT)
    assert hub.join(TIMEOUT)
    assert [message.data["text"] for message in everything.messages] == ["an allowed line"]


def test_two_demo_processes_on_redis_share_rooms_and_the_watcher_count(
    open_page: OpenPage, redis_url: str, namespace: str
) -> None:
    from playwright.sync_api import expect

    first = DemoProcess("--broker", redis_url, "--namespace", namespace)
    try:
        second = DemoProcess("--broker", redis_url, "--namespace", namespace)
        try:
            assert "broker redis://" in first.banner
            room = room_name()
            ann = open_page(first.url, room=room, name="ann")
            expect(ann.locator("#watchers")).to_have_text("1", timeout=WAIT)
            bob = open_page(second.url, room=room, name="bob")
            in_room(ann, room)
            in_room(bob, room)
            for page in (ann, bob):
                expect(page.locator("#watchers")).to_have_text("2", timeout=WAIT)
            say(ann, "from the first process")
            expect(bob.locator("#log .text")).to_have_text(["from the first process"], timeout=WAIT)
            say(bob, "from the second process")
            for page in (ann, bob):
                expect(page.locator("#log .text")).to_have_text(
                    ["from the first process", "from the second process"], timeout=WAIT
                )
            bob.close()
            expect(ann.locator("#watchers")).to_have_text("1", timeout=WAIT)
            ann.close()
        finally:
            second.stop()
    finally:
        first.stop()
