"""Onboarding: N workloads applied at once, and what durability costs over plain asyncio.

    .venv/bin/python bench/onboarding.py [--sizes 100,500,1000]

For each N, on a fresh local stack (`idpctl dev`'s parts in a temporary directory: Temporal dev
server with its SQLite file, the worker as its own process, moto, the Synadia emulator with a real
nats-server, a bare git repository served by `git daemon`): N workloads, each with a registry, a
NATS user and sealed credentials and its manifests, applied at once through update-with-start with a
wait for Ready (`apply`'s waitSeconds: at most APPLYING applies awaiting acceptance, then each
update answers once its workload is Ready); the clock stops when every one is Ready. Activity
executions come from the workflows' histories afterwards, and beside them the credentials Synadia
issued (its issuance history: downloads, and how many are still valid) and the deliveries (commits
that changed a SealedSecret): issued should equal delivered, and every valid one be a delivered
one.

The baseline runs the same capability code (each capability's observe, plan and apply, in the
engine's order: the registry, the NATS user, the credentials, the manifests) for another N
workloads from one plain asyncio program, no Temporal, against the same stack, with the worker's
concurrency: at most as many capability steps at once as the worker has activity slots (read
from the running worker's metrics, bench/measure.py). The ratio is the cost of durability:
server round trips, history, workflow tasks.

Beside them, for each N (bench/measure.py says how each is measured): CPU seconds, % of one core
and RSS of every process of the stack (the worker, its git children, the Temporal server, moto, the
Synadia emulator and its nats-server, the Port emulator, the git daemon, ...) over the durable
onboarding and over the plain run; and Temporal Cloud's billable actions, counted from the history
of every workflow in the namespace from the first apply on, by workflow type and per workload,
beside the dev server's own `action` metric. The summary gives the worker's CPU (its git included)
and the server's per workload, the units the onboarding goals are set in. The worker's git is its
own half of each command; the remote's half (a push's receive-pack, a fetch's upload-pack) is the
git daemon's, as it would be a git host's."""

import argparse
import asyncio
import contextlib
import os
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import running
from measure import (
    NOT_IN_HISTORY,
    MeteredStack,
    ProcessMeter,
    actions_table,
    activity_slots,
    history_actions,
    machine_line,
    metric_lines,
    progress,
    server_actions,
)
from temporalio.client import Client, WorkflowUpdateStage

from activities.capabilities import offered, settings_of
from idp.capability import Context, installed
from idp.models import Workload
from idp.natsusers import LIVE_ISSUANCE, Directory
from idp.platform import load_platform
from idp.synadia import SynadiaClient
from starter import dev, operations, temporal
from workflows.state import Phase
from workflows.workload import WorkloadWorkflow

# Applies awaiting acceptance at once. All N at once left some waiting past their RPC deadline
# on a loaded 2-core machine: the update is accepted only once the new workflow's first task
# has run, behind every other workflow task queued on the worker.
APPLYING = 100
WAIT_SECONDS = 1800
NATS = {"permissions": {"publish": {"allow": ["bench.>"]}}, "credentials": {"ttl": "7d"}}


def workload(system: str, name: str) -> Workload:
    # A namespace per system: the durable and the plain run share one state store, where a
    # directory has one owner.
    return Workload.model_validate(
        {
            "metadata": {"name": name, "system": system},
            "spec": {"owner": "bench", "destination": "dev", "namespace": system, "nats": NATS},
        }
    )


async def ready(
    client: Client,
    item: Workload,
    applying: asyncio.Semaphore | None = None,
    accepted: set[str] | None = None,
) -> None:
    """Apply `item` with a wait for Ready, in one update (while holding `applying` until its
    workflow took the apply, then adding it to `accepted`), and see it Ready."""
    async with applying or contextlib.nullcontext():
        handle = await operations.start_apply_workload(
            client, "idp", item, wait_seconds=WAIT_SECONDS, stage=WorkflowUpdateStage.ACCEPTED
        )
    if accepted is not None:
        accepted.add(item.workflow_id)
    status = (await operations.outcome(handle)).status
    assert status is not None  # an apply that waits answers with the status
    if status.phase != Phase.READY:
        raise RuntimeError(f"{item.workflow_id} ended {status.phase.value}: {status.conditions}")


