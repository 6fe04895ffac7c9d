"""Message encoding: msgpack, validated and size-limited before and after encoding.

Bytes are encoded once by the layer; engines store and move opaque ``bytes``.
"""

from __future__ import annotations

from typing import Any, NoReturn

import msgpack
from channels.exceptions import MessageTooLarge

from .validation import MAX_NESTING, require_valid_message

__all__ = ["UndecodableMessage", "decode", "encode"]


def encode(message: Any, max_size: int | None = None, *, target: str = "") -> bytes:
    """Validate ``message`` and return its msgpack encoding (tuples become lists).

    Raises ``MessageTooLarge`` when the encoding is longer than ``max_size`` bytes: during
    validation as soon as that is certain, else after encoding (text that is not ASCII
    takes more bytes than characters). ``target`` ("channel 'x'") names the destination in
    that message.
    """
    require_valid_message(message, max_size, target=target)
    try:
        data = msgpack.packb(message, use_bin_type=True)
    except ValueError as exc:
        # Text that UTF-8 cannot encode: a lone surrogate ("\ud800").
        raise ValueError(f"message cannot be encoded: {exc}") from exc
    if max_size is not None and len(data) > max_size:
        where = f" for {target}" if target else ""
        raise MessageTooLarge(
            f"message{where} is {len(data):,} bytes encoded; the limit is {max_size:,} bytes "
            "(CONFIG 'max_message_size')."
        )
    return data


class UndecodableMessage(ValueError):
    """Stored bytes that are not a message this layer could have sent.

    ``reason`` says why in words that never quote the payload.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode(data: bytes, max_size: int | None = None) -> dict[str, Any]:
    """Return the message encoded in ``data``, or raise :class:`UndecodableMessage`.

    What another writer put in the tables (a bug, an attack, another version) is held to
    the rules a sent message obeys: at most ``max_size`` bytes, msgpack without extension
    types, a map, and every value allowed (str keys at every level, 64-bit integers,
    nesting, ...). msgpack derives its length limits from ``len(data)``, which is checked
    against ``max_size`` first.
    """
    if max_size is not None and len(data) > max_size:
        raise UndecodableMessage(
            f"it is {len(data):,} bytes, over max_message_size ({max_size:,} bytes)"
        )
    try:
        message = msgpack.unpackb(data, raw=False, ext_hook=_refuse_extension)
    except UndecodableMessage:
        raise
    except Exception as exc:  # anything the decoder raises means "not a message"
        raise UndecodableMessage(f"msgpack cannot decode it ({type(exc).__name__})") from None
    if not isinstance(message, dict):
        raise UndecodableMessage(f"it is a msgpack {_KINDS.get(type(message), 'value')}, not a map")
    try:
        require_valid_message(message)
    except TypeError:
        # The walk's own message would quote keys and values: only say which rule broke.
        raise UndecodableMessage(
            "it holds a key that is not a str, or a value of a type messages may not hold"
        ) from None
    except ValueError:
        raise UndecodableMessage(
            "it holds an integer outside the signed 64-bit range, or nests deeper than "
            f"{MAX_NESTING} levels"
        ) from None
    return message


def decode_again(data: bytes) -> dict[str, Any]:
    """A fresh copy of the message in ``data``, which :func:`decode` accepted before
    (so it needs none of its checks)."""
    message: dict[str, Any] = msgpack.unpackb(data, raw=False)
    return message


_KINDS = {list: "array", str: "string", bytes: "binary", int: "integer", float: "float"}
_KINDS.update({bool: "boolean", type(None): "nil"})


def _refuse_extension(code: int, data: bytes) -> NoReturn:
    raise UndecodableMessage(f"it holds a msgpack extension type (code {code})")
