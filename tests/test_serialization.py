"""Messages are msgpack: validated before encoding, decoded back to dicts."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from channels.exceptions import MessageTooLarge

from channels_engines.serialization import decode, encode


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


def test_decoding_something_else_than_a_map_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^stored message is not a msgpack map$"):
        decode(msgpack.packb([1, 2]))
