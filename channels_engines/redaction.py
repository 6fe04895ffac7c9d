"""Secrets and settings kept out of what error trackers record.

Error trackers record the local variables of every frame of a traceback (Sentry does with
its defaults): they walk mappings, lists, tuples and sets, record strings by value (a
``str`` subclass included, whatever its ``__repr__``) and anything else by ``repr()``.
So a password is kept in a :class:`Secret`, which is not a string and shows only
asterisks, and settings, which may hold a password anywhere, are kept in a
:class:`HiddenSettings` from the moment they reach the package: not a mapping, so a
tracker records its ``repr()``, which hides the values.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Iterator, KeysView, Mapping
from typing import Any, NoReturn

__all__ = ["HiddenSettings", "Secret", "conceal", "plain"]


class Secret:
    """A password or a token: ``reveal()`` returns it, nothing else shows it.

    Call ``reveal()`` where the value is handed over (to a driver or a client library),
    inside that expression, so that the revealed string never becomes a local variable
    of a frame that can raise. Two secrets are equal when their values are (compared in
    constant time); a secret is never equal to a string. Copies are the same object, and
    a secret cannot be pickled.
    """

    __slots__ = ("_value",)

    _value: str

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"Secret() takes a str, not {type(value).__name__}")
        object.__setattr__(self, "_value", value)

    def reveal(self) -> str:
        """The password or token itself."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    def __str__(self) -> str:
        return "********"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("a Secret cannot be changed")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("a Secret cannot be changed")

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a Secret cannot be pickled: a pickle would hold the value")


class HiddenSettings:
    """Settings (a CONFIG, or a dict inside one) whose values may be secrets.

    Read like a read-only dict: ``settings[key]``, ``get()``, ``keys()``, ``in``,
    iteration over the keys, ``len()``, and ``**settings`` in a call. It is not a
    ``Mapping`` (trackers walk mappings) and has no ``items()``. Its ``repr()`` shows the
    keys, and the values of the ``shown`` keys only. It equals a mapping or another
    ``HiddenSettings`` with the same items.
    """

    __slots__ = ("_shown", "_values")

    _shown: frozenset[str]
    _values: dict[Any, Any]

    def __init__(
        self, values: Mapping[Any, Any] | HiddenSettings | None = None, *, shown: Iterable[str] = ()
    ) -> None:
        if isinstance(values, HiddenSettings):
            self._values = dict(values._values)
            self._shown = frozenset(shown) | values._shown
        else:
            self._values = dict(values or {})
            self._shown = frozenset(shown)

    def __getitem__(self, key: Any) -> Any:
        return self._values[key]

    def get(self, key: Any, default: Any = None) -> Any:
        return self._values.get(key, default)

    def keys(self) -> KeysView[Any]:
        return self._values.keys()

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def without(self, *keys: Any) -> HiddenSettings:
        """The same settings less ``keys``."""
        rest = HiddenSettings(shown=self._shown)
        rest._values = {key: value for key, value in self._values.items() if key not in keys}
        return rest

    def __eq__(self, other: object) -> bool:
        if isinstance(other, HiddenSettings):
            return self._values == other._values
        if isinstance(other, Mapping):
            return self._values == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown: frozenset[str] = getattr(self, "_shown", frozenset())  # all hidden if no __init__
        items = (
            f"{key!r}: {value!r}" if key in shown else f"{key!r}: <hidden>"
            for key, value in getattr(self, "_values", {}).items()
        )
        return "{" + ", ".join(items) + "}"

    __str__ = __repr__


def conceal(value: Any) -> Any:
    """``value`` with every string in it made a :class:`Secret` and every mapping a
    :class:`HiddenSettings`, however deep: for settings known to hold secrets somewhere."""
    if isinstance(value, str):
        return Secret(value)
    if isinstance(value, (Mapping, HiddenSettings)):
        concealed = HiddenSettings()
        concealed._values = {key: conceal(value[key]) for key in value}
        return concealed
    if isinstance(value, (list, tuple)):
        return type(value)(conceal(item) for item in value)
    return value


def plain(value: Any) -> Any:
    """The reverse of :func:`conceal`: for settings that turn out not to be secret.

    A secret that is revealed this way must not stay in a local variable of a frame
    that can raise.
    """
    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, HiddenSettings):
        return {key: plain(value[key]) for key in value}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(item) for item in value)
    return value
