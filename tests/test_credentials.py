"""Credentials, the provider registry, the built-in providers and the cache.

Mostly without a database: the cache is driven by fake providers and a fake clock, so no
test waits for a refresh window to come.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from channels_engines import (
    AlreadyRegisteredError,
    CredentialProvider,
    Credentials,
    CredentialsError,
    EngineChannelLayer,
    InvalidConfigError,
    register_credential_provider,
    unregister_credential_provider,
)
from channels_engines.credentials import (
    CredentialCache,
    Secret,
    builtin,
    credential_providers,
    resolve_provider,
)
from channels_engines.credentials import cache as cache_module
from channels_engines.credentials.builtin import (
    CallableProvider,
    DjangoProvider,
    EnvProvider,
    FileProvider,
    StaticProvider,
)
from tests.pg_backend import base as counting_backend
from tests.support.pgtools import database_alias

SENTINEL = "SENTINEL-p4ssw0rd-never-shown"
WHERE = "CHANNEL_LAYERS['default']"
AVAILABLE = "'aws_rds_iam', 'callable', 'django', 'env', 'file', 'static', 'vault'"


def soon(seconds: float) -> datetime:
    return datetime.now(timezone.utc) + timedelta(seconds=seconds)


def formatted(error: BaseException) -> str:
    """The exception chain with every frame's local variables, below the test's own frame
    (which holds the planted secret itself)."""
    assert error.__traceback__ is not None
    return "".join(
        traceback.TracebackException(
            type(error), error, error.__traceback__.tb_next, capture_locals=True
        ).format()
    )


# Credentials ---------------------------------------------------------------------------


def test_credentials_are_immutable() -> None:
    extra = {"sslmode": "require"}
    credentials = Credentials("app", SENTINEL, soon(60), extra)
    with pytest.raises(dataclasses.FrozenInstanceError):
        credentials.password = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        credentials.user = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        credentials.extra["sslmode"] = "disable"  # type: ignore[index]
    extra["sslmode"] = "disable"  # the caller's dict is copied
    assert credentials.extra == {"sslmode": Secret("require")}


def test_credentials_check_their_fields() -> None:
    with pytest.raises(
        TypeError, match=r"Credentials\.password must be a str or a Secret, not bytes"
    ):
        Credentials("app", b"secret")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be timezone-aware"):
        Credentials("app", "secret", datetime.now())


def test_credentials_never_show_the_password_in_repr_or_str(
    caplog: pytest.LogCaptureFixture,
) -> None:
    credentials = Credentials("app", SENTINEL, None, {"sslpassword": SENTINEL, "port": 5432})
    assert repr(credentials) == (
        "Credentials(user='app', password='********', expires_at=None, "
        "extra_keys=['port', 'sslpassword'])"
    )
    assert str(credentials) == repr(credentials)
    params = credentials.connection_params()
    shown = [
        repr(credentials),
        f"{credentials}",
        repr([credentials]),
        repr({"login": credentials}),
        repr(params),
        repr(credentials.password),
        repr(dataclasses.asdict(credentials)),
    ]
    for text in shown:
        assert SENTINEL not in text
    with caplog.at_level(logging.INFO, logger="tests.credentials"):
        logging.getLogger("tests.credentials").info("using %s, %r", credentials, credentials)
    assert SENTINEL not in caplog.text
    # The driver gets it from reveal(), in the call that hands it over.
    assert isinstance(credentials.password, Secret)
    assert credentials.password.reveal() == SENTINEL
    assert params == {
        "sslpassword": Secret(SENTINEL),
        "port": 5432,
        "user": "app",
        "password": Secret(SENTINEL),
    }
    assert repr(Secret(SENTINEL)) == "Secret('********')"


def test_credentials_in_a_traceback_with_local_variables_and_chained_errors_stay_hidden() -> None:
    def connect(credentials: Credentials) -> None:
        params = credentials.connection_params()
        password = credentials.password
        raise ConnectionError(f"refused for {params['user']} ({password is not None})")

    def open_pool() -> None:
        credentials = Credentials("app", SENTINEL, soon(60), {"sslkey": SENTINEL})
        try:
            connect(credentials)
        except ConnectionError as exc:
            raise CredentialsError(f"cannot log in with {credentials}") from exc

    with pytest.raises(CredentialsError) as raised:
        open_pool()
    text = formatted(raised.value)
    assert "The above exception was the direct cause" in text
    assert "credentials = Credentials(user='app', password='********'" in text
    assert "password = Secret('********')" in text
    assert SENTINEL not in text


def test_same_as_compares_the_login_not_the_expiry() -> None:
    one = Credentials("app", "pw", soon(60), {"sslmode": "require"})
    assert one.same_as(Credentials("app", "pw", soon(600), {"sslmode": "require"}))
    assert not one.same_as(Credentials("app", "other", soon(60), {"sslmode": "require"}))
    assert not one.same_as(Credentials("app", "pw", soon(60)))
    assert not one.same_as(None)


def test_a_provider_implements_one_of_the_twins_and_gets_the_other() -> None:
    with pytest.raises(TypeError, match="must implement get_credentials\\(\\) or aget"):

        class Nothing(CredentialProvider):
            pass

    class SyncOnly(CredentialProvider):
        def get_credentials(self) -> Credentials:
            return Credentials("sync", "pw")

    class AsyncOnly(CredentialProvider):
        async def aget_credentials(self) -> Credentials:
            return Credentials("async", "pw")

    assert asyncio.run(SyncOnly().aget_credentials()).user == "sync"
    assert AsyncOnly().get_credentials().user == "async"


# Resolving CONFIG['credentials'] ---------------------------------------------------------


def test_a_registered_name_selects_a_provider_with_default_options() -> None:
    provider = resolve_provider("env", where=WHERE)
    assert isinstance(provider, EnvProvider)
    assert provider.settings == {"user_variable": "PGUSER", "password_variable": "PGPASSWORD"}


def test_a_dict_gives_the_provider_and_its_options() -> None:
    provider = resolve_provider(
        {"provider": "static", "user": "app", "password": "pw"}, where=WHERE
    )
    assert isinstance(provider, StaticProvider)
    assert provider.get_credentials() == Credentials("app", "pw")


def test_a_dotted_path_a_class_and_an_instance_are_accepted() -> None:
    path = "channels_engines.credentials.builtin.EnvProvider"
    assert isinstance(resolve_provider(path, where=WHERE), EnvProvider)
    assert isinstance(resolve_provider({"provider": path}, where=WHERE), EnvProvider)
    assert isinstance(resolve_provider(EnvProvider, where=WHERE), EnvProvider)
    instance = StaticProvider(user=None, password="pw")
    assert resolve_provider(instance, where=WHERE) is instance


def test_an_unknown_name_is_answered_with_a_suggestion_and_the_names_that_exist() -> None:
    with pytest.raises(InvalidConfigError) as raised:
        resolve_provider("evn", where=WHERE)
    assert str(raised.value) == (
        f"{WHERE}: unknown CONFIG['credentials'] 'evn'. Did you mean 'env'? Available "
        f"credential providers: {AVAILABLE}. CONFIG['credentials'] takes a provider name, "
        "the dotted path of a CredentialProvider subclass, a CredentialProvider instance or "
        "{'provider': NAME, **options}."
    )


def test_a_dict_without_provider_is_refused_with_the_names_that_exist() -> None:
    with pytest.raises(InvalidConfigError) as raised:
        resolve_provider({"user": "app"}, where=WHERE)
    assert str(raised.value) == (
        f"{WHERE}: CONFIG['credentials'] is a dict without 'provider'. Write "
        "{'provider': NAME, ...options}; available credential providers: " + AVAILABLE + "."
    )


def test_a_value_of_another_type_is_refused() -> None:
    with pytest.raises(InvalidConfigError) as raised:
        resolve_provider(42, where=WHERE)
    assert str(raised.value) == (
        f"{WHERE}: CONFIG['credentials'] must be a provider name, a dotted path, a "
        "CredentialProvider instance or a dict with 'provider', not int."
    )


def plain_string_refused(where: str, suggestion: str) -> str:
    return (
        f"{where}: CONFIG['credentials'] is a plain string (hidden) that names no credential "
        "provider: not a registered name, nor the dotted path of a class that can be "
        f"imported.{suggestion} CONFIG['credentials'] must be a provider name, the dotted "
        "path of a CredentialProvider subclass, a CredentialProvider instance or "
        "{'provider': NAME, **options}. Available credential providers: " + AVAILABLE + ". "
        "A password does not go here: write {'provider': 'static', 'user': ..., "
        "'password': ...}, or put it in 'dsn'."
    )


@pytest.mark.parametrize(
    ("value", "suggestion"),
    [
        ("hunter2", ""),
        ("s3cret pass!", ""),
        ("my.secret.password", ""),
        ("pkg.module:Provider", ""),
        ("stattic", " Did you mean 'static'?"),
    ],
)
def test_a_plain_string_in_a_layers_config_is_described_never_shown(
    value: str, suggestion: str
) -> None:
    """CONFIG['credentials'] is a secret setting: a string there that names no provider
    may be the password itself, put in the wrong place."""
    with pytest.raises(InvalidConfigError) as raised:
        EngineChannelLayer(ENGINE="postgres", dsn="postgresql://127.0.0.1:1/x", credentials=value)
    assert str(raised.value) == plain_string_refused("EngineChannelLayer", suggestion)
    assert raised.value.__cause__ is None
    assert "Secret(" not in str(raised.value)


def test_a_hidden_provider_name_in_the_dict_form_is_named_as_that_key() -> None:
    with pytest.raises(InvalidConfigError) as raised:
        EngineChannelLayer(
            ENGINE="postgres",
            dsn="postgresql://127.0.0.1:1/x",
            credentials={"provider": "hunter2", "user": "app"},
        )
    assert str(raised.value).startswith(
        "EngineChannelLayer: CONFIG['credentials']['provider'] is a plain string (hidden) "
        "that names no credential provider: "
    )
    assert "hunter2" not in str(raised.value)


def test_a_provider_name_or_path_in_a_layers_config_is_used() -> None:
    for value in ("env", "channels_engines.credentials.builtin.EnvProvider"):
        layer = EngineChannelLayer(
            ENGINE="postgres", dsn="postgresql://127.0.0.1:1/x", credentials=value
        )
        assert layer.config.options["credentials"] == Secret(value)


def test_unregister_credential_provider_frees_a_name() -> None:
    register_credential_provider("ce_test_gone", StoreProvider)
    unregister_credential_provider("ce_test_gone")
    assert "ce_test_gone" not in credential_providers.names()
    with pytest.raises(LookupError, match="'ce_test_gone' is not registered"):
        unregister_credential_provider("ce_test_gone")


def test_a_dotted_path_to_something_else_is_refused() -> None:
    with pytest.raises(InvalidConfigError) as raised:
        resolve_provider("channels_engines.credentials.Credentials", where=WHERE)
    assert str(raised.value) == (
        f"{WHERE}: CONFIG['credentials'] 'channels_engines.credentials.Credentials' resolves "
        "to <class 'channels_engines.credentials.base.Credentials'>, which is not a subclass "
        "of channels_engines.CredentialProvider."
    )


def test_provider_options_are_checked_naming_the_alias_and_key() -> None:
    with pytest.raises(InvalidConfigError) as raised:
        resolve_provider({"provider": "env", "password_varaible": "X"}, where=WHERE)
    assert str(raised.value) == (
        f"{WHERE}: CONFIG['credentials']: unknown CONFIG key 'password_varaible' for the "
        "credential provider 'env'. Did you mean 'password_variable'? Allowed keys: "
        "password_variable, user_variable."
    )
    with pytest.raises(InvalidConfigError) as raised:
        resolve_provider({"provider": "file", "path": "/run/secret", "settle": "1"}, where=WHERE)
    assert str(raised.value) == (
        f"{WHERE}: CONFIG['credentials']: CONFIG['settle'] must be a finite number >= 0, "
        "not '1' (str)."
    )


def test_a_secret_option_of_the_wrong_type_is_not_repeated() -> None:
    with pytest.raises(InvalidConfigError) as raised:
        resolve_provider({"provider": "static", "password": [SENTINEL]}, where=WHERE)
    assert str(raised.value) == (
        f"{WHERE}: CONFIG['credentials']: CONFIG['password'] must be a string, not <hidden> (list)."
    )


def test_a_missing_required_option_is_named() -> None:
    with pytest.raises(InvalidConfigError) as raised:
        resolve_provider({"provider": "static", "user": "app"}, where=WHERE)
    assert str(raised.value) == (
        f"{WHERE}: CONFIG['credentials']: the CONFIG key 'password' is required for the "
        "credential provider 'static'; it must be a string."
    )


# A fixed password and a provider together ----------------------------------------------


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"dsn": "postgresql://u:pw@h/db"}, "dsn"),
        ({"dsn": "postgresql://h/db", "connection": {"password": "pw"}}, "connection"),
        ({"dsn": "postgresql://h/db", "listen_dsn": "host=h password=pw"}, "listen_dsn"),
        (
            {
                "dsn": "postgresql://h/db",
                "listen_dsn": "host=h",
                "listen_connection": {"password": "pw"},
            },
            "listen_connection",
        ),
    ],
)
def test_a_password_in_the_connection_settings_and_a_provider_are_refused_together(
    settings: dict[str, Any], key: str
) -> None:
    with pytest.raises(InvalidConfigError) as raised:
        EngineChannelLayer(ENGINE="postgres", credentials="env", **settings)
    assert str(raised.value) == (
        f"EngineChannelLayer: CONFIG sets both a password (in {key!r}) and 'credentials'. "
        "Give the password in 'dsn'/'connection' for a fixed login, or name a credential "
        "provider in 'credentials' for one that can change, not both."
    )


def test_connection_settings_without_a_password_take_a_provider() -> None:
    layer = EngineChannelLayer(
        ENGINE="postgres", dsn="postgresql://app@db.internal/chat", credentials="env"
    )
    assert layer.engine_name == "postgres"


# Registering providers -----------------------------------------------------------------


class StoreProvider(CredentialProvider):
    name = "store"

    def get_credentials(self) -> Credentials:
        return Credentials("store", "pw")


@pytest.fixture
def registered() -> Iterator[Callable[[str, Any], None]]:
    names: list[str] = []

    def register(name: str, target: Any) -> None:
        register_credential_provider(name, target)
        names.append(name)

    yield register
    for name in names:
        unregister_credential_provider(name)


def test_register_credential_provider_makes_a_name_selectable(
    registered: Callable[[str, Any], None],
) -> None:
    registered("ce_test_store", StoreProvider)
    registered("ce_test_store_path", f"{__name__}.StoreProvider")
    assert isinstance(resolve_provider("ce_test_store", where=WHERE), StoreProvider)
    assert isinstance(
        resolve_provider({"provider": "ce_test_store_path"}, where=WHERE), StoreProvider
    )
    assert "ce_test_store" in credential_providers.names()
    with pytest.raises(AlreadyRegisteredError, match="'ce_test_store' is already registered"):
        register_credential_provider("ce_test_store", StoreProvider)
    with pytest.raises(AlreadyRegisteredError, match="'vault' is already registered"):
        register_credential_provider("vault", StoreProvider)


@pytest.fixture
def published(tmp_path: Path) -> Iterator[None]:
    """A fake installed distribution publishing a provider in the entry-point group."""
    root = tmp_path / "site"
    info = root / "ce_store_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: ce-store-plugin\nVersion: 1.0\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        "[channels_engines.credentials]\nce_published = ce_store_plugin:PublishedProvider\n",
        encoding="utf-8",
    )
    (root / "ce_store_plugin.py").write_text(
        "from channels_engines import CredentialProvider, Credentials\n\n\n"
        "class PublishedProvider(CredentialProvider):\n"
        "    def get_credentials(self):\n"
        "        return Credentials('published', 'pw')\n",
        encoding="utf-8",
    )
    sys.path.append(str(root))
    importlib.invalidate_caches()
    credential_providers.refresh_entry_points()
    try:
        yield
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("ce_store_plugin", None)
        importlib.invalidate_caches()
        credential_providers.refresh_entry_points()


@pytest.mark.usefixtures("published")
def test_a_provider_published_by_an_installed_package_is_found_by_name() -> None:
    assert "ce_published" in credential_providers.names()
    provider = resolve_provider("ce_published", where=WHERE)
    assert provider.get_credentials().user == "published"
    entry = next(e for e in credential_providers.entries() if e.name == "ce_published")
    assert entry.describe() == (
        "ce_store_plugin.PublishedProvider (entry point of ce-store-plugin 1.0)"
    )


# static and env ----------------------------------------------------------------------------


def test_static_returns_the_configured_login_and_never_shows_it() -> None:
    provider = resolve_provider(
        {"provider": "static", "user": "app", "password": SENTINEL}, where=WHERE
    )
    assert provider.get_credentials() == Credentials("app", SENTINEL)
    assert repr(provider) == "<StaticProvider static>"
    assert SENTINEL not in repr(provider.get_credentials())


def test_env_reads_the_variables_again_at_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGUSER", "app")
    monkeypatch.setenv("PGPASSWORD", "first")
    provider = resolve_provider("env", where=WHERE)
    assert provider.get_credentials() == Credentials("app", "first")
    monkeypatch.setenv("PGPASSWORD", "second")
    monkeypatch.delenv("PGUSER")
    assert provider.get_credentials() == Credentials(None, "second")
    assert provider.cache_ttl == 0


def test_env_with_other_variables_and_a_missing_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_DB_USER", "chat")
    monkeypatch.setenv("CHAT_DB_PASSWORD", "pw")
    settings = {"provider": "env", "user_variable": "CHAT_DB_USER"}
    provider = resolve_provider({**settings, "password_variable": "CHAT_DB_PASSWORD"}, where=WHERE)
    assert provider.get_credentials() == Credentials("chat", "pw")
    monkeypatch.delenv("CHAT_DB_PASSWORD")
    with pytest.raises(CredentialsError) as raised:
        provider.get_credentials()
    assert str(raised.value) == "the environment variable CHAT_DB_PASSWORD is not set or empty"


# file --------------------------------------------------------------------------------------


def file_provider(path: Path, **options: Any) -> FileProvider:
    provider = resolve_provider(
        {"provider": "file", "path": str(path), "settle": 0, **options}, where=WHERE
    )
    assert isinstance(provider, FileProvider)
    return provider


def replace_file(path: Path, text: str) -> None:
    """Write a new version atomically (a new inode), as secret tools do."""
    new = path.with_name(path.name + ".new")
    new.write_text(text, encoding="utf-8")
    os.replace(new, path)


def test_file_holds_the_password_and_a_changed_file_is_read_again(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("first\n", encoding="utf-8")
    provider = file_provider(secret, user="app")
    assert provider.get_credentials() == Credentials("app", "first")
    replace_file(secret, "second\n")
    assert provider.get_credentials() == Credentials("app", "second")


def test_file_in_json_gives_user_and_password(tmp_path: Path) -> None:
    secret = tmp_path / "login.json"
    secret.write_text(json.dumps({"username": "vault-user", "password": "pw"}), encoding="utf-8")
    provider = file_provider(secret, format="json", user="fallback")
    assert provider.get_credentials() == Credentials("vault-user", "pw")
    replace_file(secret, json.dumps({"password": "pw2"}))
    assert provider.get_credentials() == Credentials("fallback", "pw2")
    replace_file(secret, json.dumps({"user": "app", "password": "pw3"}))
    assert provider.get_credentials() == Credentials("app", "pw3")


@pytest.mark.parametrize(
    ("content", "options", "message"),
    [
        ("", {}, "is empty"),
        ("\n  \n", {}, "is empty"),
        ("{" + SENTINEL, {"format": "json"}, "is not valid JSON"),
        (
            json.dumps({"user": SENTINEL}),
            {"format": "json"},
            "must hold a JSON object with a 'password' string",
        ),
        (
            json.dumps([SENTINEL]),
            {"format": "json"},
            "must hold a JSON object with a 'password' string",
        ),
    ],
)
def test_an_empty_or_unusable_file_is_refused_without_quoting_it(
    tmp_path: Path, content: str, options: dict[str, Any], message: str
) -> None:
    secret = tmp_path / "secret"
    secret.write_text(content, encoding="utf-8")
    with pytest.raises(CredentialsError) as raised:
        file_provider(secret, **options).get_credentials()
    assert str(raised.value) == f"the secret file {secret} {message}"
    assert SENTINEL not in formatted(raised.value)


def test_a_missing_file_is_a_credentials_error(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError) as raised:
        file_provider(tmp_path / "nope").get_credentials()
    assert str(raised.value) == (
        f"cannot read the secret file {tmp_path / 'nope'}: No such file or directory"
    )


def test_a_file_being_rewritten_in_place_is_read_only_once_it_has_settled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "password"
    secret.write_text("half-writ", encoding="utf-8")  # the writer has just started
    provider = file_provider(secret, settle=30)
    waits: list[float] = []

    def settling(seconds: float) -> None:
        # While the provider waits for the file to settle, the writer finishes, and
        # the file then stays untouched (its modification time moves into the past).
        waits.append(seconds)
        with secret.open("a", encoding="utf-8") as handle:
            handle.write("ten-in-full")
        past = secret.stat().st_mtime - 60
        os.utime(secret, (past, past))

    monkeypatch.setattr(builtin.time, "sleep", settling)
    assert provider.get_credentials().password == Secret("half-written-in-full")
    assert len(waits) == 1
    assert 0 < waits[0] <= 30


def test_a_file_that_changes_while_it_is_read_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "password"
    secret.write_text("old-password", encoding="utf-8")
    provider = file_provider(secret)
    calls = 0

    def stat(path: str) -> os.stat_result:
        # The second stat is the one taken after reading: a writer got in between.
        nonlocal calls
        calls += 1
        if calls == 2:
            replace_file(secret, "new-password")
        return os.stat(path)

    monkeypatch.setattr(builtin, "os", SimpleNamespace(stat=stat, environ=os.environ))
    assert provider.get_credentials().password == Secret("new-password")
    assert calls == 4


def test_a_kubernetes_style_symlink_swap_is_followed(tmp_path: Path) -> None:
    # /etc/secret/password -> ..data/password, ..data -> ..2026_01_01 (swapped atomically)
    first = tmp_path / "..2026_01_01"
    first.mkdir()
    (first / "password").write_text("first", encoding="utf-8")
    (tmp_path / "..data").symlink_to(first.name)
    (tmp_path / "password").symlink_to("..data/password")
    provider = file_provider(tmp_path / "password")
    assert provider.get_credentials().password == Secret("first")

    second = tmp_path / "..2026_02_01"
    second.mkdir()
    (second / "password").write_text("second", encoding="utf-8")
    (tmp_path / "..data_tmp").symlink_to(second.name)
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert provider.get_credentials().password == Secret("second")


# django ------------------------------------------------------------------------------------


def test_django_asks_the_aliases_own_backend_every_time() -> None:
    alias = "ce_cred_counting"
    entry = {
        "ENGINE": "tests.pg_backend",
        "NAME": "chat",
        "USER": "app",
        "PASSWORD": "from-settings",
        "HOST": "db.internal",
        "PORT": "6432",
        "OPTIONS": {"sslmode": "require"},
    }
    counting_backend.PASSWORDS[alias] = SENTINEL
    try:
        with database_alias(alias, entry):
            provider = resolve_provider({"provider": "django", "alias": alias}, where=WHERE)
            before = counting_backend.CALLS[alias]
            first = provider.get_credentials()
            counting_backend.PASSWORDS[alias] = "rotated"
            second = provider.get_credentials()
    finally:
        counting_backend.PASSWORDS.pop(alias, None)
    assert counting_backend.CALLS[alias] == before + 2
    assert (first.user, first.password, second.password) == (
        "app",
        Secret(SENTINEL),
        Secret("rotated"),
    )
    assert first.extra["dbname"] == Secret("chat")
    assert first.extra["host"] == Secret("db.internal")
    assert first.extra["port"] == Secret("6432")
    assert first.extra["sslmode"] == Secret("require")
    assert "cursor_factory" not in first.extra
    assert "context" not in first.extra
    assert SENTINEL not in repr(first)


def test_django_reads_any_alias_an_engine_does_not_refuse() -> None:
    """The provider itself is not tied to a database vendor: the engine that uses it
    decides (the postgres engine refuses other backends, see test_postgres_connection)."""
    with database_alias(
        "ce_cred_sqlite", {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
    ):
        credentials = DjangoProvider(alias="ce_cred_sqlite").get_credentials()
    assert credentials.password is None


# callable ----------------------------------------------------------------------------------


def password_string() -> str:
    return "from-a-string"


async def async_login() -> Credentials:
    await asyncio.sleep(0)
    return Credentials("async", "pw", soon(60))


def login_dict() -> dict[str, Any]:
    return {
        "user": "dict",
        "password": "pw",
        "expires_at": soon(60),
        "extra": {"sslmode": "require"},
    }


def bad_expiry() -> dict[str, Any]:
    return {"password": "pw", "expires_at": "tomorrow"}


def nothing_useful() -> int:
    return 42


def call(function: Callable[..., Any], **options: Any) -> Credentials:
    provider = resolve_provider(
        {"provider": "callable", "path": f"{__name__}.{function.__name__}", **options}, where=WHERE
    )
    assert isinstance(provider, CallableProvider)
    return asyncio.run(provider.aget_credentials())


def test_callable_accepts_sync_and_async_functions_and_their_usual_returns() -> None:
    assert call(password_string) == Credentials(None, "from-a-string")
    assert call(async_login).user == "async"
    from_dict = call(login_dict)
    assert from_dict.user == "dict"
    assert from_dict.extra == {"sslmode": Secret("require")}
    assert from_dict.expires_at is not None


def test_callable_refuses_what_it_cannot_use() -> None:
    with pytest.raises(CredentialsError) as raised:
        call(nothing_useful)
    assert str(raised.value) == (
        f"{__name__}.nothing_useful returned int; return Credentials, a dict with 'password', "
        "or a password string"
    )
    with pytest.raises(CredentialsError) as raised:
        call(bad_expiry)
    assert str(raised.value) == (
        f"{__name__}.bad_expiry returned an 'expires_at' that is not a datetime"
    )


def test_callable_ttl_and_a_path_that_cannot_be_imported() -> None:
    provider = resolve_provider(
        {"provider": "callable", "path": f"{__name__}.password_string", "ttl": 30}, where=WHERE
    )
    assert provider.cache_ttl == 30
    with pytest.raises(InvalidConfigError) as raised:
        resolve_provider({"provider": "callable", "path": "nope.nothing"}, where=WHERE)
    assert str(raised.value) == (
        f"{WHERE}: credential provider 'callable': cannot import 'nope.nothing': "
        "No module named 'nope'"
    )


# The documented custom provider ---------------------------------------------------------------


class _Store(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.headers.get("Authorization") != "Bearer store-token":
            self.send_response(403)
            self.end_headers()
            return
        body = json.dumps({"username": "chat", "password": SENTINEL, "ttl": 3600}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_the_documented_custom_provider_works_from_settings(
    registered: Callable[[str, Any], None],
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Store)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/db/chat"
        path = "examples.credentials.custom_provider.SecretStoreProvider"
        provider = resolve_provider(
            {"provider": path, "url": url, "token": "store-token"}, where=WHERE
        )
        credentials = CredentialCache(provider, describe=repr(provider))
        current = asyncio.run(credentials.get())
        assert (current.user, current.password) == ("chat", Secret(SENTINEL))
        assert current.expires_at is not None
        registered("secret_store", path)
        assert isinstance(
            resolve_provider({"provider": "secret_store", "url": url, "token": "t"}, where=WHERE),
            type(provider),
        )
        with pytest.raises(InvalidConfigError, match="the CONFIG key 'token' is required"):
            resolve_provider({"provider": "secret_store", "url": url}, where=WHERE)
    finally:
        server.shutdown()
        server.server_close()


# The cache ---------------------------------------------------------------------------------


class Clock:
    """Stands in for the cache module's ``time``: monotonic time moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(cache_module, "time", fake)
    return fake


