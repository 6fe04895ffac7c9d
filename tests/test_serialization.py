"""Messages are msgpack: validated before encoding, decoded back to dicts."""

from __future__ import annotations

from typing import Any

import pytest
from channels.exceptions import MessageTooLarge

from channels_engines.serialization import UndecodableMessage, decode, encode
from channels_engines.testing import undecodable_payloads


def test_round_trip_keeps_bytes_and_text_apart() -> None:
    message = {"type": "x", "bytes": b"\xff\x00", "text": "\u2603", "nested": {"n": [1, None]}}
    assert decode(encode(message)) == message


def test_tuples_come_back_as_lists() -> None:
    assert decode(encode({"type": "x", "t": (1, (2, 3))})) == {"type": "x", "t": [1, [2, 3]]}


def test_invalid_message_is_refused_before_encoding() -> None:
    with pytest.raises(TypeError, match=r"message\['s'\] is a set"):
        encode({"s": {1}})


def test_text_that_utf8_cannot_encode_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"^message cannot be encoded: ") as caught:
        encode({"type": "x", "text": "lone \ud800 surrogate"})
    assert str(caught.value) == (
        "message cannot be encoded: 'utf-8' codec can't encode character '\\ud800' in "
        "position 5: surrogates not allowed"
    )
    assert isinstance(caught.value.__cause__, UnicodeEncodeError)


def test_nesting_is_refused_before_msgpack_would_refuse_it() -> None:
    inner: list[Any] = []
    message = {"type": "deep", "list": inner}
    for _ in range(2000):
        inner.append([])
        inner = inner[0]
    with pytest.raises(ValueError, match=r"^message\['list'\](\[0\])+ is nested too deeply"):
        encode(message)


def test_text_over_the_limit_once_encoded_is_refused_after_encoding() -> None:
    """600 characters pass the bound of one byte each; their UTF-8 takes two."""
    with pytest.raises(MessageTooLarge) as caught:
        encode({"t": "\u00e9" * 600}, 1024, target="channel 'x'")
    assert str(caught.value) == (
        "message for channel 'x' is 1,206 bytes encoded; the limit is 1,024 bytes "
        "(CONFIG 'max_message_size')."
    )


REASONS = {
    "not msgpack": "msgpack cannot decode it (FormatError)",
    "empty": "msgpack cannot decode it (ValueError)",
    "cut short": "msgpack cannot decode it (ValueError)",
    "followed by more bytes": "msgpack cannot decode it (ExtraData)",
    "an array": "it is a msgpack array, not a map",
    "a string": "it is a msgpack string, not a map",
    "an integer key": "msgpack cannot decode it (ValueError)",
    "a bytes key inside": (
        "it holds a key that is not a str, or a value of a type messages may not hold"
    ),
    "an extension type": "it holds a msgpack extension type (code 42)",
    "a timestamp": "it holds a key that is not a str, or a value of a type messages may not hold",
    "an unsigned 64-bit integer": (
        "it holds an integer outside the signed 64-bit range, or nests deeper than 100 levels"
    ),
    "nested too deeply": (
        "it holds an integer outside the signed 64-bit range, or nests deeper than 100 levels"
    ),
    "over max_message_size": "it is 1,998 bytes, over max_message_size (1,024 bytes)",
}


@pytest.mark.parametrize(("what", "payload"), undecodable_payloads())
def test_undecodable_payload_is_refused_with_a_reason_that_never_quotes_it(
    what: str, payload: bytes
) -> None:
    with pytest.raises(UndecodableMessage) as caught:
        decode(payload, 1024)
    assert str(caught.value) == caught.value.reason == REASONS[what]
    assert caught.value.__cause__ is None


def test_every_undecodable_payload_has_a_stated_reason() -> None:
    assert sorted(REASONS) == sorted(what for what, _ in undecodable_payloads())


def test_decoding_checks_the_size_before_anything_else() -> None:
    data = encode({"type": "x", "text": "x" * 2000})
    assert decode(data, len(data)) == {"type": "x", "text": "x" * 2000}
    with pytest.raises(UndecodableMessage, match=r"^it is 2,016 bytes, over max_message_size"):
        decode(data, len(data) - 1)
