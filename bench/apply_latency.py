"""Apply → Ready latency on the local stack, and 100 workloads applied at once.

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
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from idp.models import Workload
from starter import dev, operations, temporal
from workflows.messages import WaitReadyRequest
from workflows.state import Phase
from workflows.workload import WorkloadWorkflow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


NATS = {"permissions": {"publish": {"allow": ["bench.>"]}}, "credentials": {"ttl": "7d"}}


def workload(system: str, name: str, nats: bool = False) -> Workload:
    spec = {"owner": "bench", "destination": "dev", "namespace": "bench"}
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


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def main(samples: int, burst: int, nats: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="idp-bench-") as tmp:
        stack = dev.Stack(Path(tmp), "127.0.0.1", free_port(), free_port())
        try:
            await dev.start(stack)
            client = await temporal.connect(temporal.TemporalSettings(address=stack.address))
            await apply_and_wait(client, "idp", workload("warmup", "w"))

            single = [
                await apply_and_wait(client, "idp", workload("single", f"w{i:03}", nats))
                for i in range(samples)
            ]
            started = time.perf_counter()
            batch = [workload("burst", f"w{i:04}", nats) for i in range(burst)]
            await asyncio.gather(*(apply_and_wait(client, "idp", item) for item in batch))
            burst_seconds = time.perf_counter() - started
            commits = len(dev_commits(stack))
        finally:
            stack.stop()

    ms = [s * 1000 for s in single]
    python = platform.python_version()
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {python}")
    steps = "registry, NATS user, sealed credentials, manifests" if nats else "registry, manifests"
    print(f"steps per workload: {steps}")
    print(f"{'measure':<44} {'value':>12}")
    print(f"{'apply → Ready, one workload, p50 (ms)':<44} {statistics.median(ms):>12.1f}")
    print(f"{'apply → Ready, one workload, p95 (ms)':<44} {percentile(ms, 95):>12.1f}")
    print(f"{'apply → Ready, one workload, max (ms)':<44} {max(ms):>12.1f}")
    print(f"{'samples':<44} {samples:>12}")
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
    asyncio.run(main(args.samples, args.burst, args.nats))
