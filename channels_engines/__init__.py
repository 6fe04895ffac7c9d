"""A Django Channels channel layer with a pluggable ENGINE."""

from __future__ import annotations

from ._version import __version__
from .contract import BaseChannelEngine, EngineConfig, contract_problems
from .credentials import (
    CredentialProvider,
    Credentials,
    CredentialsError,
    register_credential_provider,
    unregister_credential_provider,
)
from .engine_registry import EngineInfo, available_engines, register_engine, unregister_engine
from .exceptions import (
    AlreadyRegisteredError,
    ChannelLayerClosed,
    EngineContractError,
    EngineUnavailableError,
    InvalidConfigError,
    InvalidEngineError,
    ServerFullError,
    ServerUnavailableError,
)
from .hooks import Hook, register_hook, unregister_hook
from .layer import EngineChannelLayer
from .mailbox import Mailbox
from .options import Option
from .requirements import Requirement
from .validation import non_local_name

__all__ = [
    "AlreadyRegisteredError",
    "BaseChannelEngine",
    "ChannelLayerClosed",
    "CredentialProvider",
    "Credentials",
    "CredentialsError",
    "EngineChannelLayer",
    "EngineConfig",
    "EngineContractError",
    "EngineInfo",
    "EngineUnavailableError",
    "Hook",
    "InvalidConfigError",
    "InvalidEngineError",
    "Mailbox",
    "Option",
    "Requirement",
    "ServerFullError",
    "ServerUnavailableError",
    "__version__",
    "available_engines",
    "contract_problems",
    "non_local_name",
    "register_credential_provider",
    "register_engine",
    "register_hook",
    "unregister_credential_provider",
    "unregister_engine",
    "unregister_hook",
]
