"""An apply that is not answered in time asks again, and the workflow applies the spec once.

Real parts: the session's Temporal dev server and a worker in the test's event loop. The server
answers DEADLINE_EXCEEDED only under a load a test cannot make on demand; the client's own
deadline (each attempt's rpc_timeout) ends the call the same way, before any worker polls.
"""

import asyncio
import logging
from datetime import timedelta
from pathlib import Path

import pytest
from support.stack import bare_repo, platform_for, running_worker, task_queue
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.service import RPCError

from idp.models import Workload
from starter.operations import APPLY_ATTEMPTS, apply_workload

ATTEMPT = timedelta(seconds=5)


def workload(system: str) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": "slow", "system": system},
            "spec": {"owner": "team-demo", "destination": "dev", "namespace": "demo"},
        }
    )


async def retried(caplog: pytest.LogCaptureFixture, applying: asyncio.Task[object]) -> None:
    while "asking again (2 of" not in caplog.text:
        if applying.done():
            applying.result()  # raises whatever ended it
            raise AssertionError("the apply was answered with no worker running")
        await asyncio.sleep(0.05)


async def test_an_apply_not_answered_in_time_is_asked_again_and_applied_once(
    client: Client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="idp.operations")
    queue = task_queue()
    item = workload(queue)
    # No worker yet: the first attempt's update waits for a first workflow task nobody runs.
    applying = asyncio.create_task(apply_workload(client, queue, item, rpc_timeout=ATTEMPT))
    try:
        async with asyncio.timeout(60):
            await retried(caplog, applying)
        platform = platform_for(bare_repo(tmp_path / "s.git"))
        async with running_worker(client, platform, queue, tmp_path):
            result = await applying
    finally:
        applying.cancel()
    assert result.generation == 1
    history = await client.get_workflow_handle(item.workflow_id).fetch_history()
    accepted = [
        e
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    ]
    # The second attempt carried the first one's update id: one apply, answered to both.
    assert len(accepted) == 1
    assert f"{item.workflow_id}: the Temporal server did not answer in time" in caplog.text


async def test_an_apply_never_answered_gives_up_with_the_servers_error(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="idp.operations")
    item = workload(task_queue())
    with pytest.raises(RPCError):
        await apply_workload(client, task_queue(), item, rpc_timeout=timedelta(seconds=0.5))
    said = f"{item.workflow_id}: the Temporal server did not answer in time"
    assert caplog.text.count(said) == APPLY_ATTEMPTS - 1
    await client.get_workflow_handle(item.workflow_id).terminate(reason="test over")
