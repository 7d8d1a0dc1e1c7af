"""Drift checks on the time-skipping test server: days of simulated time in seconds."""

from datetime import timedelta
from pathlib import Path

from support.stack import bare_repo, commits, platform_for, running_worker, start_time_skipping
from temporalio.api.enums.v1 import EventType

from idp.models import Workload
from starter.operations import apply_workload
from workflows.messages import WaitReadyRequest
from workflows.state import Phase
from workflows.workload import WorkloadWorkflow

WORKLOAD = Workload.model_validate(
    {
        "metadata": {"name": "hello", "system": "sim"},
        "spec": {"owner": "team-demo", "destination": "dev", "namespace": "demo"},
    }
)


async def test_a_simulated_day_of_drift_checks_makes_no_commit(tmp_path: Path) -> None:
    repo = bare_repo(tmp_path / "state.git")
    platform = platform_for(repo, timedelta(minutes=10), search_attributes=False)
    async with await start_time_skipping() as env:
        async with running_worker(env.client, platform, "idp", tmp_path / "cache"):
            await apply_workload(env.client, "idp", WORKLOAD)
            handle = env.client.get_workflow_handle(WORKLOAD.workflow_id)
            status = await handle.execute_update(
                WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=1, timeout_seconds=60)
            )
            assert status.phase == Phase.READY
            started = await env.get_current_time()

            await env.sleep(timedelta(days=1))

            status = await handle.query(WorkloadWorkflow.status)
            history = await handle.fetch_history()
    passes = sum(
        1
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
        and event.activity_task_completed_event_attributes
    )
    # One pass at apply, then one every 10 minutes: 144 in a day (the last may be in flight).
    assert 144 <= passes <= 145
    assert commits(repo) == ["apply Workload sim/hello generation 1"]
    assert status.phase == Phase.READY
    assert status.next_check_at is not None and status.next_check_at > started
