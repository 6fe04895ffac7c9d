"""Channel names, group names and message values, checked once by the layer.

Stricter than Channels' own checks: names are matched in full and ASCII only, so
``"grp\\n"`` and ``"abc!é"`` are refused, and names may be 100 characters long, which is
the minimum the channel layer specification asks layers to support.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "MAX_NAME_LENGTH",
    "non_local_name",
    "require_channel_name",
    "require_group_name",
    "require_valid_message",
]

MAX_NAME_LENGTH = 100

_CHANNEL = re.compile(r"[a-zA-Z0-9._-]+(?:![a-zA-Z0-9._-]*)?", re.ASCII)
_GROUP = re.compile(r"[a-zA-Z0-9._-]+", re.ASCII)
_ALLOWED_CHARACTERS = "ASCII letters, digits, hyphens, underscores and periods"

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_ALLOWED_TYPES = (
    "dict (with str keys), list, tuple, str, bytes, int (signed 64-bit), float, bool and None"
)


def require_channel_name(name: Any, argument: str = "channel") -> str:
    """Return ``name`` if it is a valid channel name, else raise ``TypeError``."""
    _require_str(name, argument, "channel")
    if not _CHANNEL.fullmatch(name):
        raise TypeError(
            f"{argument} {_shown(name)} is not a valid channel name: use only "
            f"{_ALLOWED_CHARACTERS}, plus at most one '!' separating a process-specific "
            "local part."
        )
    return str(name)


def require_group_name(name: Any, argument: str = "group") -> str:
    """Return ``name`` if it is a valid group name, else raise ``TypeError``."""
    _require_str(name, argument, "group")
    if not _GROUP.fullmatch(name):
        raise TypeError(
            f"{argument} {_shown(name)} is not a valid group name: use only {_ALLOWED_CHARACTERS}."
        )
    return str(name)


def non_local_name(channel: str) -> str:
    """The part of a channel name that capacity and routing apply to.

    For a process-specific channel ("specific.abc!x1") that is the part up to and
    including the "!"; any other channel is its own non-local part.
    """
    mark = channel.find("!")
    return channel if mark < 0 else channel[: mark + 1]


def require_valid_message(message: Any) -> None:
    """Raise ``TypeError`` or ``ValueError`` unless ``message`` holds only allowed values.

    The walk is iterative so that deeply nested input cannot exhaust the stack here.
    """
    if not isinstance(message, dict):
        raise TypeError(
            f"message must be a dict, not {type(message).__name__}; messages may hold "
            f"{_ALLOWED_TYPES}."
        )
    stack: list[tuple[str, Any]] = [("message", message)]
    while stack:
        path, value = stack.pop()
        if value is None or isinstance(value, (str, bytes, float, bool)):
            continue
        if isinstance(value, int):
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise ValueError(
                    f"{path} is {value}, outside the signed 64-bit range messages allow."
                )
            continue
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise TypeError(
                        f"{path} has the key {key!r} ({type(key).__name__}); dict keys in "
                        "messages must be str."
                    )
                stack.append((f"{path}[{key!r}]", item))
            continue
        if isinstance(value, (list, tuple)):
            stack.extend((f"{path}[{index}]", item) for index, item in enumerate(value))
            continue
        raise TypeError(f"{path} is a {type(value).__name__}; messages may hold {_ALLOWED_TYPES}.")


def _require_str(name: Any, argument: str, kind: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be a str {kind} name, not {type(name).__name__}.")
    if not 0 < len(name) <= MAX_NAME_LENGTH:
        raise TypeError(
            f"{argument} {_shown(name)} is not a valid {kind} name: it has {len(name)} "
            f"characters; names have 1 to {MAX_NAME_LENGTH}."
        )


def _shown(name: str, limit: int = 60) -> str:
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 4] + "...'"
