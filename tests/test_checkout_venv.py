"""tools/checkout_venv.py: the virtual environment that ``python3 noxfile.py`` and the chat
demo create in the checkout, and what it says when the system's Python cannot make one."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import checkout_venv  # noqa: E402

DEBIAN = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nID=debian\n'
UBUNTU = 'NAME="Ubuntu"\nVERSION_ID="24.04"\nID=ubuntu\nID_LIKE=debian\n'
MINT = 'NAME="Linux Mint"\nID=linuxmint\nID_LIKE="ubuntu debian"\n'
FEDORA = 'NAME="Fedora Linux"\nID=fedora\n'


@pytest.mark.parametrize("os_release", [DEBIAN, UBUNTU, MINT], ids=["debian", "ubuntu", "mint"])
def test_hint_on_debian_and_ubuntu_names_the_package(os_release: str) -> None:
    hint = checkout_venv.venv_hint(
        "/usr/bin/python3", "3.12", ["ensurepip"], os_release, root=False
    )
    assert hint == (
        "Python 3.12 (/usr/bin/python3) cannot create a virtual environment: its ensurepip "
        "module is missing.\n"
        "Install the package that provides it: sudo apt install python3.12-venv"
    )


def test_hint_for_root_has_no_sudo_and_names_every_missing_module() -> None:
    hint = checkout_venv.venv_hint(
        "/usr/bin/python3", "3.11", ["venv", "ensurepip"], DEBIAN, root=True
    )
    assert hint == (
        "Python 3.11 (/usr/bin/python3) cannot create a virtual environment: its venv and "
        "ensurepip modules are missing.\n"
        "Install the package that provides them: apt install python3.11-venv"
    )


@pytest.mark.parametrize("os_release", [FEDORA, ""], ids=["fedora", "no-os-release"])
def test_hint_elsewhere_says_what_is_missing(os_release: str) -> None:
    hint = checkout_venv.venv_hint(
        "/opt/py/bin/python3", "3.13", ["ensurepip"], os_release, root=False
    )
    assert hint == (
        "Python 3.13 (/opt/py/bin/python3) cannot create a virtual environment: its ensurepip "
        "module is missing.\n"
        "Install your system's package that provides Python 3.13's venv and ensurepip "
        "modules, or use a Python from python.org, pyenv or uv."
    )


def test_python_without_ensurepip_gets_the_hint_and_nothing_is_created(tmp_path: Path) -> None:
    """As on Debian without python3-venv: ensurepip cannot be imported."""
    venv = tmp_path / "venv"
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys
        sys.path.insert(0, {str(ROOT / "tools")!r})

        class NoEnsurepip(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "ensurepip":
                    raise ModuleNotFoundError("No module named 'ensurepip'", name=name)
                return None

        sys.meta_path.insert(0, NoEnsurepip())
        import checkout_venv
        try:
            checkout_venv.ensure(
                checkout_venv.Path({str(venv)!r}), ["nox"], purpose="nox", installing="-"
            )
        except checkout_venv.VenvError as exc:
            sys.exit(f"error: {{exc}}")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    expected = checkout_venv.venv_hint(
        sys.executable,
        version,
        ["ensurepip"],
        _os_release(),
        root=os.geteuid() == 0,
    )
    assert result.stdout == f"Creating a virtual environment for nox in {venv} ...\n"
    assert result.stderr == f"error: {expected}\n"
    assert not venv.exists()


def test_created_once_installed_again_when_asked_for_more_made_again_for_another_python(
    tmp_path: Path,
) -> None:
    venv = tmp_path / "venv"
    wheel = _wheel(tmp_path, "probe_one")
    said: list[str] = []

    def ensure(*pip_args: str, fingerprint: str = "") -> Path:
        return checkout_venv.ensure(
            venv,
            ["--no-index", *pip_args],
            purpose="a test",
            installing="Installing.",
            fingerprint=fingerprint,
            say=said.append,
        )

    python = ensure(str(wheel))
    assert said == [f"Creating a virtual environment for a test in {venv} ...", "Installing."]
    assert _imports(python, "probe_one")

    said.clear()
    assert ensure(str(wheel)) == python
    assert said == []  # nothing to do

    second = _wheel(tmp_path, "probe_two")
    assert ensure(str(wheel), str(second)) == python
    assert said == ["Installing."]  # the same venv, more packages
    assert _imports(python, "probe_two")

    said.clear()
    ensure(str(wheel), str(second), fingerprint="pyproject changed")
    assert said == ["Installing."]

    # Made by another interpreter (or left half-made, with no stamp): made again, clean.
    stamp = venv / checkout_venv.STAMP
    stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "python": "another"}))
    (venv / "left-over").write_text("from the old venv")
    said.clear()
    assert ensure(str(wheel)) == python
    assert said == [f"Creating a virtual environment for a test in {venv} ...", "Installing."]
    assert not (venv / "left-over").exists()
    assert _imports(python, "probe_one")
    assert not _imports(python, "probe_two")


def _os_release() -> str:
    try:
        return checkout_venv.OS_RELEASE.read_text()
    except OSError:
        return ""


def _imports(python: Path, module: str) -> bool:
    result = subprocess.run([python, "-c", f"import {module}"], timeout=60, check=False)
    return result.returncode == 0


def _wheel(directory: Path, name: str) -> Path:
    """A minimal pure-Python wheel, so that pip installs without reaching an index."""
    path = directory / f"{name}-1.0-py3-none-any.whl"
    files = {
        f"{name}.py": b"",
        f"{name}-1.0.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode()
        ),
        f"{name}-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = [f"{file},sha256={_digest(content)},{len(content)}" for file, content in files.items()]
    record.append(f"{name}-1.0.dist-info/RECORD,,")
    files[f"{name}-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(path, "w") as archive:
        for file, content in files.items():
            archive.writestr(file, content)
    return path


def _digest(content: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
