"""WorkloadWorkflow against a real Temporal dev server, a real worker and a real git repository."""

import asyncio

import pytest
import yaml
from support.stack import (
    commits,
    git,
    platform_for,
    read,
    running_worker,
)
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError, WorkflowUpdateStage

from idp.models import Workload
from starter.operations import apply_workload, outcome, start_apply_workload
from workflows import search_attributes as sa
from workflows.messages import ApplyRequest, SignalRequest, WaitReadyRequest, WorkloadStatus
from workflows.state import ConditionStatus, Phase
from workflows.workload import WorkloadWorkflow

SA_PATH = "dev/demo/{name}/serviceaccount.yaml"


def workload(system: str, **spec: object) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": "hello", "system": system},
            "spec": {"owner": "team-demo", "destination": "dev", "namespace": "demo", **spec},
        }
    )


async def wait_ready(handle: WorkflowHandle, generation: int) -> WorkloadStatus:
    status = await handle.execute_update(
        WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=generation, timeout_seconds=30)
    )
    assert status.phase == Phase.READY, (status.conditions, status.events)
    return status


async def status_of(handle: WorkflowHandle) -> WorkloadStatus:
    return await handle.query(WorkloadWorkflow.status)


async def until(predicate, handle: WorkflowHandle, timeout: float = 30) -> WorkloadStatus:
    """Poll `status` until predicate(status) holds; the workflow has no event we could await."""
    async with asyncio.timeout(timeout):
        while True:
            status = await status_of(handle)
            if predicate(status):
                return status
            await asyncio.sleep(0.1)


@pytest.fixture
def system(queue: str) -> str:
    """Workflow ids are global on the session's server, so every test gets its own system."""
    return queue


async def test_apply_reaches_ready_and_writes_the_service_account(
    client, repo, queue, system, tmp_path
):
    async with running_worker(client, platform_for(repo), queue, tmp_path / "cache"):
        w = workload(system)
        result = await apply_workload(client, queue, w)
        assert result.generation == 1
        handle = client.get_workflow_handle(w.workflow_id)
        status = await wait_ready(handle, 1)

    manifest = yaml.safe_load(read(repo, SA_PATH.format(name="hello")))
    assert manifest["kind"] == "ServiceAccount"
    assert manifest["metadata"]["namespace"] == "demo"
    assert manifest["metadata"]["labels"]["idp.dev/workload"] == "hello"
    log = commits(repo)
    assert log == [f"apply Workload {system}/hello generation 1"]
    body = git("log", "-1", "--format=%B", "main", cwd=repo)
    assert f"Workflow: workload/{system}/hello" in body
    condition = next(c for c in status.conditions if c.type == "Manifests")
    assert condition.status == ConditionStatus.TRUE
    assert status.outputs["Manifests"]["directory"] == "dev/demo/hello"
    # The search attributes operators query by, as the server holds them for this execution.
    attributes = (await handle.describe()).typed_search_attributes
    assert attributes.get(sa.PHASE) == "Ready"
    assert attributes.get(sa.SYSTEM) == system
    assert attributes.get(sa.DESTINATION) == "dev"
    assert attributes.get(sa.OWNER) == "team-demo"


async def test_an_apply_that_waits_answers_ready_in_one_update(
    client, repo, queue, system, tmp_path
):
    async with running_worker(client, platform_for(repo), queue, tmp_path / "cache"):
        w = workload(system)
        # Handed back once the workflow took the spec, as the onboarding bench asks for it.
        handle = await start_apply_workload(
            client, queue, w, wait_seconds=60, stage=WorkflowUpdateStage.ACCEPTED
        )
        result = await outcome(handle)
    # The start took this spec as generation 1, so the apply itself changed nothing.
    assert (result.generation, result.changed) == (1, False)
    assert result.status is not None
    assert (result.status.phase, result.status.observed_generation) == (Phase.READY, 1)
    assert read(repo, SA_PATH.format(name="hello")) is not None
    history = await client.get_workflow_handle(w.workflow_id).fetch_history()
    updates = [
        e
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    ]
    assert len(updates) == 1


async def test_reconcile_passes_without_change_make_no_commit(
    client, repo, queue, system, tmp_path
):
    async with running_worker(client, platform_for(repo), queue, tmp_path / "cache"):
        w = workload(system)
        await apply_workload(client, queue, w)
        handle = client.get_workflow_handle(w.workflow_id)
        await wait_ready(handle, 1)
        for _ in range(5):
            before = await _activity_count(handle)
            await handle.signal(WorkloadWorkflow.reconcile)
            await _await_activity_count(handle, before + 1)
        assert commits(repo) == [f"apply Workload {system}/hello generation 1"]


