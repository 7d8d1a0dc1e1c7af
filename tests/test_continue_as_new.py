"""Continue-as-new: forced early by a low server limit, the state must survive it intact."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.stack import (
    bare_repo,
    commits,
    platform_for,
    running_worker,
    start_small_history_server,
)
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from idp.models import Workload
from starter.operations import apply_workload
from workflows.messages import WaitReadyRequest
from workflows.state import Phase
from workflows.workload import WorkloadWorkflow

# The server suggests continue-as-new once a run's history reaches this many events.
SUGGEST_AFTER_EVENTS = 40


@pytest.fixture(scope="module")
async def small_history_env() -> AsyncIterator[WorkflowEnvironment]:
    async with await start_small_history_server(SUGGEST_AFTER_EVENTS) as env:
        yield env


def workload(service_account: str) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": "hello", "system": "can"},
            "spec": {
                "owner": "team-demo",
                "destination": "dev",
                "namespace": "demo",
                "serviceAccount": service_account,
            },
        }
    )


async def test_state_survives_continue_as_new(small_history_env, tmp_path: Path) -> None:
    client: Client = small_history_env.client
    repo = bare_repo(tmp_path / "state.git")
    async with running_worker(client, platform_for(repo), "idp", tmp_path / "cache"):
        await apply_workload(client, "idp", workload("first"), request_id="port-run-1")
        await apply_workload(client, "idp", workload("second"), request_id="port-run-2")
        handle = client.get_workflow_handle(workload("x").workflow_id)
        first_run = (await handle.describe()).run_id
        status = await handle.execute_update(
            WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=2, timeout_seconds=30)
        )
        assert status.phase == Phase.READY

        # Each reconcile pass adds events; keep asking until the server's suggestion is taken.
        async with asyncio.timeout(60):
            while (await handle.describe()).run_id == first_run:
                await handle.signal(WorkloadWorkflow.reconcile)
                await asyncio.sleep(0.05)

        after = await handle.query(WorkloadWorkflow.status)
        assert after.generation == 2
        assert after.outputs["Manifests"] == status.outputs["Manifests"]
        assert after.workload.spec.service_account == "second"
        # A Port run re-delivered after continue-as-new still counts as already applied.
        replay = await apply_workload(client, "idp", workload("third"), request_id="port-run-1")
        assert (replay.generation, replay.changed) == (2, False)
        # And the workflow keeps working in its new run.
        changed = await apply_workload(client, "idp", workload("third"), request_id="port-run-3")
        assert changed.generation == 3
        await handle.execute_update(
            WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=3, timeout_seconds=30)
        )
    log = commits(repo)
    # Continue-as-new repeats no work: one commit per generation at most, none for passes.
    assert log[-1] == "apply Workload can/hello generation 3"
    assert len(log) == len(set(log)) <= 3
