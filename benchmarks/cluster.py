"""Scale-out of the redis engine: one Redis primary beside a 3-primary Redis Cluster.

    python benchmarks/cluster.py [--quick] [--repeat N] [--seconds S] [--processes P]
                                 [--markdown OUT.md] [--json OUT.json]

Starts its own servers (a plain ``redis-server`` and a 3-primary cluster without
replicas, from tests/support/redis_servers.py) and runs the same workload on both,
repetitions interleaved: P worker processes, each with its own layer and channels in
many groups, sending to each other for a fixed window while receiving everything. It
reports deliveries/s, exact loss and duplicates, and each server's CPU, from which the
busiest server's CPU per delivery gives the projected capacity ratio. See
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import secrets
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # make `benchmarks` and `tests` importable when run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
from channels.exceptions import ChannelFull

from benchmarks.control import Stuck, Worker
from benchmarks.environment import command_line, cpu_model, load_average, package_versions
from benchmarks.stats import median
from benchmarks.worker import AsyncContext, Errors

Payload = dict[str, Any]

ROLE = "benchmarks.cluster:worker"
LOG_ROOT = Path("/tmp/channels_engines_bench")
#: Every worker gets these keys, so a message sealed in one process opens in another.
ENCRYPTION_KEYS = ["channels-engines-cluster-benchmark-fixed-key-0000"]
SECRET_KEY = "channels-engines-cluster-benchmark-fixed-secret-key"
#: As in run.py: the spec's usual 100 would turn a throughput run into a drop test.
CAPACITY = 100_000
PROBE, MESSAGE = "bench.probe", "bench.msg"
#: The issue's target: throughput with 3 primaries at least twice that of one.
TARGET = 2.0
#: Packages whose versions the header shows.
PACKAGES = ("channels-engines", "redis", "hiredis", "channels", "Django", "msgpack")

#: Seconds a worker may take to start, build its layer, make its channels and join its
#: groups; and to confirm that every channel hears the other processes.
SETUP_S = 90.0
PRIME_S = 60.0
#: Seconds past the end of the window within which every sender must have finished.
SENDERS_DONE_S = 30.0
#: Most seconds one cell may spend draining (as long as deliveries keep arriving).
DRAIN_LIMIT_S = 120.0
#: A sender task gives up after this many failed calls in a row.
MAX_FAILURES_IN_A_ROW = 20


def now_ns() -> int:
    """CLOCK_MONOTONIC, which every process on a Linux host shares."""
    return time.monotonic_ns()


# -- the workload ----------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What every worker does; the same for both topologies.

    Channel ``c`` (worker ``c // channels``) is a member of groups ``c*per_channel ..
    c*per_channel + per_channel - 1`` (mod ``groups``): with the defaults each group has
    one member in each process. A worker makes its channels with ``queues`` different
    ``new_channel()`` prefixes, so the servers see ``processes * queues`` process queues,
    as they would from that many processes.
    """

    processes: int = 4
    channels: int = 50
    queues: int = 8
    groups: int = 200
    per_channel: int = 4
    senders: int = 16
    group_share: float = 0.5
    warm_s: float = 2.0
    seconds: float = 20.0
    stall_s: float = 5.0
    grace_s: float = 1.0

    def groups_of(self, channel: int) -> list[int]:
        """The groups global channel ``channel`` is a member of."""
        first = channel * self.per_channel
        return sorted({(first + i) % self.groups for i in range(self.per_channel)})

    def members(self) -> dict[int, Counter[int]]:
        """For each group, how many members it has in each worker."""
        found: dict[int, Counter[int]] = {group: Counter() for group in range(self.groups)}
        for channel in range(self.processes * self.channels):
            for group in self.groups_of(channel):
                found[group][channel // self.channels] += 1
        return found

    def describe(self) -> str:
        sizes = [sum(counts.values()) for counts in self.members().values()]
        return (
            f"{self.processes} processes, {self.channels} channels each (`new_channel()` with "
            f"{self.queues} prefixes each: {self.processes * self.queues} process queues), "
            f"{self.groups} groups, each channel in {self.per_channel} "
            f"({_span(sizes)} members per group); {self.senders} sender tasks "
            f"per process, each awaiting its calls: {self.group_share:.0%} `group_send()` to "
            "a random group, the rest `send()` to a random channel of another process; "
            f"{self.warm_s:g} s warm-up, then a {self.seconds:g} s window"
        )


def _span(values: list[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low} to {high}"


def group_name(group: int) -> str:
    return f"room{group}"


def queue_prefix(queue: int) -> str:
    return f"specific{queue}"


# -- the worker process ----------------------------------------------------------------


@dataclass
class Tally:
    """What one worker's channels received: every (member, sender, seq) once."""

    plan: Plan
    index: int
    probes: set[tuple[int, int]] = field(default_factory=set)
    seen: set[int] = field(default_factory=set)
    received: int = 0
    in_window: int = 0
    dup: int = 0
    misrouted: int = 0
    unexpected: int = 0
    window: tuple[int, int] = (0, 0)
    primed: asyncio.Event = field(default_factory=asyncio.Event)

    def deliver(self, member: int, message: dict[str, Any], arrived_ns: int) -> None:
        plan = self.plan
        kind = message.get("type")
        if kind == PROBE:
            self.probes.add((member, int(message["s"])))
            if len(self.probes) == plan.channels * (plan.processes - 1):
                self.primed.set()
            return
        if kind != MESSAGE:
            self.unexpected += 1
            return
        sender, seq = int(message["s"]), int(message["q"])
        key = (seq * plan.processes + sender) * plan.channels + member
        if key in self.seen:
            self.dup += 1
            return
        self.seen.add(key)
        self.received += 1
        channel = self.index * plan.channels + member
        to, group = message.get("to", -1), message.get("g", -1)
        if (to >= 0 and to != channel) or (group >= 0 and group not in plan.groups_of(channel)):
            self.misrouted += 1
        start, end = self.window
        if start <= arrived_ns < end:
            self.in_window += 1

    def progress(self) -> Payload:
        return {"received": self.received, "dup": self.dup, "probes": len(self.probes)}


@dataclass
class Sent:
    """What one worker's senders did, and the deliveries they caused, by worker."""

    calls: int = 0
    in_window: int = 0
    full: int = 0
    failed: int = 0
    expected: Counter[int] = field(default_factory=Counter)
    seq: int = 0


async def worker(ctx: AsyncContext) -> None:
    """One process: its channels and groups, a consumer per channel, then senders."""
    params, layer, link = ctx.params, ctx.layer, ctx.link
    plan, index = Plan(**params["plan"]), int(params["index"])
    channels = [
        await layer.new_channel(queue_prefix(j % plan.queues)) for j in range(plan.channels)
    ]
    for j, channel in enumerate(channels):
        for group in plan.groups_of(index * plan.channels + j):
            await layer.group_add(group_name(group), channel)
    tally = Tally(plan, index)
    link.progress = lambda: {**tally.progress(), "errors": ctx.errors.count}
    consumers = [
        asyncio.create_task(_consume(layer, channel, j, tally, ctx.errors))
        for j, channel in enumerate(channels)
    ]
    link.send("ready", channels=channels)
    peers: list[str] = (await link.wait("peers", SETUP_S))["channels"]
    for c, channel in enumerate(peers):
        if c // plan.channels != index:
            await layer.send(channel, {"type": PROBE, "s": index})
    try:
        await asyncio.wait_for(tally.primed.wait(), PRIME_S)
    except asyncio.TimeoutError:
        raise Stuck(f"{len(tally.probes)} probes of {len(peers) - plan.channels} arrived") from None
    link.send("primed")
    go = await link.wait("go", PRIME_S)
    start_ns, t0, t1 = int(go["start_ns"]), int(go["t0_ns"]), int(go["t1_ns"])
    tally.window = (t0, t1)
    sent = Sent()
    members = plan.members()
    await asyncio.sleep(max(0.0, (start_ns - now_ns()) / 1e9))
    await asyncio.gather(
        *(
            _send(layer, plan, index, peers, members, (t0, t1), sent, ctx.errors, lane)
            for lane in range(plan.senders)
        )
    )
    link.send(
        "sent",
        calls=sent.calls,
        in_window=sent.in_window,
        full=sent.full,
        failed=sent.failed,
        expected={str(w): n for w, n in sent.expected.items()},
    )
    total = int((await link.wait("expect", SENDERS_DONE_S + PRIME_S))["total"])
    seen, changed = tally.received, time.monotonic()
    while tally.received < total and time.monotonic() - changed < plan.stall_s:
        await asyncio.sleep(0.05)
        if tally.received != seen:
            seen, changed = tally.received, time.monotonic()
    await asyncio.sleep(plan.grace_s)  # late duplicates still count
    link.send(
        "report",
        received=tally.received,
        in_window=tally.in_window,
        dup=tally.dup,
        misrouted=tally.misrouted,
        unexpected=tally.unexpected,
        errors=ctx.errors.count,
        error_samples=ctx.errors.samples,
    )
    del consumers  # they run until the process exits


async def _consume(layer: Any, channel: str, member: int, tally: Tally, errors: Errors) -> None:
    failures = 0
    while True:
        try:
            message = await layer.receive(channel)
        except Exception as exc:
            errors.add(f"receive: {exc!r}")
            failures += 1
            if failures >= MAX_FAILURES_IN_A_ROW:
                return
            await asyncio.sleep(0.05)
            continue
        failures = 0
        tally.deliver(member, message, now_ns())


async def _send(
    layer: Any,
    plan: Plan,
    index: int,
    peers: list[str],
    members: dict[int, Counter[int]],
    window: tuple[int, int],
    sent: Sent,
    errors: Errors,
    lane: int,
) -> None:
    """One sender task: awaited calls until the window ends."""
    rng = random.Random(index * 1000 + lane)
    others = (plan.processes - 1) * plan.channels
    failures = 0
    while (started := now_ns()) < window[1]:
        sent.seq += 1
        message: dict[str, Any] = {"type": MESSAGE, "s": index, "q": sent.seq}
        try:
            if rng.random() < plan.group_share:
                group = rng.randrange(plan.groups)
                message["g"] = group
                await layer.group_send(group_name(group), message)
                sent.expected.update(members[group])
            else:
                to = rng.randrange(others)
                to += plan.channels if to >= index * plan.channels else 0
                message["to"] = to
                await layer.send(peers[to], message)
                sent.expected[to // plan.channels] += 1
        except ChannelFull:
            sent.full += 1
            await asyncio.sleep(0.001)
            continue
        except Exception as exc:
            errors.add(f"send: {exc!r}")
            sent.failed += 1
            failures += 1
            if failures >= MAX_FAILURES_IN_A_ROW:
                raise
            continue
        failures = 0
        sent.calls += 1
        if started >= window[0]:
            sent.in_window += 1


# -- servers ---------------------------------------------------------------------------


@dataclass
class Topology:
    """A way to run the layer: its CONFIG (without the prefix) and the primaries."""

    name: str
    label: str
    options: Payload
    primaries: list[Any]
    cluster: Any = None

    def owners(self) -> dict[str, frozenset[int]]:
        """The slots of each primary, by address (every slot on one server)."""
        if self.cluster is None:
            return {_address(self.primaries[0]): frozenset(range(16384))}
        primaries = [node for node in self.cluster.state() if node.is_primary]
        return {_where(node.address): node.slots for node in primaries}


def _address(server: Any) -> str:
    return _where(server.address)


def _where(address: tuple[str, int]) -> str:
    host, port = address
    return f"{host}:{port}"


def start_topologies() -> tuple[list[Topology], list[Any]]:
    """One plain server and a 3-primary cluster without replicas; both are stopped by
    the caller (and at exit, by the classes themselves)."""
    from tests.support.redis_servers import RedisCluster, RedisServer

    started: list[Any] = []
    try:
        single = RedisServer(name="bench-one").start()
        started.append(single)
        cluster = RedisCluster(primaries=3, replicas=0).start()
        started.append(cluster)
    except BaseException:
        stop_all(started)
        raise
    primaries = cluster.primaries()
    return [
        Topology("one", "one primary", {"url": single.url}, [single]),
        Topology(
            "cluster",
            "cluster, 3 primaries",
            {"url": "redis:///0", "cluster_nodes": [_address(node) for node in primaries]},
            primaries,
            cluster,
        ),
    ], started


def stop_all(started: Sequence[Any]) -> None:
    for server in reversed(started):
        with contextlib.suppress(Exception):
            server.stop()


def server_cpu(server: Any) -> float:
    """CPU seconds the server used so far (INFO cpu: system + user, all its threads)."""
    info = server.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def process_cpu(pid: int) -> float:
    """CPU seconds a worker process used so far (0 once it is gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def delete_keys(topology: Topology, prefix: str) -> int:
    """Delete the cell's keys on every primary, one key per command (a cluster refuses
    a command whose keys are in different slots)."""
    deleted = 0
    for server in topology.primaries:
        with contextlib.closing(server.admin()) as admin:
            pipe = admin.pipeline(transaction=False)
            for key in admin.scan_iter(match=f"{prefix}:*", count=1000):
                pipe.unlink(key)
                deleted += 1
            pipe.execute()
    return deleted


# -- one cell --------------------------------------------------------------------------


def subject(topology: Topology, prefix: str) -> Payload:
    """The worker's Django settings, as benchmarks/layers.py builds a layer from them."""
    config = {
        "ENGINE": "redis",
        **topology.options,
        "prefix": prefix,
        "encryption_keys": ENCRYPTION_KEYS,
        "capacity": CAPACITY,
    }
    return {
        "kind": "django",
        "settings": {
            "INSTALLED_APPS": ["channels_engines"],
            "CHANNEL_LAYERS": {
                "default": {"BACKEND": "channels_engines.EngineChannelLayer", "CONFIG": config}
            },
            "USE_TZ": True,
            "SECRET_KEY": SECRET_KEY,
        },
    }


def run_cell(topology: Topology, plan: Plan, rep: int, run_dir: Path) -> Payload:
    """Run the workload once on ``topology``; failures are results, never exceptions."""
    prefix = f"benchcl.{run_dir.name[-8:]}.{topology.name}.{rep}"
    log_dir = run_dir / f"{rep}-{topology.name}"
    result: Payload = {"topology": topology.name, "rep": rep, "status": "ok"}
    workers: list[Worker] = []
    try:
        for index in range(plan.processes):
            params = {"plan": asdict(plan), "index": index}
            workers.append(
                Worker(ROLE, subject(topology, prefix), params, f"worker{index}", str(log_dir))
            )
        _measure(topology, plan, prefix, workers, result)
    except Stuck as exc:
        result["status"] = f"stuck: {exc}"
    except Exception as exc:  # WorkerFailed, or a server that did not answer
        result["status"] = f"error: {exc}"
    finally:
        for one in workers:
            one.stop()
    try:
        delete_keys(topology, prefix)
    except Exception as exc:
        result.setdefault("notes", []).append(f"keys left behind: {exc!r}")
    return result


def _measure(
    topology: Topology, plan: Plan, prefix: str, workers: list[Worker], result: Payload
) -> None:
    channels: list[str] = []
    for one in workers:
        channels += one.expect("ready", SETUP_S)["channels"]
    result["placement"] = _placement(topology, plan, prefix, channels)
    for one in workers:
        one.tell("peers", channels=channels)
    for one in workers:
        one.expect("primed", PRIME_S)
    start = now_ns() + 200_000_000
    t0 = start + int(plan.warm_s * 1e9)
    t1 = t0 + int(plan.seconds * 1e9)
    for one in workers:
        one.tell("go", start_ns=start, t0_ns=t0, t1_ns=t1)
    time.sleep(max(0.0, (t0 - now_ns()) / 1e9))
    before = {_address(server): server_cpu(server) for server in topology.primaries}
    clients_before = sum(process_cpu(one.pid) for one in workers)
    time.sleep(max(0.0, (t1 - now_ns()) / 1e9))
    clients_after = sum(process_cpu(one.pid) for one in workers)
    after = {_address(server): server_cpu(server) for server in topology.primaries}
    seconds = (t1 - t0) / 1e9
    cpu = {address: after[address] - before[address] for address in before}

    sent = [one.expect("sent", SENDERS_DONE_S + plan.seconds) for one in workers]
    expected: Counter[int] = Counter()
    for report in sent:
        expected.update({int(w): n for w, n in report["expected"].items()})
    for index, one in enumerate(workers):
        one.tell("expect", total=expected[index])
    reports: list[Payload] = []
    for one in workers:
        drained = one.expect_while_progressing(
            "report", "received", plan.stall_s + plan.grace_s + 2, DRAIN_LIMIT_S
        )
        if drained is None:
            raise Stuck(f"{one.label}: no report while draining (progress: {one.progress()})")
        reports.append(drained)

    deliveries = sum(report["in_window"] for report in reports)
    received = [report["received"] for report in reports]
    result.update(
        {
            "seconds": seconds,
            "rate": deliveries / seconds,
            "calls_per_s": sum(report["in_window"] for report in sent) / seconds,
            "expected": sum(expected.values()),
            "received": sum(received),
            "lost": sum(max(0, expected[i] - received[i]) for i in range(len(workers))),
            "extra": sum(max(0, received[i] - expected[i]) for i in range(len(workers))),
            "dup": sum(report["dup"] for report in reports),
            "misrouted": sum(report["misrouted"] for report in reports),
            "unexpected": sum(report["unexpected"] for report in reports),
            "full": sum(report["full"] for report in sent),
            "failed_calls": sum(report["failed"] for report in sent),
            "errors": sum(report["errors"] for report in reports),
            "error_samples": [s for report in reports for s in report["error_samples"]][:5],
            "by_worker": [
                {"expected": expected[i], "received": received[i]} for i in range(len(workers))
            ],
            "server_cpu_s": cpu,
        }
    )
    busiest = max(cpu.values())
    result["busiest_cpu_pct"] = 100 * busiest / seconds
    result["all_cpu_pct"] = 100 * sum(cpu.values()) / seconds
    result["workers_cpu_pct"] = 100 * (clients_after - clients_before) / seconds
    result["cpu_us_per_delivery"] = 1e6 * busiest / deliveries if deliveries else None


def _placement(topology: Topology, plan: Plan, prefix: str, channels: list[str]) -> Payload:
    """How many process queues and groups each primary holds."""
    from channels_engines.redis.keys import Keys
    from channels_engines.redis.servers import slot_of
    from channels_engines.validation import non_local_name

    keys = Keys(prefix)
    owners = topology.owners()

    def owner(key: str) -> str:
        slot = slot_of(key)
        return next(address for address, slots in owners.items() if slot in slots)

    placed = {address: {"queues": 0, "groups": 0} for address in owners}
    for queue in {non_local_name(channel) for channel in channels}:
        placed[owner(keys.stream(queue)[0])]["queues"] += 1
    for group in range(plan.groups):
        placed[owner(keys.group(group_name(group)))]["groups"] += 1
    return placed


# -- the run ---------------------------------------------------------------------------


@dataclass
class Summary:
    """One topology over all repetitions: medians, and totals of what went wrong.

    ``errors`` counts every other anomaly: failed calls, ChannelFull, receive errors,
    deliveries to the wrong channel, unknown messages, and arrivals beyond what the
    senders' successful calls explain.
    """

    name: str
    label: str
    reps: int
    ok_reps: int
    rate: float | None
    calls_per_s: float | None
    busiest_cpu_pct: float | None
    all_cpu_pct: float | None
    workers_cpu_pct: float | None
    cpu_us_per_delivery: float | None
    lost: int
    dup: int
    errors: int
    statuses: list[str]


def summarise(topology: Topology, cells: list[Payload]) -> Summary:
    ok = [cell for cell in cells if cell["status"] == "ok"]

    def med(key: str) -> float | None:
        return median(cell.get(key) for cell in ok)

    def total(*keys: str) -> int:
        return sum(int(cell.get(key) or 0) for cell in cells for key in keys)

    return Summary(
        name=topology.name,
        label=topology.label,
        reps=len(cells),
        ok_reps=len(ok),
        rate=med("rate"),
        calls_per_s=med("calls_per_s"),
        busiest_cpu_pct=med("busiest_cpu_pct"),
        all_cpu_pct=med("all_cpu_pct"),
        workers_cpu_pct=med("workers_cpu_pct"),
        cpu_us_per_delivery=med("cpu_us_per_delivery"),
        lost=total("lost"),
        dup=total("dup"),
        errors=total("errors", "failed_calls", "full", "misrouted", "unexpected", "extra"),
        statuses=[cell["status"] for cell in cells if cell["status"] != "ok"],
    )


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return top / bottom if top is not None and bottom else None


def ratios(one: Summary, cluster: Summary) -> Payload:
    """Measured throughput ratio, and the capacity ratio projected from server CPU."""
    return {
        "throughput": _ratio(cluster.rate, one.rate),
        "projected_capacity": _ratio(one.cpu_us_per_delivery, cluster.cpu_us_per_delivery),
    }


def header(plan: Plan, repeat: int, versions: Payload, load_at_start: float) -> dict[str, str]:
    packages = package_versions()
    return {
        "Command": f"`{command_line()}`",
        "Date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "Machine": f"{os.cpu_count()} cores ({cpu_model()}), {platform.platform()}",
        "Load average (1 min)": f"{load_at_start:.2f} at start, {load_average():.2f} at end",
        "Redis": f"redis-server {versions['redis_server']}, on this host (loopback TCP), "
        "no persistence; the cluster has 3 primaries and no replicas",
        "Python": platform.python_version(),
        "Packages": ", ".join(f"{name} {packages.get(name, '?')}" for name in PACKAGES),
        "Workload": plan.describe(),
        "Method": f"{repeat} repetition(s), topologies interleaved, fresh worker processes "
        "and key prefix per cell; medians of the repetitions, totals of what went wrong",
    }


def _num(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _status(row: Summary) -> str:
    if not row.statuses:
        return "ok" if row.reps == 1 else f"ok ({row.ok_reps}/{row.reps})"
    shown = "; ".join(row.statuses)[:300].replace("|", "/")
    return f"{row.ok_reps}/{row.reps} ok; {shown}"


def _verdict(value: float | None, projected: bool = False) -> str:
    if value is None:
        return "not measured"
    met = "met" if value >= TARGET else "not met"
    return f"{met}, as a projection" if projected else met


def markdown(facts: dict[str, str], summaries: list[Summary], cells: list[Payload]) -> str:
    one, cluster = summaries
    found = ratios(one, cluster)
    lines = ["#### Cluster run (`benchmarks/cluster.py`)", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value.replace('|', '/')} |" for key, value in facts.items()]
    lines += [
        "",
        "| topology | deliveries/s | calls/s | lost | dup | errors | busiest server CPU % "
        "| CPU µs per delivery, busiest server | all servers CPU % | worker processes CPU % "
        "| status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in summaries:
        lines.append(
            f"| {row.label} | {_num(row.rate)} | {_num(row.calls_per_s)} | {row.lost} "
            f"| {row.dup} | {row.errors} | {_num(row.busiest_cpu_pct, 1)} "
            f"| {_num(row.cpu_us_per_delivery, 2)} | {_num(row.all_cpu_pct, 1)} "
            f"| {_num(row.workers_cpu_pct)} | {_status(row)} |"
        )
    lines += [
        "",
        f"| ratio, cluster ÷ one primary | value | target: ≥ {TARGET:.2f}x |",
        "|---|---:|---|",
        f"| throughput, measured (deliveries/s) | {_times(found['throughput'])} "
        f"| {_verdict(found['throughput'])} |",
        "| capacity, **projected** from the busiest server's CPU per delivery "
        f"| {_times(found['projected_capacity'])} "
        f"| {_verdict(found['projected_capacity'], projected=True)} |",
        "",
    ]
    for row in summaries:
        if row.workers_cpu_pct is not None and row.all_cpu_pct is not None:
            lines.append(
                f"- {row.label}: the worker processes used {row.workers_cpu_pct:.0f} % CPU and "
                f"the servers {row.all_cpu_pct:.0f} %, of the {100 * (os.cpu_count() or 1)} % "
                "the host's cores offer."
            )
    lines += ["", *_placement_lines(cells)]
    lines += [
        "",
        "The projection assumes the servers are the bottleneck: on a host where the "
        "clients have the CPU to spare, one primary saturates when its CPU per delivery "
        "fills one core, the cluster when its busiest primary does. It ignores the "
        "network and the clients.",
    ]
    return "\n".join(lines) + "\n"


def _placement_lines(cells: list[Payload]) -> list[str]:
    """Each cluster cell's spread: CPU, queues and groups of each primary."""
    rows = [cell for cell in cells if cell["topology"] == "cluster" and "server_cpu_s" in cell]
    if not rows:
        return []
    lines = [
        "Cluster cells, per primary: CPU % / process queues / groups",
        "",
        "| repetition | primaries |",
        "|---:|---|",
    ]
    for cell in rows:
        parts = []
        for address, seconds in cell["server_cpu_s"].items():
            placed = cell["placement"][address]
            parts.append(
                f"{100 * seconds / cell['seconds']:.1f} % / {placed['queues']} / {placed['groups']}"
            )
        lines.append(f"| {cell['rep'] + 1} | {' · '.join(parts)} |")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="4 s windows, 1 repetition (under a minute)"
    )
    parser.add_argument("--repeat", type=int, help="repetitions (default: 1 quick, 3 full)")
    parser.add_argument("--seconds", type=float, help="measured window (default: 4 quick, 20)")
    parser.add_argument(
        "--processes", type=int, default=Plan.processes, help="worker processes (default: 4)"
    )
    parser.add_argument("--markdown", help="write the Markdown table here")
    parser.add_argument("--json", help="write every number of the run here")
    args = parser.parse_args(argv)
    if args.processes < 2:
        parser.error("--processes must be 2 or more (each sends to the others)")
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be 1 or more")
    if args.seconds is not None and args.seconds <= 0:
        parser.error("--seconds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Start the servers, run the interleaved cells, print and write the report."""
    args = parse_args(argv)
    plan = Plan(processes=args.processes)
    if args.quick:
        plan = replace(plan, warm_s=1.0, seconds=4.0, stall_s=3.0, grace_s=0.3)
    if args.seconds:
        plan = replace(plan, seconds=args.seconds)
    repeat = args.repeat or (1 if args.quick else 3)
    started_at, load_at_start = time.monotonic(), load_average()
    run_dir = LOG_ROOT / f"cluster-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
    print(f"starting servers; worker logs under {run_dir}", file=sys.stderr)
    topologies, started = start_topologies()
    cells: list[Payload] = []
    try:
        versions = {"redis_server": topologies[0].primaries[0].info("server")["redis_version"]}
        for rep in range(repeat):
            for topology in topologies:
                cell = run_cell(topology, plan, rep, run_dir)
                cells.append(cell)
                print(
                    f"rep {rep + 1}/{repeat} {topology.label}: {cell['status']}, "
                    f"{_num(cell.get('rate'))} deliveries/s, lost {cell.get('lost')}, "
                    f"dup {cell.get('dup')}, busiest server CPU "
                    f"{_num(cell.get('busiest_cpu_pct'), 1)} %",
                    file=sys.stderr,
                )
    finally:
        stop_all(started)
    summaries = [
        summarise(topology, [cell for cell in cells if cell["topology"] == topology.name])
        for topology in topologies
    ]
    facts = header(plan, repeat, versions, load_at_start)
    text = markdown(facts, summaries, cells)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text, encoding="utf-8")
    if args.json:
        document = {
            "header": facts,
            "plan": asdict(plan),
            "topologies": {summary.name: asdict(summary) for summary in summaries},
            "ratios": ratios(*summaries),
            "cells": cells,
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"\ntotal time: {time.monotonic() - started_at:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