class Fake(CredentialProvider):
    """Answers from a script: each call takes the next item (Credentials or an exception);
    the last one repeats. ``gate``, when set, holds every fetch until it opens."""

    def __init__(self, *answers: Credentials | Exception, ttl: float | None = None) -> None:
        super().__init__()
        self.answers = list(answers)
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.refused_logins: list[Credentials] = []
        self.cache_ttl = ttl  # type: ignore[misc]

    async def aget_credentials(self) -> Credentials:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers[0] if len(self.answers) == 1 else self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def refused(self, credentials: Credentials) -> None:
        self.refused_logins.append(credentials)


def login(password: str, seconds: float | None = 900) -> Credentials:
    return Credentials("app", password, None if seconds is None else soon(seconds))


def test_fifty_connections_opening_at_once_cause_one_fetch() -> None:
    provider = Fake(login("pw"))
    cache = CredentialCache(provider, describe="fake")

    async def scenario() -> list[Credentials]:
        provider.gate = asyncio.Event()
        tasks = [asyncio.ensure_future(cache.get()) for _ in range(50)]
        await asyncio.sleep(0)  # every task starts: one fetches, 49 wait for it
        provider.gate.set()
        return await asyncio.gather(*tasks)

    results = asyncio.run(scenario())
    assert provider.calls == cache.fetches == 1
    assert all(result is results[0] for result in results)


