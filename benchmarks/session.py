"""One benchmark invocation: prepare subjects, run the interleaved cells, keep results."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks import report
from benchmarks.bootstrap import ensure_database
from benchmarks.config import Servers, Sizes
from benchmarks.control import Stuck, Worker, WorkerFailed
from benchmarks.environment import header, load_average
from benchmarks.monitor import Monitor
from benchmarks.prepare import PREPARE
from benchmarks.results import CellResult, aggregate
from benchmarks.scenarios import SCENARIOS
from benchmarks.scenarios.base import Scenario
from benchmarks.scenarios.cell import Cell, PartialResult
from benchmarks.subjects import OURS_ALL, REDIS_PREFIX, all_subjects
from benchmarks.targets import Rows

Payload = dict[str, Any]


class Session:
    """Owns the monitor, the subject list and every cell result."""

    def __init__(
        self,
        servers: Servers,
        sizes: Sizes,
        *,
        subjects: list[str] | None,
        scenarios: list[str] | None,
    ) -> None:
        self.servers, self.sizes = servers, sizes
        self.subjects = _select(all_subjects(servers), subjects, "subject")
        self.scenarios = [SCENARIOS[name] for name in _select_names(SCENARIOS, scenarios)]
        for line in ensure_database(servers):
            _log(f"created {line}")
        self.monitor = Monitor(servers)
        self.server_versions = self.monitor.versions()
        self.load_at_start = load_average()
        self.unavailable: dict[str, str] = {}
        self.log_dir = (
            Path(tempfile.gettempdir()) / "channels_engines_bench" / time.strftime("%Y%m%d-%H%M%S")
        )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        _log(f"worker logs: {self.log_dir}")
        self.cells: list[CellResult] = []

    def run(self) -> None:
        """Prepare each subject once, then rep → scenario → subject."""
        for subject in self.subjects:
            self._prepare(subject)
        for rep in range(1, self.sizes.repeat + 1):
            for scenario in self.scenarios:
                for subject in self.subjects:
                    self.cells.append(self._run_cell(rep, scenario, subject))

    def _prepare(self, subject: Payload) -> None:
        self._clean(subject)
        worker = Worker(
            PREPARE, subject, {}, label=f"{subject['name']}/prepare", log_dir=str(self.log_dir)
        )
        try:
            info = worker.expect("prepared", 120)
            if info.get("skipped"):
                self.unavailable[subject["name"]] = f"n/a: {info['skipped']}"
                _log(
                    f"{subject['name']}: skipped: {info['skipped']} ({info['detail']}); "
                    "it is measured once the layer accepts it"
                )
                return
            _log(
                f"{subject['name']}: ready ({info['layer']}; migrated: "
                f"{', '.join(info['migrated']) or 'nothing'})"
            )
        except (WorkerFailed, Stuck) as exc:
            reason = str(exc).split(": ", 1)[-1]
            self.unavailable[subject["name"]] = f"unavailable: {reason}"
            _log(f"{subject['name']}: unavailable: {reason}")
        finally:
            worker.stop()

    def _run_cell(self, rep: int, scenario: Scenario, subject: Payload) -> CellResult:
        name = subject["name"]
        skip = self.unavailable.get(name) or scenario.unsupported(subject)
        if skip:
            return CellResult(rep, scenario.name, name, skip)
        self._clean(subject)
        cell = Cell(
            subject, self.sizes, self.monitor, str(self.log_dir), tag=f"rep{rep}-{scenario.name}"
        )
        started = time.monotonic()
        try:
            result = CellResult(rep, scenario.name, name, "ok", metrics=scenario.run(cell))
        except PartialResult as exc:
            result = CellResult(rep, scenario.name, name, exc.status, metrics=exc.metrics)
        except Stuck as exc:
            result = CellResult(rep, scenario.name, name, f"stuck: {exc}")
        except WorkerFailed as exc:
            result = CellResult(rep, scenario.name, name, f"error: {exc}")
        except Exception as exc:
            result = CellResult(rep, scenario.name, name, f"error (harness): {exc!r}")
        finally:
            cell.stop_all()
        result.seconds = time.monotonic() - started
        _log(
            f"[rep {rep}/{self.sizes.repeat}] {scenario.name:<16} {name:<22} "
            f"{result.seconds:5.1f} s  {_brief(result)}"
        )
        return result

    def _clean(self, subject: Payload) -> None:
        """No worker left, no backend left on the bench DB, no stale Redis keys."""
        for child in psutil.Process().children(recursive=True):
            if "spawn_main" in " ".join(_cmdline(child)):
                _log(f"killing leftover worker {child.pid}")
                child.kill()
        left = self.monitor.wait_quiet()
        if left:
            _log(f"warning: {left} backend(s) still on the bench database")
        if subject["server"] == "redis":
            self.monitor.clean_redis(REDIS_PREFIX)

    def rows(self) -> Rows:
        """Aggregated rows: scenario → subject → summary."""
        return {
            scenario.name: {
                subject["name"]: aggregate(
                    scenario,
                    subject["name"],
                    [
                        c
                        for c in self.cells
                        if c.scenario == scenario.name and c.subject == subject["name"]
                    ],
                )
                for subject in self.subjects
            }
            for scenario in self.scenarios
        }

    def meta(self) -> Payload:
        """Header facts, subject descriptions and sizes."""
        return {
            "header": header(
                self.server_versions, self.sizes.mode, self.sizes.repeat, self.load_at_start
            ),
            "subjects": [
                {
                    "name": s["name"],
                    "about": s["about"],
                    "status": self.unavailable.get(s["name"], "ok"),
                }
                for s in self.subjects
            ],
            "sizes": self.sizes.as_dict(),
        }

    def markdown(self, charts: dict[str, str] | None = None) -> str:
        """The generated tables, linking the charts when they were drawn."""
        return report.markdown(self.meta(), self.rows(), charts)

    def draw_charts(self, directory: Path) -> dict[str, Path]:
        """One chart per scenario of this run into `directory`; returns scenario -> file."""
        from benchmarks.charts import draw_run

        rows = self.rows()
        return draw_run(
            [report.chart_spec(scenario) for scenario in self.scenarios],
            {
                name: {subject: row.values for subject, row in scenario_rows.items()}
                for name, scenario_rows in rows.items()
            },
            directory,
            ours=OURS_ALL,
            statuses={
                name: {s: row.statuses[0] for s, row in scenario_rows.items() if row.statuses}
                for name, scenario_rows in rows.items()
            },
        )

    def write_markdown(self, path: str, text: str) -> None:
        """Write the generated tables to a file."""
        report.write(path, text)

    def write_json(self, path: str) -> None:
        """Write every number to a file."""
        report.write(path, report.to_json(self.meta(), self.cells, self.rows()))

    def close(self) -> None:
        """Release the monitor's connections."""
        self.monitor.close()


