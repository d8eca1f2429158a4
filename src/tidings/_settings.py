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
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ._exceptions import ConfigurationError

__all__ = ["Settings", "import_class", "redact_url"]

_ENV_PREFIX = "TIDINGS_"
_MAX_THREADS = 1024

# URL scheme -> network broker class, imported only when used.
BROKER_SCHEMES = {
    "redis": "tidings.brokers.redis.RedisBroker",
    "rediss": "tidings.brokers.redis.RedisBroker",
    "unix": "tidings.brokers.redis.RedisBroker",
}


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs and reprs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc, query = parts.netloc, parts.query
    if "@" in netloc:
        # Everything before the last "@" is user[:password].
        user, _, host = netloc.rpartition("@")
        if ":" in user:
            netloc = f"{user.partition(':')[0]}:***@{host}"
    if query:
        pairs = (pair.partition("=") for pair in query.split("&"))
        query = "&".join(f"{key}=***" if "pass" in key.lower() else f"{key}{eq}{value}" for key, eq, value in pairs)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _label(name: str, from_env: bool) -> str:
    return _ENV_PREFIX + name if from_env else name


def _ints(low: int, high: int) -> Callable[[str, object, bool], int]:
    def parse(name: str, value: object, from_env: bool) -> int:
        label = _label(name, from_env)
        if from_env and isinstance(value, str):
            try:
                value = int(value.strip().replace("_", ""))
            except ValueError:
                raise ConfigurationError(label, value, "expected a whole number") from None
        if type(value) is not int:
            raise ConfigurationError(label, value, "expected an int")
        if not low <= value <= high:
            raise ConfigurationError(label, value, f"must be from {low} to {high}")
        return value

    return parse


def _seconds(name: str, value: object, from_env: bool) -> float:
    label = _label(name, from_env)
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


def _class(name: str, value: object, from_env: bool) -> str | type:
    if isinstance(value, type):
        return value
    if isinstance(value, str) and value.strip():
        value = value.strip()
        module, _, attribute = value.rpartition(".")
        if module and attribute:
            return value
    raise ConfigurationError(
        _label(name, from_env), value, "expected a class or a dotted path such as 'package.module.Class'"
    )


def _url(name: str, value: object, from_env: bool) -> str | None:
    label = _label(name, from_env)
    if value is None or (from_env and value == ""):
        return None
    if not isinstance(value, str):
        raise ConfigurationError(label, value, "expected a URL string or None")
    value = value.strip()
    try:
        scheme = urlsplit(value).scheme
    except ValueError as exc:
        raise ConfigurationError(label, redact_url(value), f"not a URL ({exc})") from None
    if scheme not in BROKER_SCHEMES:
        known = ", ".join(f"{s}://" for s in BROKER_SCHEMES)
        raise ConfigurationError(label, redact_url(value), f"unknown scheme {scheme!r}; known: {known}")
    return value


def _namespace(name: str, value: object, from_env: bool) -> str:
    label = _label(name, from_env)
    if not isinstance(value, str) or not value or any(c.isspace() or not c.isprintable() for c in value):
        raise ConfigurationError(label, value, "expected a non-empty string without whitespace")
    return value


def _secret(name: str, value: object, from_env: bool) -> str | None:
    if value is None or (from_env and value == ""):
        return None
    if not isinstance(value, str) or len(value) < 16:
        # The value itself is never shown: it is a secret.
        raise ConfigurationError(_label(name, from_env), "***", "expected a string of at least 16 characters")
    return value


