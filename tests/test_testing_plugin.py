"""tidings.testing: the pytest plugin's fixtures, CheckedHub and Recorder."""

from __future__ import annotations

import asyncio
import threading

import pytest

from support import TIMEOUT
from tidings import Channel, Hub, Message, Scope
from tidings.testing import CheckedHub, Recorder


def test_the_plugin_is_installed_and_its_fixtures_work(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio
        from tidings import Channel
        from tidings.testing import CheckedHub

        def test_fixtures(hub, recorder):
            assert isinstance(hub, CheckedHub) and hub.running
            greetings = recorder("greetings.*")
            Channel("greetings.world", hub=hub).send({"text": "hello"})
            [message] = greetings.wait_for(1)
            assert message.data == {"text": "hello"}

        def test_async(hub, recorder):
            seen = recorder("t")

            async def main():
                got = []

                async def handler(message):
                    got.append(message.data["n"])

                Channel("t", handler, hub=hub)
                for n in range(3):
                    Channel("t", hub=hub).send({"n": n})
                await seen.await_for(lambda messages: len(messages) == 3)
                assert await hub.ajoin(5)
                return got

            assert asyncio.run(main()) == [0, 1, 2]

        def test_an_expected_error(hub):
            def failing(message):
                raise ValueError("expected")

            Channel("t", failing, hub=hub)
            Channel("t", hub=hub).send()
            hub.join()
            [error] = hub.take_handler_errors()
            assert str(error.exception) == "expected"
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_an_unexpected_handler_error_fails_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from tidings import Channel

        def test_it(hub):
            def failing(message):
                raise ZeroDivisionError("surprise")

            Channel("t", failing, hub=hub)
            Channel("t", hub=hub).send()
            hub.join()
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*AssertionError: 1 handler error(s) in test-hub-test_it:", "*<HandlerError ZeroDivisionError('surprise')*"]
    )


def test_settings_fixture_can_be_overridden(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest
        from tidings import Settings

        @pytest.fixture
        def tidings_settings():
            return Settings(MAX_CHANNEL_TASK_WORKER_THREADS=1)
        """
    )
    pytester.makepyfile(
        """
        def test_it(hub):
            assert hub.settings.MAX_CHANNEL_TASK_WORKER_THREADS == 1
        """
    )
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_errors_a_scope_handles_are_not_kept(hub: CheckedHub) -> None:
    handled: list[BaseException] = []

    def failing(message: Message) -> None:
        raise ValueError("handled by the scope")

    with Scope(hub=hub, on_error=lambda exc, message, channel: handled.append(exc)) as scope:
        scope.subscribe("t", failing)
        Channel("t", hub=hub).send()
        assert hub.join(TIMEOUT)
    assert len(handled) == 1
    assert hub.take_handler_errors() == []


def test_recorder_wait_for_says_what_arrived(hub: Hub) -> None:
    with Recorder("t.*", hub=hub) as recorder:
        Channel("t.a", hub=hub).send({"n": 1})
        assert [m.data for m in recorder.wait_for(1)] == [{"n": 1}]
        with pytest.raises(
            AssertionError, match=r"waited 0\.05 s for 2 and has 1 message\(s\) \(last: t\.a: \{'n': 1\}\)"
        ):
            recorder.wait_for(2, timeout=0.05)
        threading.Timer(0.02, Channel("t.b", hub=hub).send, args=({"n": 2},)).start()
        assert recorder.wait_for(lambda messages: messages[-1].topic == "t.b")[-1].data == {"n": 2}
        assert recorder.topics == ["t.a", "t.b"]
        assert recorder.data == [{"n": 1}, {"n": 2}]
        with pytest.raises(TypeError, match="a count or a predicate"):
            recorder.wait_for("two")  # type: ignore[arg-type]
    assert not recorder.channel.subscribed


def test_recorder_await_for_times_out_without_blocking_the_loop(hub: Hub) -> None:
    recorder = Recorder("t", hub=hub)

    async def main() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.ensure_future(ticker())
        with pytest.raises(AssertionError, match=r"waited 0\.1 s for 1"):
            await recorder.await_for(1, timeout=0.1)
        task.cancel()
        assert ticks > 5, "the loop ran other tasks while await_for waited"

    asyncio.run(main())
    recorder.close()