def test_fifty_connections_opening_at_once_share_one_failed_fetch() -> None:
    provider = Fake(CredentialsError("the store is down"))
    cache = CredentialCache(provider, describe="fake")

    async def scenario() -> list[Any]:
        provider.gate = asyncio.Event()
        tasks = [asyncio.ensure_future(cache.get()) for _ in range(50)]
        await asyncio.sleep(0)
        provider.gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(scenario())
    assert provider.calls == 1
    assert all(isinstance(result, CredentialsError) for result in results)
    assert {str(result) for result in results} == {"the store is down"}


def test_credentials_without_expiry_are_reused_until_refused_or_for_cache_ttl(
    clock: Clock,
) -> None:
    forever = Fake(login("pw", None))
    cache = CredentialCache(forever, describe="fake")
    for _ in range(3):
        asyncio.run(cache.get())
    assert forever.calls == 1

    every_time = Fake(login("pw", None), ttl=0)
    cache = CredentialCache(every_time, describe="fake")
    for _ in range(3):
        asyncio.run(cache.get())
    assert every_time.calls == 3

    thirty = Fake(login("pw", None), ttl=30)
    cache = CredentialCache(thirty, describe="fake")
    asyncio.run(cache.get())
    clock.advance(29)
    asyncio.run(cache.get())
    assert thirty.calls == 1
    clock.advance(2)
    asyncio.run(cache.get())
    assert thirty.calls == 2


