"""Credential providers that need no extra package: static, env, file, django, callable."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from django.utils.module_loading import import_string

from ..options import Option
from .base import CredentialProvider, Credentials, CredentialsError, Secret

__all__ = [
    "CallableProvider",
    "DjangoProvider",
    "EnvProvider",
    "FileProvider",
    "StaticProvider",
    "as_credentials",
]

# Keys Django's PostgreSQL backend adds for its own cursors; they are not libpq settings.
_DJANGO_ONLY = ("cursor_factory", "context")


def _non_empty(value: Any) -> str | None:
    return None if value else "a non-empty string"


class StaticProvider(CredentialProvider):
    """Fixed credentials from CONFIG."""

    name = "static"
    description = "A user and password written in CONFIG."
    options = {
        "user": Option((str,), None, "User to log in as.", nullable=True),
        "password": Option((str,), None, "Password.", secret=True, required=True),
    }

    def get_credentials(self) -> Credentials:
        return Credentials(self.settings["user"], self.settings["password"])


class EnvProvider(CredentialProvider):
    """Credentials from environment variables, read again for every new connection."""

    name = "env"
    description = "Environment variables, read again for every new connection."
    options = {
        "user_variable": Option((str,), "PGUSER", "Variable holding the user (optional)."),
        "password_variable": Option((str,), "PGPASSWORD", "Variable holding the password."),
    }
    cache_ttl = 0.0

    def get_credentials(self) -> Credentials:
        variable = self.settings["password_variable"]
        password = os.environ.get(variable)
        if not password:
            raise CredentialsError(f"the environment variable {variable} is not set or empty")
        return Credentials(os.environ.get(self.settings["user_variable"]) or None, password)


class FileProvider(CredentialProvider):
    """A mounted secret file (Kubernetes, Vault agent), read again when it changes.

    A changed file is used only after it has stayed unchanged for ``settle`` seconds and
    did not change while it was read, and an empty or unparsable file is never used, so a
    secret being rewritten in place is not read half-written. New credentials are also
    verified against the server before they replace the current ones.
    """

    name = "file"
    description = "A mounted secret file, read again when it changes."
    options = {
        "path": Option((str,), None, "Path of the secret file.", required=True, check=_non_empty),
        "format": Option(
            (str,),
            "password",
            "'password': the file holds the password; 'json': an object with 'password' "
            "and optionally 'user'.",
            choices=("password", "json"),
        ),
        "user": Option((str,), None, "User for format 'password'.", nullable=True),
        "settle": Option(
            (float,),
            0.5,
            "Seconds a changed file must stay unchanged before it is read.",
            minimum=0,
        ),
    }
    cache_ttl = 0.0

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._seen: tuple[int, int, int, int] | None = None
        self._credentials: Credentials | None = None

    def get_credentials(self) -> Credentials:
        path = self.settings["path"]
        settle = self.settings["settle"]
        for _ in range(100):
            try:
                before = os.stat(path)
            except OSError as exc:
                raise CredentialsError(
                    f"cannot read the secret file {path}: {exc.strerror}"
                ) from None
            key = (before.st_dev, before.st_ino, before.st_mtime_ns, before.st_size)
            if key == self._seen and self._credentials is not None:
                return self._credentials
            age = time.time() - before.st_mtime
            if age < settle:
                time.sleep(settle - age)
                continue
            try:
                with open(path, "rb") as handle:
                    # The content never becomes a local variable of a frame that raises:
                    # a traceback showing local variables would show the secret.
                    parsed = self._parse(handle.read(), path)
                after = os.stat(path)
            except OSError as exc:
                raise CredentialsError(
                    f"cannot read the secret file {path}: {exc.strerror}"
                ) from None
            if (after.st_dev, after.st_ino, after.st_mtime_ns, after.st_size) != key:
                continue  # changed while being read
            if isinstance(parsed, str):
                raise CredentialsError(parsed)
            self._seen, self._credentials = key, parsed
            return parsed
        raise CredentialsError(f"the secret file {path} keeps changing; not using it")

    def _parse(self, data: bytes, path: str) -> Credentials | str:
        """Credentials, or what is wrong with the file; never raises, and the message
        never quotes the file's content."""
        try:
            text = data.decode("utf-8").strip("\r\n")
        except UnicodeDecodeError:
            return f"the secret file {path} is not UTF-8 text"
        if not text.strip():
            return f"the secret file {path} is empty"
        if self.settings["format"] == "password":
            return Credentials(self.settings["user"], text)
        try:
            document = json.loads(text)
        except ValueError:
            return f"the secret file {path} is not valid JSON"
        if not isinstance(document, dict) or not isinstance(document.get("password"), str):
            return f"the secret file {path} must hold a JSON object with a 'password' string"
        user = document.get("user", document.get("username", self.settings["user"]))
        if user is not None and not isinstance(user, str):
            return f"the secret file {path} has a 'user' that is not a string"
        return Credentials(user, document["password"])


