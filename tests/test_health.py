"""Health checks: a real round trip through the layer, within a deadline, against a real
PostgreSQL (directly, through a fault proxy, and with nothing listening) and the memory
engine; the probe view and the django-health-check check through Django's own machinery."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from channels.layers import channel_layers
from django.test import AsyncClient, override_settings
from django.urls import path
from health_check.views import HealthCheckView

from channels_engines import health
from channels_engines.health import HealthResult, check_health, health_view
from channels_engines.testing import engine_for
from tests.support.faultproxy import FaultProxy
from tests.support.pgtools import Admin, client_connections, config, run, server_dsn
from tests.support.polling import await_for, wait_for

#: A planted password: it must appear in no result, response or error text.
SENTINEL = "S3NTINEL-" + secrets.token_hex(8)
CHECK = "channels_engines.contrib.health_check.ChannelLayer"

# The probe view and django-health-check's view, as a project would route them
# (ROOT_URLCONF is this module in the tests that use them).
urlpatterns = [
    path("healthz/", health_view),
    path("healthz/down/", health_view, {"alias": "down", "timeout": 1.0}),
    path("health/", HealthCheckView.as_view(checks=[CHECK])),
    path("health/down/", HealthCheckView.as_view(checks=[(CHECK, {"alias": "down"})])),
]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # nothing listens there once the socket is closed


def layers(app: str, prefix: str, **extra: Any) -> dict[str, Any]:
    return {
        "default": {"ENGINE": "postgres", "CONFIG": config(app, prefix=prefix, **extra)},
        "local": {"ENGINE": "memory"},
        "down": {
            "ENGINE": "postgres",
            "CONFIG": config(
                app,
                prefix=prefix,
                dsn=f"postgresql://app:{SENTINEL}@127.0.0.1:{closed_port()}/chat",
                pool_timeout=2.0,
            ),
        },
        "theirs": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
    }


@pytest.fixture
def proxy(test_server: str) -> Iterator[FaultProxy]:
    with FaultProxy.for_dsn(server_dsn()) as proxy:
        yield proxy


def assert_no_secret(*texts: object) -> None:
    assert not [text for text in texts if SENTINEL in str(text)]


def tasks() -> set[asyncio.Task[Any]]:
    """The tasks of this loop (the test's own included)."""
    return asyncio.all_tasks()


async def settled(before: set[asyncio.Task[Any]]) -> None:
    """Wait until every given-up round trip has unwound; then no task but those that ran
    ``before`` is left on this loop."""
    await await_for(lambda: not health._RUNNING, "the given-up round trips to unwind")
    assert tasks() <= before


async def closed_and_settled(alias: str, before: set[asyncio.Task[Any]]) -> None:
    """:func:`settled`, once the process's layer of ``alias`` is closed."""
    await await_for(lambda: not health._RUNNING, "the given-up round trips to unwind")
    await channel_layers[alias].close()
    await settled(before)


# The round trip ---------------------------------------------------------------------


@pytest.mark.postgres
def test_a_check_makes_a_round_trip_on_the_process_layer_and_keeps_its_connections(
    app: str, prefix: str, admin: Admin
) -> None:
    async def scenario() -> tuple[list[HealthResult], int, int]:
        before = tasks()
        first = await check_health()
        layer = channel_layers["default"]
        engine = engine_for(layer)
        # Out on a pooled connection, back on the LISTEN connection of the same layer.
        assert engine is not None
        assert engine.pool is not None
        assert engine.listener is not None
        opened = await asyncio.to_thread(admin.count, app)
        again = [await check_health() for _ in range(3)]
        together = await asyncio.gather(*(check_health() for _ in range(20)))
        after = await asyncio.to_thread(admin.count, app)
        await closed_and_settled("default", before)
        return [first, *again, *together], opened, after

    with override_settings(CHANNEL_LAYERS=layers(app, prefix, pool_max_size=2)):
        results, opened, after = run(scenario())
    assert {(r.alias, r.engine, r.ok, r.error) for r in results} == {
        ("default", "postgres", True, None)
    }
    assert all(r.round_trip_ms is not None and r.round_trip_ms > 0 for r in results)
    # A pool of at most two and one listener, however many checks ran, together or not.
    assert opened <= 3
    assert after == opened


def test_a_check_of_the_memory_engine_uses_its_one_instance() -> None:
    with override_settings(CHANNEL_LAYERS={"local": {"ENGINE": "memory"}}):
        result = run(check_health("local"))
        fresh = run(check_health("local", fresh=True))
    for found in (result, fresh):
        assert (found.alias, found.engine, found.ok, found.error) == ("local", "memory", True, None)
        assert found.round_trip_ms is not None


@pytest.mark.postgres
def test_a_fresh_check_uses_two_new_instances_and_closes_them(
    app: str, prefix: str, admin: Admin
) -> None:
    async def scenario() -> HealthResult:
        result = await check_health(fresh=True)
        # The process's own layer was not used.
        assert engine_for(channel_layers["default"]) is None
        return result

    with override_settings(CHANNEL_LAYERS=layers(app, prefix)):
        result = run(scenario())
    assert (result.engine, result.ok, result.error) == ("postgres", True, None)
    # Closed on our side; the server ends its sessions a moment later.
    wait_for(lambda: admin.count(app) == 0, "the fresh instances' sessions to end")


@pytest.mark.postgres
def test_a_server_that_is_down_fails_the_check_by_its_deadline_without_the_password(
    app: str, prefix: str
) -> None:
    async def scenario() -> list[HealthResult]:
        before = tasks()
        # A refused connection fails the receive's LISTEN at once (sends would retry
        # until pool_timeout).
        results = [await check_health("down", timeout=1.0)]
        await closed_and_settled("down", before)
        results.append(await check_health("down", timeout=1.0, fresh=True))
        await settled(before)
        return results

    with override_settings(CHANNEL_LAYERS=layers(app, prefix)):
        results = run(scenario(), timeout=60)
    for result in results:
        assert (result.alias, result.engine, result.ok, result.round_trip_ms) == (
            "down",
            "postgres",
            False,
            None,
        )
        assert result.error is not None
        assert result.error.startswith(
            "ServerUnavailableError: CHANNEL_LAYERS['down']: cannot reach the PostgreSQL "
            "server at 127.0.0.1:"
        )
        assert result.error.endswith("Connection refused")
    assert_no_secret(*results, *(json.dumps(r.as_dict()) for r in results))


@pytest.mark.postgres
def test_a_server_that_stops_answering_fails_the_check_by_its_deadline_and_leaks_nothing(
    app: str, prefix: str, proxy: FaultProxy
) -> None:
    dsn = proxy.dsn(server_dsn())

    async def scenario() -> tuple[HealthResult, HealthResult]:
        before = tasks()
        healthy = await check_health()
        assert client_connections(proxy.port) > 0
        # TCP stays up and nothing arrives either way, on the connections the layer has
        # and on any new one.
        proxy.refuse("hang")
        proxy.blackhole_all()
        paused = await check_health(timeout=1.0)
        await closed_and_settled("default", before)
        assert client_connections(proxy.port) == 0
        return healthy, paused

    # The layer's own deadlines come later than the check's.
    settings = layers(app, prefix, dsn=dsn, query_timeout=3.0, pool_timeout=3.0)
    with override_settings(CHANNEL_LAYERS=settings):
        healthy, paused = run(scenario(), timeout=60)
    assert healthy.ok
    assert (paused.ok, paused.engine, paused.round_trip_ms, paused.error) == (
        False,
        "postgres",
        None,
        "no round trip within 1 s",
    )


@pytest.mark.postgres
def test_a_server_that_accepts_but_never_answers_fails_a_fresh_check_by_its_deadline(
    app: str, prefix: str, proxy: FaultProxy
) -> None:
    dsn = proxy.dsn(server_dsn())
    proxy.refuse("hang")  # the TCP handshake completes; the server's greeting never comes

    async def scenario() -> HealthResult:
        before = tasks()
        result = await check_health(timeout=1.0, fresh=True)
        await settled(before)
        assert client_connections(proxy.port) == 0
        return result

    # The layer's own deadlines come later than the check's.
    settings = layers(app, prefix, dsn=dsn, query_timeout=3.0, pool_timeout=3.0)
    with override_settings(CHANNEL_LAYERS=settings):
        result = run(scenario(), timeout=60)
    assert (result.ok, result.engine, result.error) == (
        False,
        "postgres",
        "no round trip within 1 s",
    )


def test_an_alias_that_is_missing_or_not_ours_fails_the_check_and_says_why() -> None:
    with override_settings(
        CHANNEL_LAYERS={"theirs": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    ):
        missing = run(check_health("nowhere"))
        theirs = run(check_health("theirs"))
    assert missing == HealthResult(
        alias="nowhere",
        engine=None,
        ok=False,
        round_trip_ms=None,
        error="LookupError: CHANNEL_LAYERS has no alias 'nowhere'",
    )
    assert theirs.error == (
        "TypeError: CHANNEL_LAYERS['theirs'] is a InMemoryChannelLayer, not a channels_engines "
        "layer"
    )


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan")])
def test_a_timeout_must_be_a_positive_number_of_seconds(timeout: float) -> None:
    with pytest.raises(ValueError, match="expected a number of seconds above 0"):
        run(check_health(timeout=timeout))


# The probe view and django-health-check ---------------------------------------------


async def get(url: str) -> tuple[int, dict[str, Any], str]:
    response = await AsyncClient().get(url)
    return response.status_code, json.loads(response.content), response.get("Cache-Control", "")


@pytest.mark.postgres
def test_the_view_answers_200_when_the_round_trip_works_and_503_when_it_fails(
    app: str, prefix: str
) -> None:
    async def scenario() -> list[tuple[int, dict[str, Any], str]]:
        answers = [await get("/healthz/"), await get("/healthz/down/")]
        await await_for(lambda: not health._RUNNING, "the failed check to unwind")
        await channel_layers["default"].close()
        return answers

    settings = layers(app, prefix)
    with override_settings(CHANNEL_LAYERS=settings, ROOT_URLCONF=__name__):
        (ok_status, ok_body, ok_cache), (down_status, down_body, down_cache) = run(scenario())
    assert ok_status == 200
    assert (ok_body["alias"], ok_body["engine"], ok_body["ok"], ok_body["error"]) == (
        "default",
        "postgres",
        True,
        None,
    )
    assert ok_body["round_trip_ms"] > 0
    assert down_status == 503
    assert (down_body["alias"], down_body["ok"], down_body["round_trip_ms"]) == (
        "down",
        False,
        None,
    )
    assert_no_secret(json.dumps(down_body))
    assert "no-cache" in ok_cache
    assert "no-cache" in down_cache


@pytest.mark.postgres
def test_the_django_health_check_check_passes_and_fails_with_the_layer(
    app: str, prefix: str
) -> None:
    async def scenario() -> list[tuple[int, dict[str, Any], str]]:
        answers = [await get("/health/?format=json"), await get("/health/down/?format=json")]
        await await_for(lambda: not health._RUNNING, "the failed check to unwind")
        # The process's layers would keep their connections for the rest of the session
        # (idle ones are left to the next event loop), and later tests count them.
        for alias in ("default", "down"):
            await channel_layers[alias].close()
        return answers

    with override_settings(CHANNEL_LAYERS=layers(app, prefix), ROOT_URLCONF=__name__):
        (ok_status, ok_body, _), (down_status, down_body, _) = run(scenario())
    assert (ok_status, ok_body) == (200, {"ChannelLayer(alias='default')": "OK"})
    assert down_status == 500
    assert list(down_body) == ["ChannelLayer(alias='down')"]
    assert down_body["ChannelLayer(alias='down')"].startswith("Unavailable: ")
    assert_no_secret(json.dumps(down_body))
