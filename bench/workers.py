"""Onboarding on one worker and on three, and how long a killed worker's workflows wait.

    .venv/bin/python bench/workers.py [--workloads 300] [--takeover-workloads 300]

Each configuration gets a fresh local stack (`idpctl dev`'s parts in a temporary directory: the
Temporal dev server with its SQLite file, moto, the Synadia emulator with its nats-server, the
Port emulator and bridge, a bare git repository) with one worker process or three, each with its
own cache directory (so its own clone of the state store) and metrics endpoint. N workloads are
applied at once (ECR repository and IAM role, NATS user, sealed credentials, ServiceAccount) and
the clock stops when every one is Ready. Beside the time, the CPU seconds each process spent over
the onboarding, from /proc: its own, and its children's that exited meanwhile (git, for a worker);
a long-lived child (the Synadia emulator's nats-server) has a row of its own.

Then, on the three workers, the takeover: M more workloads are applied and, once every workflow
has taken its apply and while the victim holds an activity, one worker is SIGKILLed and left
dead. From the workflows' histories afterwards: each piece of work the kill held up, which
timeout released it, and how long after the kill another worker started it; beside them, how
long every other workflow task waited in the queue meanwhile (the load, which a task released by
a timeout queues behind).

What bounds that wait:
- an activity the dead worker was running is retried once its heartbeat timeout expires
  (activities/heartbeat.py HEARTBEAT_TIMEOUT, 15 s, heartbeats every 7.5 s), after the retry
  policy's first interval (1 s); one without a heartbeat timeout waits out its whole
  start-to-close timeout (publish_workload: 1 minute);
- a workflow task of a workflow cached on the dead worker is queued on that worker's sticky queue
  and moves to the shared queue only when its schedule-to-start timeout expires (the Worker's
  sticky_queue_schedule_to_start_timeout: worker.py STICKY_TIMEOUT, 5 s; the SDK's default is
  10 s); one the dead worker had started is retried after the workflow task timeout (10 s by
  default).
The server sends a task for a sticky queue that nobody has polled for about 10 s straight to the
shared queue, so the schedule-to-start timeout holds up only the workflow tasks scheduled in the
first seconds after the crash, not those that follow a lost activity. Whatever a timeout
releases then queues on the shared queue behind everything else there.
"""

import argparse
import asyncio
import os
import platform
import shlex
import socket
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import running
from onboarding import ready, workload
from steady_state import cpu_seconds
from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS)]  # the metrics scraper the three-worker tests use

from support.several_workers import scrape  # noqa: E402

from starter import dev, temporal  # noqa: E402

WORKER_READY = b"worker polling task queue"
FIRST_WORKER = "worker"  # the one `idpctl dev` starts
HISTORY_CONCURRENCY = 20


# ---- the stack's processes ---------------------------------------------------------------------


def worker_metrics(stack: dev.Stack, name: str) -> str:
    command = stack.processes[name].args
    assert isinstance(command, list)
    return command[command.index("--metrics-address") + 1]


def add_worker(stack: dev.Stack, name: str) -> None:
    """Another worker beside `idpctl dev`'s, as a deployment scales out: same platform file and
    environment, its own cache directory and metrics endpoint."""
    stack.spawn(name, [
        sys.executable, "-m", "worker", "--platform", str(stack.platform_file),
        "--cache-dir", str(stack.root / name),
        "--metrics-address", f"{stack.host}:{dev.free_port(stack.host)}",
    ], extra_env={
        dev.SYNADIA_TOKEN_ENV: stack.synadia_token or "",
        **stack.port_env(), **stack.postgres_env(),
    })  # fmt: skip


async def polling(stack: dev.Stack, names: list[str]) -> None:
    async def ready() -> bool:
        logs = [(stack.logs / f"{name}.log").read_bytes() for name in names]
        return all(WORKER_READY in log for log in logs)

    await dev.wait_until(stack, "the workers", names[-1], ready)


def live_children(pid: int) -> list[int]:
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


