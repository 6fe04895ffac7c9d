"""benchmarks/targets.py and report.py: the redis engine's targets and table, from one run."""

from __future__ import annotations

from benchmarks.report import markdown, redis_table, targets_table
from benchmarks.results import Summary
from benchmarks.subjects import OURS, OURS_REDIS
from benchmarks.targets import Rows, check


def _row(subject: str, **values: float | None) -> Summary:
    return Summary(subject, dict(values), ok_reps=1, reps=1, statuses=[], notes=[])


def _rows() -> Rows:
    return {
        "p2p_1": {
            OURS: _row(OURS, rate=2400.0, lost=0, dup=0),
            OURS_REDIS: _row(OURS_REDIS, rate=6000.0, lost=0, dup=0),
            "redis_core": _row("redis_core", rate=1500.0, lost=0, dup=0),
            "raw_redis": _row("raw_redis", rate=8000.0, lost=0, dup=0),
        },
        "fanout": {
            OURS_REDIS: _row(OURS_REDIS, rate=200_000.0, lost=3, dup=0),
            "redis_pubsub": _row("redis_pubsub", rate=250_000.0, lost=0, dup=0),
        },
    }


def _verdicts(subject: str) -> dict[str, tuple[float | None, bool | None]]:
    return _verdicts_of(_rows(), subject)


def _verdicts_of(rows: Rows, subject: str) -> dict[str, tuple[float | None, bool | None]]:
    return {v.target.text: (v.measured, v.met) for v in check(rows) if v.target.subject == subject}


def test_redis_targets_are_ratios_of_the_redis_engine_to_the_redis_subjects() -> None:
    verdicts = _verdicts(OURS_REDIS)

    assert verdicts["p2p one sender ≥ 2x redis_core"] == (4.0, True)
    assert verdicts["p2p one sender ≥ 0.8x raw_redis"] == (0.75, False)
    assert verdicts["fanout deliveries/s ≥ redis_pubsub"] == (0.8, False)
    assert verdicts["fanout 0 lost"] == (3, False)
    assert verdicts["lost 0 in every cell"] == (3, False)
    assert "rtt p50 ≤ 1.3x raw_redis" not in verdicts  # the scenario did not run


def test_the_postgres_targets_do_not_count_the_redis_engine() -> None:
    verdicts = _verdicts(OURS)

    assert verdicts["p2p one sender ≥ 3x redis_core"] == (1.6, False)
    assert verdicts["lost 0 in every cell (ours)"] == (0, True)


def test_no_targets_for_a_subject_left_out_of_the_run() -> None:
    rows = {"p2p_1": {OURS: _row(OURS, rate=2400.0, lost=0, dup=0)}}

    assert all(v.target.subject == OURS for v in check(rows))
    assert targets_table(check(rows), OURS_REDIS) == []
    assert redis_table(rows) == []

    only_redis = {"p2p_1": {OURS_REDIS: _row(OURS_REDIS, rate=6000.0, lost=0, dup=0)}}
    assert all(v.target.subject == OURS_REDIS for v in check(only_redis))


def test_a_subject_that_failed_still_shows_its_targets_as_not_measured() -> None:
    failed = Summary(OURS_REDIS, {"rate": None}, 0, 1, ["unavailable: no server"], [])
    verdicts = _verdicts_of({"p2p_1": {OURS_REDIS: failed}}, OURS_REDIS)

    assert verdicts["p2p one sender ≥ 2x redis_core"] == (None, None)


def test_the_report_has_a_targets_table_and_a_peer_table_for_the_redis_engine() -> None:
    meta = {"header": {}, "subjects": []}
    text = markdown(meta, _rows())

    assert f"#### Targets for {OURS_REDIS}" in text
    assert "| p2p one sender ≥ 2x redis_core | 4.00x | yes |" in text
    assert f"#### {OURS_REDIS} beside the Redis subjects" in text
    assert "| `p2p_1` | msgs/s | 6,000 | 1,500 | 4.00x | — | — | 8,000 | 0.75x |" in text
