"""Worker Versioning on the dev server: a workload started on build 1.0.0 stays pinned to it after
2.0.0 becomes current, and its next run, after continue-as-new, runs on 2.0.0.

Continue-as-new is forced early with a low server limit, as in tests/test_continue_as_new.py.
Both versions are in-process workers built by `worker.build_worker`, as `idp-worker
--worker-image ...:1.0.0` and `...:2.0.0` build them.
"""

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.cli import clean_env, run
from support.stack import (
    bare_repo,
    platform_for,
    running_worker,
    start_small_history_server,
    task_queue,
)
from temporalio.api.enums.v1 import ContinueAsNewVersioningBehavior, EventType, VersioningBehavior
from temporalio.api.workflowservice.v1 import SetWorkerDeploymentCurrentVersionRequest
from temporalio.client import Client, WorkflowExecutionDescription, WorkflowHandle
from temporalio.common import WorkerDeploymentVersion
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from idp.models import Workload
from starter.operations import apply_workload
from worker import WORKER_IMAGE_ENV, WorkerImageError, build_worker, deployment_version
from workflows.messages import WaitReadyRequest
from workflows.state import Phase
from workflows.workload import WorkloadWorkflow

DEPLOYMENT = "idp-reconciler"
AUTO_UPGRADE = ContinueAsNewVersioningBehavior.CONTINUE_AS_NEW_VERSIONING_BEHAVIOR_AUTO_UPGRADE
# Low enough that a few reconcile passes make the server suggest a new run.
SUGGEST_AFTER_EVENTS = 60


@pytest.fixture(scope="module")
async def small_history_env() -> AsyncIterator[WorkflowEnvironment]:
    async with await start_small_history_server(SUGGEST_AFTER_EVENTS) as env:
        yield env


def workload(system: str) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": "hello", "system": system},
            "spec": {"owner": "team-demo", "destination": "dev", "namespace": "demo"},
        }
    )


async def make_current(client: Client, build_id: str) -> None:
    """`temporal worker deployment set-current-version`, once the server has seen the version
    poll: until then it knows neither the version (NOT_FOUND) nor, for a while, all the task
    queues it polls (FAILED_PRECONDITION: the current version's queues would go unversioned)."""
    request = SetWorkerDeploymentCurrentVersionRequest(
        namespace=client.namespace,
        deployment_name=DEPLOYMENT,
        build_id=build_id,
        identity="test_worker_versioning",
    )
    async with asyncio.timeout(15):
        while True:
            try:
                await client.workflow_service.set_worker_deployment_current_version(request)
                return
            except RPCError as error:
                if error.status not in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
                    raise
            await asyncio.sleep(0.1)


def pinned_to(description: WorkflowExecutionDescription) -> str:
    """The build a run is pinned to; fails unless it is pinned."""
    info = description.raw_description.workflow_execution_info.versioning_info
    assert info.behavior == VersioningBehavior.VERSIONING_BEHAVIOR_PINNED, info
    assert info.deployment_version.deployment_name == DEPLOYMENT, info
    return info.deployment_version.build_id


async def continue_as_new(handle: WorkflowHandle) -> str:
    """Reconcile until the server's suggestion to continue as new is taken; the id of the run
    that ended."""
    first = (await handle.describe()).run_id
    # Each pass adds events; keep asking until the server suggests a new run.
    async with asyncio.timeout(20):
        while (await handle.describe()).run_id == first:
            await handle.signal(WorkloadWorkflow.reconcile)
            await asyncio.sleep(0.05)
    return first


