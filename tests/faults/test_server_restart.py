"""The Temporal dev server killed (SIGKILL) mid-onboarding and started again on the same port
and SQLite file: every workload resumes to Ready and nothing exists twice."""

import asyncio
import random
from pathlib import Path

import pytest
from support import fleet
from support.processes import DevServerProcess

from emulators.synadia import SynadiaEmulator
from starter.dev import free_port

COUNT = 30


@pytest.mark.faults
async def test_a_server_killed_mid_onboarding_resumes_every_workload_once(
    aws_url: str, synadia: SynadiaEmulator, sealing_cert: Path, seed: int, tmp_path: Path
) -> None:
    """The worker is not restarted: its polls and completions fail while the server is down,
    and it reconnects by itself once the server is back (an activity that finished during the
    outage and could not report is retried, and must find its own work done)."""
    rng = random.Random(seed)
    server = DevServerProcess(
        free_port("127.0.0.1"), tmp_path / "temporal.db", tmp_path / "server.log"
    )
    client = await server.start()
    run = fleet.onboarding(
        tmp_path,
        server.address,
        COUNT,
        aws_url=aws_url,
        synadia=synadia,
        sealing_cert=sealing_cert,
    )
    try:
        await run.worker.start()
        await run.apply(client)
        await fleet.wait_onboarded(run.repo, rng.randrange(COUNT // 2), run.worker)
        await server.kill()
        before = fleet.onboarded(run.repo)
        # The outage: as long as a supervisor might take to bring the server back.
        await asyncio.sleep(rng.uniform(1.0, 5.0))
        during = fleet.onboarded(run.repo) - before
        client = await server.start()
        statuses = await fleet.wait_all_ready(client, run.workloads)
        print(f"killed at {before}/{COUNT} onboarded; {during} more onboarded during the outage")
        assert before < COUNT, "the server came down after the onboarding had finished"
        run.worker.check_alive()
    finally:
        await run.worker.stop()
        await server.stop()

    await fleet.assert_onboarded_once(run, statuses, aws_url=aws_url, synadia=synadia)
