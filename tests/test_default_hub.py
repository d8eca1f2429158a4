"""The default hub, in fresh interpreters: started on first use, drained at exit."""

from __future__ import annotations

import textwrap

from support import run_python


def test_the_default_hub_is_drained_at_interpreter_exit() -> None:
    # The script exits without stopping anything while thousands of
    # messages wait behind a slow handler; all must be printed, in order.
    script = textwrap.dedent(
        """
        import sys, threading
        import tidings

        slow = threading.Event()

        def show(message):
            if message.data["n"] % 500 == 0:
                slow.wait(0.05)
            sys.stdout.write(f"{message.data['n']}\\n")

        tidings.Channel("numbers", show)
        sender = tidings.Channel("numbers")
        for n in range(5000):
            sender.send({"n": n})
        sys.stdout.write("sent\\n")
        """
    )
    result = run_python(script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert "sent" in lines
    assert [int(line) for line in lines if line != "sent"] == list(range(5000))
    assert result.stderr == ""


def test_draining_at_exit_is_bounded_by_the_shutdown_timeout() -> None:
    script = textwrap.dedent(
        """
        import threading
        import tidings

        def stuck(message):
            threading.Event().wait()  # never returns

        tidings.Channel("stuck", stuck)
        tidings.Channel("stuck").send()
        """
    )
    result = run_python(script, env={"TIDINGS_CHANNEL_SHUTDOWN_TIMEOUT": "0.2"})
    assert result.returncode == 0, result.stderr
    assert "CHANNEL_SHUTDOWN_TIMEOUT" in result.stderr


def test_sending_after_the_default_hub_stopped_at_exit_fails_loudly() -> None:
    # An atexit function registered before tidings' own runs after the
    # default hub was drained and stopped: its message could never be
    # delivered, so send() must raise instead of dropping it silently.
    script = textwrap.dedent(
        """
        import atexit
        import tidings

        def late():
            try:
                tidings.Channel("chat").send({"n": "late"})
            except tidings.HubClosedError:
                print("refused")
            else:
                print("accepted")

        atexit.register(late)
        tidings.Channel("chat", lambda m: print(m.data["n"]))
        tidings.Channel("chat").send({"n": "early"})
        """
    )
    result = run_python(script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["early", "refused"]


def test_default_hub_and_configure() -> None:
    script = textwrap.dedent(
        """
        import threading
        import tidings

        settings = tidings.configure(MAX_CHANNEL_TASK_WORKER_THREADS=2)
        assert settings.MAX_CHANNEL_TASK_WORKER_THREADS == 2
        try:
            tidings.configure(NOT_A_SETTING=1)
        except TypeError:
            pass
        else:
            raise AssertionError("configure() took an unknown setting")

        got = []
        done = threading.Event()
        channel = tidings.Channel("chat", lambda m: (got.append(m.data), done.set()))
        hub = tidings.default_hub()
        assert channel.hub is hub
        assert hub.running
        assert hub.settings.MAX_CHANNEL_TASK_WORKER_THREADS == 2
        assert tidings.default_hub() is hub

        try:
            tidings.configure(MAX_CHANNEL_TASK_WORKER_THREADS=3)
        except RuntimeError:
            pass
        else:
            raise AssertionError("configure() changed a running default hub")

        tidings.Channel("chat").send({"n": 1})
        assert hub.join(10)
        assert got == [{"n": 1}]

        scope = tidings.Scope()
        scope.subscribe("chat", lambda m: None)
        scope.close()

        assert hub.stop(10)
        try:
            tidings.Channel("chat", hub=hub).send()
        except tidings.HubClosedError:
            pass
        else:
            raise AssertionError("a stopped hub took a message")
        # A new default hub is created on the next use.
        tidings.configure(MAX_CHANNEL_TASK_WORKER_THREADS=3)
        again = tidings.default_hub()
        assert again is not hub and again.running
        assert again.settings.MAX_CHANNEL_TASK_WORKER_THREADS == 3
        print("ok")
        """
    )
    result = run_python(script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_default_hub_reads_the_environment() -> None:
    script = textwrap.dedent(
        """
        import tidings
        hub = tidings.default_hub()
        assert hub.settings.MAX_CHANNEL_TASK_WORKER_THREADS == 5, hub.settings
        assert hub.settings.CHANNEL_WORKER_TIMEOUT == 0.25, hub.settings
        """
    )
    result = run_python(
        script, env={"TIDINGS_MAX_CHANNEL_TASK_WORKER_THREADS": "5", "TIDINGS_CHANNEL_WORKER_TIMEOUT": "0.25"}
    )
    assert result.returncode == 0, result.stderr


def test_a_bad_environment_value_fails_the_first_use() -> None:
    script = textwrap.dedent(
        """
        import tidings
        try:
            tidings.Channel("chat").send()
        except tidings.ConfigurationError as error:
            assert error.setting == "TIDINGS_MAX_CHANNEL_TASK_WORKER_THREADS", error.setting
            print("refused")
        """
    )
    result = run_python(script, env={"TIDINGS_MAX_CHANNEL_TASK_WORKER_THREADS": "lots"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "refused"
