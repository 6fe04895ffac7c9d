"""Secrets never reach an error tracker: what Sentry would record holds no planted password.

Every failure that involves a secret setting is provoked with a unique password: bad
settings around each secret-bearing key, a wrong password on a server that checks it, a
server that is down, credential providers that fail, and layers built by Channels from
``CHANNEL_LAYERS``. Everything a tracker records of the exceptions and of the log records
(see :mod:`tests.support.tracker`) is searched for it, and so are the reprs and the attributes of
a working layer and everything it holds.
"""

from __future__ import annotations

import asyncio
import copy
import pickle
import secrets
import socket
from collections.abc import Iterator, Mapping, Sequence, Set
from pathlib import Path
from typing import Any

import psycopg
import pytest
from channels.exceptions import InvalidChannelLayerError
from channels.layers import channel_layers, get_channel_layer
from django.test import override_settings
from psycopg import sql

from channels_engines import CredentialsError, EngineChannelLayer, ServerUnavailableError
from channels_engines.credentials import Secret
from channels_engines.postgres.embedded import EmbeddedPostgres
from channels_engines.redaction import HiddenSettings, conceal, plain
from tests.support.pgtools import engine_of, run, unique
from tests.support.standins import VaultStandIn, admin_execute, scram_server
from tests.support.tracker import Recorded, Records, record

#: The planted password: its "-" keeps it from looking like a provider name or a path.
SENTINEL = "S3NTINEL-" + secrets.token_hex(8)
#: In frames, the opaque holders are what a tracker sees of them: their repr.
FRAMES_OPAQUE = (Secret, HiddenSettings)


# The holders ----------------------------------------------------------------------------------


def test_a_secret_shows_only_asterisks_and_is_revealed_on_request() -> None:
    secret = Secret(SENTINEL)
    shown = [repr(secret), str(secret), f"{secret}", f"{secret!r}", f"{secret:>20}"]
    shown.append("%s" % (secret,))  # noqa: UP031 (logging formats like this)
    assert shown[:3] == ["Secret('********')", "********", "********"]
    assert all(SENTINEL not in text for text in shown)
    assert secret.reveal() == SENTINEL
    assert not isinstance(secret, str)


def test_a_secret_equals_only_a_secret_with_the_same_value() -> None:
    assert Secret(SENTINEL) == Secret(SENTINEL)
    assert Secret(SENTINEL) != Secret("other")
    assert Secret(SENTINEL) != SENTINEL
    assert SENTINEL != Secret(SENTINEL)  # noqa: SIM300 (str.__eq__ is asked first)
    assert len({Secret("a"), Secret("a"), Secret("b")}) == 2
    assert Secret("x")
    assert not Secret("")


def test_a_secret_cannot_be_iterated_changed_or_pickled_and_copies_are_itself() -> None:
    secret = Secret(SENTINEL)
    with pytest.raises(TypeError):
        iter(secret)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        secret[0]  # type: ignore[index]
    with pytest.raises(AttributeError):
        secret._value = "other"  # type: ignore[misc]
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(secret)
    assert copy.copy(secret) is secret
    assert copy.deepcopy({"password": secret})["password"] is secret
    with pytest.raises(TypeError, match="Secret\\(\\) takes a str, not bytes"):
        Secret(SENTINEL.encode())  # type: ignore[arg-type]


def test_hidden_settings_read_like_a_dict_but_are_not_a_mapping() -> None:
    settings = HiddenSettings({"ENGINE": "postgres", "dsn": SENTINEL}, shown=["ENGINE"])
    assert repr(settings) == str(settings) == "{'ENGINE': 'postgres', 'dsn': <hidden>}"
    assert (settings["dsn"], settings.get("nope", 1), len(settings)) == (SENTINEL, 1, 2)
    assert list(settings) == list(settings.keys()) == ["ENGINE", "dsn"]
    assert "dsn" in settings
    assert dict(**settings) == {"ENGINE": "postgres", "dsn": SENTINEL}
    assert settings == {"ENGINE": "postgres", "dsn": SENTINEL}
    assert settings.without("dsn") == {"ENGINE": "postgres"}
    assert not isinstance(settings, (Mapping, Sequence, Set))
    assert not hasattr(settings, "items")
    with pytest.raises(TypeError):
        settings["dsn"] = "x"  # type: ignore[index]


