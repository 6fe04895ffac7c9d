"""The engine registry: names, dotted paths, entry points, and what it says when one fails."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from channels.exceptions import InvalidChannelLayerError

import channels_engines
from channels_engines import (
    AlreadyRegisteredError,
    BaseChannelEngine,
    EngineChannelLayer,
    EngineUnavailableError,
    InvalidEngineError,
    Requirement,
    available_engines,
    register_engine,
)
from channels_engines.engine_registry import engines
from channels_engines.memory import MemoryEngine

WHERE = "CHANNEL_LAYERS['default']"
BUILT_IN = "'memory', 'postgres'"


class FirstEngine(MemoryEngine):
    """A registrable engine; the memory engine's behaviour is enough for these tests."""

    description = "First test engine."


class SecondEngine(MemoryEngine):
    description = "Second test engine."


class NeedyEngine(MemoryEngine):
    """An engine whose optional dependency is not installed."""

    requires = (Requirement("channels_engines_no_such_module", "no-such-package", extra="nosuch"),)


@pytest.fixture
def registered() -> Iterator[Callable[[str, type[BaseChannelEngine] | str], None]]:
    """``register_engine``, with every name it registered removed afterwards."""
    names: list[str] = []

    def register(name: str, target: type[BaseChannelEngine] | str) -> None:
        register_engine(name, target)
        names.append(name)

    yield register
    for name in names:
        engines.unregister(name)


