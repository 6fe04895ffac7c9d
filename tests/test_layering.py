"""Which modules may import which: credential providers stay independent of engines."""

from __future__ import annotations

import ast
from pathlib import Path

import channels_engines

PACKAGE = Path(channels_engines.__file__).parent

#: The engine contract, the engine registry and the engines themselves.
ENGINE_SIDE = {"contract", "engine_registry", "layer", "memory", "postgres"}


def imported(path: Path) -> set[str]:
    """The ``channels_engines`` submodules ``path`` imports (first component)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 2 and node.module:  # from ..x import y
                names.add(node.module.split(".")[0])
            elif node.level == 2:
                names.update(alias.name for alias in node.names)
            elif node.level == 0 and (node.module or "").startswith("channels_engines."):
                names.add((node.module or "").split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("channels_engines."):
                    names.add(alias.name.split(".")[1])
    return names


def test_credentials_do_not_import_the_engine_side() -> None:
    for path in sorted((PACKAGE / "credentials").glob("*.py")):
        assert not imported(path) & ENGINE_SIDE, path.name


def test_engines_take_their_version_from_the_version_module() -> None:
    from channels_engines.memory import MemoryEngine
    from channels_engines.postgres import PostgresEngine

    assert MemoryEngine.version == PostgresEngine.version == channels_engines.__version__
