"""AWS, Synadia and Port misbehaving the way hosted APIs do: 5xx, 429 and slow answers now and
then (onboarding still converges, and Port's runs still finish with the right outcome, nothing
twice), or a refusal that lasts until a person fixes it (a clear Degraded condition, retried on
the backoff schedule and not in a hot loop).

AWS is moto's server behind tests/support/faultproxy.py; Synadia and Port are their emulators
with the same fault knobs (emulators/faults.py). botocore's, the Synadia client's and the Port
client's retries are part of what is under test.
"""

import asyncio
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from support import fleet
from support.faultproxy import AwsFaults, FaultProxy
from support.moto import MOTO_ACCOUNT_ID
from support.port import bridge_serving
from temporalio.client import Client

from emulators.port import PortEmulator
from emulators.port.store import Run
from emulators.synadia import DEFAULT_TOKEN, SynadiaEmulator
from idp.models import Workload
from idp.port import PortClient
from workflows.state import ConditionStatus, Phase
from workflows.workload import WorkloadWorkflow

COUNT = 30
# The figures: 20% 5xx, 10% 429, and 2 s latency spikes (on one call in twenty).
ERROR_RATE, THROTTLE_RATE, SPIKE_RATE, SPIKE_MS = 0.2, 0.1, 0.05, 2000
MIN_BACKOFF, MAX_BACKOFF = timedelta(seconds=1), timedelta(seconds=4)
WINDOW = 12.0  # seconds of workflow time (the dev server's clock is the wall clock)
PORT_LATENCY_MS = 50  # on every Port call, beside the spikes
CREATE = "idp_create_workload"
RATES = {"error_rate": ERROR_RATE, "throttle_rate": THROTTLE_RATE, "spike_rate": SPIKE_RATE}


@pytest.fixture(scope="module")
async def proxy(aws_url: str) -> AsyncIterator[FaultProxy]:
    async with FaultProxy.running(aws_url) as proxy:
        yield proxy


@pytest.fixture(autouse=True)
def _healthy_afterwards(proxy: FaultProxy, synadia: SynadiaEmulator) -> Iterator[None]:
    yield
    proxy.set_faults(AwsFaults())
    synadia.set_faults()
    synadia.token = DEFAULT_TOKEN


def onboarding(
    client: Client,
    proxy: FaultProxy,
    synadia: SynadiaEmulator,
    sealing_cert: Path,
    tmp_path: Path,
    count: int,
    port: PortEmulator | None = None,
) -> fleet.Onboarding:
    """Workloads whose worker reaches AWS through the proxy and backs off on the test's clock."""
    return fleet.onboarding(
        tmp_path,
        client.service_client.config.target_host,
        count,
        aws_url=proxy.url,
        synadia=synadia,
        sealing_cert=sealing_cert,
        min_backoff=MIN_BACKOFF,
        max_backoff=MAX_BACKOFF,
        port=port,
    )


@pytest.mark.faults
async def test_onboarding_through_flaky_aws_and_synadia_converges_without_duplicates(
    client: Client,
    proxy: FaultProxy,
    aws_url: str,
    synadia: SynadiaEmulator,
    sealing_cert: Path,
    seed: int,
    tmp_path: Path,
) -> None:
    run = onboarding(client, proxy, synadia, sealing_cert, tmp_path, COUNT)
    proxy.set_faults(AwsFaults(**RATES, spike_ms=SPIKE_MS, seed=seed))
    synadia.set_faults(**RATES, spike_ms=SPIKE_MS, seed=seed)
    synadia.reset_counters()
    await run.worker.start()
    try:
        await run.apply(client)
        statuses = await fleet.wait_all_ready(client, run.workloads)
    finally:
        await run.worker.stop()

    await fleet.assert_onboarded_once(run, statuses, aws_url=aws_url, synadia=synadia)
    aws_faults = _kinds(proxy.injected)
    synadia_faults = _kinds(synadia.counters()["injected"])
    print(f"injected into AWS calls: {aws_faults}; into Synadia calls: {synadia_faults}")
    assert set(aws_faults) == set(synadia_faults) == {"503", "429", "spike"}


