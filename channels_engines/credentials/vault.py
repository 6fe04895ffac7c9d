"""HashiCorp Vault's database secrets engine: a database user per lease, renewed in place.

Each lease is a user Vault created in PostgreSQL (``CREATE ROLE ... VALID UNTIL``). When
the cache asks again while the lease is still valid and renewable, the lease is renewed
and the same user is returned with a later expiry, so no connection has to change. New
credentials are generated when the lease cannot be renewed (not renewable, expired,
revoked, or near its ``max_ttl``, where Vault grants less than half the original
duration) or when the server refused the current user.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from ..options import Option
from ..requirements import Requirement
from .base import CredentialProvider, Credentials, CredentialsError, Secret

__all__ = ["VaultProvider"]

logger = logging.getLogger("channels_engines.credentials")

#: Seconds one request to Vault may take.
TIMEOUT = 10.0
#: A renewal must extend the lease by at least this fraction of its original duration;
#: less means the lease is near its max_ttl, and new credentials are generated instead.
MIN_RENEWAL = 0.5


def _non_empty(value: Any) -> str | None:
    return None if value else "a non-empty string"


def _path(value: Any) -> str | None:
    return None if value.strip("/") else "a non-empty mount path"


def _verify(value: Any) -> str | None:
    return None if isinstance(value, bool) or value else "True, False or a CA bundle path"


@dataclass(frozen=True)
class _Lease:
    credentials: Credentials
    lease_id: str
    duration: float  # seconds granted when the credentials were generated
    renewable: bool

    def seconds_left(self) -> float:
        return self.credentials.seconds_left() or 0.0


class VaultProvider(CredentialProvider):
    """Dynamic database credentials from Vault's database secrets engine (hvac).

    The Vault token comes from ``token`` or, when that is None, from the ``VAULT_TOKEN``
    environment variable, read at every request (so an agent may replace it).
    """

    name = "vault"
    description = "Dynamic database users from HashiCorp Vault, with lease renewal (hvac)."
    requires = (Requirement("hvac", "hvac", "vault"),)
    options = {
        "url": Option(
            (str,),
            None,
            "Address of Vault, e.g. 'https://vault.internal:8200'.",
            required=True,
            check=_non_empty,
        ),
        "role": Option(
            (str,),
            None,
            "Role of the database secrets engine to generate credentials for.",
            required=True,
            check=_non_empty,
        ),
        "mount": Option(
            (str,), "database", "Path the database secrets engine is mounted at.", check=_path
        ),
        "token": Option(
            (str,),
            None,
            "Vault token; None: the VAULT_TOKEN environment variable.",
            nullable=True,
            secret=True,
        ),
        "namespace": Option(
            (str,), None, "Vault Enterprise namespace (X-Vault-Namespace).", nullable=True
        ),
        "verify": Option(
            (bool, str),
            True,
            "TLS verification of Vault's certificate: True, False, or a CA bundle path.",
            check=_verify,
            describe_as="True, False or a CA bundle path",
        ),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._lock = threading.Lock()
        self._client: Any = None
        self._lease: _Lease | None = None
        self._refused: list[Credentials] = []
        #: Leases generated and renewals granted (for tests and metrics).
        self.generated = 0
        self.renewed = 0

    def __repr__(self) -> str:
        settings = getattr(self, "settings", None) or {}  # None: __init__ did not get there
        return (
            f"<{type(self).__qualname__} vault role {settings.get('role')!r} "
            f"at {settings.get('url')}>"
        )

    def get_credentials(self) -> Credentials:
        """Renew the current lease if it can be, else generate new credentials (in a
        thread when called through ``aget_credentials``)."""
        with self._lock:
            client = self._vault_client()
            lease = self._lease
            while self._refused:
                refused = self._refused.pop()
                if lease is not None and lease.credentials.same_as(refused):
                    lease = None
            if lease is not None:
                renewed = self._renew(client, lease)
                if renewed is not None:
                    self._lease = renewed
                    self.renewed += 1
                    return renewed.credentials
            self._lease = None
            lease = self._generate(client)
            self._lease = lease
            self.generated += 1
            return lease.credentials

    def refused(self, credentials: Credentials) -> None:
        """The database refused this user: never renew its lease again."""
        # No lock: this is called on an event loop, which must not wait for a request
        # to Vault in flight; list.append is atomic.
        self._refused.append(credentials)

    # Vault requests ----------------------------------------------------------------

    def _generate(self, client: Any) -> _Lease:
        started = datetime.now(timezone.utc)
        mount, role = self.settings["mount"].strip("/"), self.settings["role"]
        try:
            # The response is never kept in a local: a traceback showing local
            # variables would show the password.
            lease = _parse_lease(
                client.secrets.database.generate_credentials(name=role, mount_point=mount),
                started,
            )
            failure = None if lease is not None else "its answer has no username and password"
        except Exception as exc:
            lease, failure = None, _reason(exc)
        if lease is None:
            # Raised outside the handler: hvac's frames hold the Vault token.
            raise CredentialsError(
                f"Vault at {self.settings['url']} did not generate credentials for the role "
                f"{role!r} (mount {mount!r}): {failure}"
            )
        return lease

    def _renew(self, client: Any, lease: _Lease) -> _Lease | None:
        """The same credentials with a later expiry, or None when new ones are needed."""
        if not lease.renewable or lease.seconds_left() <= 0:
            return None
        started = datetime.now(timezone.utc)
        try:
            answer = client.sys.renew_lease(lease_id=lease.lease_id, increment=int(lease.duration))
            granted = float(answer["lease_duration"])
            renewable = bool(answer.get("renewable", False))
        except Exception as exc:
            logger.info(
                "Vault did not renew the lease of %r (%s); generating new credentials.",
                lease.credentials.user,
                _reason(exc),
            )
            return None
        if granted <= 0 or granted < lease.duration * MIN_RENEWAL:
            logger.info(
                "Vault renewed the lease of %r for %g s only (its max_ttl is near); "
                "generating new credentials.",
                lease.credentials.user,
                granted,
            )
            return None
        credentials = Credentials(
            lease.credentials.user,
            lease.credentials.password,
            started + timedelta(seconds=granted),
        )
        return _Lease(credentials, lease.lease_id, lease.duration, renewable)

    def _vault_client(self) -> Any:
        """One hvac client per provider, its token taken afresh for every request."""
        token = self.settings["token"]
        if token is None and os.environ.get("VAULT_TOKEN"):
            token = Secret(os.environ["VAULT_TOKEN"])
        if not token:
            raise CredentialsError(
                f"no Vault token for {self!r}: set 'token' in CONFIG['credentials'] or the "
                "VAULT_TOKEN environment variable."
            )
        if self._client is not None:
            self._client.token = token.reveal()
            return self._client
        hvac = importlib.import_module("hvac")
        try:
            self._client = hvac.Client(
                url=self.settings["url"],
                token=token.reveal(),
                namespace=self.settings["namespace"],
                verify=self.settings["verify"],
                timeout=TIMEOUT,
            )
        except Exception as exc:
            reason = _reason(exc)
        else:
            return self._client
        # Raised outside the handler: hvac's frames hold the token.
        raise CredentialsError(f"cannot create a Vault client for {self!r}: {reason}")


def _parse_lease(answer: Any, started: datetime) -> _Lease | None:
    """A lease from Vault's answer, or None when the answer is not one (never raises: the
    caller's traceback must not show the answer)."""
    try:
        data = answer["data"]
        user, password = data["username"], data["password"]
        duration = float(answer.get("lease_duration") or 0)
        if not (isinstance(user, str) and isinstance(password, str) and user and password):
            return None
        expires_at = started + timedelta(seconds=duration) if duration > 0 else None
        return _Lease(
            Credentials(user, password, expires_at),
            str(answer.get("lease_id") or ""),
            duration,
            bool(answer.get("renewable")) and bool(answer.get("lease_id")),
        )
    except Exception:
        return None


def _reason(exc: Exception) -> str:
    """What went wrong, without anything a response could carry besides Vault's errors."""
    errors = getattr(exc, "errors", None)
    if isinstance(errors, (list, tuple)) and errors:
        return f"{type(exc).__name__}: {'; '.join(str(error) for error in errors)}"
    if type(exc).__module__.startswith(("requests", "urllib3")):
        # Connection and TLS errors name the host and path, never the headers.
        return f"cannot reach Vault: {type(exc).__name__}: {str(exc)[:300]}"
    text = str(exc).split(", on ", 1)[0].strip()  # hvac appends ", on METHOD URL"
    return f"{type(exc).__name__}: {text}" if text and text != "None" else type(exc).__name__