def test_conceal_makes_every_string_a_secret_however_deep_and_plain_undoes_it() -> None:
    value = {"provider": "static", "password": SENTINEL, "hosts": ["a", ("b", 5)], "n": None}
    concealed = conceal(value)
    assert isinstance(concealed, HiddenSettings)
    assert concealed["password"] == Secret(SENTINEL)
    assert concealed["hosts"] == [Secret("a"), (Secret("b"), 5)]
    assert SENTINEL not in repr(concealed)
    assert plain(concealed) == value
    assert conceal(concealed) == concealed


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # nothing listens there once the socket is closed


def assert_nothing_recorded(found: Recorded, records: Records) -> None:
    for log_record in records.records:
        found.log_record(log_record)
    assert found.texts, "nothing was recorded"
    leaks = found.leaks(SENTINEL)
    assert leaks == [], "the password was recorded at:\n" + "\n".join(leaks)


# Settings ---------------------------------------------------------------------------------

STATIC = {"provider": "static", "user": "app", "password": SENTINEL}
URL = f"postgresql://app:{SENTINEL}@127.0.0.1:5432/chat"
#: An encryption key holding the sentinel, long enough to be accepted.
KEY = f"{SENTINEL}-{SENTINEL}"

#: CONFIGs that are refused, each holding the sentinel in a secret-bearing key.
BAD_SETTINGS: dict[str, dict[str, Any]] = {
    "dsn that does not parse": {"dsn": f"host=127.0.0.1 password={SENTINEL} ==="},
    "listen_dsn that does not parse": {
        "dsn": "host=127.0.0.1",
        "listen_dsn": f"password={SENTINEL} ===",
    },
    "dsn of another type": {"dsn": [SENTINEL]},
    "connection with a key that is not a string": {"connection": {"password": SENTINEL, 5: 1}},
    "listen_connection with a key that is not a string": {
        "dsn": "host=127.0.0.1",
        "listen_connection": {"sslpassword": SENTINEL, 5: 1},
    },
    "connection of another type": {"connection": [("password", SENTINEL)]},
    "a password in dsn and credentials": {"dsn": URL, "credentials": STATIC},
    "database and dsn": {"database": "default", "dsn": URL},
    "credentials without provider": {"credentials": {"password": SENTINEL}},
    "an unknown provider": {"credentials": {"provider": "nope", "password": SENTINEL}},
    "an unknown provider option": {"credentials": {**STATIC, "passwrd": SENTINEL}},
    "a provider option of another type": {"credentials": {**STATIC, "password": [SENTINEL]}},
    "a password in place of a provider name": {"credentials": SENTINEL},
    "a bad vault url next to its token": {
        "credentials": {"provider": "vault", "url": "", "role": "chat", "token": SENTINEL}
    },
    "a bad layer option next to a dsn": {"dsn": URL, "capacity": 0},
    "a bad engine option next to a connection": {
        "connection": {"password": SENTINEL, "sslpassword": SENTINEL},
        "pool_max_size": "two",
    },
    "an unknown key next to a dsn": {"dsn": URL, "pool_max_sise": 2},
    "a bad option next to credentials": {"credentials": STATIC, "table_prefix": "Bad-Prefix"},
    "a short encryption key after a good one": {"encryption_keys": [KEY, SENTINEL]},
    "an encryption key that is not a string": {"encryption_keys": [KEY, 5]},
    "encryption keys as a dict": {"encryption_keys": {"current": KEY}},
    "one encryption key not in a list": {"encryption_keys": KEY},
    "encryption keys next to a bad option": {"encryption_keys": [KEY], "capacity": 0},
    "encryption keys next to an unknown key": {"encryption_keys": [KEY], "capasity": 1},
}


@pytest.mark.parametrize("name", sorted(BAD_SETTINGS))
def test_refused_settings_record_no_password(name: str) -> None:
    with Records() as records, pytest.raises(InvalidChannelLayerError) as raised:
        EngineChannelLayer(ENGINE="postgres", **BAD_SETTINGS[name])
    assert_nothing_recorded(record(raised.value, opaque=FRAMES_OPAQUE), records)


def test_an_unknown_engine_records_no_password() -> None:
    with Records() as records, pytest.raises(InvalidChannelLayerError) as raised:
        EngineChannelLayer(ENGINE="postgress", dsn=URL, credentials=STATIC)
    assert_nothing_recorded(record(raised.value, opaque=FRAMES_OPAQUE), records)


