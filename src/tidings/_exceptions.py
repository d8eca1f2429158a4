"""The exceptions tidings raises.

Every error tidings raises on purpose derives from :class:`TidingsError`;
bad arguments additionally derive from the built-in ``TypeError`` or
``ValueError`` so that ``except ValueError`` keeps working::

    TidingsError
    ├── ConfigurationError (+ ValueError)   a setting has a bad value
    ├── HubClosedError (+ RuntimeError)     the hub was stopped; nothing more is accepted
    ├── BrokerUnavailableError              the network broker's send buffer is full
    └── InboxClosedError (+ RuntimeError)   an inbox has ended and has nothing left to give
        └── SlowConsumerError               ... because its consumer fell max_pending behind

Topic and data validation raise plain ``TypeError``/``ValueError`` from the
call that was given the bad value.
"""

from __future__ import annotations

__all__ = [
    "BrokerUnavailableError",
    "ConfigurationError",
    "HubClosedError",
    "InboxClosedError",
    "SlowConsumerError",
    "TidingsError",
]


class TidingsError(Exception):
    """Base class of the errors tidings raises on purpose."""


class ConfigurationError(TidingsError, ValueError):
    """A setting has a value tidings cannot use.

    ``setting`` names the setting (``TIDINGS_<NAME>`` when the value came
    from the environment), ``value`` is what was given.
    """

    def __init__(self, setting: str, value: object, reason: str) -> None:
        self.setting = setting
        self.value = value
        self.reason = reason
        super().__init__(f"{setting}={value!r}: {reason}")


class HubClosedError(TidingsError, RuntimeError):
    """The hub has been stopped and accepts no more messages or subscriptions."""

    def __init__(self, hub_name: str) -> None:
        self.hub_name = hub_name
        super().__init__(f"{hub_name} is stopped; it accepts no more messages or subscriptions")


class BrokerUnavailableError(TidingsError):
    """The network is unreachable and the send buffer is full.

    Raised by ``send()`` instead of accepting a message that could be lost.
    ``buffered`` is the number of messages waiting for the connection.
    """

    def __init__(self, buffered: int, limit: int) -> None:
        self.buffered = buffered
        self.limit = limit
        super().__init__(
            f"the network broker is unavailable and {buffered} messages are waiting "
            f"(CHANNEL_SEND_BUFFER={limit}); this message was not accepted"
        )


class InboxClosedError(TidingsError, RuntimeError):
    """An inbox (``tidings.subscribe``) has ended and holds no more messages.

    ``reason`` says why: ``"closed"`` (by its owner), ``"hub stopped"``,
    ``"loop closed"`` or ``"slow consumer"``.
    """

    def __init__(self, topic: str, reason: str) -> None:
        self.topic = topic
        self.reason = reason
        super().__init__(f"the inbox for {topic!r} has ended: {reason}")


class SlowConsumerError(InboxClosedError):
    """An inbox with ``overflow="error"`` had no room for a message and ended.

    Raised by the consumer's next ``get()`` (and its iteration). ``dropped``
    counts the messages it lost: the one that did not fit and those still
    waiting in it.
    """

    def __init__(self, topic: str, max_pending: int, dropped: int) -> None:
        self.max_pending = max_pending
        self.dropped = dropped
        super().__init__(topic, "slow consumer")
        self.args = (
            f"the inbox for {topic!r} ended: its consumer fell {max_pending} messages behind "
            f"(max_pending) and {dropped} messages were dropped",
        )
