"""`idpctl apply -f DIR --wait` for N new workloads, as a platform team onboards a directory: how
long until it exits, the CPU it took from the worker and the Temporal server, and the Temporal
Cloud actions it cost, queries included.

    .venv/bin/python bench/apply_wait.py [--sizes 10,100]

For each N, on a fresh local stack (bench/onboarding.py's, with the same workloads: a registry, a
NATS user, sealed credentials and manifests each), idpctl runs as its own process on a directory of
N files. Actions come from the dev server's `action` counter over the command, which counts what no
history shows: each `status` query is one (a billable action on Temporal Cloud), as is each
update. The CPU per process is bench/measure.py's, over the same time."""

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import running
import yaml
from measure import MeteredStack, ProcessMeter, machine_line, server_actions
from onboarding import NATS, settle

from starter import dev


def workload_file(path: Path, name: str) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "idp.dev/v1alpha1",
                "kind": "Workload",
                "metadata": {"name": name, "system": "waited"},
                "spec": {
                    "owner": "bench",
                    "destination": "dev",
                    "namespace": "waited",
                    "nats": NATS,
                },
            }
        )
    )


async def apply_size(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="idp-apply-wait-") as tmp:
        root = Path(tmp)
        files = root / "workloads"
        files.mkdir()
        for i in range(n):
            workload_file(files / f"w{i:04}.yaml", f"w{i:04}")
        stack = MeteredStack.on_free_ports(root / "stack")
        stack.root.mkdir()
        try:
            await dev.start(stack)
            namespace = "default"
            before = await server_actions(stack.server_metrics_url, namespace) or Counter()
            meter = ProcessMeter.of_stack(stack)
            meter.begin()
            started = time.perf_counter()
            command = [sys.executable, "-m", "starter.idpctl", "apply", "-f", str(files)]
            done = await asyncio.to_thread(
                subprocess.run,
                [*command, "--wait", "--timeout", "900"],
                env=stack.env(),
                capture_output=True,
                text=True,
            )
            seconds = time.perf_counter() - started
            meter.end()
            if done.returncode != 0:
                raise SystemExit(f"idpctl exited {done.returncode}: {done.stderr.strip()}")
            await settle(stack, namespace)
            after = await server_actions(stack.server_metrics_url, namespace) or Counter()
        finally:
            stack.stop()
    actions = Counter({k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)})
    print(f"\n== {n} workloads ==")
    print(meter.table("idpctl apply --wait (start to exit)"))
    by_type = ", ".join(f"{k} {v}" for k, v in sorted(actions.items()))
    print(f"server action metric by type: {by_type}")
    return {
        "n": n,
        "seconds": seconds,
        "queries": actions.get("grpc_QueryWorkflow", 0),
        "actions": sum(actions.values()),
        "worker": meter.own("worker") + meter.children("worker"),
        "server": meter.own("temporal"),
        "idpctl": meter.children("bench (this process)"),
        "last": done.stdout.strip().splitlines()[-1],
    }


async def main(sizes: list[int]) -> None:
    print("\n" + machine_line(), flush=True)
    results = [await apply_size(n) for n in sizes]
    print("\n== summary ==")
    print(
        f"{'workloads':>9} {'exited after (s)':>17} {'queries':>8} {'actions':>8} "
        f"{'actions/wl':>11} {'worker+git cpu-s':>17} {'server cpu-s':>13} {'idpctl cpu-s':>13}"
        "  last line"
    )
    for r in results:
        print(
            f"{r['n']:>9} {r['seconds']:>17.1f} {r['queries']:>8} {r['actions']:>8} "
            f"{r['actions'] / r['n']:>11.1f} {r['worker']:>17.1f} {r['server']:>13.1f} "
            f"{r['idpctl']:>13.1f}  {r['last']}",
            flush=True,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100")
    running.run(main([int(size) for size in parser.parse_args().sizes.split(",")]))
