"""PostgreSQL, except that every call of get_connection_params() is counted per alias and
the password can come from ``PASSWORDS`` (as a backend that fetches rotating credentials
would do)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from django.db.backends.postgresql.base import DatabaseWrapper as PostgresDatabaseWrapper

#: Calls of get_connection_params(), per alias.
CALLS: Counter[str] = Counter()
#: Password to use instead of settings.DATABASES[alias]["PASSWORD"], per alias.
PASSWORDS: dict[str, str] = {}
_lock = threading.Lock()


class DatabaseWrapper(PostgresDatabaseWrapper):
    def get_connection_params(self) -> dict[str, Any]:
        params: dict[str, Any] = super().get_connection_params()
        with _lock:
            CALLS[self.alias] += 1
            password = PASSWORDS.get(self.alias)
        if password is not None:
            params["password"] = password
        return params
