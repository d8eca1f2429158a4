"""The public surface: ``__all__`` is complete and sorted, imports stay light."""

from __future__ import annotations
import __future__

import types

import tidings
from support import run_python


def _isort_key(name: str) -> tuple[int, str]:
    # The order ruff's RUF022 keeps: SCREAMING_CASE, then CamelCase, then the rest.
    if name.isupper():
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


def test_every_public_name_is_in_all() -> None:
    public = {
        name
        for name, value in vars(tidings).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and not isinstance(value, __future__._Feature)  # `from __future__ import annotations`
    }
    assert set(tidings.__all__) - {"__version__"} == public


def test_all_is_sorted_and_has_no_duplicates() -> None:
    assert tidings.__all__ == sorted(tidings.__all__, key=_isort_key)
    assert len(set(tidings.__all__)) == len(tidings.__all__)


def test_every_name_in_all_exists() -> None:
    for name in tidings.__all__:
        assert hasattr(tidings, name), name


def test_the_documented_api_is_exported() -> None:
    documented = {
        "Channel",
        "ConfigurationError",
        "Hub",
        "HubClosedError",
        "Message",
        "MessageBroker",
        "Scope",
        "Settings",
        "TaskWorker",
        "TidingsError",
        "Worker",
        "configure",
        "default_hub",
    }
    assert documented <= set(tidings.__all__)
    assert issubclass(tidings.ConfigurationError, tidings.TidingsError)
    assert issubclass(tidings.ConfigurationError, ValueError)
    assert issubclass(tidings.HubClosedError, tidings.TidingsError)
    assert issubclass(tidings.HubClosedError, RuntimeError)
    assert issubclass(tidings.MessageBroker, tidings.Worker)
    assert issubclass(tidings.TaskWorker, tidings.Worker)


def test_import_does_not_load_optional_or_heavy_modules() -> None:
    # Optional dependencies and the asyncio bridge must be imported lazily,
    # by the module that needs them, never by `import tidings`.
    forbidden = [
        "asyncio",
        "concurrent.futures",
        "multiprocessing",
        "subprocess",
        "socket",
        "ssl",
        "selectors",
        "json",
        "uuid",
        "redis",
        "nats",
        "lona",
        "hypothesis",
        "pytest",
    ]
    script = (
        "import sys, threading, tidings\n"
        f"loaded = [name for name in {forbidden!r} if name in sys.modules]\n"
        "assert not loaded, loaded\n"
        # Importing must not start the default hub or any thread.
        "assert threading.active_count() == 1, threading.enumerate()\n"
    )
    result = run_python(script)
    assert result.returncode == 0, result.stderr
