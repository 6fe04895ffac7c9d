"""The public API is exactly what ``channels_engines.__all__`` lists."""

from __future__ import annotations
import __future__

import importlib
import subprocess
import sys
import types

import pytest
from channels.exceptions import InvalidChannelLayerError

import channels_engines

CORE_MODULES = [
    "contract",
    "engine_registry",
    "exceptions",
    "health",
    "layer",
    "loops",
    "mailbox",
    "memory",
    "options",
    "plugins",
    "serialization",
    "settings",
    "testing",
    "validation",
]


def test_all_is_sorted_and_lists_every_public_name() -> None:
    public = [
        name
        for name, value in vars(channels_engines).items()
        if (not name.startswith("_") or name == "__version__")
        and not isinstance(value, (types.ModuleType, __future__._Feature))
    ]
    assert channels_engines.__all__ == sorted(channels_engines.__all__)
    assert channels_engines.__all__ == sorted(public)


@pytest.mark.parametrize("module", CORE_MODULES)
def test_every_name_in_a_modules_all_exists(module: str) -> None:
    imported = importlib.import_module(f"channels_engines.{module}")
    assert all(hasattr(imported, name) for name in imported.__all__)


def test_configuration_errors_are_channels_errors() -> None:
    for name in (
        "EngineContractError",
        "EngineUnavailableError",
        "InvalidConfigError",
        "InvalidEngineError",
    ):
        assert issubclass(getattr(channels_engines, name), InvalidChannelLayerError)
    assert issubclass(channels_engines.AlreadyRegisteredError, ValueError)
    assert issubclass(channels_engines.ServerUnavailableError, ConnectionError)


def test_every_register_function_has_its_unregister_twin() -> None:
    registers = {name for name in channels_engines.__all__ if name.startswith("register_")}
    assert registers == {"register_credential_provider", "register_engine", "register_hook"}
    for name in registers:
        assert "un" + name in channels_engines.__all__


def test_importing_the_package_imports_no_optional_dependency() -> None:
    """``import channels_engines`` works without psycopg; the engine imports it on use."""
    code = (
        "import sys, channels_engines; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'psycopg', 'psycopg_pool', 'channels_engines.postgres'} "
        "or m.startswith('channels_engines.postgres')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