async def all_ready(client, items: list[Workload]) -> None:
    """Apply every one of `items`, at most APPLYING awaiting their answer, and wait until each
    is Ready."""
    applying = asyncio.Semaphore(APPLYING)
    async with progress("Ready", len(items)) as one_more:

        async def one(item: Workload) -> None:
            await ready(client, item, applying)
            one_more()

        await asyncio.gather(*(one(item) for item in items))


def sealed_deliveries(repo: Path) -> int:
    """Commits that changed a SealedSecret, counted file by file: one per delivery."""
    out = subprocess.run(
        ["git", "log", "--format=", "--name-only", "main"], cwd=repo, capture_output=True, text=True
    )
    return sum(line.endswith("/sealedsecret-nats.yaml") for line in out.stdout.split())


async def issued(stack: dev.Stack, system: str) -> tuple[int, int]:
    """(downloads, still valid) over the system's NATS users, from Synadia's issuance history."""
    config = load_platform(stack.platform_file).synadia
    assert config is not None and stack.synadia_token
    downloads = valid = 0
    async with SynadiaClient(config.url, stack.synadia_token) as client:
        account = await Directory(config).account(client, config.default_account)
        for user in await client.list_nats_users(account.id):
            if user.name.startswith(f"{system}-"):
                for issuance in await client.list_nats_user_issuances(user.id):
                    downloads += issuance.events_count
                    valid += issuance.status in LIVE_ISSUANCE
    return downloads, valid


async def plain(stack: dev.Stack, items: list[Workload], cap: int) -> tuple[float, int]:
    """The same steps, called directly: what a script without durability would do, with at
    most `cap` steps (a capability's observe, plan and apply: what one activity runs) under
    way at once. Seconds, and how many workloads it left unfinished (nothing retries them)."""
    os.environ[dev.SYNADIA_TOKEN_ENV] = stack.synadia_token or ""
    os.environ |= {"AWS_ACCESS_KEY_ID": "idp-local", "AWS_SECRET_ACCESS_KEY": "idp-local"}
    config = load_platform(stack.platform_file)
    cache = stack.root / "plain-cache" / "statestore"
    capabilities = [c for c in installed() if c.name in offered(config)]
    actions = {c.name: c.actions(config, settings_of(c, config), cache) for c in capabilities}
    slots = asyncio.Semaphore(cap)

    async def onboard(item: Workload) -> None:
        books = SimpleNamespace(outputs={}, memory={}, requests={})
        for capability in capabilities:
            now = datetime.now(UTC)
            ctx = Context.of(capability, item, item.workflow_id, 1, now, books)
            if not capability.wanted(ctx):
                continue
            act = actions[capability.name]
            async with slots:
                observation = await act.observe(ctx)
                report = await act.apply(ctx, capability.plan(ctx, observation), observation)
            if report.outputs is not None:
                books.outputs[capability.name] = report.outputs

    started = time.perf_counter()
    outcomes = await asyncio.gather(*(onboard(item) for item in items), return_exceptions=True)
    errors = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
    if errors:
        print(f"plain asyncio, {len(errors)} failed; the first: {errors[0]}", flush=True)
    return time.perf_counter() - started, len(errors)


async def settle(stack: MeteredStack, namespace: str, limit: float = 30) -> None:
    """Until the server's action counter holds still for a second (the last workflow tasks
    after Ready: the timer of the next drift check), at most `limit` seconds."""
    deadline = time.monotonic() + limit
    last = await server_actions(stack.server_metrics_url, namespace)
    while time.monotonic() < deadline:
        await asyncio.sleep(1)
        now = await server_actions(stack.server_metrics_url, namespace)
        if now == last:
            return
        last = now


