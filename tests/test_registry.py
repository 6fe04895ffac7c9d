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
    EngineContractError,
    EngineUnavailableError,
    InvalidEngineError,
    Option,
    Requirement,
    available_engines,
    contract_problems,
    register_engine,
    unregister_engine,
)
from channels_engines.engine_registry import engines
from channels_engines.memory import MemoryEngine

WHERE = "CHANNEL_LAYERS['default']"
BUILT_IN = "'memory', 'postgres', 'redis'"


class FirstEngine(MemoryEngine):
    """A registrable engine; the memory engine's behaviour is enough for these tests."""

    description = "First test engine."


class SecondEngine(MemoryEngine):
    description = "Second test engine."


class NeedyEngine(MemoryEngine):
    """An engine whose optional dependency is not installed, an extra of this package."""

    requires = (
        Requirement(
            "channels_engines_no_such_module",
            "no-such-package",
            extra="nosuch",
            distribution="channels-engines",
        ),
    )


@pytest.fixture
def registered() -> Iterator[Callable[[str, type[BaseChannelEngine] | str], None]]:
    """``register_engine``, with every name it registered removed afterwards."""
    names: list[str] = []

    def register(name: str, target: type[BaseChannelEngine] | str) -> None:
        register_engine(name, target)
        names.append(name)

    yield register
    for name in names:
        unregister_engine(name)


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
        # What pip records, so that importlib.metadata knows which modules are the dist's.
        (info / "top_level.txt").write_text("\n".join(modules or {}) + "\n", encoding="utf-8")
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
        "(code). Choose another name, or remove the existing one first with "
        "channels_engines.unregister_engine('memory')."
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


def test_unregister_engine_frees_the_name() -> None:
    register_engine("transient", FirstEngine)
    unregister_engine("transient")
    assert "transient" not in engines.names()
    with pytest.raises(InvalidEngineError, match="unknown ENGINE 'transient'"):
        engines.load("transient", where=WHERE)
    register_engine("transient", SecondEngine)
    try:
        assert engines.load("transient", where=WHERE) is SecondEngine
    finally:
        unregister_engine("transient")


def test_the_advice_of_a_duplicate_registration_works() -> None:
    """The message says to remove the existing name first: doing so lets it be reused."""
    with pytest.raises(AlreadyRegisteredError, match=r"unregister_engine\('memory'\)"):
        register_engine("memory", FirstEngine)
    unregister_engine("memory")
    try:
        register_engine("memory", FirstEngine)
        assert engines.load("memory", where=WHERE) is FirstEngine
    finally:
        unregister_engine("memory")
        engines.register("memory", "channels_engines.memory.MemoryEngine", origin="built in")
    assert engines.load("memory", where=WHERE) is MemoryEngine


def test_unregistering_a_name_that_is_not_registered_says_what_is() -> None:
    with pytest.raises(LookupError) as caught:
        unregister_engine("nothing_here")
    assert str(caught.value) == (
        "engine name 'nothing_here' is not registered. Registered in code or built in: "
        "'memory', 'postgres', 'redis'."
    )


def test_unregistering_a_name_a_package_publishes_says_to_uninstall_it(
    publish: Callable[..., Path],
) -> None:
    publish("pkg-a", {"from_pkg": "pkg_a:Engine"})
    with pytest.raises(LookupError) as caught:
        unregister_engine("from_pkg")
    assert str(caught.value) == (
        "engine name 'from_pkg' is not registered in code: it is published by pkg-a 1.0; "
        "uninstall that package to remove it."
    )


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
        "To choose, uninstall one of the packages (pkg-a, pkg-b) or use a dotted path."
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
        "To choose, register the one in code under another name (or remove it with "
        "channels_engines.unregister_engine('clash')), uninstall pkg-a or use a dotted path."
    )


