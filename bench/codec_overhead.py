"""What payload encryption costs: a workflow of 20 activities with and without the codec.

    .venv/bin/python bench/codec_overhead.py [--runs 40] [--activities 20] [--payload-bytes 1024]

Starts a Temporal dev server (the binary in .venv, nothing downloaded), runs a worker and a client
with the plain pydantic converter and another pair with the encrypting one from
`starter.temporal.data_converter`, alternates workflow runs between the two so both see the same
machine noise, and prints one table. A micro-benchmark of the codec alone follows.
"""

import argparse
import os
import platform
import statistics
import sys
import time
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import running
from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from idp.keyring import KeyRing, generate_key
from starter.codec import EncryptionCodec
from starter.temporal import data_converter

TEMPORAL = Path(sys.executable).parent / "temporal"


class Step(BaseModel):
    index: int
    body: str


@activity.defn
async def step(request: Step) -> Step:
    return Step(index=request.index + 1, body=request.body)


@workflow.defn
class Steps:
    @workflow.run
    async def run(self, activities: int, body: str) -> int:
        current = Step(index=0, body=body)
        for _ in range(activities):
            current = await workflow.execute_activity(
                step, current, start_to_close_timeout=timedelta(seconds=30), result_type=Step
            )
        return current.index


async def one_run(client: Client, queue: str, activities: int, body: str) -> float:
    started = time.perf_counter()
    result = await client.execute_workflow(
        Steps.run, args=[activities, body], id=f"bench-{uuid.uuid4().hex}", task_queue=queue
    )
    elapsed = time.perf_counter() - started
    if result != activities:
        raise SystemExit(f"workflow returned {result}, expected {activities}")
    return elapsed


def summary(label: str, seconds: list[float], baseline: float | None) -> str:
    ms = sorted(s * 1000 for s in seconds)
    median = statistics.median(ms)
    p90 = statistics.quantiles(ms, n=10, method="inclusive")[8]
    overhead = (
        "-" if baseline is None else f"{median - baseline:+.1f} ms ({median / baseline - 1:+.1%})"
    )
    mean = statistics.fmean(ms)
    return f"{label:<22} {len(ms):>4} {median:>10.1f} {p90:>10.1f} {mean:>10.1f}  {overhead}"


class CountingCodec(EncryptionCodec):
    """The production codec, counting the payloads it handles."""

    encrypted = 0
    decrypted = 0

    def encrypt(self, payload: Payload) -> Payload:
        CountingCodec.encrypted += 1
        return super().encrypt(payload)

    def decrypt(self, payload: Payload) -> Payload:
        CountingCodec.decrypted += 1
        return super().decrypt(payload)


def codec_micro(payload_bytes: int, rounds: int = 5000) -> tuple[float, float]:
    codec = EncryptionCodec(KeyRing.from_env(f"bench:{generate_key()}"))
    payload = Payload(metadata={"encoding": b"json/plain"}, data=b"x" * payload_bytes)
    started = time.perf_counter()
    encrypted = [codec.encrypt(payload) for _ in range(rounds)]
    encrypt_us = (time.perf_counter() - started) / rounds * 1e6
    started = time.perf_counter()
    for item in encrypted:
        codec.decrypt(item)
    decrypt_us = (time.perf_counter() - started) / rounds * 1e6
    return encrypt_us, decrypt_us


async def main(runs: int, activities: int, payload_bytes: int) -> None:
    body = "x" * payload_bytes
    keyring = KeyRing.from_env(f"bench:{generate_key()}")
    async with await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(TEMPORAL),
        data_converter=data_converter(None),
        dev_server_extra_args=["--log-level", "error"],
    ) as env:
        target = env.client.service_client.config.target_host
        encrypting = replace(data_converter(keyring), payload_codec=CountingCodec(keyring))
        clients = {
            "plain": env.client,
            "encrypted": await Client.connect(target, data_converter=encrypting),
        }
        queues = {mode: f"bench-{mode}-{uuid.uuid4().hex[:6]}" for mode in clients}
        workers = [
            Worker(
                clients[mode],
                task_queue=queues[mode],
                workflows=[Steps],
                activities=[step],
                # The bench workflow lives in __main__, which the sandbox cannot re-import; the
                # codec's cost is the same either way.
                workflow_runner=UnsandboxedWorkflowRunner(),
            )
            for mode in clients
        ]
        timings: dict[str, list[float]] = {mode: [] for mode in clients}
        async with workers[0], workers[1]:
            for mode in clients:  # warm up both paths: connections, caches, imports
                for _ in range(3):
                    await one_run(clients[mode], queues[mode], activities, body)
            CountingCodec.encrypted = CountingCodec.decrypted = 0
            for i in range(runs):
                # Alternate which mode goes first so drift in machine load hits both equally.
                order = list(clients) if i % 2 == 0 else list(reversed(clients))
                for mode in order:
                    timings[mode].append(
                        await one_run(clients[mode], queues[mode], activities, body)
                    )

    encrypt_us, decrypt_us = codec_micro(payload_bytes)
    print(
        f"\nWorkflow of {activities} sequential activities, {payload_bytes}-byte payloads, "
        f"{runs} runs per mode (alternating), Temporal dev server in memory"
    )
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}\n")
    print(
        f"{'converter':<22} {'runs':>4} {'median ms':>10} {'p90 ms':>10} {'mean ms':>10}  overhead"
    )
    baseline = statistics.median(s * 1000 for s in timings["plain"])
    print(summary("pydantic (plain)", timings["plain"], None))
    print(summary("pydantic + AES-GCM", timings["encrypted"], baseline))
    per_run_encrypt = CountingCodec.encrypted / runs
    per_run_decrypt = CountingCodec.decrypted / runs
    cpu_ms = (per_run_encrypt * encrypt_us + per_run_decrypt * decrypt_us) / 1000
    print(
        f"\nCodec alone, one {payload_bytes}-byte payload: encrypt {encrypt_us:.1f} µs, "
        f"decrypt {decrypt_us:.1f} µs; per workflow run {per_run_encrypt:.0f} encrypts + "
        f"{per_run_decrypt:.0f} decrypts ≈ {cpu_ms:.2f} ms of CPU (client and worker together)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--activities", type=int, default=20)
    parser.add_argument("--payload-bytes", type=int, default=1024)
    args = parser.parse_args()
    running.run(main(args.runs, args.activities, args.payload_bytes))
    # Skip interpreter teardown: the SDK's Rust threads can abort it (temporalio/sdk-python#300),
    # which would turn a finished benchmark into exit code 134.
    sys.stdout.flush()
    os._exit(0)
