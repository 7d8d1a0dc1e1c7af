"""Onboarding: N workloads applied at once, and what durability costs over plain asyncio.

    .venv/bin/python bench/onboarding.py [--sizes 100,500,1000]

For each N, on a fresh local stack (`idpctl dev`'s parts in a temporary directory: Temporal dev
server with its SQLite file, the worker as its own process, moto, the Synadia emulator with a real
nats-server, a bare git repository): N workloads, each with a registry, a NATS user and sealed
credentials and its manifests, applied at once through update-with-start; the clock stops when
every one is Ready. Activity executions come from the workflows' histories afterwards, and beside
them the credentials Synadia issued (its issuance history: downloads, and how many are still
valid) and the deliveries (commits that changed a SealedSecret): issued should equal delivered,
and every valid one be a delivered one.

The baseline runs the same capability code (each capability's observe, plan and apply, in the
engine's order: the registry, the NATS user, the credentials, the manifests) for another N
workloads from one plain asyncio program with the same concurrency, no Temporal, against the same
stack. The ratio is the cost of
durability: server round trips, history, workflow tasks.
"""

import argparse
import asyncio
import os
import platform
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

from temporalio.api.enums.v1 import EventType

from activities.capabilities import offered, settings_of
from idp.capability import Context, installed
from idp.models import Workload
from idp.natsusers import LIVE_ISSUANCE, Directory
from idp.platform import load_platform
from idp.synadia import SynadiaClient
from starter import dev, operations, temporal
from workflows.messages import WaitReadyRequest
from workflows.state import Phase
from workflows.workload import WorkloadWorkflow

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


async def ready(client, item: Workload) -> None:
    result = await operations.apply_workload(client, "idp", item)
    status = await client.get_workflow_handle(item.workflow_id).execute_update(
        WorkloadWorkflow.wait_ready,
        WaitReadyRequest(generation=result.generation, timeout_seconds=1800),
    )
    if status.phase != Phase.READY:
        raise RuntimeError(f"{item.workflow_id} ended {status.phase.value}: {status.conditions}")


async def activity_executions(client, items: list[Workload]) -> int:
    count = 0
    for item in items:
        history = await client.get_workflow_handle(item.workflow_id).fetch_history()
        count += sum(
            e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED for e in history.events
        )
    return count


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


async def plain(stack: dev.Stack, items: list[Workload]) -> tuple[float, int]:
    """The same steps, called directly: what a script without durability would do. Seconds,
    and how many workloads it left unfinished (nothing retries them)."""
    os.environ[dev.SYNADIA_TOKEN_ENV] = stack.synadia_token or ""
    os.environ |= {"AWS_ACCESS_KEY_ID": "idp-local", "AWS_SECRET_ACCESS_KEY": "idp-local"}
    config = load_platform(stack.platform_file)
    cache = stack.root / "plain-cache" / "statestore"
    capabilities = [c for c in installed() if c.name in offered(config)]
    actions = {c.name: c.actions(config, settings_of(c, config), cache) for c in capabilities}

    async def onboard(item: Workload) -> None:
        books = SimpleNamespace(outputs={}, memory={}, requests={})
        for capability in capabilities:
            now = datetime.now(UTC)
            ctx = Context.of(capability, item, item.workflow_id, 1, now, books)
            if not capability.wanted(ctx):
                continue
            act = actions[capability.name]
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


async def measure(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="idp-onboarding-") as tmp:
        stack = dev.Stack(
            Path(tmp), "127.0.0.1", dev.free_port("127.0.0.1"), dev.free_port("127.0.0.1")
        )
        try:
            await dev.start(stack)
            client = await temporal.connect(
                temporal.TemporalSettings(address=stack.address),
            )
            items = [workload("onboard", f"w{i:04}") for i in range(n)]
            started = time.perf_counter()
            await asyncio.gather(*(ready(client, item) for item in items))
            durable = time.perf_counter() - started
            activities = await activity_executions(client, items)
            # Before the baseline, whose workloads have the same names and so the same files.
            delivered = sealed_deliveries(stack.state_store)
            downloads, valid = await issued(stack, "onboard")
            baseline, failed = await plain(stack, [workload("plain", f"w{i:04}") for i in range(n)])
        finally:
            stack.stop()
    return {
        "n": n,
        "seconds": durable,
        "activities": activities,
        "plain": baseline,
        "plain_failed": failed,
        "issued": downloads,
        "delivered": delivered,
        "valid": valid,
    }


async def main(sizes: list[int]) -> None:
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")  # fmt: skip
    print("steps per workload: registry (moto), NATS user, sealed credentials, manifests")
    print(
        f"{'workloads':>9} {'all Ready (s)':>14} {'workloads/s':>12} {'activities/s':>13} "
        f"{'plain asyncio (s)':>18} {'plain failed':>13} {'durable/plain':>14} "
        f"{'creds issued':>13} {'delivered':>10} {'still valid':>12}"
    )
    for n in sizes:
        # Each row as soon as it is measured: the largest take minutes.
        r = await measure(n)
        print(
            f"{r['n']:>9} {r['seconds']:>14.1f} {r['n'] / r['seconds']:>12.1f} "
            f"{r['activities'] / r['seconds']:>13.1f} {r['plain']:>18.1f} "
            f"{r['plain_failed']:>13} {r['seconds'] / r['plain']:>14.2f} "
            f"{r['issued']:>13} {r['delivered']:>10} {r['valid']:>12}",
            flush=True,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,500,1000")
    sizes = [int(size) for size in parser.parse_args().sizes.split(",")]
    asyncio.run(main(sizes))
