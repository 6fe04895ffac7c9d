"""Encrypted message bodies: what is sealed, what opens where, and what never reaches a consumer.

The sealer is checked on its own first (envelopes, keys, tampering), then through layers on
the memory engine and on a real PostgreSQL server: a role that may read the tables sees
only ciphertext, a message sealed with another key or for another channel is dropped and
counted, and keys rotate during traffic without losing a message.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import pickle
import subprocess
import sys
from typing import Any

import pytest
from django.test import override_settings
from psycopg import sql

from channels_engines import EngineChannelLayer
from channels_engines.exceptions import InvalidConfigError
from channels_engines.layer import MAX_MESSAGE_SIZE, SEAL_OVERHEAD
from channels_engines.redaction import Secret
from channels_engines.sealing import Sealer, Unopenable
from channels_engines.serialization import encode
from channels_engines.testing import as_stored
from tests.support.pgtools import Admin, config, make_layer, run, server_dsn, unique

OLD = "old-key-" + "o" * 40
NEW = "new-key-" + "n" * 40
MARKER = "PLAINTEXT-MARKER-7f3a"
WHERE = "EngineChannelLayer"


def sealer(*keys: str) -> Sealer:
    return Sealer([Secret(key) for key in keys])


# The sealer ------------------------------------------------------------------------------


def test_a_channel_message_opens_only_on_its_channel() -> None:
    sealed = sealer(NEW).seal_for_channel("chat.a", b"body")
    assert b"body" not in sealed
    assert sealer(NEW).open("chat.a", sealed) == b"body"
    with pytest.raises(Unopenable, match="sealed for another channel"):
        sealer(NEW).open("chat.b", sealed)


def test_a_group_message_opens_on_any_channel_and_authenticates_its_group() -> None:
    sealed = sealer(NEW).seal_for_group("room", b"body")
    assert sealer(NEW).open("chat.a", sealed) == sealer(NEW).open("x!y", sealed) == b"body"
    renamed = sealed.replace(b"room", b"roam", 1)
    with pytest.raises(Unopenable, match="does not authenticate"):
        sealer(NEW).open("chat.a", renamed)


def test_the_overhead_is_at_most_seal_overhead() -> None:
    assert len(sealer(NEW).seal_for_channel("c" * 100, b"")) == 34
    assert len(sealer(NEW).seal_for_group("g" * 100, b"")) == SEAL_OVERHEAD == 135
    assert MAX_MESSAGE_SIZE + SEAL_OVERHEAD == 256 * 1024 * 1024


def test_every_key_opens_and_the_first_seals() -> None:
    rotated = sealer(NEW, OLD)
    assert rotated.open("c", sealer(OLD).seal_for_channel("c", b"old")) == b"old"
    assert sealer(NEW).open("c", rotated.seal_for_channel("c", b"new")) == b"new"
    with pytest.raises(Unopenable, match="a key this layer does not have"):
        sealer(OLD).open("c", rotated.seal_for_channel("c", b"new"))


@pytest.mark.parametrize("position", [0, 1, 5, 6, 20, -1])
def test_a_changed_byte_anywhere_makes_the_message_unopenable(position: int) -> None:
    sealed = bytearray(sealer(NEW).seal_for_channel("c", b"some body"))
    sealed[position] ^= 0x01
    with pytest.raises(Unopenable):
        sealer(NEW).open("c", bytes(sealed))


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x01abcd", b"\x01abcdg\xff", b"\x02" * 60])
def test_short_or_foreign_bytes_are_unopenable(data: bytes) -> None:
    with pytest.raises(Unopenable, match="not a sealed message of this version"):
        sealer(NEW).open("c", data)


def test_subkeys_are_per_purpose_in_key_order_and_unrelated_to_each_other() -> None:
    keys = sealer(NEW, OLD).subkeys("notification")
    assert [len(key) for key in keys] == [32, 32]
    assert keys[0] == sealer(NEW).subkeys("notification")[0]
    assert keys[1] == sealer(OLD).subkeys("notification")[0]
    assert sealer(NEW).subkeys("other") != sealer(NEW).subkeys("notification")
    with pytest.raises(ValueError, match="purpose"):
        sealer(NEW).subkeys("message sealing")


def test_a_sealer_shows_no_key_and_cannot_be_pickled() -> None:
    sealed = sealer(NEW, OLD)
    assert repr(sealed) == "<Sealer AES-256-GCM, 2 keys>"
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(sealed)


# Settings ------------------------------------------------------------------------------------

ALLOWED = (
    "a non-empty list of strings of at least 32 characters (the first encrypts), False "
    "(no encryption) or None"
)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], f"must be {ALLOWED}; the list is empty, not <hidden> (list)."),
        ((), f"must be {ALLOWED}; the list is empty, not <hidden> (tuple)."),
        (True, f"must be {ALLOWED}, not <hidden> (bool)."),
        ({"k": NEW}, f"must be {ALLOWED}, not <hidden> (dict)."),
        (NEW, f"must be {ALLOWED}, not <hidden> (str)."),
        (
            [NEW, "short"],
            f"must be {ALLOWED}; item 1 is shorter than 32 characters, not <hidden> (list).",
        ),
        ([NEW.encode()], f"must be {ALLOWED}; item 0 is a bytes, not <hidden> (list)."),
        ([NEW, None], f"must be {ALLOWED}; item 1 is a NoneType, not <hidden> (list)."),
    ],
)
def test_bad_encryption_keys_are_refused_naming_the_setting(value: Any, message: str) -> None:
    with pytest.raises(InvalidConfigError) as caught:
        EngineChannelLayer(ENGINE="memory", encryption_keys=value)
    assert str(caught.value) == f"{WHERE}: CONFIG['encryption_keys'] {message}"


def test_a_channel_layers_entry_is_named_in_the_error() -> None:
    from channels.layers import channel_layers

    layers = {"default": {"ENGINE": "memory", "CONFIG": {"encryption_keys": []}}}
    with override_settings(CHANNEL_LAYERS=layers), pytest.raises(InvalidConfigError) as caught:
        channel_layers.make_backend("default")
    assert str(caught.value).startswith(
        "CHANNEL_LAYERS['default']: CONFIG['encryption_keys'] must be"
    )


NO_SECRET_KEY = (
    "{where}: ENGINE 'postgres' encrypts messages with keys derived from Django's SECRET_KEY "
    "unless CONFIG['encryption_keys'] says otherwise, and there is no SECRET_KEY (Django "
    "settings are not configured or SECRET_KEY is empty). Set SECRET_KEY; or give "
    "CONFIG['encryption_keys'] a list of keys (strings of at least 32 characters, the same "
    "in every process); or set CONFIG['encryption_keys'] to False to send messages "
    "unencrypted."
)


def test_an_empty_secret_key_is_a_clear_error_unless_keys_are_given_or_encryption_is_off() -> None:
    with override_settings(SECRET_KEY=""):
        with pytest.raises(InvalidConfigError) as caught:
            EngineChannelLayer(ENGINE="postgres", dsn=server_dsn())
        assert str(caught.value) == NO_SECRET_KEY.format(where=WHERE)
        assert EngineChannelLayer(
            ENGINE="postgres", dsn=server_dsn(), encryption_keys=[NEW]
        ).encrypted
        assert not EngineChannelLayer(
            ENGINE="postgres", dsn=server_dsn(), encryption_keys=False
        ).encrypted
        assert not EngineChannelLayer(ENGINE="memory").encrypted


def test_without_django_settings_there_is_no_secret_key() -> None:
    code = (
        "from channels_engines import EngineChannelLayer\n"
        "try:\n"
        f"    EngineChannelLayer(ENGINE='postgres', dsn={server_dsn()!r})\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.stdout.strip() == "InvalidConfigError " + NO_SECRET_KEY.format(where=WHERE)


def test_which_layers_encrypt() -> None:
    assert EngineChannelLayer(ENGINE="postgres", dsn=server_dsn()).encrypted
    assert not EngineChannelLayer(ENGINE="memory").encrypted
    assert EngineChannelLayer(ENGINE="memory", encryption_keys=[NEW]).encrypted
    assert not EngineChannelLayer(
        ENGINE="postgres", dsn=server_dsn(), encryption_keys=False
    ).encrypted


def test_secret_key_then_its_fallbacks_give_the_keys() -> None:
    with override_settings(SECRET_KEY=OLD, SECRET_KEY_FALLBACKS=[]):
        before = EngineChannelLayer(ENGINE="postgres", dsn=server_dsn())._sealer
    with override_settings(SECRET_KEY=NEW, SECRET_KEY_FALLBACKS=[OLD]):
        after = EngineChannelLayer(ENGINE="postgres", dsn=server_dsn())._sealer
    with override_settings(SECRET_KEY=NEW, SECRET_KEY_FALLBACKS=[]):
        without_fallback = EngineChannelLayer(ENGINE="postgres", dsn=server_dsn())._sealer
    assert before is not None
    assert after is not None
    assert without_fallback is not None
    assert after.key_count == 2
    old_message = before.seal_for_channel("c", b"sealed before the rotation")
    assert after.open("c", old_message) == b"sealed before the rotation"
    with pytest.raises(Unopenable, match="a key this layer does not have"):
        without_fallback.open("c", old_message)
    assert after.subkeys("notification") == sealer(NEW, OLD).subkeys("notification")


# Layers on the memory engine -----------------------------------------------------------


def test_explicit_keys_seal_messages_on_the_memory_engine() -> None:
    async def scenario() -> None:
        layer = EngineChannelLayer(ENGINE="memory", encryption_keys=[NEW])
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "x", "text": MARKER})
        stored = await layer._engine().receive(channel)
        assert MARKER.encode() not in stored
        await layer._engine().send(channel, stored)
        assert await layer.receive(channel) == {"type": "x", "text": MARKER}
        await layer.group_add("room", channel)
        await layer.group_send("room", {"type": "g", "text": MARKER})
        stored = await layer._engine().receive(channel)
        assert MARKER.encode() not in stored
        await layer._engine().send(channel, stored)
        assert await layer.receive(channel) == {"type": "g", "text": MARKER}

    run(scenario())


def test_engines_get_notification_keys_only_when_messages_are_sealed() -> None:
    async def scenario() -> None:
        sealed = EngineChannelLayer(ENGINE="memory", encryption_keys=[NEW, OLD])
        assert sealed._engine().message_keys == sealer(NEW, OLD).subkeys("notification")
        assert EngineChannelLayer(ENGINE="memory")._engine().message_keys == ()

    run(scenario())


def unopenable_scenario(layer: EngineChannelLayer, payloads: list[bytes], channel: str) -> Any:
    async def scenario() -> None:
        engine = layer._engine()
        for payload in payloads:
            await engine.send(channel, payload)
        await layer.send(channel, {"type": "after"})
        assert await asyncio.wait_for(layer.receive(channel), 20) == {"type": "after"}
        assert layer.events.get("receive.unopenable") == len(payloads)
        assert layer.events.get("receive.undecodable") == 0

    return scenario()


def test_wrong_key_forged_corrupted_and_replayed_messages_are_dropped_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    layer = EngineChannelLayer(ENGINE="memory", encryption_keys=[NEW])
    body = encode({"type": "x", "text": MARKER})
    corrupted = bytearray(sealer(NEW).seal_for_channel("chat.b", body))
    corrupted[-3] ^= 0x40
    payloads = [
        sealer(OLD).seal_for_channel("chat.b", body),  # another key
        Sealer([Secret(NEW + "x")]).seal_for_channel("chat.b", body),  # forged: a guessed key
        bytes(corrupted),
        sealer(NEW).seal_for_channel("chat.a", body),  # replayed from another channel
        body,  # never sealed
    ]
    with caplog.at_level(logging.WARNING, logger="channels_engines"):
        run(unopenable_scenario(layer, payloads, "chat.b"))
    assert [record.getMessage() for record in caplog.records] == [
        f"{WHERE}: dropped a message on channel 'chat.b' that cannot be opened: it was sealed "
        "with a key this layer does not have. Processes of this layer must share SECRET_KEY "
        "(and SECRET_KEY_FALLBACKS) or CONFIG['encryption_keys']; during a key rotation "
        "every process needs the new key in its list before any seals with it. 1 dropped so "
        "far (layer.events 'receive.unopenable'); this warning repeats at most once a minute."
    ]
    for secret in (NEW, OLD, MARKER):
        assert secret not in caplog.text


def test_a_group_message_replayed_into_a_member_channel_opens() -> None:
    async def scenario() -> None:
        layer = EngineChannelLayer(ENGINE="memory", encryption_keys=[NEW])
        sealed = layer._sealer.seal_for_group("room", encode({"type": "g"}))  # type: ignore[union-attr]
        await layer._engine().send("chat.c", sealed)
        assert await layer.receive("chat.c") == {"type": "g"}

    run(scenario())


def test_a_channel_message_does_not_open_on_another_channel_even_as_the_same_object() -> None:
    """A group message is opened once per process for all its members; a message sealed
    for one channel is not, even when the very same bytes come back for another."""

    async def scenario() -> None:
        layer = EngineChannelLayer(ENGINE="memory", encryption_keys=[NEW])
        sealed = layer._sealer.seal_for_channel("chat.a", encode({"type": "c"}))  # type: ignore[union-attr]
        await layer._engine().send("chat.a", sealed)
        assert await layer.receive("chat.a") == {"type": "c"}
        await layer._engine().send("chat.b", sealed)
        await layer._engine().send("chat.b", encode({"type": "unsealed"}))  # dropped too
        await layer.send("chat.b", {"type": "after"})
        assert await layer.receive("chat.b") == {"type": "after"}
        assert layer.events.get("receive.unopenable") == 2

    run(scenario())


ORIGINAL = {"type": "g", "items": [1, {"a": "b"}], "text": MARKER}


async def members_get_copies(layer: EngineChannelLayer) -> None:
    channels = [await layer.new_channel() for _ in range(3)]
    for channel in channels:
        await layer.group_add("copies", channel)
    await layer.group_send("copies", ORIGINAL)
    first = await asyncio.wait_for(layer.receive(channels[0]), 10)
    assert first == ORIGINAL
    first["items"][1]["a"] = "changed by the first consumer"
    first["items"].append(2)
    first["type"] = "changed"
    others = [await asyncio.wait_for(layer.receive(channel), 10) for channel in channels[1:]]
    assert others == [ORIGINAL, ORIGINAL]
    assert others[0] is not others[1]
    assert others[0]["items"] is not others[1]["items"]
    await layer.close()


@pytest.mark.parametrize("keys", [[NEW], False], ids=["sealed", "plain"])
def test_every_member_of_a_group_gets_a_message_of_its_own_on_memory(keys: Any) -> None:
    """Members in one process share the opened message, never the decoded one: a
    consumer that changes its message changes nobody else's."""
    run(members_get_copies(EngineChannelLayer(ENGINE="memory", encryption_keys=keys)))