def test_built_in_name_also_published_by_a_package_says_to_uninstall_the_package(
    publish: Callable[..., Path],
) -> None:
    publish("pkg-a", {"memory": "pkg_a:Engine"})
    with pytest.raises(InvalidEngineError) as caught:
        engines.load("memory", where=WHERE)
    assert str(caught.value) == (
        f"{WHERE}: ENGINE 'memory' is ambiguous: the engine name is registered more than once "
        "(channels_engines.memory.MemoryEngine (built in); pkg_a.Engine (entry point of pkg-a "
        "1.0)). To choose, uninstall pkg-a or use a dotted path."
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


# The engine contract, checked at registration and selection ------------------------------


class NoReceiveEngine(BaseChannelEngine):
    """Implements send() but not receive(): would fail only at the first receive()."""

    async def send(self, channel: str, message: bytes) -> None:
        raise AssertionError("not reached")


class MisspelledExtensionEngine(MemoryEngine):
    extensions = ("groups", "flsuh")


class GroupsWithoutMethodsEngine(NoReceiveEngine):
    extensions = ("groups",)

    async def receive(self, channel: str) -> bytes:
        raise AssertionError("not reached")

    async def group_add(self, group: str, channel: str) -> None:
        raise AssertionError("not reached")


def _share(value: float) -> str | None:
    return None if 0 <= value <= 1 else "a number from 0 to 1"


class BadDefaultEngine(MemoryEngine):
    options = {
        "rate": Option((float,), 2.0, "A share.", check=_share),
        "mode": Option((str,), 3, "A mode."),
        "token": Option((str,), 7, "A token.", secret=True),
        "must": Option((str,), None, "Required: no default to check.", required=True),
    }


@pytest.mark.parametrize(
    ("engine", "problems"),
    [
        (NoReceiveEngine, ["it does not implement receive()"]),
        (
            MisspelledExtensionEngine,
            [
                "extensions names the unknown extension 'flsuh' (did you mean 'flush'?); "
                "known extensions: 'flush', 'groups'"
            ],
        ),
        (
            GroupsWithoutMethodsEngine,
            [
                "it declares the 'groups' extension but does not implement group_discard(), "
                "group_send()"
            ],
        ),
        (
            BadDefaultEngine,
            [
                "the default of option 'rate', 2.0, is not allowed by its own declaration: "
                "it must be a number from 0 to 1",
                "the default of option 'mode', 3, is not allowed by its own declaration: it "
                "must be a string",
                "the default of option 'token', (hidden), is not allowed by its own "
                "declaration: it must be a string",
            ],
        ),
    ],
)
def test_contract_problems_names_each_broken_part(
    engine: type[BaseChannelEngine], problems: list[str]
) -> None:
    assert contract_problems(engine) == problems


def test_a_complete_engine_has_no_contract_problems() -> None:
    assert contract_problems(MemoryEngine) == []
    assert contract_problems(engines.load("postgres", where=WHERE)) == []


def test_registering_an_engine_class_that_breaks_the_contract_is_refused() -> None:
    with pytest.raises(EngineContractError) as caught:
        register_engine("half", NoReceiveEngine)
    assert str(caught.value) == (
        "Cannot register engine 'half': tests.test_registry.NoReceiveEngine breaks the "
        "engine contract: it does not implement receive()."
    )
    assert isinstance(caught.value, InvalidEngineError)
    assert "half" not in engines.names()


def test_a_broken_engine_registered_by_path_is_refused_when_selected(
    registered: Callable[..., None],
) -> None:
    registered("typo", f"{__name__}.MisspelledExtensionEngine")
    with pytest.raises(EngineContractError) as caught:
        EngineChannelLayer(ENGINE="typo")
    assert str(caught.value) == (
        "EngineChannelLayer: ENGINE 'typo' (tests.test_registry.MisspelledExtensionEngine) "
        "breaks the engine contract: extensions names the unknown extension 'flsuh' (did you "
        "mean 'flush'?); known extensions: 'flush', 'groups'."
    )


def test_a_broken_engine_class_or_path_is_refused_when_selected() -> None:
    message = (
        "EngineChannelLayer: ENGINE 'tests.test_registry.GroupsWithoutMethodsEngine' breaks "
        "the engine contract: it declares the 'groups' extension but does not implement "
        "group_discard(), group_send()."
    )
    for value in (GroupsWithoutMethodsEngine, f"{__name__}.GroupsWithoutMethodsEngine"):
        with pytest.raises(EngineContractError) as caught:
            EngineChannelLayer(ENGINE=value)
        assert str(caught.value) == message


def test_a_broken_engine_published_by_a_package_is_refused_and_listed_with_its_problems(
    publish: Callable[..., Path],
) -> None:
    source = "from channels_engines.memory import MemoryEngine\n\n\n" + (
        "class Flawed(MemoryEngine):\n    extensions = ('groups', 'flsuh')\n"
    )
    publish("flawed-pkg", {"flawed": "flawed_mod:Flawed"}, modules={"flawed_mod": source})
    with pytest.raises(EngineContractError) as caught:
        engines.load("flawed", where=WHERE)
    assert str(caught.value) == (
        f"{WHERE}: ENGINE 'flawed' (flawed_mod.Flawed) breaks the engine contract: extensions "
        "names the unknown extension 'flsuh' (did you mean 'flush'?); known extensions: "
        "'flush', 'groups'."
    )
    info = {engine.name: engine for engine in available_engines()}["flawed"]
    assert info.problems == (
        "extensions names the unknown extension 'flsuh' (did you mean 'flush'?); known "
        "extensions: 'flush', 'groups'",
    )
    assert info.error is None
    assert info.extensions == ("groups", "flsuh")
    assert not info.available


# The entry-point form ------------------------------------------------------------------


def test_entry_point_form_is_shown_with_the_dotted_spelling_to_use() -> None:
    with pytest.raises(InvalidEngineError) as caught:
        engines.load("pkg.module:Class", where=WHERE)
    assert str(caught.value) == (
        f"{WHERE}: ENGINE 'pkg.module:Class' is neither a registered name nor a dotted path. "
        "That is the entry-point form; ENGINE takes a dotted path, written with a dot: "
        f"'pkg.module.Class'. Available engines: {BUILT_IN}."
    )


def test_a_value_that_is_neither_a_name_nor_a_path_is_shown() -> None:
    """ENGINE is no secret: the value is repeated, with what ENGINE takes."""
    with pytest.raises(InvalidEngineError) as caught:
        EngineChannelLayer(ENGINE="my engine")
    assert str(caught.value) == (
        "EngineChannelLayer: ENGINE 'my engine' is neither a registered name nor a dotted "
        "path. ENGINE must be a registered name or the dotted path of a "
        f"channels_engines.BaseChannelEngine subclass. Available engines: {BUILT_IN}."
    )


# Requirements of third-party engines ---------------------------------------------------


TURBO_SOURCE = """
from channels_engines import Requirement
from channels_engines.memory import MemoryEngine


class TurboEngine(MemoryEngine):
    requires = (Requirement("turbo_not_installed_x", "turbo-lib", extra="turbo"),)


class NamedTurboEngine(MemoryEngine):
    requires = (
        Requirement("turbo_not_installed_x", "turbo-lib", extra="fast", distribution="turbo-suite"),
    )
"""


def test_the_extra_of_a_third_party_engine_is_looked_up_in_its_own_package(
    publish: Callable[..., Path],
) -> None:
    publish(
        "channels-turbo",
        {"turbo": "turbo_mod:TurboEngine", "named_turbo": "turbo_mod:NamedTurboEngine"},
        modules={"turbo_mod": TURBO_SOURCE},
    )
    with pytest.raises(EngineUnavailableError) as caught:
        EngineChannelLayer(ENGINE="turbo")
    assert str(caught.value) == (
        "EngineChannelLayer: ENGINE 'turbo' needs turbo-lib, which is not installed. Install "
        "it with: pip install 'channels-turbo[turbo]'"
    )
    with pytest.raises(EngineUnavailableError) as caught:
        EngineChannelLayer(ENGINE="named_turbo")
    assert str(caught.value) == (
        "EngineChannelLayer: ENGINE 'named_turbo' needs turbo-lib, which is not installed. "
        "Install it with: pip install 'turbo-suite[fast]'"
    )
    info = {engine.name: engine for engine in available_engines()}["turbo"]
    assert [r.install_hint() for r in info.missing] == ["pip install 'channels-turbo[turbo]'"]


def test_an_extra_whose_package_is_unknown_installs_the_requirement_itself() -> None:
    class Unpackaged(MemoryEngine):
        requires = (Requirement("turbo_not_installed_x", "turbo-lib", extra="turbo"),)

    # This test module belongs to no installed distribution whose extra could be named.
    assert [r.install_hint() for r in Unpackaged.missing_requirements()] == [
        "pip install 'turbo-lib'"
    ]
