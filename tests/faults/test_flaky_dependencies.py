"""AWS and Synadia misbehaving the way hosted APIs do: 5xx, 429 and slow answers now and then
(onboarding still converges, nothing twice), or a refusal that lasts until a person fixes it (a
clear Degraded condition, retried on the backoff schedule and not in a hot loop).

AWS is moto's server behind tests/support/faultproxy.py; Synadia is its emulator with its own
fault knobs. botocore's and the Synadia client's retries are part of what is under test.
"""

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from support import fleet
from support.faultproxy import AwsFaults, FaultProxy
from support.moto import MOTO_ACCOUNT_ID
from temporalio.client import Client

from emulators.synadia import DEFAULT_TOKEN, SynadiaEmulator
from workflows.state import ConditionStatus, Phase
from workflows.workload import WorkloadWorkflow

COUNT = 30
# The figures: 20% 5xx, 10% 429, and 2 s latency spikes (on one call in twenty).
ERROR_RATE, THROTTLE_RATE, SPIKE_RATE, SPIKE_MS = 0.2, 0.1, 0.05, 2000
MIN_BACKOFF, MAX_BACKOFF = timedelta(seconds=1), timedelta(seconds=4)
WINDOW = 12.0  # seconds of workflow time (the dev server's clock is the wall clock)


@pytest.fixture(scope="module")
async def proxy(moto_url: str) -> AsyncIterator[FaultProxy]:
    async with FaultProxy.running(moto_url) as proxy:
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
    )


@pytest.mark.faults
async def test_onboarding_through_flaky_aws_and_synadia_converges_without_duplicates(
    client: Client,
    proxy: FaultProxy,
    moto_url: str,
    synadia: SynadiaEmulator,
    sealing_cert: Path,
    seed: int,
    tmp_path: Path,
) -> None:
    run = onboarding(client, proxy, synadia, sealing_cert, tmp_path, COUNT)
    rates = {"error_rate": ERROR_RATE, "throttle_rate": THROTTLE_RATE, "spike_rate": SPIKE_RATE}
    proxy.set_faults(AwsFaults(**rates, spike_ms=SPIKE_MS, seed=seed))
    synadia.set_faults(**rates, spike_ms=SPIKE_MS, seed=seed)
    synadia.reset_counters()
    await run.worker.start()
    try:
        await run.apply(client)
        statuses = await fleet.wait_all_ready(client, run.workloads)
    finally:
        await run.worker.stop()

    await fleet.assert_onboarded_once(run, statuses, aws_url=moto_url, synadia=synadia)
    aws_faults = _kinds(proxy.injected)
    synadia_faults = _kinds(synadia.counters()["injected"])
    print(f"injected into AWS calls: {aws_faults}; into Synadia calls: {synadia_faults}")
    assert set(aws_faults) == set(synadia_faults) == {"503", "429", "spike"}


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
