"""Three worker processes on one task queue and one state store while 30 workloads onboard: one
is killed with SIGKILL and another stopped with SIGTERM, each in the middle of an activity and
restarted. Every workload ends Ready, all three handled tasks, nothing exists twice, and the state
store's history is linear with no commit lost.

The fast variant of tests/faults/test_three_workers_300.py (300 workloads, three disruptions)."""

from pathlib import Path

from support.secrets import ControllerKeys
from support.several_workers import (
    Disruption,
    assert_shared_and_once,
    onboard_through_disruptions,
)
from temporalio.client import Client

from emulators.synadia import SynadiaEmulator

COUNT = 30
# Progress runs from 0 to 2 x COUNT (issued credentials plus committed ServiceAccounts). Both come
# early: the wait for the lost activities' heartbeat timeout then overlaps the rest of the work,
# and the SIGTERM still finds most workloads onboarding.
DISRUPTIONS = [Disruption(worker=0, how="kill", at=4), Disruption(worker=1, how="term", at=10)]


async def test_three_workers_share_onboarding_through_a_crash_and_a_deploy(
    client: Client,
    aws_url: str,
    synadia: SynadiaEmulator,
    keys: ControllerKeys,
    tmp_path: Path,
) -> None:
    outcome = await onboard_through_disruptions(
        client,
        tmp_path,
        COUNT,
        DISRUPTIONS,
        aws_url=aws_url,
        synadia=synadia,
        sealing_cert=keys.cert_file,
        timeout=120,
    )
    await assert_shared_and_once(outcome, aws_url=aws_url, synadia=synadia)