def measured(stack: dev.Stack) -> dict[str, list[int]]:
    """Row name -> pids: every process of the stack, and the children it has right now by
    command (the long-lived ones, such as nats-server; children that come and go, such as git,
    count in their parent's exited children)."""
    rows: dict[str, list[int]] = {}
    for name, process in stack.processes.items():
        rows[name] = [process.pid]
        for child in live_children(process.pid):
            command = Path(f"/proc/{child}/comm").read_text().strip()
            rows.setdefault(f"{name}/{command}", []).append(child)
    return rows


def cpu(pids: list[int]) -> tuple[float, float] | None:
    """(own, exited children) CPU seconds summed over `pids`; None once one has exited (its
    time then counts in its parent's exited children)."""
    try:
        times = [cpu_seconds(pid) for pid in pids]
    except FileNotFoundError:
        return None
    return sum(own for own, _ in times), sum(children for _, children in times)


# ---- onboarding --------------------------------------------------------------------------------


@dataclass
class Onboarding:
    workers: int
    workloads: int
    seconds: float
    cpu: dict[str, tuple[float, float]]  # row -> (own, exited children) over the onboarding
    takeover: "Takeover | None" = None


async def onboard(workers: int, n: int, takeover: int) -> Onboarding:
    host = "127.0.0.1"
    with tempfile.TemporaryDirectory(prefix="idp-workers-") as tmp:
        stack = dev.Stack.on_free_ports(Path(tmp), host)
        try:
            await dev.start(stack)
            names = [FIRST_WORKER] + [f"worker-{i}" for i in range(2, workers + 1)]
            for name in names[1:]:
                add_worker(stack, name)
            await polling(stack, names)
            client = await temporal.connect(temporal.TemporalSettings(address=stack.address))
            items = [workload("onboard", f"w{i:04}") for i in range(n)]
            rows = measured(stack)
            before = {row: cpu(pids) for row, pids in rows.items()}
            started = time.perf_counter()
            await asyncio.gather(*(ready(client, item) for item in items))
            seconds = time.perf_counter() - started
            after = {row: cpu(pids) for row, pids in rows.items()}
            spent = {
                row: (end[0] - start[0], end[1] - start[1])
                for row, start in before.items()
                if start is not None and (end := after[row]) is not None
            }
            result = Onboarding(workers, n, seconds, spent)
            if takeover and workers > 1:
                result.takeover = await take_over(stack, client, takeover)
        finally:
            stack.stop()
    return result


# ---- the takeover ------------------------------------------------------------------------------


@dataclass
class Resumed:
    """One piece of work the kill held up, and when another worker started it: seconds from the
    kill (or from its scheduling, when that came later) until its timeout fired, then until
    another worker started it."""

    workflow_id: str
    cause: str
    timeout: float | None  # None for an activity: its history does not say when it timed out
    queued: float
    since_kill: float

    @property
    def waited(self) -> float:
        return (self.timeout or 0.0) + self.queued


@dataclass
class Takeover:
    victim: str
    workloads: int
    ready_at_kill: int
    held: dict[str, float]  # what the victim's /metrics said just before the kill
    resumed: list[Resumed]
    queued: list[float]  # seconds every other workflow task after the kill waited to start
    all_ready_after: float  # seconds from the kill


