"""The worker killed with SIGKILL at random moments while workloads onboard, then restarted the
way a supervisor restarts it: every workload ends Ready and nothing exists twice.

Real parts throughout: the worker is `python -m worker` in its own process, the registry is on
moto's server, NATS users come from the Synadia emulator (with a real nats-server), credentials
are sealed into a bare git repository next to each ServiceAccount.
"""

import asyncio
import random
from pathlib import Path

import pytest
from support import fleet
from temporalio.client import Client

from emulators.synadia import SynadiaEmulator


@pytest.mark.parametrize(
    ("count", "kills", "spread"),
    [
        # Progress counts NATS users created, credentials issued and ServiceAccounts committed (0
        # to 3 x count), so kills drawn from the first third land among the creates, and from the
        # first two thirds among creates and issuances; counting the ServiceAccounts alone, one
        # burst of group commits could finish before any kill. Ten workloads onboard in about a
        # second on the local stack, so a kill timed from the apply alone often came after the
        # last commit.
        pytest.param(10, 2, 10, id="10-workloads-2-kills"),
        pytest.param(100, 10, 200, id="100-workloads-10-kills", marks=pytest.mark.faults),
    ],
)
async def test_a_worker_killed_at_random_moments_leaves_every_resource_once(
    client: Client,
    aws_url: str,
    synadia: SynadiaEmulator,
    sealing_cert: Path,
    seed: int,
    tmp_path: Path,
    count: int,
    kills: int,
    spread: int,
) -> None:
    rng = random.Random(seed)
    create = "POST /accounts/{accountId}/nats-users"

    def steps() -> int:
        return synadia.calls(create) + sum(synadia.counters()["creds_issued"].values())

    steps_before = steps()

    def progress() -> int:
        return steps() - steps_before + fleet.onboarded(run.repo)

    run = fleet.onboarding(
        tmp_path,
        client.service_client.config.target_host,
        count,
        aws_url=aws_url,
        synadia=synadia,
        sealing_cert=sealing_cert,
    )
    worker = run.worker
    await worker.start()
    try:
        await run.apply(client)
        onboarded_at_kill = []
        # Each kill comes once progress reaches its mark, a random instant later: soon enough
        # that the work in flight at the mark is still running.
        for at in sorted(rng.randrange(spread) for _ in range(kills)):
            async with asyncio.timeout(120):
                while progress() < at:
                    worker.check_alive()
                    await asyncio.sleep(0.05)
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            worker.check_alive()
            await worker.kill()
            onboarded_at_kill.append(fleet.onboarded(run.repo))
            # Same cache directory, like a supervisor restarting it on the same machine: the
            # clones may be mid-commit, lock files and all.
            await worker.start()
        print(f"workloads onboarded at each kill: {onboarded_at_kill} of {count}")
        # A kill after the last group commit proves nothing; most must land before it.
        assert sum(n < count for n in onboarded_at_kill) > kills // 2
        statuses = await fleet.wait_all_ready(client, run.workloads)
    finally:
        await worker.stop()

    await fleet.assert_onboarded_once(run, statuses, aws_url=aws_url, synadia=synadia)
    downloads = sum(synadia.creds_issued(s.outputs["Nats"]["userId"]) for s in statuses)
    print(f"credentials downloaded {downloads} times for {count} workloads")
