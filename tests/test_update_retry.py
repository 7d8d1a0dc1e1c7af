"""An apply that is not answered in time asks again, and the workflow applies the spec once; an
apply or a request turned away because the workflow's task has failed twice in a row asks again
until a task completes.

Real parts: the session's Temporal dev server and a worker in the test's event loop. The server
answers DEADLINE_EXCEEDED only under a load a test cannot make on demand; the client's own
deadline (each attempt's rpc_timeout) ends the call the same way, before any worker polls. A
failed workflow task is made with the server's own API: the test takes the task as a worker
would and reports it failed.
"""

import asyncio
import logging
from collections.abc import Awaitable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from support.stack import bare_repo, platform_for, running_worker, task_queue
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    PollWorkflowTaskQueueRequest,
    RespondWorkflowTaskFailedRequest,
)
from temporalio.client import Client, WorkflowHistory
from temporalio.service import RPCError

from idp.models import Workload
from starter.operations import UPDATE_ATTEMPTS, apply_workload, send_request
from workflows.messages import WorkloadInput
from workflows.workload import WorkloadWorkflow

ATTEMPT = timedelta(seconds=5)
T = TypeVar("T")


def workload(system: str) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": "slow", "system": system},
            "spec": {"owner": "team-demo", "destination": "dev", "namespace": "demo"},
        }
    )


async def answered_once_a_worker_runs(
    caplog: pytest.LogCaptureFixture,
    client: Client,
    queue: str,
    tmp_path: Path,
    sending: Awaitable[T],
    said: str,
) -> T:
    """Sends with no worker polling `queue`; once the sender has logged that it asks again
    (`said`), starts a worker and returns what the sender returns then."""
    task = asyncio.ensure_future(sending)
    try:
        async with asyncio.timeout(60):
            while f"{said} (2 of" not in caplog.text:
                if task.done():
                    task.result()  # raises whatever ended it
                    raise AssertionError("the update was answered with no worker running")
                await asyncio.sleep(0.05)
        platform = platform_for(bare_repo(tmp_path / "s.git"))
        async with running_worker(client, platform, queue, tmp_path):
            return await task
    finally:
        task.cancel()


async def fail_first_task_twice(client: Client, queue: str) -> None:
    """Takes the first workflow task on `queue` twice and reports each failed, as a worker does
    when workflow code raises: from the third attempt until one completes, the server takes no
    update."""
    service, namespace = client.workflow_service, client.namespace
    for _ in range(2):
        task = await service.poll_workflow_task_queue(
            PollWorkflowTaskQueueRequest(namespace=namespace, task_queue=TaskQueue(name=queue))
        )
        await service.respond_workflow_task_failed(
            RespondWorkflowTaskFailedRequest(
                namespace=namespace,
                task_token=task.task_token,
                cause=WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_WORKFLOW_WORKER_UNHANDLED_FAILURE,
            )
        )


def accepted_updates(history: WorkflowHistory) -> int:
    return sum(
        e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
        for e in history.events
    )


async def test_an_apply_not_answered_in_time_is_asked_again_and_applied_once(
    client: Client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="idp.operations")
    queue = task_queue()
    item = workload(queue)
    # No worker yet: the first attempt's update waits for a first workflow task nobody runs.
    applying = apply_workload(client, queue, item, rpc_timeout=ATTEMPT)
    result = await answered_once_a_worker_runs(
        caplog, client, queue, tmp_path, applying, "asking again"
    )
    assert result.generation == 1
    history = await client.get_workflow_handle(item.workflow_id).fetch_history()
    # The second attempt carried the first one's update id: one apply, answered to both.
    assert accepted_updates(history) == 1
    assert f"{item.workflow_id}: the Temporal server did not answer in time" in caplog.text


async def test_an_apply_never_answered_gives_up_with_the_servers_error(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="idp.operations")
    item = workload(task_queue())
    with pytest.raises(RPCError):
        await apply_workload(client, task_queue(), item, rpc_timeout=timedelta(seconds=0.5))
    said = f"{item.workflow_id}: the Temporal server did not answer in time"
    assert caplog.text.count(said) == UPDATE_ATTEMPTS - 1
    await client.get_workflow_handle(item.workflow_id).terminate(reason="test over")


@pytest.mark.parametrize("sent", ["apply", "reconcile"])
async def test_an_update_turned_away_while_the_workflows_task_fails_is_asked_again(
    client: Client, tmp_path: Path, caplog: pytest.LogCaptureFixture, sent: str
) -> None:
    """The apply and every request an entry point sends (`idpctl reconcile`, rotate, delete, the
    Port bridge's) ride out a failing task."""
    caplog.set_level(logging.WARNING, logger="idp.operations")
    queue = task_queue()
    item = workload(queue)
    await client.start_workflow(
        WorkloadWorkflow.run, WorkloadInput(workload=item), id=item.workflow_id, task_queue=queue
    )
    await fail_first_task_twice(client, queue)
    sending = (
        apply_workload(client, queue, item)
        if sent == "apply"
        else send_request(client, item.workflow_id, "reconcile")
    )
    await answered_once_a_worker_runs(
        caplog, client, queue, tmp_path, sending, "asking again in 1 s"
    )
    said = f"{item.workflow_id}: the workflow takes no update until its failing task completes"
    assert said in caplog.text
    history = await client.get_workflow_handle(item.workflow_id).fetch_history()
    assert accepted_updates(history) == 1
