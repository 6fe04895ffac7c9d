"""A credential provider for an in-house secret store that serves JSON over HTTPS.

Select it with ``"credentials": {"provider": "myproject.credentials.SecretStoreProvider",
"url": ..., "token": ...}``, or register a short name for it in ``AppConfig.ready()``.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.request import Request, urlopen

from channels_engines import CredentialProvider, Credentials, CredentialsError, Option


class SecretStoreProvider(CredentialProvider):
    name = "secret_store"
    description = "Database logins from our secret store."
    options = {
        "url": Option((str,), None, "Where the store serves the login.", required=True),
        "token": Option((str,), None, "Bearer token for the store.", secret=True, required=True),
    }

    def get_credentials(self) -> Credentials:  # the engine calls it in a thread
        # Error trackers record the local variables of every frame: the error is raised
        # outside the handler, without urllib's frames (they hold the token) and without
        # the store's answer (it holds the password).
        try:
            return _login(self._fetch())
        except (OSError, LookupError, TypeError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        raise CredentialsError(f"no login from the secret store {self.settings['url']}: {reason}")

    def _fetch(self) -> Any:
        # The token is revealed into the request only (trackers record it by its repr).
        request = Request(  # noqa: S310
            self.settings["url"],
            headers={"Authorization": f"Bearer {self.settings['token'].reveal()}"},
        )
        with urlopen(request, timeout=10) as answer:  # noqa: S310
            return json.load(answer)  # {"username": ..., "password": ..., "ttl": 3600}


def _login(secret: Any) -> Credentials:
    expires_at = datetime.now(timezone.utc) + timedelta(seconds=secret["ttl"])
    return Credentials(secret["username"], secret["password"], expires_at)