@pytest.mark.parametrize(
    "layers",
    [
        {"default": {"ENGINE": "postgres", "CONFIG": {"dsn": URL, "pool_max_size": "two"}}},
        {
            "default": {
                "BACKEND": "channels_engines.EngineChannelLayer",
                "CONFIG": {"ENGINE": "postgres", "dsn": URL, "pool_max_size": "two"},
            }
        },
        {
            "default": {
                "ENGINE": "postgres",
                "CONFIG": {"credentials": {**STATIC, "passwrd": SENTINEL}},
            }
        },
    ],
    ids=["ENGINE form", "BACKEND form", "credentials"],
)
def test_channels_building_a_layer_from_settings_records_no_password(
    layers: dict[str, Any],
) -> None:
    with (
        Records() as records,
        override_settings(CHANNEL_LAYERS=layers),
        pytest.raises(InvalidChannelLayerError) as raised,
    ):
        get_channel_layer()
    assert_nothing_recorded(record(raised.value, opaque=FRAMES_OPAQUE), records)


# A running layer --------------------------------------------------------------------------


def login_with_a_bad_expiry() -> dict[str, Any]:
    """A user function returning something the callable provider refuses."""
    return {"user": "app", "password": SENTINEL, "expires_at": "tomorrow"}


def login_with_bytes() -> dict[str, Any]:
    return {"user": "app", "password": SENTINEL.encode()}


@pytest.fixture(scope="module")
def pg() -> EmbeddedPostgres:
    return scram_server()


def failing_settings(pg: EmbeddedPostgres, tmp_path: Path) -> dict[str, dict[str, Any]]:
    target = f"host={pg.host} port={pg.port} dbname=postgres"
    broken = tmp_path / "broken.json"
    broken.write_text('{"user": "app", "password": "' + SENTINEL)  # half-written
    return {
        "a wrong password in dsn": {"dsn": f"{target} user=app password={SENTINEL}"},
        "a wrong password in connection": {
            "dsn": target,
            "connection": {"user": "app", "password": SENTINEL},
        },
        "a wrong password from a provider": {"dsn": target, "credentials": STATIC},
        "a server that is down, password in dsn": {
            "dsn": f"postgresql://app:{SENTINEL}@127.0.0.1:{closed_port()}/chat",
        },
        "a server that is down, password from a provider": {
            "dsn": f"host=127.0.0.1 port={closed_port()} dbname=chat",
            "credentials": STATIC,
        },
        "a provider returning a bad expiry": {
            "dsn": target,
            "credentials": {
                "provider": "callable",
                "path": "tests.test_redaction.login_with_a_bad_expiry",
            },
        },
        "a provider returning bytes": {
            "dsn": target,
            "credentials": {
                "provider": "callable",
                "path": "tests.test_redaction.login_with_bytes",
            },
        },
        "a half-written secret file": {
            "dsn": target,
            "credentials": {"provider": "file", "path": str(broken), "format": "json"},
        },
        "vault refusing the token": {
            "dsn": target,
            "credentials": {"provider": "vault", "url": "VAULT", "role": "chat", "token": SENTINEL},
        },
        "a provider of the documentation's example, its store down": {
            "dsn": target,
            "credentials": {
                "provider": "examples.credentials.custom_provider.SecretStoreProvider",
                "url": f"http://127.0.0.1:{closed_port()}/db/chat",
                "token": SENTINEL,
            },
        },
        "vault that is down": {
            "dsn": target,
            "credentials": {
                "provider": "vault",
                "url": f"http://127.0.0.1:{closed_port()}",
                "role": "chat",
                "token": SENTINEL,
            },
        },
    }


@pytest.fixture
def vault(pg: EmbeddedPostgres) -> Iterator[VaultStandIn]:
    with VaultStandIn(pg, token="the-right-token", roles={}) as stand_in:
        yield stand_in


@pytest.mark.postgres
@pytest.mark.parametrize(
    "name",
    [
        "a wrong password in dsn",
        "a wrong password in connection",
        "a wrong password from a provider",
        "a server that is down, password in dsn",
        "a server that is down, password from a provider",
        "a provider returning a bad expiry",
        "a provider returning bytes",
        "a half-written secret file",
        "vault refusing the token",
        "vault that is down",
        "a provider of the documentation's example, its store down",
    ],
)
def test_failures_of_a_running_layer_record_no_password(
    name: str, pg: EmbeddedPostgres, vault: VaultStandIn, tmp_path: Path
) -> None:
    config = failing_settings(pg, tmp_path)[name]
    credentials = config.get("credentials")
    if isinstance(credentials, dict) and credentials.get("url") == "VAULT":
        config["credentials"] = {**credentials, "url": vault.url}
    errors: list[BaseException] = []

    async def scenario() -> None:
        layer = EngineChannelLayer(ENGINE="postgres", pool_timeout=0.5, **config)
        try:
            for _ in range(2):  # the second time, from the cache's stored error or a retry
                try:
                    await asyncio.wait_for(layer.send("tracker.test", {"n": 1}), 20)
                except (psycopg.Error, CredentialsError, ServerUnavailableError) as exc:
                    errors.append(exc)
        finally:
            await layer.close()

    with Records() as records:
        run(scenario(), timeout=60)
    assert len(errors) == 2, errors
    assert_nothing_recorded(record(*errors, opaque=FRAMES_OPAQUE), records)


