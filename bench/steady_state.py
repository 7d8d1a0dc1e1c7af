"""Steady state: what N idle workloads cost the worker and the Temporal server.

    .venv/bin/python bench/steady_state.py [--workloads 1000] [--minutes 10] [--drift 10m]
        [--fleet-observer]

Starts the same stack as `idpctl dev` (Temporal dev server with its SQLite file, the worker as its
own process, moto for the registry step, a bare git repository, and the rest of `idpctl dev`'s
processes) in a temporary directory, applies N workloads (ECR repository and IAM role in moto,
ServiceAccount in git; no NATS user) and waits until all are Ready. Then, for the window, it
leaves them alone (drift checks every `--drift`, with `reconcile.fleetObserver: false`; with
`--fleet-observer`, it is true and the window starts as the observer's first sweep once every
workload is watched ends, from its first pass on: docs/fleet.md; a window of one interval then
holds the next sweep whole, and no other, since sweeps start a little less than an interval
apart; it prints how long each sweep of the window took) and measures, over the window only
(bench/measure.py says how): the CPU time and resident memory of every process of the stack
(the worker, its git children, the Temporal server, each emulator) from /proc; and Temporal
Cloud's billable actions, counted from the history of every workflow in the namespace (every
type and run), events whose time falls in the window, scaled to one idle workload for a day,
beside the dev server's own `action` metric; the workloads' history growth is counted the same
way. Prints the tables and stops everything. `--workloads 0` measures the stack by itself (the
observer still sweeps): the floor beneath the other figures.
"""

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import running
from measure import (
    NOT_IN_HISTORY,
    MeteredStack,
    ProcessMeter,
    actions_table,
    history_actions,
    machine_line,
    metric_lines,
    server_actions,
)

# bench/workers.py and bench/postgres_onboarding.py import it from here.
from measure import cpu_seconds as cpu_seconds
from onboarding import all_ready
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities.fleet import SweepResult
from idp.durations import format_duration, parse_duration
from idp.models import Workload
from starter import dev, temporal
from workflows.observer import observer_id
from workflows.workload import WorkloadWorkflow

SYSTEM = "steady"
WORKLOAD = WorkloadWorkflow.__name__


def workload(index: int) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": f"w{index:05}", "system": SYSTEM},
            "spec": {"owner": "bench", "destination": "dev", "namespace": "bench"},
        }
    )


async def apply_all(client: Client, items: list[Workload]) -> float:
    """Seconds until every one of `items` is applied and Ready."""
    started = time.perf_counter()
    await all_ready(client, items)
    return time.perf_counter() - started


async def continued_as_new(client: Client) -> int:
    query = (
        f"WorkflowType = '{WORKLOAD}' AND ExecutionStatus = 'ContinuedAsNew' "
        f"AND IdpSystem = '{SYSTEM}'"
    )
    return (await client.count_workflows(query)).count


async def all_watched(client: Client, workloads: int, drift: timedelta) -> float:
    """Seconds until every workload is watched by the fleet observer (its IdpFleet is set)."""
    query = f"IdpSystem = '{SYSTEM}' AND ExecutionStatus = 'Running' AND IdpFleet IS NOT NULL"
    started = time.perf_counter()
    deadline = time.monotonic() + 3 * drift.total_seconds() + 60
    while (await client.count_workflows(query)).count < workloads:
        if time.monotonic() > deadline:
            raise SystemExit("error: the workloads were not all watched within three intervals")
        await asyncio.sleep(5)
    return time.perf_counter() - started


async def sweeps(client: Client) -> list[tuple[datetime, SweepResult | None]]:
    """The fleet observer's sweeps in its current run: when each was scheduled and what it
    reported (None while it waits for its time or runs); none before the worker has started
    it."""
    try:
        history = await client.get_workflow_handle(observer_id("idp")).fetch_history()
    except RPCError as error:
        if error.status != RPCStatusCode.NOT_FOUND:
            raise
        return []
    scheduled: dict[int, datetime] = {}
    completed: dict[int, SweepResult] = {}
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[event.event_id] = event.event_time.ToDatetime(UTC)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            done = event.activity_task_completed_event_attributes
            (result,) = await client.data_converter.decode(done.result.payloads, [SweepResult])
            completed[done.scheduled_event_id] = result
    return [(at, completed.get(event_id)) for event_id, at in scheduled.items()]


async def next_sweep(client: Client, drift: timedelta) -> None:
    """Waits until the observer's next sweep has completed: a window from then of one interval
    holds the sweep after it, whole, however long it takes, and no other (each starts the last
    one's duration and a repair's lead short of an interval after the one before:
    workflows/observer.py)."""
    # The sweep waiting for its time is scheduled already: it is the one to wait for.
    seen = {at for at, done in await sweeps(client) if done}
    deadline = time.monotonic() + drift.total_seconds() + 60
    while not [s for s in await sweeps(client) if s[0] not in seen and s[1]]:
        if time.monotonic() > deadline:
            raise SystemExit("error: the fleet observer did not sweep within an interval")
        await asyncio.sleep(1)


