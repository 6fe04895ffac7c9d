"""Scenario registry, in the order they run within a repetition."""

from __future__ import annotations

from benchmarks.scenarios.base import Scenario
from benchmarks.scenarios.fanout import FANOUT
from benchmarks.scenarios.group_procs import GROUP_FANOUT_PROCS
from benchmarks.scenarios.idle import IDLE_500
from benchmarks.scenarios.p2p import LARGE, P2P_1, P2P_50
from benchmarks.scenarios.rtt import RTT
from benchmarks.scenarios.sync_group import SYNC_GROUP_SEND

SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        P2P_1,
        P2P_50,
        RTT,
        FANOUT,
        GROUP_FANOUT_PROCS,
        IDLE_500,
        LARGE,
        SYNC_GROUP_SEND,
    )
}
