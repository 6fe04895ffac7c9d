"""A virtual environment inside the checkout, for scripts that a bare ``python3`` starts.

Current Debian, Ubuntu and Homebrew Pythons refuse ``pip install`` outside a virtual
environment (PEP 668). So the scripts a new user runs first, ``examples/chat/demo.py``
and ``noxfile.py``, install what they need into a directory of the checkout, once, and
run again from there. Only the standard library is used: nothing is installed yet.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

STAMP = "checkout-venv.json"
OS_RELEASE = Path("/etc/os-release")


class VenvError(Exception):
    """Something the user must fix; the message says what, and is shown without a traceback."""


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure(
    venv: Path,
    pip_args: Sequence[str],
    *,
    purpose: str,
    installing: str,
    fingerprint: str = "",
    say: Callable[[str], None] = print,
) -> Path:
    """Create ``venv`` with this Python and ``pip install`` ``pip_args`` into it; return its
    interpreter.

    Both steps are skipped when they were done before: the venv is created again when this
    is another Python than the one that created it, and the packages are installed again
    when ``pip_args`` or ``fingerprint`` (e.g. a digest of pyproject.toml) change.
    """
    python = venv_python(venv)
    stamp_path = venv / STAMP
    this_python = f"{os.path.realpath(sys.executable)} {sys.version}"
    wanted = {"pip_args": list(pip_args), "fingerprint": fingerprint}
    stamp = _read_stamp(stamp_path)
    if not python.exists() or stamp.get("python") != this_python:
        say(f"Creating a virtual environment for {purpose} in {shown(venv)} ...")
        _create(venv)
        stamp = {"python": this_python}
        _write_stamp(stamp_path, stamp)
    if any(stamp.get(key) != value for key, value in wanted.items()):
        say(installing)
        command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
        if subprocess.run([*command, *pip_args], check=False).returncode != 0:  # noqa: S603
            raise VenvError(f"pip could not install {purpose}'s packages into {shown(venv)}.")
        _write_stamp(stamp_path, {**stamp, **wanted})
    return python


def exec_python(python: Path, args: Sequence[str]) -> NoReturn:
    """Replace this process by ``python args`` (where the platform can; else run and exit)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        os.execv(python, [str(python), *args])  # noqa: S606 - the venv's own interpreter
    sys.exit(subprocess.call([str(python), *args]))  # noqa: S603


def missing_venv_support() -> str | None:
    """What to install so that this Python can create virtual environments with pip in
    them; None when it can."""
    missing = [name for name in ("venv", "ensurepip") if not _importable(name)]
    if not missing:
        return None
    try:
        os_release = OS_RELEASE.read_text(errors="replace")
    except OSError:
        os_release = ""
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return venv_hint(sys.executable, version, missing, os_release, root=root)


def venv_hint(
    executable: str, version: str, missing: Sequence[str], os_release: str, *, root: bool
) -> str:
    """The message for a Python that lacks the ``missing`` modules (venv, ensurepip)."""
    modules = " and ".join(missing)
    plural = "s are" if len(missing) > 1 else " is"
    problem = (
        f"Python {version} ({executable}) cannot create a virtual environment: "
        f"its {modules} module{plural} missing."
    )
    if _debian_like(os_release):
        sudo = "" if root else "sudo "
        them = "them" if len(missing) > 1 else "it"
        package = f"python{version}-venv"
        return f"{problem}\nInstall the package that provides {them}: {sudo}apt install {package}"
    return (
        f"{problem}\nInstall your system's package that provides Python {version}'s venv "
        "and ensurepip modules, or use a Python from python.org, pyenv or uv."
    )


def shown(path: Path) -> str:
    """A path relative to the working directory when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _create(venv: Path) -> None:
    hint = missing_venv_support()
    if hint is not None:
        raise VenvError(hint)
    command = [sys.executable, "-m", "venv"]
    if venv.exists():
        command.append("--clear")  # made by another Python, or left half-made
    result = subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
        [*command, str(venv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        # Never leave a half-made venv behind: the next run would take it for a good one.
        shutil.rmtree(venv, ignore_errors=True)
        raise VenvError(
            f"`{sys.executable} -m venv {shown(venv)}` failed:\n{result.stdout.strip()}"
        )


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def _debian_like(os_release: str) -> bool:
    """Whether /etc/os-release describes Debian, Ubuntu or a derivative (apt, python3.X-venv)."""
    for line in os_release.splitlines():
        key, _, value = line.partition("=")
        names = set(value.strip().strip("\"'").split())
        if key.strip() in ("ID", "ID_LIKE") and names & {"debian", "ubuntu"}:
            return True
    return False


def _read_stamp(path: Path) -> dict[str, object]:
    try:
        stamp = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def _write_stamp(path: Path, stamp: dict[str, object]) -> None:
    path.write_text(json.dumps(stamp, indent=2) + "\n")