async def main(
    workloads: int, window: timedelta, drift: timedelta, sample_every: float, fleet: bool
) -> None:
    machine = machine_line()
    print(f"\n{machine}", flush=True)
    with tempfile.TemporaryDirectory(prefix="idp-steady-") as tmp:
        stack = MeteredStack.on_free_ports(Path(tmp))
        stack.drift_interval = format_duration(drift)
        stack.fleet_observer = fleet
        try:
            await dev.start(stack)
            client = await temporal.connect(temporal.TemporalSettings(address=stack.address))
            items = [workload(i) for i in range(workloads)]
            apply_seconds = await apply_all(client, items)
            print(f"  all {workloads:,} Ready in {apply_seconds:.0f} s", file=sys.stderr)
            watched_after = await all_watched(client, workloads, drift) if fleet else None
            meter = ProcessMeter.of_stack(stack)
            can_before = await continued_as_new(client)
            if fleet:
                await next_sweep(client, drift)
            metric_before = await server_actions(stack.server_metrics_url, client.namespace)
            print(f"  measuring an idle window of {format_duration(window)}", file=sys.stderr)
            since = time.time_ns()
            meter.begin()
            deadline = time.monotonic() + window.total_seconds()
            while time.monotonic() < deadline:
                await asyncio.sleep(min(sample_every, max(deadline - time.monotonic(), 0)))
                if (problem := stack.dead()) is not None:
                    raise SystemExit(f"error: {problem}")
                meter.sample()
            meter.end()
            until = time.time_ns()
            metric_after = await server_actions(stack.server_metrics_url, client.namespace)
            can = await continued_as_new(client) - can_before
            by_type = await history_actions(client, since, until)
            swept = [result for _, result in await sweeps(client) if result and result.began]
        finally:
            stack.stop()

    window_seconds = (until - since) / 1e9
    actions = sum(t.total for t in by_type.values())
    events = by_type[WORKLOAD].events if WORKLOAD in by_type else 0
    # With no workloads, what the stack costs by itself: the floor beneath every other figure.
    per_day = f"{events / workloads * 86400 / window_seconds:.0f}" if workloads else "-"
    actions_per_day = f"{actions / workloads * 86400 / window_seconds:.1f}" if workloads else "-"
    print(f"\n{machine}")
    print(f"steps per workload: registry (moto), manifests (git); drift checks every "
          f"{format_duration(drift)}; {workloads} applied in {apply_seconds:.0f}s")  # fmt: skip
    if watched_after is not None:
        print(f"fleet observer on: all {workloads} watched {watched_after:.0f}s after the last "
              "was Ready; the window started as the observer's next sweep ended")  # fmt: skip
        start, end = (datetime.fromtimestamp(ns / 1e9, UTC) for ns in (since, until))
        for result in swept:
            if result.began and start <= result.began < end:
                print(f"  a sweep in the window: took {result.took_seconds:.1f} s")
    else:
        print("fleet observer off: every workload checks on its own")
    worker_cpu = 100 * meter.own("worker") / meter.seconds
    git_cpu = 100 * meter.children("worker") / meter.seconds
    server_cpu = 100 * meter.own("temporal") / meter.seconds
    rows = [
        ("workloads", f"{workloads}"),
        ("window", format_duration(window)),
        ("worker CPU, % of one core (mean)", f"{worker_cpu:.1f}"),
        ("  its git processes, % of one core", f"{git_cpu:.1f}"),
        ("worker RSS, MiB (max)", f"{meter.rss_max('worker'):.0f}"),
        ("server CPU, % of one core (mean)", f"{server_cpu:.1f}"),
        ("server RSS, MiB (max)", f"{meter.rss_max('temporal'):.0f}"),
        ("worker RSS, MiB (median of samples)", f"{meter.rss_median('worker'):.0f}"),
        ("history events per workload per day", per_day),
        ("history events in the window", f"{events}"),
        ("continue-as-new in the window", f"{can}"),
        ("billable actions per idle workload per day", actions_per_day),
    ]
    print(f"{'measure':<44} {'value':>10}")
    for name, value in rows:
        print(f"{name:<44} {value:>10}")
    print()
    print(meter.table("idle window"))
    print(f"billable actions (Temporal Cloud's rules, bench/measure.py), in the window "
          f"({window_seconds:.0f} s):")  # fmt: skip
    print(actions_table(by_type, workloads, per_day_window=window_seconds))
    print("\n".join(metric_lines(metric_before, metric_after, by_type)))
    print(NOT_IN_HISTORY)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=10, help="the measured window")
    parser.add_argument("--drift", type=parse_duration, default=timedelta(minutes=10))
    parser.add_argument("--sample-seconds", type=float, default=5, help="how often to sample RSS")
    parser.add_argument(
        "--fleet-observer",
        action="store_true",
        help="reconcile.fleetObserver true, else false (docs/fleet.md)",
    )
    args = parser.parse_args()
    window = timedelta(minutes=args.minutes)
    if window < args.drift:
        # Shorter, it may end before the first drift check of workloads applied just before.
        parser.error(
            f"--minutes: the window must cover one drift interval ({format_duration(args.drift)})"
        )
    running.run(main(args.workloads, window, args.drift, args.sample_seconds, args.fleet_observer))
