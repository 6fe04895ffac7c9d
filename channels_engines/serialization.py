"""Message encoding: msgpack, validated and size-limited before and after encoding.

Bytes are encoded once by the layer; engines store and move opaque ``bytes``.
"""

from __future__ import annotations

from typing import Any

import msgpack
from channels.exceptions import MessageTooLarge

from .validation import require_valid_message

__all__ = ["decode", "encode"]


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


def decode(data: bytes) -> dict[str, Any]:
    """Return the message encoded in ``data``."""
    message = msgpack.unpackb(data, raw=False, strict_map_key=True)
    if not isinstance(message, dict):
        raise ValueError("stored message is not a msgpack map")
    return message
