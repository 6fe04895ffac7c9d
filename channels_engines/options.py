"""Declared CONFIG keys: what an engine (or the layer itself) accepts, checked before use.

Engines list their keys as :class:`Option` values so that the layer can refuse unknown or
mistyped settings with a precise message, fill in defaults, and so that documentation and
tooling can list every key with its type and default.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .exceptions import InvalidConfigError
from .redaction import HiddenSettings, conceal, plain

__all__ = ["MAX_CAPACITY", "Option", "closest", "validate_options"]

#: Check hook: returns None when the value is acceptable, else what is allowed.
Check = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Option:
    """One CONFIG key: accepted types, default, and a sentence for the docs.

    ``types`` lists the accepted Python types (``bool`` is never accepted where ``int`` is
    asked for; NaN and infinities never where ``float`` is). ``minimum`` and ``maximum``
    bound numbers inclusively, ``above`` exclusively; ``choices`` restricts to fixed
    values; ``check`` is a last hook for shapes the other fields cannot say. ``secret``
    options are never shown in reprs or error messages; their strings arrive as
    :class:`~channels_engines.redaction.Secret`, however deep in a dict or list.
    """

    types: tuple[type, ...]
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    secret: bool = False
    check: Check | None = field(default=None, compare=False)
    describe_as: str | None = None
    required: bool = False

    def describe(self) -> str:
        """What is allowed, in words: 'a number >= 0 or None'."""
        if self.describe_as:
            text = self.describe_as
        elif self.choices is not None:
            text = "one of " + ", ".join(repr(choice) for choice in self.choices)
        else:
            # Without an upper bound, say that infinity is not a number here either.
            words = _TYPE_WORDS if self.maximum is not None else _UNBOUNDED_TYPE_WORDS
            names = [words.get(t, t.__name__) for t in self.types]
            text = " or ".join(dict.fromkeys(names))
            bounds = []
            if self.above is not None:
                bounds.append(f"> {_number(self.above)}")
            elif self.minimum is not None:
                bounds.append(f">= {_number(self.minimum)}")
            if self.maximum is not None:
                bounds.append(f"<= {_number(self.maximum)}")
            if bounds:
                text += " " + " and ".join(bounds)
        if self.nullable:
            text += " or None"
        return text

    def problem(self, value: Any) -> str | None:
        """Return None when ``value`` is acceptable, else a description of what is allowed."""
        if value is None:
            return None if self.nullable else self.describe()
        if self.choices is not None:
            return None if value in self.choices else self.describe()
        if not _is_instance(value, self.types):
            return self.describe()
        if isinstance(value, float) and not math.isfinite(value):
            return self.describe()
        if (
            (self.minimum is not None and value < self.minimum)
            or (self.above is not None and value <= self.above)
            or (self.maximum is not None and value > self.maximum)
        ):
            return self.describe()
        if self.check is not None:
            return self.check(value)
        return None


def _number(value: float) -> str:
    """A bound as people write it: 86400, not 86400.0 or 8.64e+04."""
    return str(int(value)) if float(value).is_integer() else repr(value)


_TYPE_WORDS = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "True or False",
    dict: "a dict",
    list: "a list",
}
_UNBOUNDED_TYPE_WORDS = {**_TYPE_WORDS, float: "a finite number"}


def _is_instance(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate most like ``word``, if any is close enough to be a likely typo."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def validate_options(
    values: Mapping[str, Any] | HiddenSettings,
    declared: Mapping[str, Option],
    *,
    where: str,
    owner: str,
) -> dict[str, Any]:
    """Check ``values`` against ``declared`` and return them with defaults filled in.

    ``where`` names the setting for messages ("CHANNEL_LAYERS['default']"); ``owner`` says
    whose keys these are ("ENGINE 'postgres'"). The values of ``secret`` options come back
    concealed (see :func:`~channels_engines.redaction.conceal`), the others plain.
    """
    # Opaque while they are checked: the values may hold passwords anywhere, and error
    # trackers record the local variables of a raising frame, walking mappings. No value
    # is bound to a local name either.
    values = HiddenSettings(values)
    allowed = sorted(declared)
    result: dict[str, Any] = {}
    for key in values:
        if key not in declared:
            hint = closest(key, allowed) if isinstance(key, str) else None
            suggestion = f" Did you mean {hint!r}?" if hint else ""
            raise InvalidConfigError(
                f"{where}: unknown CONFIG key {key!r} for {owner}.{suggestion} "
                f"Allowed keys: {', '.join(allowed)}."
            )
        option = declared[key]
        problem = option.problem(plain(values[key]))
        if problem is not None:
            shown = "<hidden>" if option.secret else _short_repr(plain(values[key]))
            raise InvalidConfigError(
                f"{where}: CONFIG[{key!r}] must be {problem}, not {shown} "
                f"({type(plain(values[key])).__name__})."
            )
        result[key] = conceal(values[key]) if option.secret else plain(values[key])
    for key, option in declared.items():
        if key not in result and option.required:
            raise InvalidConfigError(
                f"{where}: the CONFIG key {key!r} is required for {owner}; it must be "
                f"{option.describe()}."
            )
        result.setdefault(key, conceal(option.default) if option.secret else option.default)
    return result


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: The largest capacity: the largest PostgreSQL ``integer``, which engines may store it in.
MAX_CAPACITY = 2**31 - 1