@pytest.mark.postgres
@pytest.mark.parametrize("keys", [None, False], ids=["sealed", "plain"])
def test_every_member_of_a_group_gets_a_message_of_its_own_on_postgres(
    prefix: str, keys: Any
) -> None:
    extra = {} if keys is None else {"encryption_keys": keys}
    run(members_get_copies(make_layer(unique("ce_t"), prefix=prefix, **extra)))


# Layers on PostgreSQL ----------------------------------------------------------------------


@pytest.fixture
def reader(prefix: str) -> Any:
    """A role that may only SELECT from the layer's tables: a stolen read-only login."""
    role = unique("ce_reader")
    with Admin() as admin:
        admin.conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        yield role
    finally:
        with Admin() as admin:
            admin.conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.postgres
def test_a_role_that_reads_the_tables_sees_only_ciphertext(prefix: str, reader: str) -> None:
    async def scenario() -> None:
        layer = make_layer(unique("ce_t"), prefix=prefix)
        plain = make_layer(unique("ce_t"), prefix=prefix + "p_", encryption_keys=False)
        try:
            channel = await layer.new_channel()
            await layer.send(channel, {"type": "warm-up"})  # creates the tables
            assert await asyncio.wait_for(layer.receive(channel), 20) == {"type": "warm-up"}
            await layer.send("sealed.normal", {"type": "x", "text": MARKER})
            await layer.group_add("room", "sealed.member")
            await layer.group_send("room", {"type": "x", "text": MARKER})
            await plain.send("plain.normal", {"type": "x", "text": MARKER})
            with Admin() as admin:
                for table in (f"{prefix}message", f"{prefix}p_message"):
                    admin.conn.execute(
                        sql.SQL("GRANT SELECT ON {} TO {}").format(
                            sql.Identifier(table), sql.Identifier(reader)
                        )
                    )
            with Admin(server_dsn(), user=reader) as stolen:
                sealed = stolen.rows(
                    sql.SQL("SELECT payload FROM {}").format(sql.Identifier(f"{prefix}message"))
                )
                unsealed = stolen.rows(
                    sql.SQL("SELECT payload FROM {}").format(sql.Identifier(f"{prefix}p_message"))
                )
            # Normal channels without a receiver: their rows stay in the table.
            assert len(sealed) == 2
            assert all(MARKER.encode() not in bytes(row[0]) for row in sealed)
            assert [MARKER.encode() in bytes(row[0]) for row in unsealed] == [True]
            assert await asyncio.wait_for(layer.receive("sealed.normal"), 20) == {
                "type": "x",
                "text": MARKER,
            }
            assert await asyncio.wait_for(layer.receive("sealed.member"), 20) == {
                "type": "x",
                "text": MARKER,
            }
            assert await asyncio.wait_for(plain.receive("plain.normal"), 20) == {
                "type": "x",
                "text": MARKER,
            }
        finally:
            await layer.close()
            await plain.close()

    run(scenario())