async def take_over(stack: dev.Stack, client: Client, m: int) -> Takeover:
    items = [workload("takeover", f"w{i:04}") for i in range(m)]
    workers = [name for name in stack.processes if name.startswith(FIRST_WORKER)]
    accepted: set[str] = set()
    tasks = [asyncio.create_task(ready(client, item, accepted=accepted)) for item in items]

    async def holding() -> tuple[str, dict[str, float]] | None:
        """The first worker holding an activity, with its slots in use and cache."""
        for name in workers:
            found = await scrape(worker_metrics(stack, name))
            used = "temporal_worker_task_slots_used"
            held = {
                "activities": found.value(used, worker_type="ActivityWorker"),
                "workflow tasks": found.value(used, worker_type="WorkflowWorker"),
                "cached workflows": found.value("temporal_sticky_cache_size"),
            }
            if held["activities"]:
                return name, held
        return None

    # Once every workflow took its apply, so that what follows the kill does not also queue
    # behind the first tasks of hundreds of new workflows; and while the victim is at work.
    async with asyncio.timeout(600):
        while len(accepted) < m or not (found := await holding()):
            for task in tasks:
                if task.done() and task.exception():
                    raise task.exception()  # type: ignore[misc]
            if all(task.done() for task in tasks):
                raise RuntimeError("every workload was Ready before a worker held an activity")
            await asyncio.sleep(0.05)
    name, held = found
    victim = stack.processes[name]
    done = sum(task.done() for task in tasks)
    identity = f"{victim.pid}@{socket.gethostname()}"
    killed_at = datetime.now(UTC)
    victim.kill()
    victim.wait()
    await asyncio.gather(*tasks)
    all_ready_after = (datetime.now(UTC) - killed_at).total_seconds()
    limit = asyncio.Semaphore(HISTORY_CONCURRENCY)

    async def resumed(workflow_id: str) -> tuple[list[Resumed], list[float]]:
        async with limit:
            history = await client.get_workflow_handle(workflow_id).fetch_history()
        return held_up(workflow_id, history.events, killed_at, identity)

    found = await asyncio.gather(*(resumed(item.workflow_id) for item in items))
    return Takeover(
        name,
        m,
        done,
        held,
        [r for rs, _ in found for r in rs],
        [q for _, qs in found for q in qs],
        all_ready_after,
    )


def held_up(
    workflow_id: str, events: list[HistoryEvent], killed_at: datetime, victim: str
) -> tuple[list[Resumed], list[float]]:
    """From one workflow's history: its work that waited for a timeout after the kill, and how
    long its other workflow tasks after the kill waited to start (the load on the queue)."""
    found, queued = [], []
    scheduled = killed_at
    timed_out: tuple[str, datetime, datetime] | None = None  # cause, task scheduled, timed out
    for event in events:
        at = event.event_time.ToDatetime(tzinfo=UTC)
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            scheduled = at
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT and at > killed_at:
            timeout = event.workflow_task_timed_out_event_attributes.timeout_type
            cause = (
                "workflow task on the dead worker's sticky queue: schedule-to-start timeout"
                if timeout == TimeoutType.TIMEOUT_TYPE_SCHEDULE_TO_START
                else "workflow task the dead worker had started: workflow task timeout"
            )
            # Kept: the task scheduled again in its place must not reset the clock.
            timed_out = timed_out or (cause, max(scheduled, killed_at), at)
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED and at > killed_at:
            attributes = event.workflow_task_started_event_attributes
            assert attributes.identity != victim, f"{workflow_id}: the dead worker took a task"
            if timed_out is None:
                queued.append((at - scheduled).total_seconds())
            else:
                cause, due, fired = timed_out
                timeout, waited = (fired - due).total_seconds(), (at - fired).total_seconds()
                since_kill = (at - killed_at).total_seconds()
                found.append(Resumed(workflow_id, cause, timeout, waited, since_kill))
                timed_out = None
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED and at > killed_at:
            # A retried activity's started event is written for its last attempt only, with the
            # failure of the attempt before: a timeout there is the attempt the kill lost.
            attributes = event.activity_task_started_event_attributes
            failure = attributes.last_failure
            if attributes.attempt > 1 and failure.HasField("timeout_failure_info"):
                timeout = TimeoutType.Name(failure.timeout_failure_info.timeout_type)
                timeout = timeout.removeprefix("TIMEOUT_TYPE_").lower().replace("_", "-")
                cause = f"activity the dead worker ran: {timeout} timeout"
                since_kill = (at - killed_at).total_seconds()
                found.append(Resumed(workflow_id, cause, None, since_kill, since_kill))
    return found, queued


# ---- report ------------------------------------------------------------------------------------


