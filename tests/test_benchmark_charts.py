"""benchmarks/charts.py draws a readable PNG per scenario from a run's plain numbers."""

from __future__ import annotations

from pathlib import Path

from benchmarks.charts import ChartSpec, Series, draw_run, floor_of

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

RTT = ChartSpec(
    "rtt", "ping-pong round trip", "round trip p50 (ms)", "lower", (Series("p50_ms", "p50 ms"),)
)
PROCS = ChartSpec(
    "group_fanout_procs",
    "group_send(), R=1 vs R=8 processes",
    "group_send() call p50 (ms)",
    "lower",
    (Series("call_p50_ms_r1", "R=1"), Series("call_p50_ms_r8", "R=8")),
)
VALUES = {
    "rtt": {
        "channels_engines": {"p50_ms": 0.61},
        "channels_engines_plain": {"p50_ms": None},
        "channels_postgres": {"p50_ms": 1.12},
        "raw_pg": {"p50_ms": 0.52},
    },
    "group_fanout_procs": {
        "channels_engines": {"call_p50_ms_r1": 0.8, "call_p50_ms_r8": 0.9},
        "redis_core": {"call_p50_ms_r1": 1.1, "call_p50_ms_r8": 8.0},
        "raw_pg": {"call_p50_ms_r1": 0.2, "call_p50_ms_r8": 0.25},
    },
}


def test_one_png_per_scenario_named_after_it(tmp_path: Path) -> None:
    drawn = draw_run(
        [RTT, PROCS],
        VALUES,
        tmp_path / "performance",
        ours=("channels_engines", "channels_engines_plain"),
        statuses={"rtt": {"channels_engines_plain": "n/a: the layer rejects it"}},
    )

    assert drawn == {
        "rtt": tmp_path / "performance" / "rtt.png",
        "group_fanout_procs": tmp_path / "performance" / "group_fanout_procs.png",
    }
    for path in drawn.values():
        assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_the_same_numbers_draw_the_same_bytes(tmp_path: Path) -> None:
    """Generated files change only when the numbers do, so a re-run shows no noise."""
    first = draw_run([RTT], VALUES, tmp_path / "a")["rtt"].read_bytes()
    second = draw_run([RTT], VALUES, tmp_path / "b")["rtt"].read_bytes()
    assert first == second


def test_a_scenario_that_did_not_run_draws_nothing(tmp_path: Path) -> None:
    assert draw_run([RTT], {}, tmp_path) == {}
    assert list(tmp_path.iterdir()) == []


def test_the_floor_is_the_first_raw_subject_with_a_value() -> None:
    large = ChartSpec("large_1mib", "1 MiB", "msgs/s", "higher", (Series("rate", "msgs/s"),))
    values = {
        "channels_engines": {"rate": 131.0},
        "raw_pg": {"rate": None},
        "raw_redis": {"rate": 524.0},
    }
    assert floor_of(large, values) == "raw_redis"
    assert floor_of(RTT, VALUES["rtt"]) == "raw_pg"
