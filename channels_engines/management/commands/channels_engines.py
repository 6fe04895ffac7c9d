"""``manage.py channels_engines list|check|flush``: see what is installed, prove that a
layer works end to end, and empty it.

Human output is an aligned table; ``--json`` prints one JSON document for programs. A
failure prints one line on stderr and exits with a non-zero status.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...credentials.registry import credential_providers
from ...engine_registry import available_engines
from ...health import check_health
from ...hooks import hooks
from ...plugins import Registry
from ...settings import LAYER_BACKEND

_BACKENDS = {LAYER_BACKEND, "channels_engines.layer.EngineChannelLayer"}
#: Seconds ``check`` waits for its round trip.
ROUND_TRIP_TIMEOUT = 10.0


class Command(BaseCommand):
    help = "Inspect, check and flush channels_engines layers."

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="action", required=True, metavar="command")
        listing = commands.add_parser(
            "list", help="engines, credential providers and hooks, and which alias uses which"
        )
        listing.add_argument("--json", action="store_true", help="print JSON")
        check = commands.add_parser(
            "check", help="a real round trip through each layer, across two connections"
        )
        check.add_argument("--alias", help="only this CHANNEL_LAYERS alias")
        check.add_argument("--json", action="store_true", help="print JSON")
        flush = commands.add_parser("flush", help="remove every message and group membership")
        flush.add_argument("--alias", default="default", help="the CHANNEL_LAYERS alias")
        flush.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "list":
            self._list(options["json"])
        elif action == "check":
            self._check(options["alias"], options["json"])
        else:
            self._flush(options["alias"], options["yes"])

    # list ---------------------------------------------------------------------------

    def _list(self, as_json: bool) -> None:
        used = _aliases_by_plugin()
        found: dict[str, list[dict[str, Any]]] = {
            "engines": [
                {
                    "name": info.name,
                    "origin": info.origin,
                    "target": info.target,
                    "version": info.version,
                    "description": info.description,
                    "missing": [r.install_hint() for r in info.missing],
                    "error": info.error,
                    "used_by": used.get(("engine", info.name), []),
                }
                for info in available_engines()
            ],
            "credential_providers": _plugins(credential_providers, "provider", used),
            "hooks": _plugins(hooks, "hook", used),
        }
        if as_json:
            self.stdout.write(json.dumps(found, indent=2))
            return
        for title, rows in (
            ("Engines", found["engines"]),
            ("Credential providers", found["credential_providers"]),
            ("Hooks", found["hooks"]),
        ):
            self.stdout.write(f"{title}:")
            self.stdout.write(
                _table(
                    ["name", "origin", "status", "used by", "description"],
                    [
                        [
                            row["name"],
                            row["origin"],
                            _status(row),
                            ", ".join(row["used_by"]) or "-",
                            row["description"],
                        ]
                        for row in rows
                    ],
                )
            )
            self.stdout.write("")
        self.stdout.write(
            'To use one, name it in CHANNEL_LAYERS: "ENGINE", CONFIG["credentials"] '
            '({"provider": name, ...}) or CONFIG["hooks"] (a list).'
        )

    # check --------------------------------------------------------------------------

    def _check(self, alias: str | None, as_json: bool) -> None:
        aliases = _our_aliases()
        if alias is not None:
            if alias not in aliases:
                raise CommandError(_unknown_alias(alias, aliases))
            aliases = [alias]
        if not aliases:
            raise CommandError("no CHANNEL_LAYERS entry uses channels_engines")
        results = [asyncio.run(_round_trip(name)) for name in aliases]
        if as_json:
            self.stdout.write(json.dumps(results, indent=2))
        else:
            self.stdout.write(
                _table(
                    ["alias", "engine", "round trip", "result"],
                    [
                        [
                            r["alias"],
                            r["engine"],
                            "-" if r["round_trip_ms"] is None else f"{r['round_trip_ms']:.1f} ms",
                            "ok" if r["ok"] else r["error"],
                        ]
                        for r in results
                    ],
                )
            )
        failed = [r["alias"] for r in results if not r["ok"]]
        if failed:
            raise CommandError(f"the round trip failed for {', '.join(failed)}")

    # flush --------------------------------------------------------------------------

    def _flush(self, alias: str, yes: bool) -> None:
        aliases = _our_aliases()
        if alias not in aliases:
            raise CommandError(_unknown_alias(alias, aliases))
        if not yes:
            answer = input(
                f"Remove every message and group membership of CHANNEL_LAYERS[{alias!r}]? "
                "Type 'yes' to continue: "
            )
            if answer.strip().lower() != "yes":
                raise CommandError("flush cancelled: nothing was removed")

        async def flush() -> None:
            layer = _new_layer(alias)
            try:
                await layer.flush()
            finally:
                await layer.close()

        try:
            asyncio.run(flush())
        except Exception as exc:
            raise CommandError(f"flush of {alias!r} failed: {_reason(exc)}") from exc
        self.stdout.write(f"Flushed CHANNEL_LAYERS[{alias!r}].")


async def _round_trip(alias: str) -> dict[str, Any]:
    """Send from one layer instance to a channel of another (two connections, as two
    processes would use) and wait for the message."""
    result = await check_health(alias, timeout=ROUND_TRIP_TIMEOUT, fresh=True)
    return result.as_dict()


def _new_layer(alias: str) -> Any:
    """A fresh layer instance of ``alias`` (not the one Channels caches)."""
    from channels.layers import channel_layers

    return channel_layers.make_backend(alias)


def _our_aliases() -> list[str]:
    layers = getattr(settings, "CHANNEL_LAYERS", None) or {}
    return [
        str(alias)
        for alias, entry in layers.items()
        if isinstance(entry, Mapping) and entry.get("BACKEND") in _BACKENDS
    ]


def _aliases_by_plugin() -> dict[tuple[str, str], list[str]]:
    """Which aliases name which engine, credential provider and hook (by the name used)."""
    used: dict[tuple[str, str], list[str]] = {}
    layers = getattr(settings, "CHANNEL_LAYERS", None) or {}
    for alias in _our_aliases():
        config = layers[alias].get("CONFIG") or {}
        engine = config.get("ENGINE")
        if isinstance(engine, str):
            used.setdefault(("engine", engine), []).append(alias)
        credentials = config.get("credentials")
        provider = credentials.get("provider") if isinstance(credentials, Mapping) else None
        if isinstance(provider, str):
            used.setdefault(("provider", provider), []).append(alias)
        for hook in config.get("hooks") or ():
            if isinstance(hook, str):
                used.setdefault(("hook", hook), []).append(alias)
    return used


def _plugins(
    registry: Registry[Any], kind: str, used: dict[tuple[str, str], list[str]]
) -> list[dict[str, Any]]:
    rows = []
    for entry in registry.entries():
        row: dict[str, Any] = {
            "name": entry.name,
            "origin": entry.origin,
            "target": entry.target,
            "description": "",
            "missing": [],
            "error": None,
            "used_by": used.get((kind, entry.name), []),
        }
        try:
            cls = registry.load(entry.name, where="channels_engines list")
        except Exception as exc:
            row["error"] = _reason(exc)
        else:
            doc = (cls.__doc__ or "").strip().splitlines()
            row["description"] = getattr(cls, "description", "") or (doc[0] if doc else "")
            requires = getattr(cls, "requires", ())
            row["missing"] = [r.install_hint() for r in requires if not r.installed()]
        rows.append(row)
    return rows


def _status(row: Mapping[str, Any]) -> str:
    if row["error"]:
        return f"error: {row['error']}"
    if row["missing"]:
        return "needs: " + "; ".join(row["missing"])
    return "available"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [headers, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _unknown_alias(alias: str, aliases: Sequence[str]) -> str:
    return (
        f"CHANNEL_LAYERS has no alias {alias!r} that uses channels_engines (aliases that "
        f"do: {', '.join(repr(a) for a in aliases) or 'none'})"
    )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
