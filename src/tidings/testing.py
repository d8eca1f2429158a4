"""Helpers for testing code that uses tidings, and the pytest plugin that offers them.

Installing tidings registers this module as a pytest plugin, with two fixtures:

- ``hub``: a started :class:`CheckedHub` of the test's own, stopped (drained)
  after the test. A handler that raised during the test fails the test,
  unless the test took the error with :meth:`CheckedHub.take_handler_errors`.
  Override the ``tidings_settings`` fixture to change its settings.
- ``recorder``: ``recorder("chat.*")`` subscribes a :class:`Recorder` on
  that hub.

No sleeps are needed: ``hub.join()`` (``await hub.ajoin()``) waits until what
was sent has been handled, and :meth:`Recorder.wait_for` waits for what a
test expects to arrive::

    def test_greeting(hub, recorder):
        greetings = recorder("greetings.*")
        Channel("greetings.world", hub=hub).send({"text": "hello"})
        [message] = greetings.wait_for(1)
        assert message.data == {"text": "hello"}

The module imports pytest only inside the fixtures, so the helpers work
with any test runner.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._channel import Channel
from ._hub import Hub, default_hub
from ._message import Message
from ._settings import Settings

if TYPE_CHECKING:
    import asyncio
    from typing import Self

    from ._subscription import Subscription

__all__ = ["CheckedHub", "HandlerError", "Recorder", "hub", "recorder", "tidings_settings"]

#: How long the fixtures wait for a hub to stop, and the default of ``wait_for``.
TIMEOUT = 10.0


class HandlerError:
    """A handler call that raised: the exception, the message and the topic subscribed to."""

    __slots__ = ("exception", "message", "topic")

    def __init__(self, exception: BaseException, message: Message, topic: str) -> None:
        self.exception = exception
        self.message = message
        self.topic = topic

    def __repr__(self) -> str:
        return f"<HandlerError {self.exception!r} on {self.message.topic!r} (subscribed to {self.topic!r})>"


class CheckedHub(Hub):
    """A hub that keeps the errors of its handlers, so that a test can fail on them.

    Errors that a :class:`~tidings.Scope`'s ``on_error`` handles are the
    application's business and are not kept; the rest are logged as usual
    and also collected here.
    """

    def __init__(self, settings: Settings | None = None, *, name: str | None = None) -> None:
        super().__init__(settings, name=name)
        self._errors: list[HandlerError] = []
        self._errors_lock = threading.Lock()

    def _handler_failed(self, sub: Subscription, message: Message, exc: BaseException) -> None:
        with self._errors_lock:
            self._errors.append(HandlerError(exc, message, sub.topic))
        super()._handler_failed(sub, message, exc)

    def take_handler_errors(self) -> list[HandlerError]:
        """The handler errors so far, oldest first; taking them marks them as expected."""
        with self._errors_lock:
            errors, self._errors = self._errors, []
        return errors

    def check(self) -> None:
        """Raise AssertionError if a handler raised and the error was not taken."""
        errors = self.take_handler_errors()
        if errors:
            lines = [f"{len(errors)} handler error(s) in {self.name}:"]
            lines += [f"  {error!r}" for error in errors]
            raise AssertionError("\n".join(lines)) from errors[0].exception


class Recorder:
    """Subscribes to a topic (wildcards allowed) and keeps every message it gets.

    Its handler is a plain function run by the hub's task workers, so it
    records in the hub's order whatever the test does meanwhile, and works
    the same in sync and async tests.

        with Recorder("orders.*", hub=hub) as orders:
            place_order()
            [message] = orders.wait_for(1)
    """

    def __init__(self, topic: str, *, hub: Hub | None = None) -> None:
        self._cond = threading.Condition()
        self._messages: list[Message] = []
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.channel = Channel(topic, self._record, hub=hub if hub is not None else default_hub())

    @property
    def topic(self) -> str:
        return self.channel.topic

    def _record(self, message: Message) -> None:
        with self._cond:
            self._messages.append(message)
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # that test's loop has closed
                pass

    @property
    def messages(self) -> list[Message]:
        """The messages recorded so far, in the order they arrived."""
        with self._cond:
            return list(self._messages)

    @property
    def data(self) -> list[dict[str, Any]]:
        """The ``data`` of each message recorded so far."""
        return [message.data for message in self.messages]

    @property
    def topics(self) -> list[str]:
        """The topic of each message recorded so far."""
        return [message.topic for message in self.messages]

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()

    def _check(self, expected: int | Callable[[list[Message]], bool]) -> Callable[[list[Message]], bool]:
        if isinstance(expected, bool) or not (isinstance(expected, int) or callable(expected)):
            raise TypeError(f"wait_for() takes a count or a predicate, not {type(expected).__name__}")
        if isinstance(expected, int):
            count = expected
            return lambda messages: len(messages) >= count
        return expected

    def _failure(self, expected: object, timeout: float) -> AssertionError:
        messages = self.messages
        shown = ", ".join(f"{m.topic}: {m.data!r}" for m in messages[-10:])
        return AssertionError(
            f"Recorder({self.topic!r}) waited {timeout} s for {expected!r} and has {len(messages)} "
            f"message(s){' (last: ' + shown + ')' if shown else ''}"
        )

    def wait_for(self, expected: int | Callable[[list[Message]], bool], timeout: float = TIMEOUT) -> list[Message]:
        """Wait until ``expected`` messages (a count, or a predicate on the list) have arrived.

        Returns the messages recorded by then. Raises AssertionError, naming
        what did arrive, after ``timeout`` seconds.
        """
        done = self._check(expected)
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done(self._messages):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._failure(expected, timeout)
                self._cond.wait(remaining)
            return list(self._messages)

    async def await_for(
        self, expected: int | Callable[[list[Message]], bool], timeout: float = TIMEOUT
    ) -> list[Message]:
        """The async twin of :meth:`wait_for`: waits without blocking the event loop."""
        import asyncio

        done = self._check(expected)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self._cond:
                if done(self._messages):
                    return list(self._messages)
                future = loop.create_future()
                self._waiters.append((loop, future))
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._failure(expected, timeout)
            try:
                await asyncio.wait_for(future, remaining)
            except TimeoutError:
                pass

    def close(self) -> None:
        """Unsubscribe; what was recorded stays."""
        self.channel.unsubscribe()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Recorder {self.topic!r} messages={len(self._messages)}>"


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# -- the pytest plugin ---------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - the helpers above work without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def tidings_settings() -> Settings:
        """The settings of the ``hub`` fixture; override this fixture to change them."""
        return Settings()

    @pytest.fixture
    def hub(tidings_settings: Settings, request: pytest.FixtureRequest) -> Iterator[CheckedHub]:
        """A started hub of the test's own; stopped afterwards, and checked for handler errors."""
        checked = CheckedHub(tidings_settings, name=f"test-hub-{request.node.name}")
        checked.start()
        yield checked
        stopped = checked.stop(timeout=TIMEOUT)
        checked.check()
        assert stopped, f"{checked.name} did not drain and stop within {TIMEOUT} s (a handler that never returns?)"

    @pytest.fixture
    def recorder(hub: CheckedHub) -> Iterator[Callable[[str], Recorder]]:
        """``recorder(topic)``: a :class:`Recorder` on the ``hub`` fixture."""
        made: list[Recorder] = []

        def make(topic: str) -> Recorder:
            rec = Recorder(topic, hub=hub)
            made.append(rec)
            return rec

        yield make
        for rec in made:
            rec.close()
