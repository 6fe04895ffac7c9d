"""Messages are msgpack: validated before encoding, decoded back to dicts."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from channels_engines.serialization import decode, encode


def test_round_trip_keeps_bytes_and_text_apart() -> None:
    message = {"type": "x", "bytes": b"\xff\x00", "text": "\u2603", "nested": {"n": [1, None]}}
    assert decode(encode(message)) == message


def test_tuples_come_back_as_lists() -> None:
    assert decode(encode({"type": "x", "t": (1, (2, 3))})) == {"type": "x", "t": [1, [2, 3]]}


def test_invalid_message_is_refused_before_encoding() -> None:
    with pytest.raises(TypeError, match=r"message\['s'\] is a set"):
        encode({"s": {1}})


def test_nesting_deeper_than_msgpack_allows_is_a_value_error() -> None:
    inner: list[Any] = []
    message = {"type": "deep", "list": inner}
    for _ in range(2000):
        inner.append([])
        inner = inner[0]
    with pytest.raises(ValueError, match=r"^message cannot be encoded: ") as caught:
        encode(message)
    assert isinstance(caught.value.__cause__, ValueError)


def test_decoding_something_else_than_a_map_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^stored message is not a msgpack map$"):
        decode(msgpack.packb([1, 2]))
