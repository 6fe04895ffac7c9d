"""The Vault provider, against a Vault stand-in on loopback that creates real PostgreSQL roles.

See :class:`tests.support.standins.VaultStandIn`: hvac talks HTTP to it exactly as to Vault, and
each lease is a role in a PostgreSQL that checks passwords.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import traceback
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from channels_engines import EngineChannelLayer, InvalidConfigError
from channels_engines.credentials import CredentialsError, Secret, resolve_provider
from channels_engines.credentials.vault import VaultProvider
from channels_engines.postgres.embedded import EmbeddedPostgres
from tests.support.polling import await_for
from tests.support.standins import (
    AppTables,
    VaultStandIn,
    role_exists,
    scram_server,
    users_of,
    valid_until,
)

# They start their own password-checking server, so they run once, not per server version.
pytestmark = [pytest.mark.postgres, pytest.mark.own_server]

TOKEN = "hvs.test-token-for-the-stand-in"
WHERE = "CHANNEL_LAYERS['default']"


@pytest.fixture(scope="module")
def pg() -> EmbeddedPostgres:
    return scram_server()


@pytest.fixture
def tables(pg: EmbeddedPostgres) -> Iterator[AppTables]:
    with AppTables.create(pg) as created:
        yield created


@pytest.fixture
def vault(pg: EmbeddedPostgres, tables: AppTables) -> Iterator[VaultStandIn]:
    with VaultStandIn(pg, token=TOKEN, roles={"chat": tables.group}) as stand_in:
        yield stand_in


def provider(vault: VaultStandIn, **options: object) -> VaultProvider:
    settings = {"provider": "vault", "url": vault.url, "role": "chat", "token": TOKEN, **options}
    made = resolve_provider(settings, where=WHERE)
    assert isinstance(made, VaultProvider)
    return made


def login(pg: EmbeddedPostgres, user: str | None, password: Secret | None) -> str:
    """Log in over TCP with a password, as the engine does; return current_user."""
    assert password is not None
    with psycopg.connect(
        host=pg.host, port=pg.port, dbname="postgres", user=user, password=password.reveal()
    ) as conn:
        row = conn.execute("SELECT current_user").fetchone()
    assert row is not None
    return str(row[0])


def soon(seconds: float) -> datetime:
    return datetime.now(timezone.utc) + timedelta(seconds=seconds)


# The provider ---------------------------------------------------------------------------


def test_generated_credentials_log_in_as_the_user_vault_created(
    pg: EmbeddedPostgres, vault: VaultStandIn
) -> None:
    credentials = provider(vault).get_credentials()
    assert credentials.user is not None
    assert credentials.user.startswith("v-token-chat-")
    assert credentials.password == Secret(vault.lease_of(credentials.user).password)
    assert credentials.expires_at is not None
    assert soon(3590) < credentials.expires_at <= soon(3600)
    assert login(pg, credentials.user, credentials.password) == credentials.user
    assert vault.generated == 1


def test_asking_again_renews_the_lease_and_keeps_the_user(
    pg: EmbeddedPostgres, vault: VaultStandIn
) -> None:
    vault.ttl = 600
    source = provider(vault)
    first = source.get_credentials()
    assert first.user is not None
    assert first.expires_at is not None
    vault.ttl = 1200  # the renewal asks for the lease's own duration: 600 s
    second = source.get_credentials()
    assert second.same_as(first)
    assert second.expires_at is not None
    assert second.expires_at >= first.expires_at
    assert (vault.generated, vault.renewed) == (1, 1)
    assert vault.lease_of(first.user).renewals == 1
    until = valid_until(pg, first.user)
    assert until is not None
    assert abs(until - vault.lease_of(first.user).expires_at) < timedelta(seconds=2)
    assert (source.generated, source.renewed) == (1, 1)


def test_a_lease_that_is_not_renewable_is_replaced_by_new_credentials(
    vault: VaultStandIn,
) -> None:
    vault.renewable = False
    source = provider(vault)
    first = source.get_credentials()
    second = source.get_credentials()
    assert second.user != first.user
    assert (vault.generated, vault.renewed) == (2, 0)
    assert not any(path == "/v1/sys/leases/renew" for _, path, _ in vault.requests)


def test_a_renewal_cut_short_by_max_ttl_is_not_used(vault: VaultStandIn) -> None:
    vault.ttl = 600
    source = provider(vault)
    first = source.get_credentials()
    assert first.user is not None
    vault.cap(vault.lease_of(first.user).lease_id, 60)  # Vault would grant 60 s of 600
    second = source.get_credentials()
    assert second.user != first.user
    assert vault.renewed == 1  # asked, and found too short
    assert vault.generated == 2


def test_a_revoked_lease_is_replaced_by_new_credentials(
    pg: EmbeddedPostgres, vault: VaultStandIn
) -> None:
    source = provider(vault)
    first = source.get_credentials()
    assert first.user is not None
    vault.revoke(vault.lease_of(first.user).lease_id)
    assert not role_exists(pg, first.user)
    second = source.get_credentials()
    assert second.user != first.user
    assert login(pg, second.user, second.password) == second.user
    assert ("PUT", "/v1/sys/leases/renew", 400) in vault.requests


def test_credentials_the_server_refused_are_never_renewed(vault: VaultStandIn) -> None:
    source = provider(vault)
    first = source.get_credentials()
    source.refused(first)
    source.refused(first)  # two connections were refused
    second = source.get_credentials()
    assert second.user != first.user
    assert vault.renewed == 0
    assert [path for _, path, _ in vault.requests].count("/v1/sys/leases/renew") == 0
    # Credentials refused before any lease exists, or no longer current, change nothing.
    fresh = provider(vault)
    fresh.refused(first)
    third = fresh.get_credentials()
    fresh.refused(first)
    assert fresh.get_credentials().same_as(third)
    assert vault.renewed == 1


def test_a_token_vault_refuses_gives_a_credentials_error_that_never_shows_it(
    vault: VaultStandIn,
) -> None:
    sentinel = "hvs.SENTINEL-wrong-token-7f3a"
    source = provider(vault, token=sentinel)
    with pytest.raises(CredentialsError) as raised:
        source.get_credentials()
    assert str(raised.value) == (
        f"Vault at {vault.url} did not generate credentials for the role 'chat' "
        "(mount 'database'): Forbidden: permission denied"
    )
    assert raised.value.__cause__ is None
    assert raised.value.__context__ is None
    # The provider's frames with their local variables (not this test's, which holds it).
    assert raised.tb.tb_next is not None
    text = "".join(
        traceback.TracebackException(
            CredentialsError, raised.value, raised.tb.tb_next, capture_locals=True
        ).format()
    )
    assert "get_credentials" in text
    assert sentinel not in text
    assert sentinel not in repr(source)
    assert ("GET", "/v1/database/creds/chat", 403) in vault.requests


def test_without_a_token_the_error_names_vault_token(
    vault: VaultStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    source = provider(vault, token=None)
    with pytest.raises(CredentialsError) as raised:
        source.get_credentials()
    assert str(raised.value) == (
        f"no Vault token for <VaultProvider vault role 'chat' at {vault.url}>: set 'token' "
        "in CONFIG['credentials'] or the VAULT_TOKEN environment variable."
    )
    assert vault.requests == []


def test_the_token_comes_from_vault_token_read_at_every_request(
    vault: VaultStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_TOKEN", "hvs.stale")
    source = provider(vault, token=None)
    with pytest.raises(CredentialsError, match="Forbidden: permission denied"):
        source.get_credentials()
    monkeypatch.setenv("VAULT_TOKEN", TOKEN)
    assert source.get_credentials().user is not None


def test_an_unknown_role_reports_vaults_own_error(vault: VaultStandIn) -> None:
    with pytest.raises(CredentialsError) as raised:
        provider(vault, role="nope").get_credentials()
    assert str(raised.value).endswith(
        "did not generate credentials for the role 'nope' (mount 'database'): "
        "InvalidRequest: unknown role: nope"
    )


def test_a_vault_that_cannot_be_reached_is_a_credentials_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source = VaultProvider(
        url=f"http://127.0.0.1:{port}",
        role="chat",
        mount="database",
        token=TOKEN,
        namespace=None,
        verify=True,
    )
    with pytest.raises(CredentialsError) as raised:
        source.get_credentials()
    message = str(raised.value)
    assert message.startswith(
        f"Vault at http://127.0.0.1:{port} did not generate credentials for the role 'chat' "
        "(mount 'database'): cannot reach Vault: ConnectionError: "
    )
    assert TOKEN not in message


def test_the_namespace_and_mount_are_used(pg: EmbeddedPostgres, tables: AppTables) -> None:
    with VaultStandIn(
        pg, token=TOKEN, roles={"chat": tables.group}, mount="db/pg", namespace="team-a"
    ) as vault:
        with pytest.raises(CredentialsError, match="Forbidden"):
            provider(vault, mount="db/pg").get_credentials()
        credentials = provider(vault, mount="/db/pg/", namespace="team-a").get_credentials()
        assert credentials.user is not None
        assert ("GET", "/v1/db/pg/creds/chat", 200) in vault.requests


def test_options_are_checked_with_the_alias_and_key() -> None:
    with pytest.raises(InvalidConfigError) as raised:
        resolve_provider({"provider": "vault", "url": "http://vault:8200"}, where=WHERE)
    assert str(raised.value) == (
        "CHANNEL_LAYERS['default']: CONFIG['credentials']: the CONFIG key 'role' is required "
        "for the credential provider 'vault'; it must be a string."
    )
    with pytest.raises(InvalidConfigError) as raised:
        resolve_provider(
            {"provider": "vault", "url": "http://vault:8200", "role": "chat", "verify": ""},
            where=WHERE,
        )
    assert str(raised.value) == (
        "CHANNEL_LAYERS['default']: CONFIG['credentials']: CONFIG['verify'] must be True, "
        "False or a CA bundle path, not '' (str)."
    )


def test_without_hvac_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hvac", None)
    with pytest.raises(InvalidConfigError) as raised:
        resolve_provider({"provider": "vault", "url": "http://v", "role": "r"}, where=WHERE)
    assert str(raised.value) == (
        "CHANNEL_LAYERS['default']: the credential provider 'vault' needs hvac, which is not "
        "installed. Install it with: pip install 'channels-engines[vault]'"
    )


# The engine with Vault ----------------------------------------------------------------


def layer_config(
    pg: EmbeddedPostgres, vault: VaultStandIn, tables: AppTables, app: str, **options: object
) -> dict[str, object]:
    return {
        "ENGINE": "postgres",
        # No user or password: those come from Vault.
        "dsn": f"postgresql://{pg.host}:{pg.port}/postgres",
        "connection": {"application_name": app},
        "table_prefix": tables.prefix,
        "create_tables": False,
        "credentials": {"provider": "vault", "url": vault.url, "role": "chat", "token": TOKEN},
        **options,
    }


def test_the_engine_connects_as_the_vault_user_and_renewal_keeps_it(
    pg: EmbeddedPostgres, vault: VaultStandIn, tables: AppTables
) -> None:
    vault.ttl = 3  # renewed after 2 s, by the engine's sweep
    app = f"ce_vault_{tables.prefix[8:16]}"

    async def scenario() -> None:
        layer = EngineChannelLayer(**layer_config(pg, vault, tables, app, sweep_interval=0.2))
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "hello"})
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "hello"}
        engine = layer._engines[asyncio.get_running_loop()]
        cache = engine.shared.login.credentials
        user = cache.current.user
        assert user.startswith("v-token-chat-")
        assert set(users_of(pg, app)) == {user}

        await await_for(lambda: vault.renewed >= 2, "two renewals of the lease")
        assert cache.current.user == user
        assert (vault.generated, cache.rotations) == (1, 0)
        await layer.send(channel, {"type": "again"})
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "again"}
        assert set(users_of(pg, app)) == {user}
        await layer.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_after_vault_revokes_the_lease_the_engine_moves_to_new_credentials(
    pg: EmbeddedPostgres, vault: VaultStandIn, tables: AppTables
) -> None:
    app = f"ce_vault_{tables.prefix[8:16]}"

    async def scenario() -> None:
        layer = EngineChannelLayer(**layer_config(pg, vault, tables, app))
        channel = await layer.new_channel()
        await layer.send(channel, {"n": 0})
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"n": 0}
        engine = layer._engines[asyncio.get_running_loop()]
        first = engine.shared.login.credentials.current.user

        # Like `vault lease revoke`: privileges revoked, role dropped, sessions left open.
        vault.revoke(vault.lease_of(first).lease_id)
        assert None in users_of(pg, app)

        sent, failures = 0, 0
        deadline = asyncio.get_running_loop().time() + 10
        while True:  # the first sends may fail (42501) while the engine changes login
            try:
                await layer.send(channel, {"n": 1})
            except psycopg.errors.InsufficientPrivilege:
                failures += 1
                assert asyncio.get_running_loop().time() < deadline, "sends kept failing"
                await asyncio.sleep(0.05)
                continue
            sent = 1
            break
        for n in range(2, 12):
            await layer.send(channel, {"n": n})
            sent += 1
        received = [await asyncio.wait_for(layer.receive(channel), 10) for _ in range(sent)]
        assert [message["n"] for message in received] == list(range(1, 12))

        second = engine.shared.login.credentials.current.user
        assert second != first
        assert second.startswith("v-token-chat-")
        assert vault.generated == 2
        await await_for(lambda: set(users_of(pg, app)) == {second}, "only new sessions")
        await layer.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
