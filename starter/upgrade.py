"""`idpctl upgrade save|restart`: move running 0.1 WorkloadWorkflows onto 0.2.

0.2 cannot replay a run 0.1 started (docs/architecture.md, The one deliberate break), but it
reads the state 0.1 carried across continue-as-new (workflows/legacy.py). So the move is a
continue-as-new done from outside, in two steps around the worker swap:

1. `save FILE`, while 0.1 workers still run: each running WorkloadWorkflow's `status`, which a
   0.1 worker answers, written to FILE.
2. Stop the 0.1 workers and start 0.2 ones, then `restart FILE`: each saved run is terminated
   and a new run of the same workflow id is started from the state 0.1 last showed.

What `status` does not show starts afresh: the key-rotation schedule counts from the restart,
revocations of keys replaced less than a rotation grace ago are not scheduled again (those keys
stay valid until they expire), and Port runs re-delivered from before are applied again.
"""

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowQueryFailedError
from temporalio.service import RPCError

from idp.errors import IdpError
from workflows.legacy import FIRST_VERSION_OUTPUTS

WORKFLOW_TYPE = "WorkloadWorkflow"
QUERY = f"WorkflowType = '{WORKFLOW_TYPE}' AND ExecutionStatus = 'Running'"


class UpgradeError(IdpError):
    """The saved file cannot be used; the message names it and why."""


async def save(
    client: Client, path: Path, query: str = QUERY, timeout: timedelta = timedelta(seconds=30)
) -> int:
    """Write the status of every WorkloadWorkflow `query` selects to `path`; how many. Nothing
    is written when one cannot answer within `timeout` (its worker is down): the file must hold
    every one."""
    saved: dict[str, Any] = {}
    async for execution in client.list_workflows(query):
        handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
        try:
            status = await handle.query("status", result_type=dict, rpc_timeout=timeout)
        except (RPCError, WorkflowQueryFailedError) as error:
            raise UpgradeError(
                f"{execution.id} cannot answer its status ({error}); run `save` while a 0.1 "
                f"worker polls its task queue {execution.task_queue!r}"
            ) from None
        saved[execution.id] = {
            "runId": execution.run_id,
            "taskQueue": execution.task_queue,
            "status": status,
        }
    path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    return len(saved)


async def restart(client: Client, path: Path) -> list[str]:
    """Restart each saved run from its saved state; the workflow ids restarted."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        message = f"{path}: cannot be read as a file `idpctl upgrade save` wrote ({error})"
        raise UpgradeError(message) from None
    upgraded = [w for w, entry in saved.items() if _keyed_by_capability(entry)]
    if upgraded:
        raise UpgradeError(
            f"{path}: {', '.join(sorted(upgraded))} already ran on 0.2 when saved (their outputs "
            "are keyed by capability); restart only what `save` wrote while 0.1 workers ran"
        )
    restarted = []
    for workflow_id, entry in sorted(saved.items()):
        handle = client.get_workflow_handle(workflow_id, run_id=entry["runId"])
        if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
            await handle.terminate("idpctl upgrade: restarted from its state on 0.2")
        state = first_version_state(entry["status"])
        await client.start_workflow(
            WORKFLOW_TYPE,
            {"workload": state["workload"], "state": state},
            id=workflow_id,
            task_queue=entry["taskQueue"],
        )
        restarted.append(workflow_id)
    return restarted


def _keyed_by_capability(entry: dict[str, Any]) -> bool:
    """Whether a saved status came from 0.2, which keys outputs by capability: 0.1 showed every
    one of its output fields, set or null."""
    return not set(FIRST_VERSION_OUTPUTS) <= set(entry["status"]["outputs"])


def first_version_state(status: dict[str, Any]) -> dict[str, Any]:
    """The state a 0.1 run with this `status` would have carried across continue-as-new, in
    0.1's own shape, which 0.2 reads (workflows/legacy.py)."""
    return {
        "workload": status["workload"],
        "generation": status["generation"],
        "observedGeneration": status["observedGeneration"],
        "phase": status["phase"],
        "paused": status["paused"],
        "deleting": status["phase"] == "Deleting",
        # The new run's first pass checks everything anyway.
        "reconcileRequested": True,
        "outputs": status["outputs"],
        "failures": 0,
        "nextCheckAt": status.get("nextCheckAt"),
        "conditions": status["conditions"],
        "events": status["events"],
    }
