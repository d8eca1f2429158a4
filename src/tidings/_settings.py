"""Settings: the reference's names and defaults, keyword-only and printable.

Every setting can also come from an environment variable ``TIDINGS_<NAME>``;
a value given to ``Settings(...)`` wins over the environment. A bad value is
a :class:`~tidings.ConfigurationError` naming the setting, raised when the
``Settings`` object is built (or, for a class given as a dotted path that
cannot be imported, when the hub starts).
"""

from __future__ import annotations

import importlib
import math
import os
import threading
from collections.abc import Mapping
from typing import Any

from ._exceptions import ConfigurationError

__all__ = ["Settings", "import_class"]

_ENV_PREFIX = "TIDINGS_"
_MAX_THREADS = 1024


def _parse_int(name: str, value: object, *, from_env: bool) -> int:
    label = _ENV_PREFIX + name if from_env else name
    if from_env and isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigurationError(label, value, "expected a whole number") from None
    if type(value) is not int:
        raise ConfigurationError(label, value, "expected an int")
    if not 1 <= value <= _MAX_THREADS:
        raise ConfigurationError(label, value, f"must be from 1 to {_MAX_THREADS}")
    return value


def _parse_seconds(name: str, value: object, *, from_env: bool) -> float:
    label = _ENV_PREFIX + name if from_env else name
    if from_env and isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigurationError(label, value, "expected a number of seconds") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(label, value, "expected a number of seconds")
    if not math.isfinite(value) or value < 0.001 or value > threading.TIMEOUT_MAX:
        raise ConfigurationError(label, value, f"must be a number of seconds from 0.001 to {threading.TIMEOUT_MAX:.0f}")
    return float(value)


def _parse_class(name: str, value: object, *, from_env: bool) -> str | type:
    label = _ENV_PREFIX + name if from_env else name
    if isinstance(value, type):
        return value
    if isinstance(value, str) and value.strip():
        value = value.strip()
        module, _, attribute = value.rpartition(".")
        if module and attribute:
            return value
    raise ConfigurationError(label, value, "expected a class or a dotted path such as 'package.module.Class'")


_PARSERS: dict[str, Any] = {
    "MAX_CHANNEL_MESSAGE_BROKER_THREADS": _parse_int,
    "MAX_CHANNEL_TASK_WORKER_THREADS": _parse_int,
    "CHANNEL_MESSAGE_BROKER_CLASS": _parse_class,
    "CHANNEL_TASK_WORKER_CLASS": _parse_class,
    "CHANNEL_WORKER_TIMEOUT": _parse_seconds,
    "CHANNEL_SHUTDOWN_TIMEOUT": _parse_seconds,
}


def import_class(setting: str, value: str | type) -> type:
    """Resolve a class setting (a class, or a dotted path to one)."""
    if isinstance(value, type):
        return value
    module_name, _, attribute = value.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        found = getattr(module, attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(setting, value, f"cannot be imported ({exc})") from exc
    if not isinstance(found, type):
        raise ConfigurationError(setting, value, "does not name a class")
    return found


class Settings:
    """The hub's settings, keyword-only, with the reference's defaults.

    >>> Settings(MAX_CHANNEL_TASK_WORKER_THREADS=8)  # doctest: +ELLIPSIS
    Settings(MAX_CHANNEL_MESSAGE_BROKER_THREADS=1, MAX_CHANNEL_TASK_WORKER_THREADS=8, ...)

    - ``MAX_CHANNEL_MESSAGE_BROKER_THREADS`` (1): threads running the broker
      class. They take turns, so more than one adds no speed; see
      docs/architecture.md.
    - ``MAX_CHANNEL_TASK_WORKER_THREADS`` (4): threads running handlers. One
      subscription's handler runs on one thread at a time; different
      subscriptions run in parallel.
    - ``CHANNEL_MESSAGE_BROKER_CLASS`` (``'tidings.MessageBroker'``) and
      ``CHANNEL_TASK_WORKER_CLASS`` (``'tidings.TaskWorker'``): a class or a
      dotted path to one.
    - ``CHANNEL_WORKER_TIMEOUT`` (1.0): seconds a worker waits for work
      before its ``run()`` returns for an idle tick.
    - ``CHANNEL_SHUTDOWN_TIMEOUT`` (10.0): seconds the default hub may spend
      draining at interpreter exit.
    """

    __slots__ = (
        "CHANNEL_MESSAGE_BROKER_CLASS",
        "CHANNEL_SHUTDOWN_TIMEOUT",
        "CHANNEL_TASK_WORKER_CLASS",
        "CHANNEL_WORKER_TIMEOUT",
        "MAX_CHANNEL_MESSAGE_BROKER_THREADS",
        "MAX_CHANNEL_TASK_WORKER_THREADS",
    )

    _DEFAULTS: Mapping[str, object] = {
        "MAX_CHANNEL_MESSAGE_BROKER_THREADS": 1,
        "MAX_CHANNEL_TASK_WORKER_THREADS": 4,
        "CHANNEL_MESSAGE_BROKER_CLASS": "tidings.MessageBroker",
        "CHANNEL_TASK_WORKER_CLASS": "tidings.TaskWorker",
        "CHANNEL_WORKER_TIMEOUT": 1.0,
        "CHANNEL_SHUTDOWN_TIMEOUT": 10.0,
    }

    MAX_CHANNEL_MESSAGE_BROKER_THREADS: int
    MAX_CHANNEL_TASK_WORKER_THREADS: int
    CHANNEL_MESSAGE_BROKER_CLASS: str | type
    CHANNEL_TASK_WORKER_CLASS: str | type
    CHANNEL_WORKER_TIMEOUT: float
    CHANNEL_SHUTDOWN_TIMEOUT: float

    def __init__(self, **settings: Any) -> None:
        unknown = sorted(set(settings) - set(self._DEFAULTS))
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(self._DEFAULTS)}")
        env = os.environ
        for name, default in self._DEFAULTS.items():
            parse = _PARSERS[name]
            if name in settings:
                value = parse(name, settings[name], from_env=False)
            elif _ENV_PREFIX + name in env:
                value = parse(name, env[_ENV_PREFIX + name], from_env=True)
            else:
                value = default
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Settings are read-only; use settings.replace(NAME=value)")

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed."""
        merged = {name: getattr(self, name) for name in self._DEFAULTS}
        merged.update(changes)
        return Settings(**merged)

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self._DEFAULTS}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash(tuple(self.as_dict().items()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.as_dict().items())
        return f"Settings({fields})"
