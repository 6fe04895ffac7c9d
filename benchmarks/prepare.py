"""Once per subject and run: can the layer be built, and is its schema in place?

Runs as a sync worker because Django migrations refuse to run inside an event loop. A
subject whose package is missing or broken fails here, once, and its cells are reported
as "unavailable: <error>" instead of failing one by one.
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

from benchmarks.layers import build_layer, configure_django
from benchmarks.worker import SyncContext

PREPARE = "benchmarks.prepare:prepare"


def prepare(ctx: SyncContext) -> None:
    """Migrate the subject's apps that ship migrations, then build and flush the layer.

    A subject marked `skip_if_rejected: KEY` whose layer refuses that CONFIG key is
    reported as skipped, with the reason, instead of failing.
    """
    subject = ctx.subject
    migrated: list[str] = []
    if subject["kind"] == "django":
        configure_django(subject["settings"])
        from django.core.management import call_command

        for app_label, alias in subject["migrate"]:
            if importlib.util.find_spec(f"{app_label}.migrations") is not None:
                call_command("migrate", app_label, database=alias, verbosity=0)
                migrated.append(f"{app_label} on {alias!r}")
    try:
        layer = build_layer(subject)
    except ValueError as exc:  # Channels' InvalidChannelLayerError is a ValueError
        key = subject.get("skip_if_rejected")
        if key and repr(key) in str(exc):
            ctx.link.send(
                "prepared",
                migrated=migrated,
                layer="",
                skipped=f"this version of the layer rejects CONFIG[{key!r}]",
                detail=str(exc).split(". ", 1)[0],
            )
            return
        raise
    asyncio.run(_check(layer))
    ctx.link.send(
        "prepared", migrated=migrated, layer=f"{type(layer).__module__}.{type(layer).__qualname__}"
    )


async def _check(layer: Any) -> None:
    await layer.new_channel()
    await layer.flush()
