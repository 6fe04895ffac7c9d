"""The ways the Redis engine reaches one server: a unix socket, and TLS (``rediss://``)
with a private certificate authority and client certificates, against real servers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from channels_engines import EngineChannelLayer, ServerUnavailableError
from channels_engines.exceptions import InvalidConfigError
from tests.support.pgtools import run
from tests.support.redis_servers import RedisServer
from tests.support.redis_traffic import round_trip

pytestmark = pytest.mark.redis

KEYS = ["k" * 40]
SHARED = "transport.jobs"


def make(url: str, **options: Any) -> EngineChannelLayer:
    return EngineChannelLayer(ENGINE="redis", url=url, prefix="ce", encryption_keys=KEYS, **options)


def connections_by_address(server: RedisServer) -> list[str]:
    return [c["addr"] for c in server.admin().client_list() if c["name"] == "channels_engines"]


def test_a_unix_socket() -> None:
    with RedisServer(unixsocket=True) as server:
        url = f"unix://{server.unix_socket_path}"

        async def scenario() -> tuple[list[Any], list[str]]:
            sender, receiver = make(url), make(url)
            own = await receiver.new_channel()
            waiting = asyncio.ensure_future(receiver.receive(own))
            await sender.send(own, {"n": 0})
            await asyncio.wait_for(waiting, 10)
            addresses = connections_by_address(server)
            return await round_trip(sender, receiver, shared=SHARED), addresses

        got, addresses = run(scenario())
    assert got == [{"n": 1}, {"n": 2}, {"n": 3}]
    # Unix socket clients show no TCP address.
    assert addresses
    assert all(not address.startswith("127.0.0.1") for address in addresses), addresses


def test_tls_with_a_private_certificate_authority() -> None:
    with RedisServer(tls="optional") as server:
        assert server.certificates is not None
        ca = str(server.certificates.ca)
        got = run(
            round_trip(
                make(server.tls_url, tls_ca_file=ca),
                make(server.tls_url, tls_ca_file=ca),
                shared=SHARED,
            )
        )
    assert got == [{"n": 1}, {"n": 2}, {"n": 3}]


def test_tls_refuses_a_server_certificate_it_cannot_verify() -> None:
    """Without the CA the server's certificate is not trusted: the layer fails within
    its deadline, and says why."""
    with RedisServer(tls="optional") as server:
        layer = make(server.tls_url, pool_timeout=1.0)
        with pytest.raises(ServerUnavailableError) as caught:
            run(layer.send("tls.jobs", {"n": 1}))
        run(layer.close())
    assert "certificate verify failed" in str(caught.value)


def test_tls_with_a_client_certificate_the_server_requires() -> None:
    with RedisServer(tls="required") as server:
        certificates = server.certificates
        assert certificates is not None
        mutual = {
            "tls_ca_file": str(certificates.ca),
            "tls_cert_file": str(certificates.client_cert),
            "tls_key_file": str(certificates.client_key),
        }
        pair = make(server.tls_url, **mutual), make(server.tls_url, **mutual)
        got = run(round_trip(*pair, shared=SHARED))
        without = make(server.tls_url, tls_ca_file=str(certificates.ca), pool_timeout=1.0)
        with pytest.raises(ServerUnavailableError):
            run(without.send("tls.jobs", {"n": 1}))
        run(without.close())
    assert got == [{"n": 1}, {"n": 2}, {"n": 3}]


def test_tls_settings_that_cannot_work_are_refused(tmp_path: Path) -> None:
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(InvalidConfigError) as caught:
        make("redis://127.0.0.1:6379/0", tls_ca_file=str(pem))
    assert str(caught.value) == (
        "EngineChannelLayer: CONFIG['tls_ca_file'] is set, but 'url' is not a rediss:// URL: "
        "connect with rediss:// to use TLS, or leave the tls_* settings out."
    )
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(InvalidConfigError) as caught:
        make("rediss://127.0.0.1:6379/0", tls_ca_file=missing)
    assert str(caught.value) == (
        f"EngineChannelLayer: CONFIG['tls_ca_file'] must name a readable PEM file; {missing!r} "
        "is not one (or this process may not read it)."
    )
    with pytest.raises(InvalidConfigError) as caught:
        make("rediss://127.0.0.1:6379/0", tls_cert_file=str(pem))
    assert str(caught.value) == (
        "EngineChannelLayer: CONFIG['tls_cert_file'] and CONFIG['tls_key_file'] go together: a "
        "client certificate needs its private key."
    )
