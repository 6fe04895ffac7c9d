"""``manage.py channels_engines list|check|stats|flush|purge-expired|schema``: see what is
installed, prove that a layer works end to end, look inside it, and maintain it.

Human output is an aligned table; ``--json`` prints one JSON document for programs. A
failure prints one line on stderr and exits with a non-zero status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...credentials.registry import credential_providers
from ...engine_registry import available_engines
from ...health import check_health
from ...hooks import hooks
from ...inspection import Inspection, worker_processes
from ...plugins import Registry
from ...settings import LAYER_BACKEND

_BACKENDS = {LAYER_BACKEND, "channels_engines.layer.EngineChannelLayer"}
T = TypeVar("T")
#: Seconds ``check`` waits for its round trip.
ROUND_TRIP_TIMEOUT = 10.0


class Command(BaseCommand):
    help = "Inspect, check and maintain channels_engines layers."

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
        check.add_argument(
            "--workers",
            type=_positive,
            default=None,
            help="worker processes that will use the layer, for the connection budget "
            "(default: $WEB_CONCURRENCY, else 1)",
        )
        check.add_argument("--json", action="store_true", help="print JSON")
        stats = commands.add_parser(
            "stats", help="messages waiting, groups, sessions and table health of a layer"
        )
        stats.add_argument("--alias", help="only this CHANNEL_LAYERS alias")
        stats.add_argument("--json", action="store_true", help="print JSON")
        flush = commands.add_parser("flush", help="remove every message and group membership")
        flush.add_argument("--alias", default="default", help="the CHANNEL_LAYERS alias")
        flush.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        purge = commands.add_parser(
            "purge-expired", help="delete expired messages and memberships now"
        )
        purge.add_argument("--alias", default="default", help="the CHANNEL_LAYERS alias")
        purge.add_argument("--json", action="store_true", help="print JSON")
        schema = commands.add_parser(
            "schema", help="print (or --apply) the SQL that creates the layer's tables"
        )
        schema.add_argument("--alias", default="default", help="the CHANNEL_LAYERS alias")
        schema.add_argument(
            "--grant", metavar="ROLE", help="also grant ROLE the rights the layer needs"
        )
        schema.add_argument(
            "--apply",
            action="store_true",
            help="run it with the layer's credentials instead of printing it",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "list":
            self._list(options["json"])
        elif action == "check":
            self._check(options["alias"], options["json"], _workers(options["workers"]))
        elif action == "stats":
            self._stats(options["alias"], options["json"])
        elif action == "purge-expired":
            self._purge(options["alias"], options["json"])
        elif action == "schema":
            self._schema(options["alias"], options["grant"], options["apply"])
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
                    "problems": list(info.problems),
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

    def _check(self, alias: str | None, as_json: bool, workers: int) -> None:
        results = []
        for name in _selected(alias):
            result = asyncio.run(_round_trip(name))
            if result["ok"]:
                result.update(asyncio.run(_server(name, workers)))
            results.append(result)
        if as_json:
            self.stdout.write(json.dumps(results, indent=2))
        else:
            self.stdout.write(
                _table(
                    ["alias", "engine", "round trip", "server", "connections", "result"],
                    [
                        [
                            r["alias"],
                            r["engine"],
                            "-" if r["round_trip_ms"] is None else f"{r['round_trip_ms']:.1f} ms",
                            r.get("server") or "-",
                            _budget(r.get("connections")),
                            "ok" if r["ok"] else r["error"],
                        ]
                        for r in results
                    ],
                )
            )
            self._warnings(
                (r["alias"], warning) for r in results for warning in r.get("warnings", ())
            )
        failed = [r["alias"] for r in results if not r["ok"]]
        if failed:
            raise CommandError(f"the round trip failed for {', '.join(failed)}")

    # stats --------------------------------------------------------------------------

    def _stats(self, alias: str | None, as_json: bool) -> None:
        found = []
        for name in _selected(alias):
            stats = _inspect(name, lambda inspection: inspection.stats(), "stats")
            found.append(
                {
                    "alias": name,
                    "tables": {
                        table.title: [
                            dict(zip(table.columns, row, strict=True)) for row in table.rows
                        ]
                        for table in stats.tables
                    },
                    "warnings": list(stats.warnings),
                }
            )
            if not as_json:
                self.stdout.write(f"CHANNEL_LAYERS[{name!r}]")
                for table in stats.tables:
                    self.stdout.write(f"\n{table.title}:")
                    rows = [[_cell(value) for value in row] for row in table.rows]
                    self.stdout.write(_table(list(table.columns), rows) if rows else "(none)")
                self._warnings((name, warning) for warning in stats.warnings)
                self.stdout.write("")
        if as_json:
            self.stdout.write(json.dumps(found, indent=2))

    # purge-expired ------------------------------------------------------------------

    def _purge(self, alias: str, as_json: bool) -> None:
        (alias,) = _selected(alias)
        purged = _inspect(alias, lambda inspection: inspection.purge_expired(), "purge-expired")
        if as_json:
            self.stdout.write(
                json.dumps({"alias": alias, "removed": purged.removed, "skipped": purged.skipped})
            )
        elif purged.skipped:
            self.stdout.write(
                f"Another process is deleting the expired rows of CHANNEL_LAYERS[{alias!r}] "
                "right now; nothing was done here."
            )
        else:
            removed = ", ".join(f"{count} {kind}" for kind, count in purged.removed.items())
            self.stdout.write(f"Removed from CHANNEL_LAYERS[{alias!r}]: {removed}.")

    # schema -------------------------------------------------------------------------

    def _schema(self, alias: str, grant: str | None, apply: bool) -> None:
        (alias,) = _selected(alias)
        if grant is not None:
            _check_role(grant)
        if not apply:
            script = _inspect(alias, lambda i: _value(i.schema_script(grant)), "schema")
            self.stdout.write(script, ending="")
            return
        _inspect(alias, lambda inspection: inspection.apply_schema(grant), "schema")
        granted = f", and granted {grant!r} its rights" if grant else ""
        self.stdout.write(f"The tables of CHANNEL_LAYERS[{alias!r}] are up to date{granted}.")

    def _warnings(self, warnings: Iterable[tuple[str, str]]) -> None:
        for alias, warning in warnings:
            self.stderr.write(f"Warning: CHANNEL_LAYERS[{alias!r}]: {warning}")

    # flush --------------------------------------------------------------------------

    def _flush(self, alias: str, yes: bool) -> None:
        _selected(alias)
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


async def _server(alias: str, workers: int) -> dict[str, Any]:
    """The server's version, the connection budget of ``workers`` processes, and
    warnings; nothing for an engine that has no server to inspect."""
    layer = _new_layer(alias)
    try:
        inspection = layer.inspection()
        if inspection is None:
            return {}
        report = await inspection.server()
    except Exception as exc:
        return {"warnings": [f"the server could not be inspected: {_reason(exc)}"]}
    finally:
        await layer.close()
    warnings = list(report.warnings)
    budget = report.budget_warning(workers)
    if budget is not None:
        warnings.insert(0, budget)
    return {
        "server": report.version,
        "connections": {
            "workers": workers,
            "per_process": report.per_process,
            "needed": workers * report.per_process,
            "limit": report.connection_limit,
            "in_use_by_others": report.in_use_by_others,
        },
        "warnings": warnings,
    }


def _inspect(alias: str, ask: Callable[[Inspection], Awaitable[T]], action: str) -> T:
    """Run ``ask`` on the inspection of a fresh layer of ``alias``, closed after."""

    async def run() -> T:
        layer = _new_layer(alias)
        try:
            inspection = layer.inspection()
            if inspection is None:
                raise CommandError(
                    f"{action} is not available for CHANNEL_LAYERS[{alias!r}]: its ENGINE "
                    f"{layer.engine_name!r} keeps no state outside the process."
                )
            return await ask(inspection)
        finally:
            await layer.close()

    try:
        return asyncio.run(run())
    except CommandError:
        raise
    except NotImplementedError as exc:
        raise CommandError(
            f"{action} is not available for CHANNEL_LAYERS[{alias!r}]: {exc}."
        ) from exc
    except Exception as exc:
        raise CommandError(f"{action} of {alias!r} failed: {_reason(exc)}") from exc


async def _value(value: T) -> T:
    return value


async def _round_trip(alias: str) -> dict[str, Any]:
    """Send from one layer instance to a channel of another (two connections, as two
    processes would use) and wait for the message."""
    result = await check_health(alias, timeout=ROUND_TRIP_TIMEOUT, fresh=True)
    return result.as_dict()


def _new_layer(alias: str) -> Any:
    """A fresh layer instance of ``alias`` (not the one Channels caches)."""
    from channels.layers import channel_layers

    return channel_layers.make_backend(alias)


def _selected(alias: str | None) -> list[str]:
    """``[alias]`` if it uses channels_engines, else every alias that does."""
    aliases = _our_aliases()
    if alias is not None:
        if alias not in aliases:
            raise CommandError(_unknown_alias(alias, aliases))
        return [alias]
    if not aliases:
        raise CommandError("no CHANNEL_LAYERS entry uses channels_engines")
    return aliases


def _workers(given: int | None) -> int:
    if given is not None:
        return given
    workers = worker_processes()
    if workers is None:
        raise CommandError(
            f"WEB_CONCURRENCY={os.environ['WEB_CONCURRENCY']!r} is not a whole number of "
            "worker processes; unset it or pass --workers."
        )
    return workers


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1")
    return number


def _check_role(role: str) -> None:
    from ...postgres.options import check_identifier

    allowed = check_identifier(role)
    if allowed is not None:
        raise CommandError(f"--grant {role!r} is not allowed: use {allowed}.")


def _budget(connections: Mapping[str, Any] | None) -> str:
    if not connections:
        return "-"
    limit = connections["limit"]
    return f"{connections['workers']} x {connections['per_process']} = {connections['needed']}" + (
        "" if limit is None else f" of {limit - (connections['in_use_by_others'] or 0)} free"
    )


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


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
            # As declared by the class: a third party's extra names its own package.
            row["missing"] = [r.of(cls).install_hint() for r in requires if not r.installed()]
        rows.append(row)
    return rows


def _status(row: Mapping[str, Any]) -> str:
    if row["error"]:
        return f"error: {row['error']}"
    if row.get("problems"):
        return "error: breaks the engine contract: " + "; ".join(row["problems"])
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