def test_refresh_windows_are_a_third_and_a_sixth_of_the_lifetime_before_expiry(
    clock: Clock,
) -> None:
    cache = CredentialCache(Fake(login("pw", 60)), describe="fake")
    asyncio.run(cache.get())
    assert 39 < cache._advisory_at - clock.now <= 40
    assert 49 < cache._mandatory_at - clock.now <= 50
    cache = CredentialCache(Fake(login("pw", 3600)), describe="fake")
    asyncio.run(cache.get())
    assert 3299 < cache._advisory_at - clock.now <= 3300  # at most 5 minutes early
    assert 3539 < cache._mandatory_at - clock.now <= 3540  # at most 1 minute early


def test_a_failed_refresh_in_the_advisory_window_keeps_the_current_credentials_and_warns_once(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    first = login("first")
    provider = Fake(first, CredentialsError("the store is down"))
    cache = CredentialCache(provider, describe="<fake store>")
    assert asyncio.run(cache.get()) is first
    clock.advance(601)  # advisory window of a 15-minute login
    with caplog.at_level(logging.DEBUG, logger="channels_engines.credentials"):
        assert asyncio.run(cache.get()) is first
        assert asyncio.run(cache.get()) is first  # not asked again within a second
        clock.advance(1.5)
        assert asyncio.run(cache.get()) is first
    assert provider.calls == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "Credentials from <fake store>: could not refresh credentials (the store is down); "
        "using the current ones"
    ]
    assert len([r for r in caplog.records if r.levelno == logging.DEBUG]) == 1

    second = login("second")
    provider.answers = [second]
    clock.advance(1.5)
    assert asyncio.run(cache.get()) is second
    assert cache.rotations == 1