def _select(subjects: list[Payload], names: list[str] | None, what: str) -> list[Payload]:
    if not names:
        return subjects
    known = {s["name"] for s in subjects}
    unknown = set(names) - known
    if unknown:
        raise SystemExit(
            f"unknown {what}(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
        )
    return [s for s in subjects if s["name"] in names]


def _select_names(registry: dict[str, Scenario], names: list[str] | None) -> list[str]:
    if not names:
        return list(registry)
    unknown = set(names) - set(registry)
    if unknown:
        raise SystemExit(
            f"unknown scenario(s): {', '.join(sorted(unknown))}; known: {', '.join(registry)}"
        )
    return [name for name in registry if name in names]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return list(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _brief(result: CellResult) -> str:
    if not result.ok:
        return result.status[:200]
    m = result.metrics
    parts = [
        f"{key}={m[key]:.4g}"
        for key in (
            "rate",
            "p50_ms",
            "call_p50_ms",
            "conns",
            "cpu_pct",
            "wake_ms",
            "final_conns",
            "call_p50_ms_r1",
            "call_p50_ms_r8",
            "cpu_ms_r1",
            "cpu_ms_r8",
        )
        if isinstance(m.get(key), int | float)
    ]
    parts += [f"{key}={m[key]}" for key in ("lost", "dup", "errors") if m.get(key)]
    return " ".join(parts)


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
