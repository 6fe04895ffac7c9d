"""Message encoding: msgpack, validated before and size-limited after encoding.

Bytes are encoded once by the layer; engines store and move opaque ``bytes``.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .validation import require_valid_message

__all__ = ["decode", "encode"]


def encode(message: Any) -> bytes:
    """Validate ``message`` and return its msgpack encoding (tuples become lists)."""
    require_valid_message(message)
    try:
        return msgpack.packb(message, use_bin_type=True)
    except ValueError as exc:
        # msgpack refuses nesting deeper than its recursion limit.
        raise ValueError(f"message cannot be encoded: {exc}") from exc


def decode(data: bytes) -> dict[str, Any]:
    """Return the message encoded in ``data``."""
    message = msgpack.unpackb(data, raw=False, strict_map_key=True)
    if not isinstance(message, dict):
        raise ValueError("stored message is not a msgpack map")
    return message