@pytest.mark.postgres
def test_a_message_sealed_with_another_key_is_not_delivered(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        sender = make_layer(unique("ce_t"), prefix=prefix, encryption_keys=[OLD])
        receiver = make_layer(unique("ce_t"), prefix=prefix, encryption_keys=[NEW])
        try:
            await sender.send("pg.wrong-key", {"type": "x", "text": MARKER})
            await receiver.send("pg.wrong-key", {"type": "after"})
            assert await asyncio.wait_for(receiver.receive("pg.wrong-key"), 20) == {"type": "after"}
            assert receiver.events.get("receive.unopenable") == 1
        finally:
            await sender.close()
            await receiver.close()

    with caplog.at_level(logging.WARNING, logger="channels_engines"):
        run(scenario())
    messages = [record.getMessage() for record in caplog.records]
    assert len([text for text in messages if "cannot be opened" in text]) == 1
    for secret in (NEW, OLD, MARKER):
        assert secret not in caplog.text


@pytest.mark.postgres
def test_forged_corrupted_and_replayed_rows_are_dropped_on_postgres(prefix: str) -> None:
    layer = make_layer(unique("ce_t"), prefix=prefix, encryption_keys=[NEW])
    body = encode({"type": "x", "text": MARKER})
    corrupted = bytearray(sealer(NEW).seal_for_channel("pg.target", body))
    corrupted[10] ^= 0x01
    payloads = [
        bytes(corrupted),
        sealer(NEW).seal_for_channel("pg.elsewhere", body),
        sealer(OLD).seal_for_group("room", body),
        body,
    ]
    run(unopenable_scenario(layer, payloads, "pg.target"))
    run(layer.close())


@pytest.mark.postgres
@pytest.mark.parametrize("encrypted", [True, False], ids=["sealed", "unsealed"])
def test_a_message_at_the_size_limit_arrives_sealed_for_the_longest_group(
    prefix: str, encrypted: bool
) -> None:
    group = "g" * 100
    keys: Any = [NEW] if encrypted else False

    async def scenario() -> None:
        layer = make_layer(
            unique("ce_t"), prefix=prefix, max_message_size=1024, encryption_keys=keys
        )
        try:
            message = {"type": "x", "text": "t" * 1024}
            while len(encode(message)) > 1024:
                message["text"] = message["text"][:-1]
            assert len(encode(message)) == 1024
            await layer.group_add(group, "pg.limit")
            await layer.group_send(group, message)
            await layer.send("pg.limit", message)
            for _ in range(2):
                assert await asyncio.wait_for(layer.receive("pg.limit"), 20) == message
            assert layer.events.snapshot() == {}
        finally:
            await layer.close()

    run(scenario())


@pytest.mark.postgres
def test_keys_rotate_during_traffic_without_losing_a_message(prefix: str) -> None:
    """The documented rotation, as a rolling deploy: at each step layers of the previous
    and the next configuration send to and receive from one channel at the same time."""
    steps = [[OLD], [OLD, NEW], [NEW, OLD], [NEW]]
    per_sender = 60

    async def exchange(index: int, before: list[str], after: list[str]) -> None:
        layers = [
            make_layer(unique("ce_t"), prefix=prefix, encryption_keys=keys)
            for keys in (before, after)
        ]
        channel = f"rotation.step{index}"
        received: list[tuple[int, int]] = []
        done = asyncio.Event()

        async def send(number: int, layer: EngineChannelLayer) -> None:
            for n in range(per_sender):
                await layer.send(channel, {"type": "r", "sender": number, "n": n})
                await asyncio.sleep(0)

        async def receive(layer: EngineChannelLayer) -> None:
            while not done.is_set():
                message = await layer.receive(channel)
                received.append((message["sender"], message["n"]))
                if len(received) == 2 * per_sender:
                    done.set()

        try:
            receivers = [asyncio.ensure_future(receive(layer)) for layer in layers]
            await asyncio.gather(*(send(number, layer) for number, layer in enumerate(layers)))
            await asyncio.wait_for(done.wait(), 60)
            for task in receivers:
                task.cancel()
            await asyncio.gather(*receivers, return_exceptions=True)
            assert sorted(received) == [(s, n) for s in (0, 1) for n in range(per_sender)]
            for layer in layers:
                assert layer.events.snapshot() == {}
        finally:
            for layer in layers:
                await layer.close()

    async def scenario() -> None:
        for index, (before, after) in enumerate(itertools.pairwise(steps)):
            await exchange(index, before, after)
        # Once the old key is dropped, what it sealed no longer opens.
        late = make_layer(unique("ce_t"), prefix=prefix, encryption_keys=[NEW])
        try:
            await late._engine().send(
                "rotation.late", sealer(OLD).seal_for_channel("rotation.late", b"\x80")
            )
            await late.send("rotation.late", {"type": "after"})
            assert await asyncio.wait_for(late.receive("rotation.late"), 20) == {"type": "after"}
            assert late.events.get("receive.unopenable") == 1
        finally:
            await late.close()

    run(scenario(), timeout=240)


@pytest.mark.postgres
def test_conformance_rows_written_sealed_reach_the_decoder(prefix: str) -> None:
    """:func:`channels_engines.testing.as_stored` seals as the layer does."""

    async def scenario() -> None:
        layer = make_layer(unique("ce_t"), prefix=prefix)
        try:
            await layer._engine().send("pg.stored", as_stored(layer, "pg.stored", encode({"a": 1})))
            assert await asyncio.wait_for(layer.receive("pg.stored"), 20) == {"a": 1}
        finally:
            await layer.close()

    run(scenario())


def test_benchmark_subjects_may_turn_encryption_off() -> None:
    layer = EngineChannelLayer(**config(unique("ce_t"), prefix="bench_", encryption_keys=False))
    assert not layer.encrypted
    assert layer.config.max_message_size == layer.max_message_size
    sealed = EngineChannelLayer(**config(unique("ce_t"), prefix="bench_"))
    assert sealed.config.max_message_size == sealed.max_message_size + SEAL_OVERHEAD
