"""Every ``__repr__`` in the package works on an object whose ``__init__`` raised halfway.

Error trackers and ``traceback`` with locals show ``self`` of every frame, the frame of
the raising ``__init__`` included; a repr that raises there hides the real error.
"""

from __future__ import annotations

import importlib
import pkgutil
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import channels_engines
from channels_engines import Credentials, EngineChannelLayer
from channels_engines.credentials.aws import AwsRdsIamProvider
from channels_engines.credentials.vault import VaultProvider
from channels_engines.postgres.embedded import EmbeddedPostgres
from channels_engines.redaction import HiddenSettings

PACKAGE = Path(channels_engines.__file__).parent


def written_here(cls: type, method: str) -> bool:
    """Whether ``cls`` defines ``method`` in the package's code (not a dataclass-made one,
    which runs only once every field is set)."""
    function = vars(cls).get(method)
    code = getattr(function, "__code__", None)
    return code is not None and Path(code.co_filename).is_relative_to(PACKAGE)


def classes_with_a_repr() -> list[type]:
    """Every class of the package that defines its own ``__repr__`` or ``__str__``."""
    found: dict[str, type] = {}
    for module in pkgutil.walk_packages(channels_engines.__path__, "channels_engines."):
        if module.name.endswith("__main__"):
            continue
        for value in vars(importlib.import_module(module.name)).values():
            if isinstance(value, type) and (
                written_here(value, "__repr__") or written_here(value, "__str__")
            ):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return [found[name] for name in sorted(found)]


def test_the_classes_with_a_repr_are_found() -> None:
    names = {cls.__qualname__ for cls in classes_with_a_repr()}
    assert names == {
        "AwsRdsIamProvider",
        "CredentialProvider",
        "Credentials",
        "EmbeddedPostgres",
        "EngineChannelLayer",
        "Events",
        "HiddenSettings",
        "Notary",
        "Sealer",
        "Secret",
        "SyncCalls",
        "VaultProvider",
    }


@pytest.mark.parametrize("cls", classes_with_a_repr(), ids=lambda cls: cls.__qualname__)
def test_repr_of_an_instance_whose_init_never_ran(cls: type) -> None:
    instance = cls.__new__(cls)
    assert isinstance(repr(instance), str)
    assert isinstance(str(instance), str)


def half_built(error: type[Exception], build: Any) -> Any:
    """The ``self`` of the innermost ``__init__`` (or ``__post_init__``) that raised."""
    with pytest.raises(error) as caught:
        build()
    selves = [
        frame.f_locals["self"]
        for frame, _ in traceback.walk_tb(caught.tb)
        if frame.f_code.co_name in ("__init__", "__post_init__") and "self" in frame.f_locals
    ]
    assert selves, "no __init__ frame in the traceback"
    return selves[-1]


def test_layer_whose_settings_were_refused() -> None:
    layer = half_built(Exception, lambda: EngineChannelLayer(ENGINE="postgres", dsn=123))
    assert repr(layer) == "<EngineChannelLayer alias=None engine='postgres'>"
    unknown = half_built(Exception, lambda: EngineChannelLayer(ENGINE="no-such-engine"))
    assert repr(unknown) == "<EngineChannelLayer alias=None engine=None>"


def test_credentials_whose_values_were_refused_show_no_secret() -> None:
    bad_password = half_built(TypeError, lambda: Credentials("app", 12345678))  # type: ignore[arg-type]
    # Values are checked before any is set: the half-built object holds none of them.
    assert repr(bad_password) == (
        "Credentials(user=None, password=None, expires_at=None, extra_keys=[])"
    )
    naive = half_built(
        ValueError,
        lambda: Credentials("app", "hunter2", datetime(2030, 1, 1), {"sslmode": "require"}),
    )
    assert repr(naive) == "Credentials(user=None, password=None, expires_at=None, extra_keys=[])"
    assert "hunter2" not in str(naive)


def test_providers_without_their_settings() -> None:
    assert repr(AwsRdsIamProvider.__new__(AwsRdsIamProvider)) == (
        "<AwsRdsIamProvider aws_rds_iam None@None:None>"
    )
    assert repr(VaultProvider.__new__(VaultProvider)) == "<VaultProvider vault role None at None>"


def test_embedded_server_whose_arguments_were_refused() -> None:
    server = half_built(ValueError, lambda: EmbeddedPostgres(auth="md5"))  # type: ignore[arg-type]
    assert repr(server) == ("<EmbeddedPostgres ?:? data_dir='<temporary>' auth=None running=False>")


def test_hidden_settings_whose_values_were_refused() -> None:
    values = half_built(TypeError, lambda: HiddenSettings(5))
    assert repr(values) == "{}"