class DjangoProvider(CredentialProvider):
    """Everything a ``DATABASES`` alias would use, asked of its own backend every time.

    A custom Django database backend that computes credentials in
    ``get_connection_params()`` (RDS IAM tokens, Vault) keeps working unchanged.
    """

    name = "django"
    description = "A DATABASES alias, through its own database backend."
    options = {
        "alias": Option((str,), "default", "The DATABASES alias.", check=_non_empty),
    }
    cache_ttl = 0.0

    #: Called with the alias and its backend's connection wrapper before anything is
    #: read from it; an engine sets it to refuse backends it cannot connect to.
    check_backend: Callable[[str, Any], None] | None = None

    def get_credentials(self) -> Credentials:
        from django.db import connections

        alias = self.settings["alias"]
        wrapper = connections.create_connection(alias)
        if self.check_backend is not None:
            self.check_backend(alias, wrapper)
        params = dict(wrapper.get_connection_params())
        for key in _DJANGO_ONLY:
            params.pop(key, None)
        # The password leaves ``params`` as the arguments are evaluated, before anything
        # can raise with this frame's local variables recorded.
        return Credentials(params.pop("user", None), params.pop("password", None), extra=params)


class CallableProvider(CredentialProvider):
    """A function of yours, sync or async, named by its dotted path."""

    name = "callable"
    description = "A sync or async function that returns credentials."
    options = {
        "path": Option(
            (str,),
            None,
            "Dotted path of a function returning Credentials, a dict with 'password' "
            "(and 'user', 'expires_at', 'extra') or a password string.",
            required=True,
            check=_non_empty,
        ),
        "ttl": Option(
            (float,),
            None,
            "Seconds to reuse credentials without an expiry; None: until refused.",
            nullable=True,
            minimum=0,
        ),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        try:
            self._function: Callable[[], Any] = import_string(options["path"])
        except ImportError as exc:
            raise ValueError(f"cannot import {options['path']!r}: {exc}") from exc
        self.cache_ttl = options.get("ttl")  # type: ignore[misc]

    async def aget_credentials(self) -> Credentials:
        # What the function returns is never a local variable here: it may be refused,
        # and a refusal must not carry the password in this frame.
        if inspect.iscoroutinefunction(self._function):
            return as_credentials(await self._function(), self.settings["path"])
        return as_credentials(await asyncio.to_thread(self._function), self.settings["path"])


def as_credentials(value: Any, source: str) -> Credentials:
    """Accept what a user function may reasonably return; raise CredentialsError, from a
    frame that no longer holds it, for anything else."""
    found = _as_credentials(value, source)
    del value  # error trackers record the local variables of a raising frame
    if isinstance(found, str):
        raise CredentialsError(found)
    return found


def _as_credentials(value: Any, source: str) -> Credentials | str:
    """Credentials, or what is wrong with ``value`` (never quoting it); never raises."""
    try:
        if isinstance(value, Credentials):
            return value
        if isinstance(value, (str, Secret)):
            return Credentials(password=value)
        if isinstance(value, Mapping) and "password" in value:
            expires_at = value.get("expires_at")
            if expires_at is not None and not isinstance(expires_at, datetime):
                return f"{source} returned an 'expires_at' that is not a datetime"
            return Credentials(
                value.get("user"), value["password"], expires_at, value.get("extra") or {}
            )
    except (TypeError, ValueError, AttributeError) as exc:
        return f"{source} returned credentials that cannot be used: {exc}"
    return (
        f"{source} returned {type(value).__name__}; return Credentials, a dict with "
        "'password', or a password string"
    )
