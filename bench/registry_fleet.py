"""What one sweep of the Registry's fleet read costs at N workloads: AWS calls by operation, the
reader's CPU, moto's CPU and the time it takes.

    .venv/bin/python bench/registry_fleet.py [--workloads 1000] [--sweeps 3]

Starts the local stack's AWS emulator (`python -m emulators.aws`), makes each workload's
repository and role with the Registry capability's own passes (as its workflow's first pass
does), records the fingerprint its next pass would, then runs the fleet read over all of them
`--sweeps` times and prints the median of each figure. Every sweep must find every workload in
sync, or the bench stops: a cheaper read that finds less would not count.
"""

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import running
from measure import cpu_seconds, machine_line

from capabilities.registry import Registry
from capabilities.registry.actions import RegistryActions
from idp.capability import Context, Fingerprint
from idp.models import Workload
from idp.platform import AwsConfig, ClusterIdentity, Destination, Platform, StateStoreConfig
from starter import dev

REGION = "eu-west-1"
REGISTRY = Registry()
# Passes run at once while the fleet is made: as many as the reader's own threads.
MAKING = 8


def start_emulator(port: int) -> subprocess.Popen[bytes]:
    emulator = subprocess.Popen(
        [sys.executable, "-m", "emulators.aws", "--port", str(port)],
        cwd=running.ROOT,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return emulator
        except OSError:
            if emulator.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("error: the AWS emulator did not start") from None
            time.sleep(0.1)


def platform(url: str, state: Path) -> Platform:
    return Platform(
        destinations=[
            Destination(
                name="dev",
                state_store=StateStoreConfig(url=str(state)),
                cluster=ClusterIdentity(oidc_provider_arn=dev.LOCAL_OIDC),
            )
        ],
        aws=AwsConfig(region=REGION, account_id=dev.LOCAL_ACCOUNT, endpoint_url=url),
    )


def context(i: int) -> Context:
    w = Workload.model_validate(
        {
            "metadata": {"name": f"svc-{i:05d}", "system": "bench"},
            "spec": {"owner": "bench", "destination": "dev", "namespace": "bench"},
        }
    )
    now = datetime.now(UTC)
    return Context(workload=w, workflow_id=w.workflow_id, generation=1, now=now)


async def made(actions: RegistryActions, ctx: Context, making: asyncio.Semaphore) -> Fingerprint:
    """The workload's first pass, then the fingerprint its next pass records."""
    async with making:
        observation = await actions.observe(ctx)
        await actions.apply(ctx, REGISTRY.plan(ctx, observation), observation)
        observation = await actions.observe(ctx)
    fingerprint = REGISTRY.fingerprint(ctx, observation)
    if fingerprint is None or REGISTRY.plan(ctx, observation):
        raise SystemExit(f"error: {ctx.workflow_id} is not in sync after its pass")
    return fingerprint


async def main(workloads: int, sweeps: int) -> None:
    print(f"\n{machine_line()}", flush=True)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    port = dev.free_port("127.0.0.1")
    emulator = start_emulator(port)
    try:
        with tempfile.TemporaryDirectory(prefix="idp-registry-fleet-") as tmp:
            p = platform(f"http://127.0.0.1:{port}", Path(tmp) / "state.git")
            actions = REGISTRY.actions(p, p.section("aws"), Path(tmp))
            making = asyncio.Semaphore(MAKING)
            started = time.perf_counter()
            recorded = await asyncio.gather(
                *(made(actions, context(i), making) for i in range(workloads))
            )
            print(f"  {workloads:,} made in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            expected = {f.key: f.digest for f in recorded}
            calls: Counter[str] = Counter()

            def count(model: Any, **_: Any) -> None:
                calls[f"{model.service_model.service_name}:{model.name}"] += 1

            for client in vars(actions.clients()).values():
                client.meta.events.register("before-call", count)
            rows = []
            for _ in range(sweeps):
                calls.clear()
                reader, moto = time.process_time(), cpu_seconds(emulator.pid)[0]
                wall = time.perf_counter()
                found = await actions.fleet_observe(list(expected))
                wall = time.perf_counter() - wall
                reader = time.process_time() - reader
                moto = cpu_seconds(emulator.pid)[0] - moto
                if found != expected:
                    raise SystemExit("error: the fleet read did not find every workload in sync")
                rows.append((wall, reader, moto))
    finally:
        emulator.terminate()
        emulator.wait()

    wall, reader, moto = (statistics.median(column) for column in zip(*rows, strict=True))
    print(f"\nthe Registry's fleet read over {workloads:,} workloads (median of {sweeps} sweeps)")
    print(f"{'measure':<44} {'value':>10}")
    for name, value in [
        ("a sweep, seconds", f"{wall:.2f}"),
        ("reader CPU (the worker's share), cpu-s", f"{reader:.2f}"),
        ("  per workload, ms", f"{reader / workloads * 1000:.2f}"),
        ("moto CPU, cpu-s", f"{moto:.2f}"),
        ("AWS calls", f"{sum(calls.values()):,}"),
        *((f"  {call}", f"{n:,}") for call, n in sorted(calls.items())),
    ]:
        print(f"{name:<44} {value:>10}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", type=int, default=1000)
    parser.add_argument("--sweeps", type=int, default=3)
    args = parser.parse_args()
    running.run(main(args.workloads, args.sweeps))
