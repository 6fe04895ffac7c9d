"""The RDS IAM provider: boto3 signs tokens locally with fake AWS credentials.

Nothing reaches AWS: the credentials are fake environment variables, the instance
metadata service is disabled, and the configuration files point nowhere. The stand-in for
RDS (:class:`tests.support.standins.RdsStandIn`) checks each token's SigV4 signature and lets it
log in to a PostgreSQL that checks passwords.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pytest
from psycopg import sql

from channels_engines import Credentials, EngineChannelLayer, InvalidConfigError
from channels_engines.credentials import CredentialCache, CredentialsError, Secret, resolve_provider
from channels_engines.credentials.aws import AwsRdsIamProvider
from channels_engines.postgres.embedded import EmbeddedPostgres
from channels_engines.testing import engine_for
from tests.support.standins import (
    AppTables,
    RdsStandIn,
    admin_execute,
    check_rds_token,
    rds_token_parameters,
    scram_server,
    users_of,
)

ACCESS_KEY = "AKIDCHANNELSENGINES1"
SECRET_KEY = "SENTINEL/secret-access-key/never-shown+0123456789"
WHERE = "CHANNEL_LAYERS['default']"
_AWS_VARIABLES = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
)


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake AWS credentials, and no way for boto3 to look anywhere else."""
    for variable in _AWS_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def provider(**options: Any) -> AwsRdsIamProvider:
    settings = {"provider": "aws_rds_iam", "host": "db.example.internal", "user": "chat"}
    made = resolve_provider({**settings, **options}, where=WHERE)
    assert isinstance(made, AwsRdsIamProvider)
    return made


def formatted(error: BaseException) -> str:
    """The traceback below the test's own frame, with every frame's local variables."""
    assert error.__traceback__ is not None
    return "".join(
        traceback.TracebackException(
            type(error), error, error.__traceback__.tb_next, capture_locals=True
        ).format()
    )


# The token ----------------------------------------------------------------------------


def test_the_token_is_signed_for_the_endpoint_and_user_and_lasts_15_minutes() -> None:
    before = datetime.now(timezone.utc)
    credentials = provider(port=6432, region="eu-west-1").get_credentials()
    assert credentials.user == "chat"
    assert credentials.password is not None
    token = credentials.password.reveal()
    assert token.startswith("db.example.internal:6432/?")
    parameters = rds_token_parameters(token)
    assert parameters["Action"] == "connect"
    assert parameters["DBUser"] == "chat"
    assert parameters["X-Amz-Expires"] == "900"
    check_rds_token(
        token,
        host="db.example.internal",
        port=6432,
        user="chat",
        region="eu-west-1",
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
    )
    assert credentials.expires_at is not None
    assert before + timedelta(minutes=15) <= credentials.expires_at
    assert credentials.expires_at <= datetime.now(timezone.utc) + timedelta(minutes=15)


def test_without_a_region_option_boto3s_default_region_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-southeast-2")
    secret = provider().get_credentials().password
    assert secret is not None
    token = secret.reveal()
    assert "%2Fap-southeast-2%2Frds-db%2Faws4_request" in token


def test_the_cache_asks_for_a_new_token_after_10_minutes_and_must_have_one_by_14() -> None:
    cache = CredentialCache(provider(region="eu-west-1"), describe="aws")
    asyncio.run(cache.get())
    now = time.monotonic()
    assert 595 < cache._advisory_at - now <= 600
    assert 835 < cache._mandatory_at - now <= 840


def test_one_client_is_made_and_tokens_are_signed_in_a_thread() -> None:
    source = provider(region="eu-west-1")
    client = source._rds_client()
    threads: list[int] = []
    sign = client.generate_db_auth_token

    def recording(**kwargs: Any) -> str:
        threads.append(threading.get_ident())
        return str(sign(**kwargs))

    client.generate_db_auth_token = recording
    first = asyncio.run(source.aget_credentials())
    second = asyncio.run(source.aget_credentials())
    assert source._rds_client() is client
    assert len(threads) == 2
    assert threading.get_ident() not in threads
    assert first.password is not None
    assert second.password is not None


def test_a_missing_region_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CredentialsError) as raised:
        provider().get_credentials()
    assert str(raised.value) == (
        "cannot create a boto3 RDS client for <AwsRdsIamProvider aws_rds_iam "
        "chat@db.example.internal:5432>: NoRegionError: You must specify a region. Set "
        "'region' in CONFIG['credentials'], or AWS_DEFAULT_REGION."
    )
    assert SECRET_KEY not in formatted(raised.value)


def test_missing_aws_credentials_are_a_clear_error_and_are_looked_for_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    source = provider(region="eu-west-1")
    with pytest.raises(CredentialsError) as raised:
        source.get_credentials()
    assert str(raised.value) == (
        "cannot sign an RDS IAM token for <AwsRdsIamProvider aws_rds_iam "
        "chat@db.example.internal:5432>: NoCredentialsError: Unable to locate credentials"
    )
    # Credentials that appear later (a role attached after start) are found.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    assert source.get_credentials().password is not None


def test_an_unknown_profile_is_a_clear_error() -> None:
    with pytest.raises(CredentialsError) as raised:
        provider(region="eu-west-1", profile="nope").get_credentials()
    assert str(raised.value).endswith(
        "ProfileNotFound: The config profile (nope) could not be found"
    )