async def onboard_size(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="idp-onboarding-") as tmp:
        stack = MeteredStack.on_free_ports(Path(tmp))
        try:
            await dev.start(stack)
            client = await temporal.connect(
                temporal.TemporalSettings(address=stack.address),
            )
            cap = await activity_slots(stack.metrics_url)
            items = [workload("onboard", f"w{i:04}") for i in range(n)]
            metric_before = await server_actions(stack.server_metrics_url, client.namespace)
            since = time.time_ns()
            meter = ProcessMeter.of_stack(stack)
            meter.begin()
            started = time.perf_counter()
            await all_ready(client, items)
            durable = time.perf_counter() - started
            meter.end()
            await settle(stack, client.namespace)
            metric_after = await server_actions(stack.server_metrics_url, client.namespace)
            by_type = await history_actions(client, since)
            # Before the baseline, whose workloads have the same names and so the same files.
            delivered = sealed_deliveries(stack.state_store)
            downloads, valid = await issued(stack, "onboard")
            plain_meter = ProcessMeter.of_stack(stack)
            plain_meter.begin()
            plain_items = [workload("plain", f"w{i:04}") for i in range(n)]
            baseline, failed = await plain(stack, plain_items, cap)
            plain_meter.end()
        finally:
            stack.stop()
    workloads = by_type.get(WorkloadWorkflow.__name__)
    total_actions = sum(t.total for t in by_type.values())
    print(f"\n== {n} workloads ==")
    print(meter.table("durable onboarding (first apply to all Ready)"))
    print(plain_meter.table(f"plain asyncio (at most {cap} steps at once)"))
    print("billable actions (Temporal Cloud's rules, bench/measure.py), first apply on:")
    print(actions_table(by_type, n))
    print("\n".join(metric_lines(metric_before, metric_after, by_type)))
    print(NOT_IN_HISTORY, flush=True)
    return {
        "n": n,
        "seconds": durable,
        "activities": workloads.actions["activity"] if workloads else 0,
        "plain": baseline,
        "plain_failed": failed,
        "cap": cap,
        "issued": downloads,
        "delivered": delivered,
        "valid": valid,
        "actions": total_actions,
        "events": sum(t.events for t in by_type.values()),
        "worker_cpu": meter.own("worker"),
        "git_cpu": meter.children("worker"),
        "server_cpu": meter.own("temporal"),
    }


async def main(sizes: list[int]) -> None:
    print("\n" + machine_line(), flush=True)
    print("steps per workload: registry (moto), NATS user, sealed credentials, manifests")
    results = []
    for n in sizes:
        # Each size's tables as soon as it is measured: the largest take minutes.
        results.append(await onboard_size(n))
    print("\n== summary ==")
    print(
        f"{'workloads':>9} {'all Ready (s)':>14} {'workloads/s':>12} {'activities/s':>13} "
        f"{'plain asyncio (s)':>18} {'plain failed':>13} {'plain cap':>10} "
        f"{'durable/plain':>14} {'creds issued':>13} {'delivered':>10} {'still valid':>12} "
        f"{'actions/wl':>11} {'events/wl':>10} {'worker cpu-s':>13} {'git cpu-s':>10} "
        f"{'worker+git cpu-s/wl':>20} {'server cpu-s/wl':>16}"
    )
    for r in results:
        print(
            f"{r['n']:>9} {r['seconds']:>14.1f} {r['n'] / r['seconds']:>12.1f} "
            f"{r['activities'] / r['seconds']:>13.1f} {r['plain']:>18.1f} "
            f"{r['plain_failed']:>13} {r['cap']:>10} {r['seconds'] / r['plain']:>14.2f} "
            f"{r['issued']:>13} {r['delivered']:>10} {r['valid']:>12} "
            f"{r['actions'] / r['n']:>11.1f} {r['events'] / r['n']:>10.1f} "
            f"{r['worker_cpu']:>13.1f} {r['git_cpu']:>10.1f} "
            f"{(r['worker_cpu'] + r['git_cpu']) / r['n']:>20.3f} {r['server_cpu'] / r['n']:>16.3f}",
            flush=True,
        )
    caps = sorted({r["cap"] for r in results})
    print(
        f"plain cap: at most {', '.join(map(str, caps))} capability steps at once, the worker's "
        "activity slots (its temporal_worker_task_slots_* metrics; worker.py's build_worker "
        "sets them, the SDK's default when it names none)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,500,1000")
    sizes = [int(size) for size in parser.parse_args().sizes.split(",")]
    running.run(main(sizes))
