"""A credential provider for an in-house secret store that serves JSON over HTTPS.

Select it with ``"credentials": {"provider": "myproject.credentials.SecretStoreProvider",
"url": ..., "token": ...}``, or register a short name for it in ``AppConfig.ready()``.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from urllib.request import Request, urlopen

from channels_engines import CredentialProvider, Credentials, Option


class SecretStoreProvider(CredentialProvider):
    name = "secret_store"
    description = "Database logins from our secret store."
    options = {
        "url": Option((str,), None, "Where the store serves the login.", required=True),
        "token": Option((str,), None, "Bearer token for the store.", secret=True, required=True),
    }

    def get_credentials(self) -> Credentials:  # the engine calls it in a thread
        url, headers = self.settings["url"], {"Authorization": f"Bearer {self.settings['token']}"}
        with urlopen(Request(url, headers=headers), timeout=10) as answer:  # noqa: S310
            secret = json.load(answer)  # {"username": ..., "password": ..., "ttl": 3600}
        expires_at = datetime.now(timezone.utc) + timedelta(seconds=secret["ttl"])
        return Credentials(secret["username"], secret["password"], expires_at)