async def test_a_spec_change_bumps_the_generation_and_commits_once(
    client, repo, queue, system, tmp_path
):
    async with running_worker(client, platform_for(repo), queue, tmp_path / "cache"):
        w = workload(system)
        await apply_workload(client, queue, w)
        handle = client.get_workflow_handle(w.workflow_id)
        await wait_ready(handle, 1)
        changed = workload(system, serviceAccount="hello-sa")
        result = await apply_workload(client, queue, changed)
        assert (result.generation, result.changed) == (2, True)
        again = await apply_workload(client, queue, changed)
        assert (again.generation, again.changed) == (2, False)
        await wait_ready(handle, 2)
    manifest = yaml.safe_load(read(repo, SA_PATH.format(name="hello")))
    assert manifest["metadata"]["name"] == "hello-sa"
    assert len(commits(repo)) == 2


async def test_disallowed_change_is_rejected_before_history(client, repo, queue, system, tmp_path):
    async with running_worker(client, platform_for(repo), queue, tmp_path / "cache"):
        w = workload(system)
        await apply_workload(client, queue, w)
        handle = client.get_workflow_handle(w.workflow_id)
        await wait_ready(handle, 1)
        events_before = await _event_types(handle)

        moved = workload(system, namespace="elsewhere")
        with pytest.raises(WorkflowUpdateFailedError) as rejected:
            await handle.execute_update(WorkloadWorkflow.apply, ApplyRequest(workload=moved))
        assert "spec.namespace cannot change on a live workload" in str(rejected.value.cause)

        # Raw JSON, as `temporal workflow update execute --name apply` would send it.
        bad = {"workload": {**moved.model_dump(), "spec": {"owner": "x", "bogus": 1}}}
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update("apply", bad)

        events_after = await _event_types(handle)
        assert (
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
            not in events_after[len(events_before) :]
        )
        assert (await status_of(handle)).generation == 1


async def test_drift_in_the_repository_is_restored_once(client, repo, queue, system, tmp_path):
    async with running_worker(client, platform_for(repo), queue, tmp_path / "cache"):
        w = workload(system)
        await apply_workload(client, queue, w)
        handle = client.get_workflow_handle(w.workflow_id)
        await wait_ready(handle, 1)
        original = read(repo, SA_PATH.format(name="hello"))

        clone = tmp_path / "someone"
        git("clone", "--quiet", str(repo), str(clone))
        (clone / SA_PATH.format(name="hello")).write_text("kind: ServiceAccount\n# edited\n")
        git("commit", "--quiet", "-am", "hand edit", cwd=clone)
        git("push", "--quiet", "origin", "main", cwd=clone)

        await handle.signal(WorkloadWorkflow.reconcile)
        status = await until(
            lambda s: any(c.reason == "DriftRepaired" for c in s.conditions), handle
        )
        assert read(repo, SA_PATH.format(name="hello")) == original
        assert commits(repo)[-1] == f"apply Workload {system}/hello generation 1"
        assert len(commits(repo)) == 3
        assert any("changed outside the reconciler" in e.message for e in status.events)

        # Deleted by hand: restored too, once.
        git("pull", "--quiet", cwd=clone)
        git("rm", "--quiet", SA_PATH.format(name="hello"), cwd=clone)
        git("commit", "--quiet", "-m", "hand delete", cwd=clone)
        git("push", "--quiet", "origin", "main", cwd=clone)
        await handle.signal(WorkloadWorkflow.reconcile)
        await until(lambda s: len(s.events) >= 3, handle)
        assert read(repo, SA_PATH.format(name="hello")) == original
        assert len(commits(repo)) == 5


async def test_an_unreachable_state_store_degrades_and_recovers(
    client, repo, queue, system, tmp_path
):
    hidden = repo.with_name("moved.git")
    async with running_worker(client, platform_for(repo), queue, tmp_path / "cache"):
        repo.rename(hidden)
        w = workload(system)
        await apply_workload(client, queue, w)
        handle = client.get_workflow_handle(w.workflow_id)
        status = await until(lambda s: s.phase == Phase.DEGRADED, handle)
        condition = next(c for c in status.conditions if c.type == "Manifests")
        assert condition.status == ConditionStatus.FALSE
        assert str(repo) in condition.message
        description = await handle.describe()
        assert description.status is not None and description.status.name == "RUNNING"

        # A missing repository is for a person to fix: waiting is answered at once...
        blocked = await handle.execute_update(
            WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=1, timeout_seconds=30)
        )
        assert blocked.phase == Phase.DEGRADED
        assert [c.reason for c in blocked.conditions if c.permanent] == ["StateStoreUnreachable"]

        # ...and once fixed, a reconcile request brings it back without waiting for backoff.
        hidden.rename(repo)
        await handle.execute_update(WorkloadWorkflow.request_reconcile)
        await wait_ready(handle, 1)


