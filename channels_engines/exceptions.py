"""Errors raised by channels_engines.

Configuration errors subclass Channels' ``InvalidChannelLayerError`` so that code
already catching it keeps working.
"""

from __future__ import annotations

from channels.exceptions import ChannelFull, InvalidChannelLayerError

__all__ = [
    "AlreadyRegisteredError",
    "ChannelLayerClosed",
    "EngineContractError",
    "EngineUnavailableError",
    "InvalidConfigError",
    "InvalidEngineError",
    "ServerFullError",
    "ServerUnavailableError",
]


class InvalidEngineError(InvalidChannelLayerError):
    """ENGINE does not name a usable engine class."""


class EngineUnavailableError(InvalidEngineError):
    """The engine exists but a package it needs is not installed."""


class EngineContractError(InvalidEngineError):
    """The engine class breaks the engine contract (a required method, an extension's
    methods, an option's default): found when it is registered or selected, not when a
    method is first called."""


class InvalidConfigError(InvalidChannelLayerError):
    """A CONFIG key is unknown or has a value the layer cannot use."""


class AlreadyRegisteredError(ValueError):
    """A name is already registered to something else."""


class ChannelLayerClosed(RuntimeError):
    """The layer was closed on this event loop while the operation waited."""


class ServerUnavailableError(ConnectionError):
    """The engine could not reach its server within its timeout (the server is down or
    unreachable, or refuses connections for now). The client library's error is chained
    as ``__cause__``. Trying again later may work; the settings may still be at fault."""


class ServerFullError(ChannelFull):
    """The server has no room left for what was sent (Redis at ``maxmemory`` under the
    ``noeviction`` policy): nothing was stored. Raised by ``send()`` and ``group_add()``;
    ``group_send()`` counts such members as missed, as it does full ones. It is a
    ``ChannelFull``, so code that treats a full channel as back-pressure treats this so
    too; receivers that take their messages free the room."""
