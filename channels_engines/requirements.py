"""Optional packages that engines and credential providers need, and how to install them.

Neutral ground: engines and credential providers both declare requirements, and neither
should import the other's contract to do so.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

__all__ = ["Requirement", "installed", "not_installed"]


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class Requirement:
    """An importable module an engine or a credential provider needs, and how to install it."""

    module: str
    package: str
    extra: str | None = None

    def installed(self) -> bool:
        return installed(self.module)

    def install_hint(self) -> str:
        if self.extra:
            return f"pip install 'channels-engines[{self.extra}]'"
        return f"pip install '{self.package}'"


def not_installed(missing: list[Requirement]) -> str:
    """What to tell about ``missing`` requirements: "needs X, which is not installed.
    Install it with: pip install ..."."""
    packages = ", ".join(requirement.package for requirement in missing)
    hints = " and ".join(dict.fromkeys(requirement.install_hint() for requirement in missing))
    return f"needs {packages}, which is not installed. Install it with: {hints}"
