"""The CONFIG keys the layer owns for every engine, their limits and how they are read.

Each engine declares and checks its own keys (``BaseChannelEngine.options``, for the
PostgreSQL engine :mod:`channels_engines.postgres.options`); the layer checks both sets
in one pass with :func:`~channels_engines.options.validate_options`.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .exceptions import EngineUnavailableError
from .options import MAX_CAPACITY, Option
from .requirements import not_installed
from .sealing import MIN_KEY_LENGTH, SEAL_OVERHEAD

if TYPE_CHECKING:
    from .contract import BaseChannelEngine

__all__ = [
    "CAPACITY_PATTERNS",
    "ENCRYPTION_KEYS",
    "HOOKS",
    "LAYER_OPTIONS",
    "MAX_EXPIRY",
    "MAX_GROUP_EXPIRY",
    "MAX_MESSAGE_SIZE",
    "check_capacity_patterns",
    "check_encryption_keys",
    "check_hooks",
    "compile_capacities",
    "require_available",
]

#: What ``channel_capacity`` may be, in words.
CAPACITY_PATTERNS = (
    "a dict mapping glob strings or compiled regular expressions to integers >= 1 and "
    f"<= {MAX_CAPACITY}"
)


def check_capacity_patterns(value: Any) -> str | None:
    """Check a ``channel_capacity`` mapping: glob strings or compiled regexes to capacities."""
    for pattern, capacity in value.items():
        if not isinstance(pattern, (str, re.Pattern)):
            return CAPACITY_PATTERNS
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            return CAPACITY_PATTERNS
        if not 1 <= capacity <= MAX_CAPACITY:
            return CAPACITY_PATTERNS
    return None


MAX_EXPIRY = 86400

#: The longest ``group_expiry``: ten years (0 or None: never). Far below where
#: ``now() + interval`` leaves PostgreSQL's range and where a float stops counting
#: microseconds exactly (about 285 years).
MAX_GROUP_EXPIRY = 10 * 365 * 86400

#: The largest ``max_message_size``: 256 MiB less :data:`SEAL_OVERHEAD`, so that a sealed
#: message still fits in 256 MiB, well within PostgreSQL's 1 GB for one value, with room
#: for the copies a message passes through on its way there.
MAX_MESSAGE_SIZE = 256 * 1024 * 1024 - SEAL_OVERHEAD

# What ``encryption_keys`` may be, in words, but None (the option adds it).
_KEYS_ALLOWED = (
    f"a non-empty list of strings of at least {MIN_KEY_LENGTH} characters (the first "
    "encrypts), False (no encryption)"
)
#: What ``encryption_keys`` may be, in words.
ENCRYPTION_KEYS = f"{_KEYS_ALLOWED} or None"


#: What ``hooks`` may be, in words.
HOOKS = (
    "a list of hooks: registered names, dotted paths, Hook subclasses or Hook instances "
    "(channels_engines.hooks.Hook)"
)


def check_hooks(value: Any) -> str | None:
    """Each item names a hook or is one; what it names is resolved by the layer."""
    from .hooks import Hook

    for item in value:
        if isinstance(item, str) and item:
            continue
        if isinstance(item, Hook) or (isinstance(item, type) and issubclass(item, Hook)):
            continue
        return HOOKS
    return None


def check_encryption_keys(value: Any) -> str | None:
    """Refuse True, an empty list, and keys that are not strings or are short."""
    if value is True:
        return ENCRYPTION_KEYS
    if value is False:
        return None
    if not value:
        return f"{ENCRYPTION_KEYS}; the list is empty"
    for index, key in enumerate(value):
        if not isinstance(key, str):
            return f"{ENCRYPTION_KEYS}; item {index} is a {type(key).__name__}"
        if len(key) < MIN_KEY_LENGTH:
            return f"{ENCRYPTION_KEYS}; item {index} is shorter than {MIN_KEY_LENGTH} characters"
    return None


#: CONFIG keys the layer handles for every engine.
LAYER_OPTIONS: Mapping[str, Option] = {
    "expiry": Option(
        (float,),
        60,
        "Seconds a message may wait unread before it is dropped.",
        above=0,
        maximum=MAX_EXPIRY,
    ),
    "group_expiry": Option(
        (float,),
        86400,
        "Seconds a group membership lasts after its latest group_add(); 0 or None "
        "means memberships never expire.",
        minimum=0,
        maximum=MAX_GROUP_EXPIRY,
        nullable=True,
    ),
    "capacity": Option(
        (int,),
        100,
        "Messages a channel may hold before send() raises ChannelFull.",
        minimum=1,
        maximum=MAX_CAPACITY,
    ),
    "channel_capacity": Option(
        (dict,),
        {},
        "Capacity per channel name: glob strings or compiled regexes to integers, "
        "first match wins, matched against the non-local part of process-specific names.",
        check=check_capacity_patterns,
        describe_as=CAPACITY_PATTERNS,
    ),
    "max_message_size": Option(
        (int,),
        2 * 1024 * 1024,
        "Largest encoded message in bytes; larger ones raise MessageTooLarge.",
        minimum=1024,
        maximum=MAX_MESSAGE_SIZE,
    ),
    "encryption_keys": Option(
        (list, tuple, bool),
        None,
        "Keys that encrypt message bodies: None derives them from SECRET_KEY and "
        "SECRET_KEY_FALLBACKS for engines whose messages leave the process; a list "
        "encrypts on every engine, with the first key, and decrypts with all; False "
        "turns encryption off.",
        nullable=True,
        secret=True,
        check=check_encryption_keys,
        describe_as=_KEYS_ALLOWED,
    ),
    "hooks": Option(
        (list, tuple),
        [],
        "Hooks that see the layer's events and may wrap its messages, in order: "
        "registered names, dotted paths, Hook subclasses or instances.",
        check=check_hooks,
        describe_as=HOOKS,
    ),
}


def require_available(engine_class: type[BaseChannelEngine], name: str, where: str) -> None:
    """Refuse an engine whose optional packages are not installed, saying how to get them."""
    missing = engine_class.missing_requirements()
    if missing:
        raise EngineUnavailableError(f"{where}: ENGINE {name!r} {not_installed(missing)}")


def compile_capacities(patterns: Mapping[Any, int]) -> list[tuple[re.Pattern[str], int]]:
    """``channel_capacity`` as (regex, capacity) pairs, globs translated, in order."""
    compiled = []
    for pattern, capacity in patterns.items():
        regex = (
            pattern if isinstance(pattern, re.Pattern) else re.compile(fnmatch.translate(pattern))
        )
        compiled.append((regex, capacity))
    return compiled
