"""Three worker processes on one task queue and one state store while 300 workloads onboard: one
is killed with SIGKILL twice and another stopped with SIGTERM (a rolling deploy), each time in the
middle of an activity and restarted on the same cache directory. Every workload ends Ready, all
three handled workflow tasks and activities, nothing exists twice (repository, role, NATS user,
credential version 1 delivered in one commit, ServiceAccount committed once), and the state
store's history is linear with no commit lost.

The SIGTERMed worker is restarted too: a deploy brings every worker back, and a restarted worker
rejoining a busy queue, with its clone as it left it, is part of what is under test.
"""

import random
from pathlib import Path

import pytest
from support.several_workers import (
    Disruption,
    assert_shared_and_once,
    onboard_through_disruptions,
)
from temporalio.client import Client

from emulators.synadia import SynadiaEmulator

COUNT = 300


@pytest.mark.faults
async def test_three_workers_share_onboarding_through_two_crashes_and_a_deploy(
    client: Client,
    aws_url: str,
    synadia: SynadiaEmulator,
    sealing_cert: Path,
    seed: int,
    tmp_path: Path,
) -> None:
    rng = random.Random(seed)
    # Progress runs from 0 to 2 x COUNT; drawn from its first half, the disruptions land among
    # issuances, deliveries and commits rather than after them.
    kills, term = sorted(rng.randrange(1, COUNT) for _ in range(2)), rng.randrange(1, COUNT)
    disruptions = [Disruption(0, "kill", at) for at in kills] + [Disruption(1, "term", term)]
    outcome = await onboard_through_disruptions(
        client,
        tmp_path,
        COUNT,
        disruptions,
        aws_url=aws_url,
        synadia=synadia,
        sealing_cert=sealing_cert,
    )
    await assert_shared_and_once(outcome, aws_url=aws_url, synadia=synadia)
