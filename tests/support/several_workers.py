"""Several worker processes on one task queue and one state store, disrupted while workloads
onboard, and the evidence afterwards that they shared the work and made nothing twice.

Each worker has its own cache directory (its own clone of the state store, so pushes race) and
its own Prometheus endpoint. A disruption is a SIGKILL (a crash: nothing flushed, in-flight
activities lost until their heartbeat timeout) or a SIGTERM (a rolling deploy: running activities
finish), each followed by a restart on the same cache directory, as a supervisor does. A disruption
waits until the worker holds an activity, so it always lands in the middle of work.

A process's counters die with it, so each worker's tasks are summed over its incarnations: every
incarnation is scraped just before it is signalled (what it finishes in between is not counted,
which only makes the sums lower bounds) and the live ones once every workload is Ready.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
from support import fleet
from support.processes import WorkerProcess
from temporalio.client import Client

from capabilities.credentials import CredentialsOutputs
from emulators.synadia import SynadiaEmulator
from idp.natsusers import LIVE_ISSUANCE
from idp.synadia import SynadiaClient
from workflows.messages import WorkloadStatus

# The SDK's own counters of finished tasks (the _count of its latency histograms).
HANDLED = {
    "workflow tasks": "temporal_workflow_task_execution_latency_count",
    "activities": "temporal_activity_execution_latency_count",
}
SLOTS_USED = "temporal_worker_task_slots_used"
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
POLL = 0.05


def free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@dataclass(frozen=True)
class Metrics:
    """One scrape of a worker's /metrics: (name, labels, value) per series."""

    samples: list[tuple[str, dict[str, str], float]]

    def value(self, name: str, **labels: str) -> float:
        """The sum over the series of `name` that carry these labels (0 when there is none)."""
        return sum(v for n, ls, v in self.samples if n == name and labels.items() <= ls.items())

    def handled(self) -> Counter[str]:
        return Counter({kind: int(self.value(name)) for kind, name in HANDLED.items()})


async def scrape(address: str) -> Metrics:
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(f"http://{address}/metrics")
    response.raise_for_status()
    samples = []
    for line in response.text.splitlines():
        if match := SAMPLE.match(line):
            labels = dict(LABEL.findall(match["labels"] or ""))
            samples.append((match["name"], labels, float(match["value"])))
    return Metrics(samples)


@dataclass
class FleetWorker:
    """One worker's place in the fleet across its incarnations (same cache directory, log and
    metrics address), with the tasks its finished incarnations handled."""

    name: str
    process: WorkerProcess
    handled_before: Counter[str]

    @property
    def metrics_address(self) -> str:
        assert self.process.metrics_address is not None
        return self.process.metrics_address

    async def handled(self) -> Counter[str]:
        """Tasks handled over every incarnation, the running one scraped now."""
        if not self.process.running:
            return Counter(self.handled_before)
        return self.handled_before + (await scrape(self.metrics_address)).handled()

    async def busy(self) -> bool:
        """Whether it holds an activity right now."""
        metrics = await scrape(self.metrics_address)
        return metrics.value(SLOTS_USED, worker_type="ActivityWorker") > 0

    async def kill(self) -> None:
        self.handled_before = await self.handled()
        await self.process.kill()

    async def terminate(self) -> None:
        self.handled_before = await self.handled()
        await self.process.stop()


@dataclass(frozen=True)
class Disruption:
    """`how` worker number `worker` is stopped (then restarted) once onboarding's progress, issued
    credentials plus committed ServiceAccounts (0 to 2 x workloads), reaches `at`."""

    worker: int
    how: Literal["kill", "term"]
    at: int


@dataclass
class Outcome:
    run: fleet.Onboarding
    statuses: list[WorkloadStatus]
    handled: dict[str, Counter[str]]  # worker name -> tasks over all its incarnations
    onboarded_at: list[int]  # workloads onboarded when each disruption came
    seconds: float  # from the first apply until every workload was Ready


