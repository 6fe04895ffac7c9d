"""Values that may hold secrets, kept out of reprs (and so out of tracebacks and logs).

Error trackers record the local variables of every frame of a traceback by their
``repr``; settings pass through many frames. Wrapping them once, where they enter the
package, keeps passwords out of all of those.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["HiddenValues", "Secret"]


class Secret(str):
    """A string (a password or a token) whose ``repr`` never shows it.

    It is a ``str`` so it can be handed to the database driver as it is; only its
    representation is hidden, which keeps it out of tracebacks that show local
    variables and out of the reprs of dicts and objects holding it.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('********')"


class HiddenValues(dict[str, Any]):
    """A settings dict whose ``repr`` shows its keys, and only the values of ``shown`` keys."""

    def __init__(self, values: Any = (), shown: Iterable[str] = ()) -> None:
        super().__init__(values)
        self.shown = frozenset(shown)

    def __repr__(self) -> str:
        shown: frozenset[str] = getattr(self, "shown", frozenset())  # all hidden if no __init__
        items = (
            f"{key!r}: {value!r}" if key in shown else f"{key!r}: <hidden>"
            for key, value in self.items()
        )
        return "{" + ", ".join(items) + "}"

    __str__ = __repr__