def test_a_failed_refresh_in_the_mandatory_window_raises_and_is_not_retried_at_once(
    clock: Clock,
) -> None:
    first = login("first")
    provider = Fake(first, CredentialsError("the store is down"))
    cache = CredentialCache(provider, describe="fake")
    asyncio.run(cache.get())
    clock.advance(841)  # mandatory window of a 15-minute login
    with pytest.raises(CredentialsError, match="the store is down"):
        asyncio.run(cache.get())
    with pytest.raises(CredentialsError, match="the store is down"):
        asyncio.run(cache.get())
    assert provider.calls == 2
    assert cache.current is first
    clock.advance(1.5)
    with pytest.raises(CredentialsError):
        asyncio.run(cache.get())
    assert provider.calls == 3


def test_provider_failures_and_wrong_answers_become_credentials_errors() -> None:
    cache = CredentialCache(Fake(ValueError("bad config")), describe="<fake>")
    with pytest.raises(CredentialsError) as raised:
        asyncio.run(cache.get())
    assert str(raised.value) == "credential provider <fake> failed: ValueError: bad config"
    assert isinstance(raised.value.__cause__, ValueError)

    class Wrong(CredentialProvider):
        async def aget_credentials(self) -> Credentials:
            return "pw"  # type: ignore[return-value]

    with pytest.raises(CredentialsError) as raised:
        asyncio.run(CredentialCache(Wrong(), describe="<wrong>").get())
    assert str(raised.value) == "credential provider <wrong> returned str, not Credentials"


