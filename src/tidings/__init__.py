"""tidings: soft real-time publish/subscribe between the parts of a server.

Every subscription receives every matching message exactly once, in the
order the hub received them::

    import tidings

    def show(message):
        print(message.topic, message.data)

    tidings.Channel("chat.rooms.*", show)
    tidings.Channel("chat.rooms.lona").send({"text": "hello"})
    tidings.default_hub().join()   # wait until it has been handled

Topics are strings; ``*``, ``?`` and ``[...]`` are wildcards (those of
``fnmatch.fnmatchcase``) on the subscribing and the sending side alike.
"""

from __future__ import annotations

from ._channel import Channel
from ._exceptions import (
    BrokerUnavailableError,
    ConfigurationError,
    HubClosedError,
    InboxClosedError,
    SlowConsumerError,
    TidingsError,
)
from ._hub import SUBSCRIBE_TOPIC, UNSUBSCRIBE_TOPIC, Hub, configure, default_hub
from ._inbox import Inbox, subscribe
from ._message import Message
from ._scope import Scope
from ._settings import Settings
from ._workers import MessageBroker, Task, TaskWorker, Worker

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # tidings.aio imports asyncio (~20 ms): loaded on first use, not with tidings.
    if name == "aio":
        import importlib

        return importlib.import_module("tidings.aio")
    raise AttributeError(f"module 'tidings' has no attribute {name!r}")


__all__ = [
    "SUBSCRIBE_TOPIC",
    "UNSUBSCRIBE_TOPIC",
    "BrokerUnavailableError",
    "Channel",
    "ConfigurationError",
    "Hub",
    "HubClosedError",
    "Inbox",
    "InboxClosedError",
    "Message",
    "MessageBroker",
    "Scope",
    "Settings",
    "SlowConsumerError",
    "Task",
    "TaskWorker",
    "TidingsError",
    "Worker",
    "__version__",
    "configure",
    "default_hub",
    "subscribe",
]
