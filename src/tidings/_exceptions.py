"""The exceptions tidings raises.

Every error tidings raises on purpose derives from :class:`TidingsError`;
bad arguments additionally derive from the built-in ``TypeError`` or
``ValueError`` so that ``except ValueError`` keeps working::

    TidingsError
    ├── ConfigurationError (+ ValueError)   a setting has a bad value
    ├── HubClosedError (+ RuntimeError)     the hub was stopped; nothing more is accepted
    └── BrokerUnavailableError              the network broker's send buffer is full

Topic and data validation raise plain ``TypeError``/``ValueError`` from the
call that was given the bad value.
"""

from __future__ import annotations

__all__ = ["BrokerUnavailableError", "ConfigurationError", "HubClosedError", "TidingsError"]


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
