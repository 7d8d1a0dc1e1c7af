"""Steady state: what N idle workloads cost the worker and the Temporal server.

    .venv/bin/python bench/steady_state.py [--workloads 1000] [--minutes 10] [--drift 10m]

Starts the same stack as `idpctl dev` (Temporal dev server with its SQLite file, the worker as its
own process, moto for the registry step, a bare git repository) in a temporary directory, applies
N workloads (ECR repository and IAM role in moto, ServiceAccount in git; no NATS user) and waits
until all are Ready. Then, for the window, it leaves them alone (drift checks every `--drift`)
and samples the worker's and the server's CPU time and resident memory from /proc. History growth
comes from each workflow's history length before and after the window (following a
continue-as-new to the new run). Prints one table and stops everything.
"""

import argparse
import asyncio
import os
import platform
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client

from idp.durations import format_duration, parse_duration
from idp.models import Workload
from starter import dev, operations, temporal
from workflows.messages import WaitReadyRequest
from workflows.state import Phase
from workflows.workload import WorkloadWorkflow

SYSTEM = "steady"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
APPLY_CONCURRENCY = 50
DESCRIBE_CONCURRENCY = 100


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def workload(index: int) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": f"w{index:05}", "system": SYSTEM},
            "spec": {"owner": "bench", "destination": "dev", "namespace": "bench"},
        }
    )


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User plus system CPU time of one process, and of its children that have exited (git)."""
    # The command name (field 2) is parenthesised and may hold spaces: split after it.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime) / CLOCK_TICKS, (cutime + cstime) / CLOCK_TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@dataclass
class Usage:
    """CPU and memory of one process over the window."""

    pid: int
    started: float = 0.0
    cpu_start: tuple[float, float] = (0.0, 0.0)
    cpu_end: tuple[float, float] = (0.0, 0.0)
    ended: float = 0.0
    rss: list[float] = field(default_factory=list)

    def begin(self) -> None:
        self.started, self.cpu_start = time.monotonic(), cpu_seconds(self.pid)
        self.sample()

    def sample(self) -> None:
        self.rss.append(rss_mib(self.pid))

    def end(self) -> None:
        self.ended, self.cpu_end = time.monotonic(), cpu_seconds(self.pid)
        self.sample()

    @property
    def cpu_percent(self) -> float:
        return 100 * (self.cpu_end[0] - self.cpu_start[0]) / (self.ended - self.started)

    @property
    def children_cpu_percent(self) -> float:
        return 100 * (self.cpu_end[1] - self.cpu_start[1]) / (self.ended - self.started)


@dataclass(frozen=True)
class Run:
    run_id: str
    events: int


async def current_runs(client: Client, ids: list[str]) -> dict[str, Run]:
    gate = asyncio.Semaphore(DESCRIBE_CONCURRENCY)

    async def one(workflow_id: str) -> tuple[str, Run]:
        async with gate:
            description = await client.get_workflow_handle(workflow_id).describe()
        return workflow_id, Run(description.run_id, description.history_length)

    return dict(await asyncio.gather(*(one(i) for i in ids)))


async def events_between(client: Client, before: dict[str, Run], after: dict[str, Run]) -> int:
    """History events written in between; a run that continued-as-new counts to its end."""
    total = 0
    for workflow_id, start in before.items():
        end = after[workflow_id]
        if end.run_id == start.run_id:
            total += end.events - start.events
            continue
        closed = await client.get_workflow_handle(workflow_id, run_id=start.run_id).describe()
        total += closed.history_length - start.events + end.events
    return total


async def apply_all(client: Client, items: list[Workload]) -> float:
    gate = asyncio.Semaphore(APPLY_CONCURRENCY)

    async def one(item: Workload) -> None:
        async with gate:
            result = await operations.apply_workload(client, "idp", item)
            status = await client.get_workflow_handle(item.workflow_id).execute_update(
                WorkloadWorkflow.wait_ready,
                WaitReadyRequest(generation=result.generation, timeout_seconds=600),
            )
        if status.phase != Phase.READY:
            raise SystemExit(f"{item.workflow_id} ended {status.phase.value}: {status.conditions}")

    started = time.perf_counter()
    await asyncio.gather(*(one(item) for item in items))
    return time.perf_counter() - started


async def continued_as_new(client: Client) -> int:
    query = (
        "WorkflowType = 'WorkloadWorkflow' AND ExecutionStatus = 'ContinuedAsNew' "
        f"AND IdpSystem = '{SYSTEM}'"
    )
    return (await client.count_workflows(query)).count


async def main(workloads: int, window: timedelta, drift: timedelta, sample_every: float) -> None:
    with tempfile.TemporaryDirectory(prefix="idp-steady-") as tmp:
        stack = dev.Stack(Path(tmp), "127.0.0.1", free_port(), free_port())
        stack.drift_interval = format_duration(drift)
        try:
            await dev.start(stack)
            client = await temporal.connect(temporal.TemporalSettings(address=stack.address))
            items = [workload(i) for i in range(workloads)]
            apply_seconds = await apply_all(client, items)
            ids = [item.workflow_id for item in items]
            worker = Usage(stack.processes["worker"].pid)
            server = Usage(stack.processes["temporal"].pid)
            before = await current_runs(client, ids)
            can_before = await continued_as_new(client)
            worker.begin()
            server.begin()
            deadline = time.monotonic() + window.total_seconds()
            while time.monotonic() < deadline:
                await asyncio.sleep(min(sample_every, max(deadline - time.monotonic(), 0)))
                if (problem := stack.dead()) is not None:
                    raise SystemExit(f"error: {problem}")
                worker.sample()
                server.sample()
            worker.end()
            server.end()
            after = await current_runs(client, ids)
            events = await events_between(client, before, after)
            can = await continued_as_new(client) - can_before
        finally:
            stack.stop()

    per_day = events / workloads / (window / timedelta(days=1))
    python = platform.python_version()
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {python}")
    print(f"steps per workload: registry (moto), manifests (git); drift checks every "
          f"{format_duration(drift)}; {workloads} applied in {apply_seconds:.0f}s")  # fmt: skip
    rows = [
        ("workloads", f"{workloads}"),
        ("window", format_duration(window)),
        ("worker CPU, % of one core (mean)", f"{worker.cpu_percent:.1f}"),
        ("  its git processes, % of one core", f"{worker.children_cpu_percent:.1f}"),
        ("worker RSS, MiB (max)", f"{max(worker.rss):.0f}"),
        ("server CPU, % of one core (mean)", f"{server.cpu_percent:.1f}"),
        ("server RSS, MiB (max)", f"{max(server.rss):.0f}"),
        ("worker RSS, MiB (median of samples)", f"{statistics.median(worker.rss):.0f}"),
        ("history events per workload per day", f"{per_day:.0f}"),
        ("history events in the window", f"{events}"),
        ("continue-as-new in the window", f"{can}"),
    ]
    print(f"{'measure':<40} {'value':>10}")
    for name, value in rows:
        print(f"{name:<40} {value:>10}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=10, help="the measured window")
    parser.add_argument("--drift", type=parse_duration, default=timedelta(minutes=10))
    parser.add_argument("--sample-seconds", type=float, default=5, help="how often to sample RSS")
    args = parser.parse_args()
    window = timedelta(minutes=args.minutes)
    asyncio.run(main(args.workloads, window, args.drift, args.sample_seconds))
