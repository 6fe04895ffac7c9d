"""Django app: makes the ``{"ENGINE": ..., "CONFIG": ...}`` form of CHANNEL_LAYERS work,
keeps the CONFIG of this package's layers hidden (see :mod:`channels_engines.settings`),
and checks every layer's settings with ``manage.py check`` (:mod:`channels_engines.checks`)."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.core.signals import setting_changed

from .checks import check_channel_layers, check_servers
from .settings import normalize_channel_layers


class ChannelsEnginesConfig(AppConfig):
    name = "channels_engines"
    verbose_name = "Channels engines"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Only rewrites a dict in memory: no connection is opened here, so forking
        # servers (gunicorn --preload) stay safe.
        _apply(getattr(settings, "CHANNEL_LAYERS", None))
        setting_changed.connect(_on_setting_changed, dispatch_uid="channels_engines.layers")
        checks.register(check_channel_layers, "channels_engines")
        checks.register(check_servers, "channels_engines", checks.Tags.database)


def _apply(layers: Any) -> None:
    normalized = normalize_channel_layers(layers)
    if normalized is not None:
        settings.CHANNEL_LAYERS = normalized


def _on_setting_changed(*, setting: str, value: Any, enter: bool, **kwargs: Any) -> None:
    if setting == "CHANNEL_LAYERS" and enter:
        _apply(value)
