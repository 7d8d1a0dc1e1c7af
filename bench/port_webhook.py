"""Port webhook → 202 latency, and how many webhooks per second the bridge accepts.

    .venv/bin/python bench/port_webhook.py [--samples 50] [--burst 200] [--concurrency 16]

Starts the same stack as `idpctl dev` (Temporal dev server with its SQLite file, the worker as
its own process, moto, the Synadia and Port emulators, the bridge as its own process) in a
temporary directory on free ports. Webhooks are signed here with the stack's Port client secret
and POSTed straight to the bridge, for runs opened in the Port emulator first, so the clock
covers exactly what Port waits for: signature check, update-with-start `apply` (or a status
query and a signal), and the start of PortRunWorkflow. Prints one table and stops everything.
"""

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import running

from idp.portwebhook import signed_headers
from starter import dev

REPORT_TIMEOUT = 300.0


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


class Sender:
    def __init__(self, stack: dev.Stack, http: httpx.AsyncClient) -> None:
        self.stack = stack
        self.http = http
        self.sent_at: dict[str, datetime] = {}

    async def open_run(self, action: str, entity: str | None = None) -> str:
        answer = await self.http.post(
            f"{self.stack.port_url}/_emulator/runs", json={"action": action, "entity": entity}
        )
        answer.raise_for_status()
        return answer.json()["runId"]

    async def webhook(
        self, action: str, inputs: dict[str, Any], entity: str | None = None
    ) -> float:
        """Seconds from sending the signed webhook to the bridge's 202."""
        run_id = await self.open_run(action, entity)
        body = json.dumps(
            {
                "action": action,
                "runId": run_id,
                "inputs": inputs,
                "entity": entity,
                "triggeredBy": "bench@example.com",
            }
        ).encode()
        headers = {
            "content-type": "application/json",
            **signed_headers(self.stack.port_client_secret or "", body),
        }
        self.sent_at[run_id] = datetime.now(UTC)
        started = time.perf_counter()
        answer = await self.http.post(self.stack.webhook_url, content=body, headers=headers)
        elapsed = time.perf_counter() - started
        if answer.status_code != 202:
            raise SystemExit(f"{action} {run_id}: {answer.status_code} {answer.text}")
        return elapsed


def create_inputs(system: str, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "system": system,
        "owner": "bench",
        "destination": "dev",
        "namespace": "bench",
        "registry": False,
    }


async def reports(sender: Sender, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The runs as the Port emulator holds them, once all have finished (or the timeout)."""
    deadline = time.monotonic() + REPORT_TIMEOUT
    while True:
        state = (await sender.http.get(f"{sender.stack.port_url}/_emulator/state")).json()
        runs = {run_id: state["runs"][run_id] for run_id in run_ids}
        if all(run["status"] != "IN_PROGRESS" for run in runs.values()):
            return runs
        if time.monotonic() > deadline:
            return runs
        await asyncio.sleep(0.5)


def report_seconds(sender: Sender, runs: dict[str, dict[str, Any]]) -> list[float]:
    """Webhook sent → the run's terminal status recorded by Port, per finished run."""
    return [
        (datetime.fromisoformat(run["ended_at"]) - sender.sent_at[run_id]).total_seconds()
        for run_id, run in runs.items()
        if run["ended_at"]
    ]


async def main(samples: int, burst: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory(prefix="idp-bench-") as tmp:
        stack = dev.Stack.on_free_ports(Path(tmp))
        try:
            await dev.start(stack)
            limits = httpx.Limits(max_connections=concurrency * 2)
            async with httpx.AsyncClient(timeout=60.0, limits=limits) as http:
                sender = Sender(stack, http)
                await sender.webhook("idp_create_workload", create_inputs("warmup", "w"))

                creates = [
                    await sender.webhook("idp_create_workload", create_inputs("single", f"w{i:03}"))
                    for i in range(samples)
                ]
                create_runs = list(sender.sent_at)[-samples:]
                reconciles = [
                    await sender.webhook("idp_reconcile_workload", {}, entity=f"single.w{i:03}")
                    for i in range(samples)
                ]
                gate = asyncio.Semaphore(concurrency)

                async def one(index: int) -> float:
                    async with gate:
                        inputs = create_inputs("burst", f"w{index:04}")
                        return await sender.webhook("idp_create_workload", inputs)

                started = time.perf_counter()
                burst_latencies = await asyncio.gather(*(one(i) for i in range(burst)))
                burst_seconds = time.perf_counter() - started
                runs = await reports(sender, list(sender.sent_at))
        finally:
            stack.stop()

    succeeded = sum(run["status"] == "SUCCESS" for run in runs.values())
    ended = report_seconds(sender, {r: runs[r] for r in create_runs})
    rows = [
        ("create webhook → 202, p50 (ms)", statistics.median(creates) * 1000),
        ("create webhook → 202, p95 (ms)", percentile(creates, 95) * 1000),
        ("reconcile webhook → 202, p50 (ms)", statistics.median(reconciles) * 1000),
        ("reconcile webhook → 202, p95 (ms)", percentile(reconciles, 95) * 1000),
        ("samples (each, sequential)", samples),
        (f"burst: {burst} creates, {concurrency} in flight (s)", burst_seconds),
        ("webhooks accepted per second", burst / burst_seconds),
        ("burst webhook → 202, p95 (ms)", percentile(list(burst_latencies), 95) * 1000),
        ("create webhook → Port run SUCCESS, p50 (ms)", statistics.median(ended) * 1000),
        ("runs reported SUCCESS / sent", f"{succeeded}/{len(runs)}"),
    ]
    python = platform.python_version()
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {python}")
    print("workloads created: manifests only (registry off), so the report waits on little")
    print(f"{'measure':<48} {'value':>12}")
    for label, value in rows:
        shown = f"{value:>12.1f}" if isinstance(value, float) else f"{value!s:>12}"
        print(f"{label:<48} {shown}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    running.run(main(args.samples, args.burst, args.concurrency))
