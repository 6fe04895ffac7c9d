"""Run-wide settings: where the servers are and how big each workload is."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from psycopg.conninfo import conninfo_to_dict

BENCH_DB = "channels_engines_bench"
#: Non-superuser role owning the bench database. Its CONNECTION LIMIT protects the shared
#: server: a layer that opens connections without bound hits this limit, not
#: max_connections, so other users of the server keep working during the run.
BENCH_ROLE = "channels_engines_bench"
BENCH_ROLE_CONNECTION_LIMIT = 50
DEFAULT_DSN = f"postgresql://{BENCH_ROLE}@127.0.0.1:5432/{BENCH_DB}"
DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class Servers:
    """Connection targets. Subjects use `dsn`; setup and monitoring use `admin_dsn`."""

    dsn: str
    admin_dsn: str
    redis_url: str

    @property
    def pg(self) -> dict[str, str]:
        """The subject DSN as libpq keywords."""
        return {key: str(value) for key, value in conninfo_to_dict(self.dsn).items()}


@dataclass(frozen=True)
class Sizes:
    """Workload sizes and time limits for one mode (quick or full)."""

    mode: str
    repeat: int
    p2p_count: int
    p2p_warm: int
    p2p50_count: int
    p2p50_warm: int
    rtt_count: int
    rtt_warm: int
    fanout_sends: int
    fanout_warm: int
    procs_sends: int
    procs_warm: int
    idle_channels: int
    idle_window_s: float
    large_count: int
    large_warm: int
    sync_calls: int
    sync_warm: int
    sync_budget_s: float
    step_timeout_s: float
    measure_timeout_s: float
    stall_s: float
    grace_s: float

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for the JSON output."""
        return asdict(self)


QUICK = Sizes(
    mode="quick",
    repeat=1,
    p2p_count=1_000,
    p2p_warm=100,
    p2p50_count=2_500,
    p2p50_warm=250,
    rtt_count=300,
    rtt_warm=30,
    fanout_sends=30,
    fanout_warm=3,
    procs_sends=20,
    procs_warm=3,
    idle_channels=500,
    idle_window_s=5.0,
    large_count=20,
    large_warm=3,
    sync_calls=1_000,
    sync_warm=10,
    sync_budget_s=20.0,
    step_timeout_s=20.0,
    measure_timeout_s=40.0,
    stall_s=3.0,
    grace_s=0.3,
)

FULL = Sizes(
    mode="full",
    repeat=3,
    p2p_count=5_000,
    p2p_warm=300,
    p2p50_count=10_000,
    p2p50_warm=1_000,
    rtt_count=2_000,
    rtt_warm=200,
    fanout_sends=200,
    fanout_warm=10,
    procs_sends=100,
    procs_warm=10,
    idle_channels=500,
    idle_window_s=10.0,
    large_count=100,
    large_warm=10,
    sync_calls=1_000,
    sync_warm=20,
    sync_budget_s=45.0,
    step_timeout_s=30.0,
    measure_timeout_s=90.0,
    stall_s=5.0,
    grace_s=1.0,
)