def print_onboarding(results: list[Onboarding]) -> None:
    print(f"\n{'workers':>7} {'workloads':>9} {'all Ready (s)':>14} {'workloads/s':>12}")
    for r in results:
        print(
            f"{r.workers:>7} {r.workloads:>9} {r.seconds:>14.1f} {r.workloads / r.seconds:>12.1f}"
        )
    print(
        "\nCPU seconds over the onboarding, by process: own + exited children (git, for a worker)"
    )
    rows = list(dict.fromkeys(row for r in results for row in r.cpu))
    header = "".join(f"{f'{r.workers} worker(s)':>20}" for r in results)
    print(f"  {'process':<28}{header}")
    for row in rows:
        cells = "".join(
            f"{f'{r.cpu[row][0]:.1f} + {r.cpu[row][1]:.1f}':>20}" if row in r.cpu else f"{'':>20}"
            for r in results
        )
        print(f"  {row:<28}{cells}")
    totals = "".join(f"{sum(a + b for a, b in r.cpu.values()):>20.1f}" for r in results)
    print(f"  {'total':<28}{totals}")
    walls = "".join(f"{r.seconds:>20.1f}" for r in results)
    print(f"  {'(wall clock)':<28}{walls}")


def print_takeover(t: Takeover) -> None:
    held = ", ".join(f"{value:g} {what}" for what, value in t.held.items())
    print(
        f"\ntakeover: {t.victim} SIGKILLed with {held} (its /metrics), every apply taken, "
        f"{t.ready_at_kill} of {t.workloads} workloads Ready; not restarted"
    )
    by_cause: dict[str, list[Resumed]] = defaultdict(list)
    for r in t.resumed:
        by_cause[r.cause].append(r)
    print(
        "seconds from the kill (or the work's scheduling, if later) until its timeout fired, "
        "then until another worker started it (medians), and in all"
    )
    print(
        f"  {'what waited':<76}{'count':>6}{'timeout':>8}{'queued':>8}"
        f"{'min':>7}{'median':>8}{'max':>7}"
    )
    for cause, items in sorted(by_cause.items()):
        fired = [r.timeout for r in items if r.timeout is not None]
        timeout = f"{statistics.median(fired):.1f}" if fired else "-"
        queued = statistics.median(r.queued for r in items) if fired else None
        total = [r.waited for r in items]
        print(
            f"  {cause:<76}{len(items):>6}{timeout:>8}"
            f"{f'{queued:.1f}' if queued is not None else '-':>8}{min(total):>7.1f}"
            f"{statistics.median(total):>8.1f}{max(total):>7.1f}"
        )
    if t.queued:
        waits = sorted(t.queued)
        print(
            f"  every other workflow task after the kill ({len(waits)}) waited to start: median "
            f"{statistics.median(waits):.1f} s, 90th percentile "
            f"{waits[int(0.9 * (len(waits) - 1))]:.1f} s, max {waits[-1]:.1f} s"
        )
    # A workflow is taken over once all its held-up work has started elsewhere: its lost
    # activity first, then the workflow task that activity's completion queued.
    stalls: dict[str, float] = defaultdict(float)
    for r in t.resumed:
        stalls[r.workflow_id] = max(stalls[r.workflow_id], r.since_kill)
    if stalls:
        values = sorted(stalls.values())
        print(
            f"  {len(values)} workflows held up; from the kill until all their held-up work ran "
            f"on another worker: median {statistics.median(values):.1f} s, max {values[-1]:.1f} s"
        )
    print(f"all {t.workloads} Ready {t.all_ready_after:.1f} s after the kill")


async def main(n: int, m: int, configurations: list[int]) -> None:
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")  # fmt: skip
    print("steps per workload: registry (moto), NATS user, sealed credentials, manifests")
    results = [await onboard(workers, n, m) for workers in configurations]
    print_onboarding(results)
    if results[-1].takeover is not None:
        print_takeover(results[-1].takeover)
    print(f"command: {shlex.join([os.path.relpath(sys.executable), *sys.argv])}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", type=int, default=300)
    parser.add_argument(
        "--takeover-workloads", type=int, default=300, help="0: no takeover measurement"
    )
    parser.add_argument(
        "--workers", default="1,3", help="the configurations; the takeover runs on three or more"
    )
    args = parser.parse_args()
    configurations = [int(count) for count in args.workers.split(",")]
    running.run(main(args.workloads, args.takeover_workloads, configurations))