def create_inputs(workload: Workload) -> dict[str, object]:
    """Create workload's inputs for `workload`, as a developer fills them in Port."""
    spec = workload.spec
    assert spec.nats is not None
    return {
        "name": workload.metadata.name,
        "system": workload.metadata.system,
        "owner": spec.owner,
        "destination": spec.destination,
        "namespace": spec.namespace,
        "nats": True,
        "natsPublish": spec.nats.permissions.publish.allow,
    }


@pytest.mark.faults
async def test_port_runs_through_flaky_port_aws_and_synadia_finish_once(
    client: Client,
    proxy: FaultProxy,
    aws_url: str,
    synadia: SynadiaEmulator,
    sealing_cert: Path,
    seed: int,
    tmp_path: Path,
) -> None:
    async with PortEmulator.running(client_secret=secrets.token_urlsafe(32)) as emulator:
        run = onboarding(client, proxy, synadia, sealing_cert, tmp_path, COUNT, port=emulator)
        port = PortClient(emulator.url, emulator.client_id, emulator.client_secret)
        # Installed while Port is healthy: the runs are under test, not the installer.
        async with port, bridge_serving(client, emulator, port, run.queue):
            proxy.set_faults(AwsFaults(**RATES, spike_ms=SPIKE_MS, seed=seed))
            synadia.set_faults(**RATES, spike_ms=SPIKE_MS, seed=seed)
            emulator.set_faults(**RATES, spike_ms=SPIKE_MS, latency_ms=PORT_LATENCY_MS, seed=seed)
            await run.worker.start()
            try:
                invocations = await asyncio.gather(
                    *(emulator.invoke(CREATE, create_inputs(w)) for w in run.workloads)
                )
                assert [i.status_code for i in invocations] == [202] * COUNT, invocations

                def finished(run_id: str) -> Run | None:
                    reported = emulator.run(run_id)
                    done = reported is not None and reported.status != "IN_PROGRESS"
                    return reported if done else None

                runs = await asyncio.gather(
                    *(emulator.until(lambda i=i: finished(i.run_id), 300) for i in invocations)
                )
                statuses = await fleet.wait_all_ready(client, run.workloads)
            finally:
                await run.worker.stop()
        port_faults = _kinds(emulator.counters()["injected"])

    for workload, port_run in zip(run.workloads, runs, strict=True):
        name = f"{workload.metadata.system}/{workload.metadata.name}"
        assert (port_run.status, port_run.status_label) == ("SUCCESS", "Ready"), port_run.logs
        assert port_run.terminations == ["SUCCESS"]
        messages = [log.message for log in port_run.logs]
        # A failed call changed nothing, so no retry may have repeated a line.
        assert len(set(messages)) == len(messages), messages
        assert messages[0] == (
            f"Accepted for developer@example.com: apply generation 1 of workload {name}."
        )
        assert messages[-1] == f"Workload {name} is Ready at generation 1."
        entity = emulator.entity("idpWorkload", name.replace("/", "."))
        assert entity is not None and entity["properties"]["phase"] == "Ready"
        assert entity["runIds"] == [port_run.id]
    # One report per run: a webhook delivered again would find its report's workflow id taken.
    query = f"WorkflowType = 'PortRunWorkflow' AND TaskQueue = '{run.queue}'"
    assert (await client.count_workflows(query)).count == COUNT
    await fleet.assert_onboarded_once(run, statuses, aws_url=aws_url, synadia=synadia)
    print(f"injected into Port calls: {port_faults}")
    assert {"503", "429", "spike"} <= set(port_faults)


def _kinds(injected: dict[str, int]) -> Counter[str]:
    """{"503": n, "429": n, "spike": n} from counters keyed "<call> <kind>"."""
    kinds: Counter[str] = Counter()
    for key, count in injected.items():
        kinds[key.rsplit(" ", 1)[1]] += count
    return kinds


