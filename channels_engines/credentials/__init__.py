"""Credential providers: where engines get user names, passwords and tokens."""

from .base import CredentialProvider, Credentials, CredentialsError, Secret
from .cache import CredentialCache
from .registry import (
    CREDENTIALS_OPTION,
    credential_providers,
    register_credential_provider,
    resolve_provider,
    unregister_credential_provider,
)

__all__ = [
    "CREDENTIALS_OPTION",
    "CredentialCache",
    "CredentialProvider",
    "Credentials",
    "CredentialsError",
    "Secret",
    "credential_providers",
    "register_credential_provider",
    "resolve_provider",
    "unregister_credential_provider",
]