@pytest.fixture
def publish(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Install fake distributions that publish engines, each in its own sys.path entry.

    ``publish("dist-name", {"engine": "module:Class"}, modules={"module": "source"})`` writes
    a ``.dist-info`` directory, as pip would, so that importlib.metadata finds it, and
    returns the directory added to sys.path.
    """
    added: list[str] = []

    def install(
        dist: str, entry_points: dict[str, str], modules: dict[str, str] | None = None
    ) -> Path:
        root = tmp_path / dist
        info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n", encoding="utf-8"
        )
        lines = [f"{name} = {target}" for name, target in entry_points.items()]
        (info / "entry_points.txt").write_text(
            "[channels_engines.engines]\n" + "\n".join(lines) + "\n", encoding="utf-8"
        )
        for module, source in (modules or {}).items():
            (root / f"{module}.py").write_text(source, encoding="utf-8")
        sys.path.append(str(root))
        added.append(str(root))
        importlib.invalidate_caches()
        engines.refresh_entry_points()
        return root

    yield install
    for path in added:
        if path in sys.path:
            sys.path.remove(path)
        for module in [name for name, mod in sys.modules.items() if _loaded_from(mod, path)]:
            del sys.modules[module]
    importlib.invalidate_caches()
    engines.refresh_entry_points()


def _loaded_from(module: object, root: str) -> bool:
    return str(getattr(module, "__file__", None) or "").startswith(root)


ENGINE_SOURCE = """
from channels_engines.memory import MemoryEngine


class PublishedEngine(MemoryEngine):
    description = "Published by a package."
    version = "1.0"
"""


# Names and dotted paths --------------------------------------------------------------


def test_built_in_names_resolve_to_their_classes() -> None:
    assert engines.load("memory", where=WHERE) is MemoryEngine


def test_dotted_path_resolves_without_registration() -> None:
    cls = engines.load("channels_engines.memory.MemoryEngine", where=WHERE)
    assert cls is MemoryEngine


def test_engine_class_is_accepted_as_is() -> None:
    assert engines.load(FirstEngine, where=WHERE) is FirstEngine
    layer = EngineChannelLayer(ENGINE=FirstEngine)
    assert layer.engine_name == "FirstEngine"


def test_register_engine_makes_a_class_selectable_by_name(registered: Callable[..., None]) -> None:
    registered("first", FirstEngine)
    assert engines.load("first", where=WHERE) is FirstEngine
    assert EngineChannelLayer(ENGINE="first").engine_name == "first"


def test_register_engine_accepts_a_dotted_path_imported_on_first_use(
    registered: Callable[..., None],
) -> None:
    registered("second", f"{__name__}.SecondEngine")
    assert engines.load("second", where=WHERE) is SecondEngine


def test_registered_dotted_path_that_cannot_be_imported_names_both(
    registered: Callable[..., None],
) -> None:
    registered("lazy", "tests.no_such_module.Engine")
    with pytest.raises(InvalidEngineError) as caught:
        engines.load("lazy", where=WHERE)
    assert str(caught.value) == (
        f"{WHERE}: cannot import ENGINE 'lazy' (registered as tests.no_such_module.Engine): "
        f"No module named 'tests.no_such_module'. Available engines: 'lazy', {BUILT_IN}."
    )
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)


# Unknown and broken values ---------------------------------------------------------------


def test_unknown_name_suggests_the_closest_one() -> None:
    with pytest.raises(InvalidEngineError) as caught:
        engines.load("memroy", where=WHERE)
    assert str(caught.value) == (
        f"{WHERE}: unknown ENGINE 'memroy'. Did you mean 'memory'? Available engines: "
        f"{BUILT_IN}. ENGINE takes a registered name or the dotted path of a "
        "channels_engines.BaseChannelEngine subclass."
    )
    assert isinstance(caught.value, InvalidChannelLayerError)


def test_unknown_name_with_nothing_close_gets_no_suggestion() -> None:
    with pytest.raises(InvalidEngineError) as caught:
        engines.load("zzz", where=WHERE)
    assert str(caught.value) == (
        f"{WHERE}: unknown ENGINE 'zzz'. Available engines: {BUILT_IN}. ENGINE takes a "
        "registered name or the dotted path of a channels_engines.BaseChannelEngine subclass."
    )


def test_dotted_path_to_a_missing_module_chains_the_import_error() -> None:
    with pytest.raises(InvalidEngineError) as caught:
        engines.load("channels_engines.nope.Engine", where=WHERE)
    assert str(caught.value) == (
        f"{WHERE}: cannot import ENGINE 'channels_engines.nope.Engine': No module named "
        f"'channels_engines.nope'. Available engines: {BUILT_IN}."
    )
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)


def test_dotted_path_to_a_missing_attribute_chains_the_import_error() -> None:
    with pytest.raises(InvalidEngineError) as caught:
        engines.load("channels_engines.memory.Nope", where=WHERE)
    assert str(caught.value) == (
        f"{WHERE}: cannot import ENGINE 'channels_engines.memory.Nope': Module "
        '"channels_engines.memory" does not define a "Nope" attribute/class. '
        f"Available engines: {BUILT_IN}."
    )
    assert type(caught.value.__cause__) is ImportError


def test_dotted_path_to_something_else_than_an_engine_is_refused() -> None:
    with pytest.raises(InvalidEngineError) as caught:
        engines.load("channels_engines.memory.MemoryStore", where=WHERE)
    assert str(caught.value) == (
        f"{WHERE}: ENGINE 'channels_engines.memory.MemoryStore' resolves to <class "
        "'channels_engines.memory.MemoryStore'>, which is not a subclass of "
        "channels_engines.BaseChannelEngine."
    )


@pytest.mark.parametrize(("value", "shown"), [(42, "42"), ("", "''"), (None, "None")])
def test_engine_value_that_is_not_a_name_is_refused(value: object, shown: str) -> None:
    with pytest.raises(InvalidEngineError) as caught:
        engines.load(value, where=WHERE)
    assert str(caught.value) == (
        f"{WHERE}: ENGINE must be a registered name or a dotted path, not {shown}. "
        f"Available engines: {BUILT_IN}."
    )


# Registration ----------------------------------------------------------------------------


def test_duplicate_registration_is_refused_naming_both_targets() -> None:
    with pytest.raises(AlreadyRegisteredError) as caught:
        register_engine("memory", FirstEngine)
    assert str(caught.value) == (
        "engine name 'memory' is already registered to channels_engines.memory.MemoryEngine "
        "(built in); refusing to register it again to tests.test_registry.FirstEngine "
        "(code). Choose another name, or unregister the existing one first."
    )
    assert engines.load("memory", where=WHERE) is MemoryEngine


def test_duplicate_registration_in_code_is_refused(registered: Callable[..., None]) -> None:
    registered("first", FirstEngine)
    with pytest.raises(AlreadyRegisteredError, match=r"already registered to tests\.test_regis"):
        register_engine("first", f"{__name__}.SecondEngine")
    assert engines.load("first", where=WHERE) is FirstEngine


@pytest.mark.parametrize("name", ["", "Memory", "1st", "my-engine", "my.engine", "é", "a b"])
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="is not valid") as caught:
        register_engine(name, FirstEngine)
    assert str(caught.value) == (
        f"engine name {name!r} is not valid: use lower-case ASCII letters, digits and "
        "underscores, starting with a letter."
    )
    assert name not in engines.names()


def test_registering_something_else_than_an_engine_class_is_refused() -> None:
    with pytest.raises(TypeError) as caught:
        register_engine("thing", dict)  # type: ignore[arg-type]
    assert str(caught.value) == (
        "Cannot register engine 'thing': <class 'dict'> is neither a dotted path nor a "
        "subclass of channels_engines.BaseChannelEngine."
    )
    assert "thing" not in engines.names()


def test_unregister_frees_the_name() -> None:
    register_engine("transient", FirstEngine)
    engines.unregister("transient")
    assert "transient" not in engines.names()
    with pytest.raises(InvalidEngineError, match="unknown ENGINE 'transient'"):
        engines.load("transient", where=WHERE)
    register_engine("transient", SecondEngine)
    try:
        assert engines.load("transient", where=WHERE) is SecondEngine
    finally:
        engines.unregister("transient")


# Listing and availability ----------------------------------------------------------------


def test_available_engines_lists_the_memory_engine_with_its_metadata() -> None:
    info = {engine.name: engine for engine in available_engines()}["memory"]
    assert info.target == "channels_engines.memory.MemoryEngine"
    assert info.origin == "built in"
    assert info.version == channels_engines.__version__
    assert info.extensions == ("groups", "flush")
    assert info.description == MemoryEngine.description
    assert info.available
    assert info.missing == ()
    assert info.error is None


def test_engine_with_a_missing_dependency_is_listed_as_unavailable(
    registered: Callable[..., None],
) -> None:
    registered("needy", NeedyEngine)
    info = {engine.name: engine for engine in available_engines()}["needy"]
    assert not info.available
    assert [requirement.install_hint() for requirement in info.missing] == [
        "pip install 'channels-engines[nosuch]'"
    ]


def test_selecting_an_engine_with_a_missing_dependency_names_the_extra(
    registered: Callable[..., None],
) -> None:
    registered("needy", NeedyEngine)
    with pytest.raises(EngineUnavailableError) as caught:
        EngineChannelLayer(ENGINE="needy")
    assert str(caught.value) == (
        "EngineChannelLayer: ENGINE 'needy' needs no-such-package, which is not installed. "
        "Install it with: pip install 'channels-engines[nosuch]'"
    )
    assert isinstance(caught.value, InvalidChannelLayerError)


# Entry points ------------------------------------------------------------------------


def test_engine_published_by_a_package_resolves_by_name(publish: Callable[..., Path]) -> None:
    publish(
        "published-pkg",
        {"published": "published_mod:PublishedEngine"},
        modules={"published_mod": ENGINE_SOURCE},
    )
    cls = engines.load("published", where=WHERE)
    assert cls.__module__ == "published_mod"
    assert EngineChannelLayer(ENGINE="published").engine_name == "published"
    info = {engine.name: engine for engine in available_engines()}["published"]
    assert info.origin == "entry point of published-pkg 1.0"
    assert info.target == "published_mod.PublishedEngine"
    assert info.description == "Published by a package."
    assert info.available


def test_uninstalled_package_is_forgotten_after_refresh(publish: Callable[..., Path]) -> None:
    root = publish(
        "published-pkg",
        {"published": "published_mod:PublishedEngine"},
        modules={"published_mod": ENGINE_SOURCE},
    )
    engines.load("published", where=WHERE)
    sys.path.remove(str(root))
    importlib.invalidate_caches()
    engines.refresh_entry_points()
    assert "published" not in engines.names()
    with pytest.raises(InvalidEngineError, match="unknown ENGINE 'published'"):
        engines.load("published", where=WHERE)


def test_two_packages_publishing_one_name_are_refused_naming_both(
    publish: Callable[..., Path],
) -> None:
    publish("pkg-a", {"dup": "pkg_a:Engine"})
    publish("pkg-b", {"dup": "pkg_b:Engine"})
    assert "dup" in engines.names()
    with pytest.raises(InvalidEngineError) as caught:
        engines.load("dup", where=WHERE)
    assert str(caught.value) == (
        f"{WHERE}: ENGINE 'dup' is ambiguous: the engine name is registered more than once "
        "(pkg_a.Engine (entry point of pkg-a 1.0); pkg_b.Engine (entry point of pkg-b 1.0)). "
        "Uninstall one of the packages or use a dotted path."
    )
    info = {engine.name: engine for engine in available_engines()}["dup"]
    assert not info.available
    assert info.error is not None
    assert "is ambiguous" in info.error


def test_name_registered_in_code_and_published_by_a_package_is_refused(
    publish: Callable[..., Path], registered: Callable[..., None]
) -> None:
    registered("clash", FirstEngine)
    publish("pkg-a", {"clash": "pkg_a:Engine"})
    with pytest.raises(InvalidEngineError) as caught:
        engines.load("clash", where=WHERE)
    assert str(caught.value) == (
        f"{WHERE}: ENGINE 'clash' is ambiguous: the engine name is registered more than once "
        "(tests.test_registry.FirstEngine (code); pkg_a.Engine (entry point of pkg-a 1.0)). "
        "Uninstall one of the packages or use a dotted path."
    )


def test_entry_point_that_cannot_be_loaded_chains_the_error(
    publish: Callable[..., Path],
) -> None:
    publish("pkg-broken", {"broken": "pkg_broken_missing:Engine"})
    with pytest.raises(InvalidEngineError) as caught:
        engines.load("broken", where=WHERE)
    assert str(caught.value) == (
        f"{WHERE}: cannot load ENGINE 'broken' from the entry point "
        "'pkg_broken_missing:Engine' published by pkg-broken 1.0: No module named "
        f"'pkg_broken_missing'. Available engines: 'broken', {BUILT_IN}."
    )
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)
    info = {engine.name: engine for engine in available_engines()}["broken"]
    assert not info.available
    assert info.error == str(caught.value).replace(WHERE, "available_engines()")
