"""The credential provider registry, and turning a CONFIG value into a provider.

Other packages publish providers in the entry-point group ``channels_engines.credentials``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..exceptions import InvalidConfigError
from ..options import Option, validate_options
from ..plugins import Registry
from ..redaction import HiddenSettings, Secret, plain
from .base import CredentialProvider

__all__ = [
    "CREDENTIALS_OPTION",
    "credential_providers",
    "register_credential_provider",
    "resolve_provider",
    "unregister_credential_provider",
]

credential_providers: Registry[CredentialProvider] = Registry(
    kind="credential provider",
    base=CredentialProvider,
    entry_point_group="channels_engines.credentials",
    setting="CONFIG['credentials']",
    error=InvalidConfigError,
    unregister="channels_engines.unregister_credential_provider",
    takes="a provider name, the dotted path of a CredentialProvider subclass, a "
    "CredentialProvider instance or {'provider': NAME, **options}",
    hidden_hint=" A password does not go here: write {'provider': 'static', 'user': ..., "
    "'password': ...}, or put it in 'dsn'.",
)
for _name, _path in {
    "static": "channels_engines.credentials.builtin.StaticProvider",
    "env": "channels_engines.credentials.builtin.EnvProvider",
    "file": "channels_engines.credentials.builtin.FileProvider",
    "django": "channels_engines.credentials.builtin.DjangoProvider",
    "callable": "channels_engines.credentials.builtin.CallableProvider",
    "aws_rds_iam": "channels_engines.credentials.aws.AwsRdsIamProvider",
    "vault": "channels_engines.credentials.vault.VaultProvider",
}.items():
    credential_providers.register(_name, _path, origin="built in")


#: The ``credentials`` CONFIG key, for engines that log in somewhere. Secret: a dict of
#: options may hold a token.
CREDENTIALS_OPTION = Option(
    (str, dict, type, CredentialProvider),
    None,
    "Credential provider asked for the login of every new connection: a registered name, "
    "a dotted path, a CredentialProvider instance, or {'provider': NAME, **options}. "
    "None: the login in 'dsn'/'connection' or the DATABASES alias.",
    nullable=True,
    secret=True,
    describe_as="a provider name, a dotted path, a CredentialProvider (class or instance) "
    "or a dict with 'provider'",
)


def register_credential_provider(name: str, provider: type[CredentialProvider] | str) -> None:
    """Make ``"credentials": name`` select ``provider`` (a class or its dotted path)."""
    credential_providers.register(name, provider)


def unregister_credential_provider(name: str) -> None:
    """Remove a provider name registered in code (or built in), so that it can be
    registered again. Raises ``LookupError`` for a name that is not registered in code."""
    credential_providers.unregister(name)


def resolve_provider(value: Any, *, where: str, option: str = "credentials") -> CredentialProvider:
    """A provider from CONFIG[option] (``credentials``, or another setting of the same
    kind): a name, a dotted path, an instance, or a dict ``{"provider": name, **options}``.

    A name or dict from a validated CONFIG arrives concealed (its strings are
    :class:`~channels_engines.redaction.Secret`); one given directly may be plain.
    """
    if isinstance(value, CredentialProvider):
        return value
    # Opaque (error trackers record the local variables of a raising frame, walking
    # dicts): the options may hold a password or a token.
    key = f"CONFIG[{option!r}]"
    options = HiddenSettings()
    setting = None if option == "credentials" else key
    if isinstance(value, (Mapping, HiddenSettings)):
        setting = f"{key}['provider']"
        options = HiddenSettings(value)
        value = options.get("provider")
        if value is None:
            raise InvalidConfigError(
                f"{where}: {key} is a dict without 'provider'. Write "
                "{'provider': NAME, ...options}; available credential providers: "
                f"{', '.join(repr(name) for name in credential_providers.names())}."
            )
        options = options.without("provider")
    elif not isinstance(value, (str, Secret, type)):
        raise InvalidConfigError(
            f"{where}: {key} must be a provider name, a dotted path, a "
            f"CredentialProvider instance or a dict with 'provider', not {type(value).__name__}."
        )
    cls = credential_providers.load(value, where=where, setting=setting)
    name = plain(value) if isinstance(value, (str, Secret)) else cls.__qualname__
    missing = [requirement.of(cls) for requirement in cls.requires if not requirement.installed()]
    if missing:
        hints = " and ".join(dict.fromkeys(requirement.install_hint() for requirement in missing))
        raise InvalidConfigError(
            f"{where}: the credential provider {name!r} needs "
            f"{', '.join(requirement.package for requirement in missing)}, which is not "
            f"installed. Install it with: {hints}"
        )
    validated = validate_options(
        options,
        cls.options,
        where=f"{where}: {key}",
        owner=f"the credential provider {name!r}",
    )
    try:
        return cls(**validated)
    except ValueError as exc:
        raise InvalidConfigError(f"{where}: credential provider {name!r}: {exc}") from exc