async def test_a_running_workload_stays_on_its_build_and_moves_at_continue_as_new(
    small_history_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    client = small_history_env.client
    platform = platform_for(bare_repo(tmp_path / "state.git"))
    queue = task_queue()

    def version(build_id: str) -> Worker:
        return build_worker(
            client,
            platform,
            queue,
            tmp_path / build_id,
            version=WorkerDeploymentVersion(DEPLOYMENT, build_id),
        )

    async with version("1.0.0"):
        await make_current(client, "1.0.0")
        await apply_workload(client, queue, workload(queue))
        handle = client.get_workflow_handle(workload(queue).workflow_id)
        status = await handle.execute_update(
            WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=1, timeout_seconds=20)
        )
        assert status.phase == Phase.READY
        first = await handle.describe()
        # Still the first run, with room for passes before the server suggests a new one.
        assert first.raw_description.workflow_execution_info.first_run_id == first.run_id
        assert first.history_length < SUGGEST_AFTER_EVENTS / 2, first.history_length
        assert pinned_to(first) == "1.0.0"

        async with version("2.0.0"):
            await make_current(client, "2.0.0")
            switched = datetime.now(UTC)
            assert await continue_as_new(handle) == first.run_id

            # Every task of the old run ran on 1.0.0, the passes after the switch too.
            old = await client.get_workflow_handle(handle.id, run_id=first.run_id).fetch_history()
            tasks = [
                (e.event_time.ToDatetime(UTC), e.workflow_task_completed_event_attributes)
                for e in old.events
                if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
            ]
            assert any(at > switched for at, _ in tasks), "no pass ran after 2.0.0 became current"
            assert {task.deployment_version.build_id for _, task in tasks} == {"1.0.0"}

            # The new run started on the current version, 2.0.0 runs it with the state carried
            # over, and once its first task is done it is pinned there.
            status = await handle.execute_update(
                WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=1, timeout_seconds=20)
            )
            assert status.phase == Phase.READY
            new = await handle.describe()
            assert pinned_to(new) == "2.0.0"
            info = new.raw_description.workflow_execution_info.versioning_info
            assert info.continue_as_new_initial_versioning_behavior == AUTO_UPGRADE


async def test_an_unversioned_workload_continues_as_new_unversioned(
    small_history_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """No deployment, nothing to upgrade to: asking for the upgrade changes nothing."""
    client = small_history_env.client
    platform = platform_for(bare_repo(tmp_path / "state.git"))
    queue = task_queue()
    async with running_worker(client, platform, queue, tmp_path / "cache"):
        await apply_workload(client, queue, workload(queue))
        handle = client.get_workflow_handle(workload(queue).workflow_id)
        await continue_as_new(handle)
        status = await handle.execute_update(
            WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=1, timeout_seconds=20)
        )
        assert status.phase == Phase.READY
        info = (await handle.describe()).raw_description.workflow_execution_info
        assert not info.HasField("versioning_info"), info.versioning_info


@pytest.mark.parametrize(
    ("image", "deployment", "build_id"),
    [
        ("ghcr.io/acme/idp-reconciler:1.4.0", "idp-reconciler", "1.4.0"),
        ("idp-reconciler:1.4.0", "idp-reconciler", "1.4.0"),
        ("registry.local:5000/acme/idp-reconciler:1.4.0", "idp-reconciler", "1.4.0"),
        (
            "ghcr.io/acme/idp-reconciler@sha256:" + "ab" * 32,
            "idp-reconciler",
            "sha256:" + "ab" * 32,
        ),
        (
            "registry.local:5000/idp-reconciler@sha256:" + "0" * 64,
            "idp-reconciler",
            "sha256:" + "0" * 64,
        ),
        ("ghcr.io/acme/idp-reconciler:1.4.0@sha256:" + "ab" * 32, "idp-reconciler", "1.4.0"),
    ],
)
def test_the_image_names_the_deployment_and_the_build(
    image: str, deployment: str, build_id: str
) -> None:
    assert deployment_version(image) == WorkerDeploymentVersion(deployment, build_id)


@pytest.mark.parametrize(
    ("image", "why"),
    [
        ("ghcr.io/acme/idp-reconciler", "has no tag or digest"),
        ("registry.local:5000/idp-reconciler", "has no tag or digest"),
        ("ghcr.io/acme/idp-reconciler:", "has no tag or digest"),
        ("", "is not an image reference"),
        ("ghcr.io/acme/idp.reconciler:1.4.0", "cannot contain '.'"),
    ],
)
def test_an_image_that_names_no_version_is_refused(image: str, why: str) -> None:
    with pytest.raises(WorkerImageError, match=re.escape(why)):
        deployment_version(image)


async def test_the_worker_refuses_an_untagged_image_in_one_sentence(tmp_path: Path) -> None:
    result = await run(
        sys.executable, "-m", "worker",
        "--platform", str(tmp_path / "platform.yaml"),
        "--insecure-no-encryption",
        env=clean_env(**{WORKER_IMAGE_ENV: "ghcr.io/acme/idp-reconciler"}),
    )  # fmt: skip
    assert result.code == 2, result
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result
    refused = f"{WORKER_IMAGE_ENV} (--worker-image) 'ghcr.io/acme/idp-reconciler' has no tag"
    assert refused in errors[0], result
