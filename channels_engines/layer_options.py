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

if TYPE_CHECKING:
    from .contract import BaseChannelEngine

__all__ = [
    "CAPACITY_PATTERNS",
    "LAYER_OPTIONS",
    "MAX_EXPIRY",
    "MAX_GROUP_EXPIRY",
    "MAX_MESSAGE_SIZE",
    "check_capacity_patterns",
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


#: The longest ``expiry``: a day. A message unread for that long has no reader left, and
#: until it expires it counts against its channel's capacity.
MAX_EXPIRY = 86400

#: The longest ``group_expiry``: ten years (0 or None: never). Far below where
#: ``now() + interval`` leaves PostgreSQL's range and where a float stops counting
#: microseconds exactly (about 285 years).
MAX_GROUP_EXPIRY = 10 * 365 * 86400

#: The largest ``max_message_size``: 256 MiB, well within PostgreSQL's 1 GB for one value,
#: with room for the copies a message passes through on its way there.
MAX_MESSAGE_SIZE = 256 * 1024 * 1024

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
}


def require_available(engine_class: type[BaseChannelEngine], name: str, where: str) -> None:
    """Refuse an engine whose optional packages are not installed, saying how to get them."""
    missing = engine_class.missing_requirements()
    if missing:
        packages = ", ".join(requirement.package for requirement in missing)
        hints = " and ".join(dict.fromkeys(requirement.install_hint() for requirement in missing))
        raise EngineUnavailableError(
            f"{where}: ENGINE {name!r} needs {packages}, which is not installed. "
            f"Install it with: {hints}"
        )


def compile_capacities(patterns: Mapping[Any, int]) -> list[tuple[re.Pattern[str], int]]:
    """``channel_capacity`` as (regex, capacity) pairs, globs translated, in order."""
    compiled = []
    for pattern, capacity in patterns.items():
        regex = (
            pattern if isinstance(pattern, re.Pattern) else re.compile(fnmatch.translate(pattern))
        )
        compiled.append((regex, capacity))
    return compiled
