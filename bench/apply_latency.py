"""Apply → Ready latency on the local stack (new workload, spec change, and with --nats
rotate → new credentials delivered), and 100 workloads applied at once.

    .venv/bin/python bench/apply_latency.py [--samples 30] [--burst 100] [--nats]

Starts the same stack as `idpctl dev` (Temporal dev server with its SQLite file, the worker as
its own process, moto, the Synadia emulator, a bare git repository) in a temporary directory on
free ports, measures through the public client path (update-with-start `apply`, then the
`wait_ready` update), prints one table and stops everything.
"""

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import running

from idp.models import Workload
from starter import dev, operations, temporal
from workflows.messages import RotateRequest, WaitReadyRequest
from workflows.state import Phase
from workflows.workload import WorkloadWorkflow

NATS = {"permissions": {"publish": {"allow": ["bench.>"]}}, "credentials": {"ttl": "7d"}}


def workload(system: str, name: str, nats: bool = False, account: str | None = None) -> Workload:
    spec = {"owner": "bench", "destination": "dev", "namespace": "bench"}
    if account:
        spec["serviceAccount"] = account
    return Workload.model_validate(
        {
            "metadata": {"name": name, "system": system},
            "spec": spec | ({"nats": NATS} if nats else {}),
        }
    )


async def apply_and_wait(client, task_queue: str, item: Workload) -> float:
    started = time.perf_counter()
    result = await operations.apply_workload(client, task_queue, item)
    status = await client.get_workflow_handle(item.workflow_id).execute_update(
        WorkloadWorkflow.wait_ready,
        WaitReadyRequest(generation=result.generation, timeout_seconds=600),
    )
    if status.phase != Phase.READY:
        raise SystemExit(f"{item.workflow_id} ended {status.phase.value}: {status.conditions}")
    return time.perf_counter() - started


async def rotate_and_wait(client, item: Workload) -> float:
    """rotate_credentials → the next credential version delivered."""
    handle = client.get_workflow_handle(item.workflow_id)
    before = (await handle.query(WorkloadWorkflow.status)).outputs["Credentials"]["version"]
    started = time.perf_counter()
    await handle.signal(WorkloadWorkflow.rotate_credentials, RotateRequest(reason="bench"))
    while True:
        status = await handle.query(WorkloadWorkflow.status)
        if status.outputs["Credentials"]["version"] > before:
            return time.perf_counter() - started
        await asyncio.sleep(0.01)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def main(samples: int, burst: int, nats: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="idp-bench-") as tmp:
        stack = dev.Stack.on_free_ports(Path(tmp))
        try:
            await dev.start(stack)
            client = await temporal.connect(temporal.TemporalSettings(address=stack.address))
            await apply_and_wait(client, "idp", workload("warmup", "w"))

            single = [
                await apply_and_wait(client, "idp", workload("single", f"w{i:03}", nats))
                for i in range(samples)
            ]
            changed = [
                await apply_and_wait(client, "idp", workload("single", f"w{i:03}", nats, "sa2"))
                for i in range(samples)
            ]
            rotated = [
                await rotate_and_wait(client, workload("single", f"w{i:03}", nats))
                for i in range(samples if nats else 0)
            ]
            started = time.perf_counter()
            batch = [workload("burst", f"w{i:04}", nats) for i in range(burst)]
            await asyncio.gather(*(apply_and_wait(client, "idp", item) for item in batch))
            burst_seconds = time.perf_counter() - started
            commits = len(dev_commits(stack))
        finally:
            stack.stop()

    python = platform.python_version()
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {python}")
    steps = "registry, NATS user, sealed credentials, manifests" if nats else "registry, manifests"
    print(f"steps per workload: {steps}")
    title = f"latency (ms), {samples} samples each"
    print(f"{title:<44} {'p50':>8} {'p95':>8} {'p99':>8}")
    for label, values in (
        ("apply → Ready, new workload", single),
        ("apply → Ready, spec change", changed),
        ("rotate → new credentials delivered", rotated),
    ):
        if values:
            ms = [v * 1000 for v in values]
            print(
                f"{label:<44} {statistics.median(ms):>8.1f} {percentile(ms, 95):>8.1f} "
                f"{percentile(ms, 99):>8.1f}"
            )
    print(f"{'measure':<44} {'value':>12}")
    print(f"{f'{burst} workloads applied at once → all Ready (s)':<44} {burst_seconds:>12.2f}")
    print(f"{'workloads per second':<44} {burst / burst_seconds:>12.1f}")
    print(f"{'state-store commits in total':<44} {commits:>12}")


def dev_commits(stack: dev.Stack) -> list[str]:
    out = subprocess.run(
        ["git", "log", "--format=%H", "main"],
        cwd=stack.state_store, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.split()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--nats", action="store_true", help="workloads with a NATS user")
    args = parser.parse_args()
    running.run(main(args.samples, args.burst, args.nats))