@pytest.mark.postgres
def test_channels_building_a_layer_that_cannot_log_in_records_no_password(
    pg: EmbeddedPostgres,
) -> None:
    layers = {
        "default": {
            "ENGINE": "postgres",
            "CONFIG": {
                "dsn": f"postgresql://app:{SENTINEL}@{pg.host}:{pg.port}/postgres",
                "pool_timeout": 0.5,
            },
        }
    }
    errors: list[BaseException] = []

    async def scenario() -> None:
        layer = get_channel_layer()
        assert layer is not None
        try:
            await layer.send("tracker.test", {"n": 1})
        except psycopg.Error as exc:
            errors.append(exc)
        finally:
            await layer.close()

    with Records() as records, override_settings(CHANNEL_LAYERS=layers):
        run(scenario(), timeout=60)
        channel_layers.backends.clear()
    assert len(errors) == 1
    assert_nothing_recorded(record(*errors, opaque=FRAMES_OPAQUE), records)


# What a working layer holds -------------------------------------------------------------------


@pytest.fixture
def role(pg: EmbeddedPostgres) -> Iterator[str]:
    """A role whose password is the sentinel, owning a database of the same name."""
    name = unique("ce_red")
    admin_execute(
        pg,
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(SENTINEL)
        ),
    )
    admin_execute(pg, sql.SQL("CREATE DATABASE {} OWNER {}").format(*[sql.Identifier(name)] * 2))
    try:
        yield name
    finally:
        admin_execute(pg, sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        admin_execute(pg, sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def working_settings(pg: EmbeddedPostgres, role: str) -> dict[str, dict[str, Any]]:
    target = f"host={pg.host} port={pg.port} dbname={role}"
    return {
        "password in dsn": {"dsn": f"{target} user={role} password={SENTINEL}"},
        "password in connection": {
            "connection": {
                "host": pg.host,
                "port": pg.port,
                "dbname": role,
                "user": role,
                "password": SENTINEL,
            },
            "listen_dsn": f"postgresql://{role}:{SENTINEL}@{pg.host}:{pg.port}/{role}",
        },
        "password from a provider": {
            "dsn": target,
            "credentials": {"provider": "static", "user": role, "password": SENTINEL},
        },
        "encryption keys": {
            "dsn": f"{target} user={role} password={SENTINEL}",
            "encryption_keys": [KEY, f"old-{KEY}"],
        },
    }


@pytest.mark.postgres
@pytest.mark.parametrize(
    "name",
    ["password in dsn", "password in connection", "password from a provider", "encryption keys"],
)
def test_a_working_layer_holds_the_password_only_in_secrets(
    name: str, pg: EmbeddedPostgres, role: str
) -> None:
    config = working_settings(pg, role)[name]
    found = Recorded(opaque=(Secret,))
    texts: dict[str, str] = {}

    async def scenario() -> None:
        layer = EngineChannelLayer(ENGINE="postgres", **config)
        try:
            channel = await layer.new_channel()
            await layer.send(channel, {"n": 1})
            assert await asyncio.wait_for(layer.receive(channel), 10) == {"n": 1}
            engine = engine_of(layer)
            shared = engine.shared
            texts.update(
                layer=repr(layer),
                config=repr(layer.config),
                engine=repr(engine),
                login=repr(shared.login),
                credential_cache=repr(shared.login.credentials),
                sealer=repr(layer._sealer),
            )
            cache = shared.login.credentials
            if cache is not None:
                texts.update(
                    provider=repr(cache.provider),
                    credentials=repr(cache.current),
                    password=repr(cache.current.password),
                    params=repr(cache.current.connection_params()),
                )
            # Everything the layer holds, through the attributes of the package's objects.
            found.value(layer, "layer")
        finally:
            await layer.close()

    with Records() as records:
        run(scenario(), timeout=60)
    assert [key for key, text in texts.items() if SENTINEL in text] == []
    assert_nothing_recorded(found, records)