async def onboard_through_disruptions(
    client: Client,
    directory: Path,
    count: int,
    disruptions: Sequence[Disruption],
    *,
    workers: int = 3,
    aws_url: str,
    synadia: SynadiaEmulator,
    sealing_cert: Path,
    timeout: float = 300,
) -> Outcome:
    """`count` workloads onboarding on `workers` worker processes while `disruptions` happen, in
    order of `at`; fails unless every workload ends Ready within `timeout` seconds."""
    run = fleet.onboarding(
        directory,
        client.service_client.config.target_host,
        count,
        aws_url=aws_url,
        synadia=synadia,
        sealing_cert=sealing_cert,
        metrics_address=free_address(),
    )
    fleet_workers = [FleetWorker("0", run.worker, Counter())] + [
        FleetWorker(str(i), run.another_worker(str(i), metrics_address=free_address()), Counter())
        for i in range(1, workers)
    ]
    issued_before = sum(synadia.counters()["creds_issued"].values())

    async def progress() -> int:
        issued = sum(synadia.counters()["creds_issued"].values()) - issued_before
        # git log off the event loop, which also serves the Synadia emulator.
        return issued + await asyncio.to_thread(fleet.onboarded, run.repo)

    # A restart runs beside the next wait: awaiting it first would let onboarding run on
    # meanwhile, and the next disruption could then come only after the last workload is Ready.
    restarts: dict[str, asyncio.Task[None]] = {}

    async def ready_to_disrupt(victim: FleetWorker, at: int) -> None:
        if (restart := restarts.pop(victim.name, None)) is not None:
            await restart
        while await progress() < at or not await victim.busy():
            # Every worker must stay up on its own; only a victim's exit is ours.
            for worker in fleet_workers:
                if worker.name not in restarts or restarts[worker.name].done():
                    worker.process.check_alive()
            await asyncio.sleep(POLL)

    await asyncio.gather(*(w.process.start() for w in fleet_workers))
    try:
        started = time.monotonic()
        await run.apply(client)
        onboarded_at = []
        for disruption in sorted(disruptions, key=lambda d: d.at):
            victim = fleet_workers[disruption.worker]
            try:
                async with asyncio.timeout(timeout):
                    await ready_to_disrupt(victim, disruption.at)
            except TimeoutError:
                raise AssertionError(
                    f"worker {victim.name} was not seen holding an activity with progress at "
                    f"{disruption.at} or more within {timeout:g}s (progress {await progress()} "
                    f"of {2 * count})"
                ) from None
            # Counted as the signal goes, not after the victim has drained or died.
            onboarded_at.append(fleet.onboarded(run.repo))
            await (victim.kill() if disruption.how == "kill" else victim.terminate())
            restarts[victim.name] = asyncio.create_task(victim.process.start())
        await asyncio.gather(*restarts.values())
        statuses = await fleet.wait_all_ready(client, run.workloads, timeout)
        seconds = time.monotonic() - started
        handled = {w.name: await w.handled() for w in fleet_workers}
    finally:
        for restart in restarts.values():
            restart.cancel()
        await asyncio.gather(*restarts.values(), return_exceptions=True)
        await asyncio.gather(*(w.process.stop() for w in fleet_workers))
    return Outcome(run, statuses, handled, onboarded_at, seconds)


async def assert_one_live_credential(
    statuses: Sequence[WorkloadStatus], synadia: SynadiaEmulator
) -> None:
    """Per workload, Synadia holds one credential still valid: the delivered one. A download a
    killed worker lost is on a key of its own, revoked by the attempt after it."""
    downloads = 0
    async with SynadiaClient(synadia.api_url, synadia.token) as api:
        for status in statuses:
            issuances = await api.list_nats_user_issuances(status.outputs["Nats"]["userId"])
            live = [i.sub for i in issuances if i.status in LIVE_ISSUANCE]
            delivered = CredentialsOutputs.model_validate(status.outputs["Credentials"]).public_key
            assert live == [delivered], (status.name, issuances)
            downloads += sum(i.events_count for i in issuances)
    print(f"credentials downloaded {downloads} times for {len(statuses)} workloads")


async def assert_shared_and_once(
    outcome: Outcome, *, aws_url: str, synadia: SynadiaEmulator
) -> None:
    """Every worker handled workflow tasks and activities; the disruptions came while workloads
    were still onboarding; nothing exists twice; the state store's history is linear and lost
    no commit."""
    run = outcome.run
    print(f"tasks handled per worker: {outcome.handled}")
    print(f"workloads onboarded at each disruption: {outcome.onboarded_at} of {len(run.workloads)}")
    print(f"all {len(run.workloads)} Ready {outcome.seconds:.1f}s after the first apply")
    idle = {
        name: kinds
        for name, kinds in outcome.handled.items()
        if not all(kinds[kind] > 0 for kind in HANDLED)
    }
    assert not idle, f"workers that handled no workflow task or no activity: {idle}"
    # A disruption after the last workload is onboarded proves nothing: most must land before.
    assert sum(n < len(run.workloads) for n in outcome.onboarded_at) > len(outcome.onboarded_at) / 2
    await fleet.assert_onboarded_once(run, outcome.statuses, aws_url=aws_url, synadia=synadia)
    await assert_one_live_credential(outcome.statuses, synadia)
    fleet.assert_linear_history(run.repo)
    fleet.assert_nothing_lost(run, outcome.statuses)