def test_neither_the_token_nor_the_aws_secret_ever_shows() -> None:
    source = provider(region="eu-west-1")
    credentials = source.get_credentials()
    assert credentials.password is not None
    token = credentials.password.reveal()
    for text in (repr(source), str(source), repr(credentials), str(credentials)):
        assert token not in text
        assert SECRET_KEY not in text
    assert repr(credentials) == (
        "Credentials(user='chat', password='********', "
        f"expires_at={credentials.expires_at.isoformat()!r}, extra_keys=[])"  # type: ignore[union-attr]
    )

    def fail(credentials: Credentials) -> None:
        params = credentials.connection_params()
        raise RuntimeError(f"could not connect as {params['user']}")

    with pytest.raises(RuntimeError) as raised:
        fail(credentials)
    text = formatted(raised.value)
    assert "params = {" in text  # the locals are shown, the token is not
    assert token not in text


def test_options_are_checked() -> None:
    with pytest.raises(InvalidConfigError) as raised:
        resolve_provider({"provider": "aws_rds_iam", "host": "db"}, where=WHERE)
    assert str(raised.value) == (
        "CHANNEL_LAYERS['default']: CONFIG['credentials']: the CONFIG key 'user' is required "
        "for the credential provider 'aws_rds_iam'; it must be a string."
    )
    with pytest.raises(InvalidConfigError) as raised:
        provider(port="5432")
    assert str(raised.value) == (
        "CHANNEL_LAYERS['default']: CONFIG['credentials']: CONFIG['port'] must be an "
        "integer, not '5432' (str)."
    )
    with pytest.raises(InvalidConfigError) as raised:
        provider(regoin="eu-west-1")
    assert str(raised.value) == (
        "CHANNEL_LAYERS['default']: CONFIG['credentials']: unknown CONFIG key 'regoin' for "
        "the credential provider 'aws_rds_iam'. Did you mean 'region'? Allowed keys: host, "
        "port, profile, region, user."
    )


def test_without_boto3_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(InvalidConfigError) as raised:
        provider()
    assert str(raised.value) == (
        "CHANNEL_LAYERS['default']: the credential provider 'aws_rds_iam' needs boto3, which "
        "is not installed. Install it with: pip install 'channels-engines[aws]'"
    )


# The engine logging in with tokens ------------------------------------------------------


class RdsIamWithStandIn(AwsRdsIamProvider):
    """The real provider; each token it signs is presented to the RDS stand-in, which
    checks it and lets it log in (as RDS accepts any valid unexpired token)."""

    stand_in: ClassVar[RdsStandIn | None] = None

    def get_credentials(self) -> Credentials:
        credentials = super().get_credentials()
        assert self.stand_in is not None
        assert credentials.user is not None
        assert credentials.password is not None
        self.stand_in.authorize(credentials.password.reveal(), credentials.user)
        return credentials


@pytest.fixture
def rds() -> Iterator[tuple[EmbeddedPostgres, AppTables, str, RdsStandIn]]:
    pg = scram_server()
    with AppTables.create(pg) as tables:
        role = f"ce_iam_{tables.prefix[8:16]}"
        admin_execute(
            pg,
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                sql.Identifier(role), sql.Identifier(tables.group)
            ),
        )
        stand_in = RdsStandIn(
            pg, ACCESS_KEY, SECRET_KEY, region="eu-west-1", host=pg.host, port=pg.port
        )
        RdsIamWithStandIn.stand_in = stand_in
        try:
            yield pg, tables, role, stand_in
        finally:
            RdsIamWithStandIn.stand_in = None
            admin_execute(pg, sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.postgres
def test_the_engine_logs_in_with_the_token_and_gets_a_new_one_when_refused(
    rds: tuple[EmbeddedPostgres, AppTables, str, RdsStandIn],
) -> None:
    pg, tables, role, stand_in = rds
    app = f"ce_iam_{tables.prefix[8:16]}"

    async def scenario() -> None:
        layer = EngineChannelLayer(
            ENGINE="postgres",
            dsn=f"postgresql://{pg.host}:{pg.port}/postgres?sslmode=disable",
            connection={"application_name": app},
            table_prefix=tables.prefix,
            create_tables=False,
            credentials={
                "provider": f"{__name__}.RdsIamWithStandIn",
                "host": pg.host,
                "port": pg.port,
                "user": role,
                "region": "eu-west-1",
            },
        )
        channel = await layer.new_channel()
        await layer.send(channel, {"n": 1})
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"n": 1}
        assert set(users_of(pg, app)) == {role}
        engine = engine_for(layer)
        cache = engine.shared.login.credentials
        assert cache.current.password == Secret(stand_in.accepted[-1])
        assert len(stand_in.accepted) == cache.fetches == 1

        # The token no longer logs in (as after 15 minutes): a new connection is refused
        # once, gets a new token, and succeeds.
        admin_execute(pg, sql.SQL("ALTER ROLE {} PASSWORD 'expired'").format(sql.Identifier(role)))
        with pytest.raises(psycopg.OperationalError):
            await psycopg.AsyncConnection.connect(
                host=pg.host,
                port=pg.port,
                dbname="postgres",
                user=role,
                password=cache.current.password.reveal(),
            )
        await engine.pool.drain()
        await layer.send(channel, {"n": 2})
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"n": 2}
        assert len(stand_in.accepted) == cache.fetches == 2
        assert cache.current.password == Secret(stand_in.accepted[-1])
        await layer.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
