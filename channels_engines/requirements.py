"""Optional packages that engines and credential providers need, and how to install them.

Neutral ground: engines and credential providers both declare requirements, and neither
should import the other's contract to do so.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
from dataclasses import dataclass

__all__ = ["Requirement", "installed", "not_installed"]


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


#: The distribution of this package, whose extras the built-in engines and providers name.
OWN_DISTRIBUTION = "channels-engines"


@dataclass(frozen=True)
class Requirement:
    """An importable module an engine or a credential provider needs, and how to install it.

    ``extra`` is an extra of ``distribution``, the package that declares the requirement
    (``pip install 'distribution[extra]'``; channels-engines when left out). :meth:`of`
    finds the distribution from the module of the class that declares the requirement;
    without an extra, the hint installs ``package`` itself.
    """

    module: str
    package: str
    extra: str | None = None
    distribution: str | None = None

    def installed(self) -> bool:
        return installed(self.module)

    def of(self, owner: type) -> Requirement:
        """This requirement as declared by ``owner``: with the distribution of ``owner``'s
        module, when none is given, so that its extra is looked up in the right package.
        When no single installed distribution provides that module, the extra cannot be
        named: the hint installs the required package itself."""
        if self.extra is None or self.distribution is not None:
            return self
        distribution = distribution_of(owner.__module__)
        if distribution is None:
            return dataclasses.replace(self, extra=None)
        return dataclasses.replace(self, distribution=distribution)

    def install_hint(self) -> str:
        if self.extra:
            return f"pip install '{self.distribution or OWN_DISTRIBUTION}[{self.extra}]'"
        return f"pip install '{self.package}'"


def distribution_of(module: str) -> str | None:
    """The installed distribution that provides ``module`` (by its top-level package),
    or None when none or several do."""
    top = module.partition(".")[0]
    if top == "channels_engines":
        return OWN_DISTRIBUTION
    names = list(dict.fromkeys(importlib.metadata.packages_distributions().get(top, [])))
    return names[0] if len(names) == 1 else None


def not_installed(missing: list[Requirement]) -> str:
    """What to tell about ``missing`` requirements: "needs X, which is not installed.
    Install it with: pip install ..."."""
    packages = ", ".join(requirement.package for requirement in missing)
    hints = " and ".join(dict.fromkeys(requirement.install_hint() for requirement in missing))
    return f"needs {packages}, which is not installed. Install it with: {hints}"
