"""Channel names, group names and message values, checked once by the layer.

Stricter than Channels' own checks: names are matched in full and ASCII only, so
``"grp\\n"`` and ``"abc!é"`` are refused, and names may be 100 characters long, which is
the minimum the channel layer specification asks layers to support.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from channels.exceptions import MessageTooLarge

__all__ = [
    "MAX_NAME_LENGTH",
    "MAX_NESTING",
    "non_local_name",
    "require_channel_name",
    "require_group_name",
    "require_valid_message",
]

MAX_NAME_LENGTH = 100

#: Levels of dicts and lists a message may nest, the message itself being the first: far
#: beyond what messages hold, and well below the 511 levels msgpack packs and the 1024 it
#: unpacks, and below what ``repr()`` and ``json`` handle without hitting Python's
#: recursion limit.
MAX_NESTING = 100

_CHANNEL = re.compile(r"[a-zA-Z0-9._-]+(?:![a-zA-Z0-9._-]*)?", re.ASCII)
_GROUP = re.compile(r"[a-zA-Z0-9._-]+", re.ASCII)
_ALLOWED_CHARACTERS = "ASCII letters, digits, hyphens, underscores and periods"

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_FLOAT_SIZE = 9  # msgpack packs every float as a double
_SHARED_MINIMUM = 64  # bytes; smaller shared containers are cheaper to walk again
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


def require_valid_message(message: Any, max_size: int | None = None, *, target: str = "") -> None:
    """Raise unless ``message`` holds only allowed values, nested at most ``MAX_NESTING`` deep.

    ``TypeError`` for a value of a type messages may not hold; ``ValueError`` for an
    integer out of range, a message that contains itself, or one nested too deeply;
    ``MessageTooLarge`` as soon as the message is sure to encode to more than ``max_size``
    bytes (``target`` says where it was going, for the message: "channel 'x'").

    One iterative pass that stops at the first problem and walks a container shared by
    several parents once, so that its work is bounded by ``max_size`` whatever the
    message holds. Paths (``message['a'][3]``) are built only for an error.
    """
    if not isinstance(message, dict):
        raise TypeError(
            f"message must be a dict, not {type(message).__name__}; messages may hold "
            f"{_ALLOWED_TYPES}."
        )
    limit = sys.maxsize if max_size is None else max_size
    # ``size`` is a lower bound of the encoded size. Entering a container counts its
    # header and one byte for each of its keys and values at once, so that a huge list is
    # refused before it is walked; visiting a key or value adds what it takes beyond that.
    size = _container_size(message)
    # The open containers, outermost first: the ancestors of the current value, as
    # [container, items, is a dict, key being looked at, size before it, levels so far].
    # Plain lists: this runs for every message sent, and they are the cheapest frame.
    frames: list[list[Any]] = [[message, iter(message.items()), True, None, 0, 1]]
    open_ids = {id(message)}
    # Containers of _SHARED_MINIMUM bytes or more walked to the end, by id: (encoded
    # size, levels of nesting). One that appears again (a shared subtree) is not walked
    # again: "l = [l, l]" sixty times over is sixty containers, not 2**60 values.
    walked: dict[int, tuple[int, int]] = {}
    while True:
        if size > limit:
            raise MessageTooLarge(_too_large(size, limit, target))
        frame = frames[-1]
        item = next(frame[_ITEMS], None)
        if item is None:
            frames.pop()
            open_ids.discard(id(frame[_CONTAINER]))
            own_size, height = size - frame[_START], frame[_HEIGHT]
            if own_size >= _SHARED_MINIMUM:
                walked[id(frame[_CONTAINER])] = (own_size, height)
            if not frames:
                return
            if height >= frames[-1][_HEIGHT]:
                frames[-1][_HEIGHT] = height + 1
            continue
        key, value = item
        frame[_KEY] = key
        # Text takes its header (1 byte up to 31 UTF-8 bytes, 2 to 255, 3 to 65535, else 5)
        # and at least a byte per character, exactly one for ASCII. Computed inline: this
        # is the most frequent value, and a call would double the cost of the walk.
        if frame[_IS_DICT]:
            if type(key) is not str and not isinstance(key, str):
                raise TypeError(
                    f"{_path(frames[:-1])} has the key {key!r} ({type(key).__name__}); dict "
                    "keys in messages must be str."
                )
            n = len(key)
            size += n if n < 32 else n + 1 if n < 0x100 else n + 2 if n < 0x10000 else n + 4
        if type(value) is str or isinstance(value, str):
            n = len(value)
            size += n if n < 32 else n + 1 if n < 0x100 else n + 2 if n < 0x10000 else n + 4
        elif isinstance(value, int):  # bool included
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise ValueError(
                    f"{_path(frames)} is {value}, outside the signed 64-bit range messages allow."
                )
        elif isinstance(value, float):
            size += _FLOAT_SIZE - 1
        elif value is None:
            pass
        elif isinstance(value, bytes):
            size += _bytes_size(value) - 1
        elif isinstance(value, (dict, list, tuple)):
            done = walked.get(id(value))
            if done is not None:
                # Shared with an earlier parent: the same size again, and its depth here.
                if len(frames) + done[1] > MAX_NESTING:
                    raise ValueError(_too_deep(frames))
                size += done[0] - 1
                if done[1] >= frame[_HEIGHT]:
                    frame[_HEIGHT] = done[1] + 1
                continue
            if id(value) in open_ids:
                raise ValueError(_contains_itself(frames, value))
            if len(frames) == MAX_NESTING:
                raise ValueError(_too_deep(frames))
            if isinstance(value, dict):
                frames.append([value, iter(value.items()), True, None, size - 1, 1])
            else:
                frames.append([value, enumerate(value), False, None, size - 1, 1])
            open_ids.add(id(value))
            size += _container_size(value) - 1
        else:
            raise TypeError(
                f"{_path(frames)} is a {type(value).__name__}; messages may hold {_ALLOWED_TYPES}."
            )


# Positions in a frame of require_valid_message().
_CONTAINER, _ITEMS, _IS_DICT, _KEY, _START, _HEIGHT = range(6)


def _container_size(container: dict[str, Any] | list[Any] | tuple[Any, ...]) -> int:
    """Header, and one byte for each value (and key): what any content takes at least."""
    count = len(container)
    header = 1 if count < 16 else 3 if count < 0x10000 else 5
    return header + (2 * count if isinstance(container, dict) else count)


def _bytes_size(data: bytes) -> int:
    count = len(data)
    return count + (2 if count < 0x100 else 3 if count < 0x10000 else 5)


def _path(frames: list[list[Any]]) -> str:
    return "message" + "".join(f"[{frame[_KEY]!r}]" for frame in frames)


def _contains_itself(frames: list[list[Any]], container: Any) -> str:
    depth = next(index for index, frame in enumerate(frames) if frame[_CONTAINER] is container)
    outer = _path(frames[:depth])
    return f"{_path(frames)} is {outer} itself: a message cannot contain itself."


def _too_deep(frames: list[list[Any]]) -> str:
    return (
        f"{_path(frames)} is nested too deeply: messages may nest dicts and lists at most "
        f"{MAX_NESTING} levels deep, the message itself being the first."
    )


def _too_large(size: int, limit: int, target: str) -> str:
    where = f" for {target}" if target else ""
    return (
        f"message{where} is at least {size:,} bytes encoded; the limit is {limit:,} bytes "
        "(CONFIG 'max_message_size')."
    )


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