# ---- a permanent refusal ----------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """A dependency that says no until someone fixes it, and what the workload must report."""

    condition: str
    reason: str
    message: str
    refuse: Callable[[], None]
    heal: Callable[[], None]
    calls: Callable[[], int]  # calls made to the refusing endpoint so far


def iam_denies_create_role(proxy: FaultProxy, synadia: SynadiaEmulator) -> Refusal:
    return Refusal(
        condition="Registry",
        reason="AccessDenied",
        message=(
            "AWS IAM CreateRole failed with AccessDenied: User: "
            f"arn:aws:iam::{MOTO_ACCOUNT_ID}:user/idp-worker is not authorized to perform: "
            "iam:CreateRole."
        ),
        refuse=lambda: proxy.set_faults(AwsFaults(deny=frozenset({"iam:CreateRole"}))),
        heal=lambda: proxy.set_faults(AwsFaults()),
        calls=lambda: proxy.calls["iam:CreateRole"],
    )


def synadia_token_revoked(proxy: FaultProxy, synadia: SynadiaEmulator) -> Refusal:
    """Someone rotated the API token in Synadia and not in the worker's environment."""
    return Refusal(
        condition="Nats",
        reason="SynadiaHTTP401",
        message="Synadia list teams failed with HTTP 401 Unauthorized: missing or invalid bearer "
        f"token. Synadia refused the API token in ${fleet.SYNADIA_TOKEN_ENV} "
        "(synadia.tokenEnv): the worker reads it when it starts, so restart it after changing "
        "the variable.",
        refuse=lambda: setattr(synadia, "token", "rotated-by-someone-else"),
        heal=lambda: setattr(synadia, "token", DEFAULT_TOKEN),
        calls=lambda: sum(synadia.counters()["calls"].values()),
    )


def most_calls(window: float, first: float, cap: float) -> int:
    """The most passes that fit in `window` when consecutive passes wait the doubling backoff,
    capped: at the schedule's start the waits are shortest, so that is the worst case."""
    calls, elapsed, wait = 1, 0.0, first
    while elapsed + wait <= window:
        elapsed += wait
        calls += 1
        wait = min(wait * 2, cap)
    return calls


@pytest.mark.faults
@pytest.mark.parametrize(
    "refusal", [iam_denies_create_role, synadia_token_revoked], ids=lambda f: f.__name__
)
async def test_a_permanent_refusal_is_a_clear_degraded_condition_retried_on_the_backoff(
    client: Client,
    proxy: FaultProxy,
    synadia: SynadiaEmulator,
    sealing_cert: Path,
    tmp_path: Path,
    refusal: Callable[[FaultProxy, SynadiaEmulator], Refusal],
) -> None:
    run = onboarding(client, proxy, synadia, sealing_cert, tmp_path, 1)
    case = refusal(proxy, synadia)
    case.refuse()
    handle = client.get_workflow_handle(run.workloads[0].workflow_id)
    await run.worker.start()
    try:
        await run.apply(client)
        async with asyncio.timeout(60):
            while (status := await handle.query(WorkloadWorkflow.status)).phase != Phase.DEGRADED:
                await asyncio.sleep(0.1)
        [condition] = [c for c in status.conditions if c.type == case.condition]
        assert (condition.status, condition.reason) == (ConditionStatus.FALSE, case.reason)
        assert condition.message == case.message

        before = case.calls()
        # The window itself: the calls it sees are the measurement.
        await asyncio.sleep(WINDOW)
        calls = case.calls() - before
        bound = most_calls(WINDOW, MIN_BACKOFF.total_seconds(), MAX_BACKOFF.total_seconds())
        print(f"{calls} calls in {WINDOW:g}s; the backoff schedule allows at most {bound}")
        assert 2 <= calls <= bound

        # Nobody signals it: fixing the cause is enough, the next retry finds it fixed. (Not
        # wait_ready: it answers at once while the last pass ended on this refusal.)
        case.heal()
        async with asyncio.timeout(60):
            while (await handle.query(WorkloadWorkflow.status)).phase != Phase.READY:
                await asyncio.sleep(0.1)
    finally:
        await run.worker.stop()