def test_invalidate_drops_only_the_current_credentials_and_tells_the_provider(
    clock: Clock,
) -> None:
    first, second = login("first"), login("second")
    provider = Fake(first, second)
    cache = CredentialCache(provider, describe="fake")
    verified: list[Credentials] = []

    async def verify(credentials: Credentials) -> None:
        verified.append(credentials)

    cache.set_verifier(verify)
    asyncio.run(cache.get())
    assert not cache.invalidate(None)
    assert not cache.invalidate(login("other"))
    assert provider.refused_logins == []
    assert asyncio.run(cache.get()) is first  # still valid, not asked
    assert cache.invalidate(login("first"))  # the same login, another object
    assert len(provider.refused_logins) == 1
    assert provider.refused_logins[0].same_as(first)
    assert asyncio.run(cache.get()) is second
    assert provider.calls == 2
    # The refused login cannot be kept anyway: the new one is used without a probe.
    assert verified == []


def test_changed_credentials_are_verified_before_they_replace_the_current_ones(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    first, bad, good = login("first"), login("half-written"), login("good")
    provider = Fake(first, bad, good)
    cache = CredentialCache(provider, describe="<fake>")
    verified: list[str | None] = []

    async def verify(credentials: Credentials) -> None:
        assert credentials.password is not None
        verified.append(credentials.password.reveal())
        if credentials.password == Secret("half-written"):
            raise CredentialsError("password authentication failed")

    cache.set_verifier(verify)
    assert asyncio.run(cache.get()) is first  # the first login is not probed
    clock.advance(601)
    with caplog.at_level(logging.WARNING, logger="channels_engines.credentials"):
        assert asyncio.run(cache.get()) is first  # the probe failed: keep what works
    assert "password authentication failed" in caplog.text
    assert cache.rotations == 0
    clock.advance(1.5)
    assert asyncio.run(cache.get()) is good
    assert verified == ["half-written", "good"]
    assert cache.rotations == 1
    # Unchanged credentials are not probed again.
    provider.answers = [login("good")]
    clock.advance(601)
    asyncio.run(cache.get())
    assert verified == ["half-written", "good"]


def test_subscribers_hear_of_changes_only(clock: Clock) -> None:
    provider = Fake(login("first"), login("first"), login("second"), login("third"))
    cache = CredentialCache(provider, describe="fake")

    async def scenario() -> list[str]:
        heard: list[str] = []
        cache.subscribe("a", lambda: heard.append("a"))
        cache.subscribe("b", lambda: heard.append("b"))
        await cache.get()  # the first login is no change
        clock.advance(601)
        await cache.get()  # the same login again
        await asyncio.sleep(0)
        assert heard == []
        clock.advance(601)
        await cache.get()  # a new password
        await asyncio.sleep(0)
        assert sorted(heard) == ["a", "b"]
        cache.unsubscribe("b")
        clock.advance(601)
        await cache.get()
        await asyncio.sleep(0)
        return heard

    assert sorted(asyncio.run(scenario())) == ["a", "a", "b"]
    assert cache.rotations == 2


# How the engine's connections use the cache -----------------------------------------------


def settings_with(dsn: str, provider: CredentialProvider) -> Any:
    from channels_engines.postgres.connection import Login

    return Login({"dsn": dsn, "credentials": provider}, WHERE)


@pytest.mark.postgres
def test_a_refused_login_is_retried_once_with_fresh_credentials_and_never_shows_them() -> None:
    import psycopg

    from tests.support.standins import scram_server

    pg = scram_server()
    provider = Fake(login(SENTINEL))
    settings = settings_with(f"postgresql://{pg.host}:{pg.port}/postgres", provider)
    with pytest.raises(psycopg.OperationalError) as raised:
        asyncio.run(settings.connect())
    assert "password authentication failed" in str(raised.value)
    assert provider.calls == 2  # refused, fetched afresh, refused again
    assert len(provider.refused_logins) == 1
    text = formatted(raised.value)
    assert "params = {" in text  # local variables are shown, the password is not
    assert SENTINEL not in text
    assert "psycopg/connection" not in text  # nor psycopg's frames, with the conninfo


@pytest.mark.postgres
def test_an_unreachable_server_does_not_make_the_engine_ask_for_new_credentials() -> None:
    import socket

    import psycopg

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = Fake(login("pw"))
    settings = settings_with(f"postgresql://127.0.0.1:{port}/postgres", provider)
    with pytest.raises(psycopg.OperationalError, match="Connection refused"):
        asyncio.run(settings.connect())
    assert provider.calls == 1
    assert provider.refused_logins == []
