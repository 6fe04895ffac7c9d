"""Amazon RDS and Aurora IAM authentication: a fresh 15-minute token as the password.

``boto3`` signs the token locally (no network call) with the AWS credentials it finds
(environment, profile, instance or container role); RDS checks it when a connection logs
in, and an established session is not affected when the token expires. The cache asks
for a new token after 10 minutes and must have one by 14.
"""

from __future__ import annotations

import importlib
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

from ..options import Option
from ..requirements import Requirement
from .base import CredentialProvider, Credentials, CredentialsError

__all__ = ["AwsRdsIamProvider"]

#: How long RDS accepts a token (boto3 signs it with X-Amz-Expires=900).
TOKEN_LIFETIME = timedelta(minutes=15)


def _non_empty(value: Any) -> str | None:
    return None if value else "a non-empty string"


def _port(value: Any) -> str | None:
    return None if 0 < value < 65536 else "an integer from 1 to 65535"


class AwsRdsIamProvider(CredentialProvider):
    """An IAM authentication token for RDS or Aurora PostgreSQL, made by boto3.

    ``host`` and ``port`` must be the ones the engine connects to (the token is signed
    for them), and RDS only accepts such logins over TLS: set ``sslmode`` in ``dsn`` or
    ``connection``.
    """

    name = "aws_rds_iam"
    description = "An IAM authentication token for Amazon RDS or Aurora (boto3)."
    requires = (Requirement("boto3", "boto3", "aws"),)
    options = {
        "host": Option(
            (str,),
            None,
            "Endpoint the token is signed for: the host the engine connects to.",
            required=True,
            check=_non_empty,
        ),
        "port": Option((int,), 5432, "Port the token is signed for.", check=_port),
        "user": Option(
            (str,),
            None,
            "Database user with the rds_iam role.",
            required=True,
            check=_non_empty,
        ),
        "region": Option(
            (str,),
            None,
            "AWS region of the database; None: boto3's default (AWS_DEFAULT_REGION or the "
            "profile's region).",
            nullable=True,
        ),
        "profile": Option(
            (str,),
            None,
            "Named profile of the AWS configuration; None: boto3's default chain.",
            nullable=True,
        ),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._client: Any = None
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        settings = getattr(self, "settings", None) or {}  # None: __init__ did not get there
        return (
            f"<{type(self).__qualname__} aws_rds_iam "
            f"{settings.get('user')}@{settings.get('host')}:{settings.get('port')}>"
        )

    def get_credentials(self) -> Credentials:
        """Sign a token (locally; ``aget_credentials`` runs this in a thread)."""
        client = self._rds_client()
        settings = self.settings
        expires_at = datetime.now(timezone.utc) + TOKEN_LIFETIME  # taken before signing
        try:
            token = client.generate_db_auth_token(
                DBHostname=settings["host"],
                Port=settings["port"],
                DBUsername=settings["user"],
                Region=settings["region"],
            )
        except Exception as exc:
            reason = _reason(exc)
            # The client keeps the AWS credentials it found when it was created: make a
            # new one next time, in case they appear later (a role not yet attached).
            with self._client_lock:
                self._client = None
        else:
            return Credentials(settings["user"], token, expires_at)
        # Raised outside the handler: botocore's frames hold the AWS secret key.
        raise CredentialsError(f"cannot sign an RDS IAM token for {self!r}: {reason}")

    def _rds_client(self) -> Any:
        """One boto3 client per provider (creating one is slow and not thread-safe)."""
        with self._client_lock:
            if self._client is None:
                boto3 = importlib.import_module("boto3")
                try:
                    session = boto3.session.Session(
                        profile_name=self.settings["profile"],
                        region_name=self.settings["region"],
                    )
                    self._client = session.client("rds")
                except Exception as exc:
                    reason = _reason(exc)
                    if type(exc).__name__ == "NoRegionError":
                        reason += " Set 'region' in CONFIG['credentials'], or AWS_DEFAULT_REGION."
                else:
                    return self._client
                raise CredentialsError(f"cannot create a boto3 RDS client for {self!r}: {reason}")
            return self._client


def _reason(exc: Exception) -> str:
    """botocore's messages say what to do ("You must specify a region", "Unable to locate
    credentials", "The config profile (x) could not be found") and hold no secret."""
    return f"{type(exc).__name__}: {exc}"