async def test_pause_holds_changes_until_resume(client, repo, queue, system, tmp_path):
    async with running_worker(client, platform_for(repo), queue, tmp_path / "cache"):
        w = workload(system)
        await apply_workload(client, queue, w)
        handle = client.get_workflow_handle(w.workflow_id)
        await wait_ready(handle, 1)
        await handle.signal(WorkloadWorkflow.pause)
        await until(lambda s: s.phase == Phase.PAUSED, handle)
        await apply_workload(client, queue, workload(system, serviceAccount="paused-sa"))
        await handle.signal(WorkloadWorkflow.reconcile)
        status = await status_of(handle)
        assert status.observed_generation == 1 and len(commits(repo)) == 1

        await handle.signal(WorkloadWorkflow.resume)
        await wait_ready(handle, 2)
        assert "paused-sa" in read(repo, SA_PATH.format(name="hello"))


async def test_request_ids_are_applied_once(client, repo, queue, system, tmp_path):
    async with running_worker(client, platform_for(repo), queue, tmp_path / "cache"):
        w = workload(system)
        await apply_workload(client, queue, w, request_id="run-1")
        handle = client.get_workflow_handle(w.workflow_id)
        await wait_ready(handle, 1)
        first = await apply_workload(client, queue, workload(system, serviceAccount="a"), "run-2")
        replayed = await apply_workload(
            client, queue, workload(system, serviceAccount="b"), "run-2"
        )
        assert first.generation == 2 and (replayed.generation, replayed.changed) == (2, False)
        await handle.signal(WorkloadWorkflow.pause, SignalRequest(request_id="run-3"))
        await handle.signal(WorkloadWorkflow.resume, SignalRequest(request_id="run-4"))
        # A re-delivered pause must not pause again.
        await handle.signal(WorkloadWorkflow.pause, SignalRequest(request_id="run-3"))
        status = await wait_ready(handle, 2)
        assert not status.paused


async def test_delete_removes_the_files_and_completes(client, repo, queue, system, tmp_path):
    async with running_worker(client, platform_for(repo), queue, tmp_path / "cache"):
        w = workload(system)
        await apply_workload(client, queue, w)
        handle = client.get_workflow_handle_for(WorkloadWorkflow.run, w.workflow_id)
        await wait_ready(handle, 1)
        await handle.signal(WorkloadWorkflow.delete)
        result = await asyncio.wait_for(handle.result(), 30)
    assert result.phase == Phase.DELETED
    assert read(repo, SA_PATH.format(name="hello")) is None
    assert commits(repo)[-1] == f"delete Workload {system}/hello generation 1"


async def test_a_workload_that_never_got_anywhere_is_still_deletable(
    client, repo, queue, system, tmp_path
):
    """Its destination is not in the platform file, so every pass is refused and nothing is
    recorded. The delete still looks for what such a pass may have left; that teardown is
    refused too, which the condition says, and the workload is deleted all the same."""
    async with running_worker(client, platform_for(repo), queue, tmp_path / "cache"):
        w = workload(system, destination="nowhere")
        await apply_workload(client, queue, w)
        handle = client.get_workflow_handle_for(WorkloadWorkflow.run, w.workflow_id)
        await until(lambda s: s.phase == Phase.DEGRADED, handle)
        await handle.signal(WorkloadWorkflow.delete)
        result = await asyncio.wait_for(handle.result(), 30)
    assert result.phase == Phase.DELETED
    (manifests,) = [c for c in result.conditions if c.type == "Manifests"]
    assert manifests.reason == "Deleted"
    assert manifests.message.startswith(
        "nothing recorded, and the teardown of what its failed pass may have left was refused: "
    ), manifests.message
    assert "nowhere" in manifests.message


async def _event_types(handle: WorkflowHandle) -> list[int]:
    history = await handle.fetch_history()
    return [event.event_type for event in history.events]


async def _activity_count(handle: WorkflowHandle) -> int:
    types = await _event_types(handle)
    return types.count(EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED)


async def _await_activity_count(handle: WorkflowHandle, count: int) -> None:
    async with asyncio.timeout(30):
        while await _activity_count(handle) < count:
            await asyncio.sleep(0.1)