_FIELDS: dict[str, tuple[object, Callable[[str, object, bool], object]]] = {
    "MAX_CHANNEL_MESSAGE_BROKER_THREADS": (1, _ints(1, _MAX_THREADS)),
    "MAX_CHANNEL_TASK_WORKER_THREADS": (4, _ints(1, _MAX_THREADS)),
    "CHANNEL_MESSAGE_BROKER_CLASS": ("tidings.MessageBroker", _class),
    "CHANNEL_TASK_WORKER_CLASS": ("tidings.TaskWorker", _class),
    "CHANNEL_WORKER_TIMEOUT": (1.0, _seconds),
    "CHANNEL_SHUTDOWN_TIMEOUT": (10.0, _seconds),
    "CHANNEL_BROKER_URL": (None, _url),
    "CHANNEL_NAMESPACE": ("tidings", _namespace),
    "CHANNEL_MAX_MESSAGE_BYTES": (1024 * 1024, _ints(64, 512 * 1024 * 1024)),
    "CHANNEL_BROKER_SECRET": (None, _secret),
    "CHANNEL_STREAM_MAXLEN": (100_000, _ints(100, 10**12)),
    "CHANNEL_SEND_BUFFER": (100_000, _ints(1, 10**9)),
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

    The in-process engine:

    - ``MAX_CHANNEL_MESSAGE_BROKER_THREADS`` (1): threads running the broker
      class. They take turns, so more than one adds no speed; see
      docs/architecture.md.
    - ``MAX_CHANNEL_TASK_WORKER_THREADS`` (4): threads running handlers. One
      subscription's handler runs on one thread at a time; different
      subscriptions run in parallel.
    - ``CHANNEL_MESSAGE_BROKER_CLASS`` (``'tidings.MessageBroker'``, or the
      network broker that ``CHANNEL_BROKER_URL`` names) and
      ``CHANNEL_TASK_WORKER_CLASS`` (``'tidings.TaskWorker'``): a class or a
      dotted path to one. A broker class given explicitly always wins.
    - ``CHANNEL_WORKER_TIMEOUT`` (1.0): seconds a worker waits for work
      before its ``run()`` returns for an idle tick.
    - ``CHANNEL_SHUTDOWN_TIMEOUT`` (10.0): seconds the default hub may spend
      draining at interpreter exit.

    Across processes (see the README's "Scaling out"):

    - ``CHANNEL_BROKER_URL`` (None): ``redis://``, ``rediss://`` or
      ``unix://`` URL of the Redis that carries messages between processes.
    - ``CHANNEL_NAMESPACE`` (``'tidings'``): keeps applications sharing one
      Redis apart.
    - ``CHANNEL_MAX_MESSAGE_BYTES`` (1 MiB): the largest encoded message
      ``send()`` accepts.
    - ``CHANNEL_BROKER_SECRET`` (None): when set, entries are signed with
      HMAC-SHA256 and unsigned or forged ones are dropped.
    - ``CHANNEL_STREAM_MAXLEN`` (100,000): stream entries kept (trimmed
      approximately); a reader further behind than that loses messages and
      is told so.
    - ``CHANNEL_SEND_BUFFER`` (100,000): messages held while Redis is
      unreachable; beyond that ``send()`` raises ``BrokerUnavailableError``.
    """

    __slots__ = ("_explicit", *_FIELDS)

    MAX_CHANNEL_MESSAGE_BROKER_THREADS: int
    MAX_CHANNEL_TASK_WORKER_THREADS: int
    CHANNEL_MESSAGE_BROKER_CLASS: str | type
    CHANNEL_TASK_WORKER_CLASS: str | type
    CHANNEL_WORKER_TIMEOUT: float
    CHANNEL_SHUTDOWN_TIMEOUT: float
    CHANNEL_BROKER_URL: str | None
    CHANNEL_NAMESPACE: str
    CHANNEL_MAX_MESSAGE_BYTES: int
    CHANNEL_BROKER_SECRET: str | None
    CHANNEL_STREAM_MAXLEN: int
    CHANNEL_SEND_BUFFER: int
    _explicit: frozenset[str]

    def __init__(self, **settings: Any) -> None:
        unknown = sorted(set(settings) - set(_FIELDS))
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(_FIELDS)}")
        env = os.environ
        explicit: set[str] = set()
        for name, (default, parse) in _FIELDS.items():
            if name in settings:
                value = parse(name, settings[name], False)
                explicit.add(name)
            elif _ENV_PREFIX + name in env:
                value = parse(name, env[_ENV_PREFIX + name], True)
                explicit.add(name)
            else:
                value = default
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_explicit", frozenset(explicit))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Settings are read-only; use settings.replace(NAME=value)")

    def broker_class(self) -> str | type:
        """The broker class to use: an explicit setting, else the URL's, else the default."""
        if "CHANNEL_MESSAGE_BROKER_CLASS" in self._explicit or self.CHANNEL_BROKER_URL is None:
            return self.CHANNEL_MESSAGE_BROKER_CLASS
        return BROKER_SCHEMES[urlsplit(self.CHANNEL_BROKER_URL).scheme]

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed."""
        merged = {name: getattr(self, name) for name in self._explicit}
        merged.update(changes)
        return Settings(**merged)

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in _FIELDS}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash(tuple(self.as_dict().items()))

    def __repr__(self) -> str:
        shown = self.as_dict()
        if shown["CHANNEL_BROKER_URL"] is not None:
            shown["CHANNEL_BROKER_URL"] = redact_url(str(shown["CHANNEL_BROKER_URL"]))
        if shown["CHANNEL_BROKER_SECRET"] is not None:
            shown["CHANNEL_BROKER_SECRET"] = "***"
        fields = ", ".join(f"{name}={value!r}" for name, value in shown.items())
        return f"Settings({fields})"
