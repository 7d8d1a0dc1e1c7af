"""What entry points do to workflows: shared by idpctl and the Port bridge so both behave alike."""

from dataclasses import dataclass
from datetime import datetime

from temporalio.client import Client, WithStartWorkflowOperation, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from idp.models import ApiAggregator, Workload, disallowed_changes
from workflows import search_attributes as sa
from workflows.aggregator import ApiAggregatorWorkflow
from workflows.messages import (
    ApplyRequest,
    ApplyResult,
    SignalRequest,
    WorkloadInput,
    WorkloadStatus,
)
from workflows.routetable import (
    AggregatorApplyRequest,
    AggregatorDeleteRequest,
    AggregatorInput,
    AggregatorStatus,
)
from workflows.workload import WorkloadWorkflow


class NotFound(Exception):
    """No running workflow for the resource."""


def workload_id(reference: str) -> str:
    """`system/name` (or a full workflow id) → the workload's workflow id."""
    reference = reference.removeprefix("workload/")
    system, _, name = reference.partition("/")
    if not system or not name or "/" in name:
        raise ValueError(f"expected SYSTEM/NAME, got {reference!r}")
    return f"workload/{system}/{name}"


async def apply_workload(
    client: Client, task_queue: str, workload: Workload, request_id: str | None = None
) -> ApplyResult:
    """Create the workflow if needed and apply the spec, in one update-with-start."""
    start = WithStartWorkflowOperation(
        WorkloadWorkflow.run,
        WorkloadInput(workload=workload, request_id=request_id),
        id=workload.workflow_id,
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=(
            f"Workload {workload.metadata.system}/{workload.metadata.name} → "
            f"{workload.spec.destination}/{workload.spec.namespace}"
        ),
        static_details=f"Owner: {workload.spec.owner}",
    )
    return await client.execute_update_with_start_workflow(
        WorkloadWorkflow.apply,
        ApplyRequest(workload=workload, request_id=request_id),
        start_workflow_operation=start,
    )


async def check_apply(client: Client, workloads: list[Workload]) -> tuple[list[str], set[str]]:
    """Problems the workflows' validators would raise, found before anything is applied so a
    multi-document apply is all or nothing; and the ids of the workloads that already exist."""
    problems, existing = [], set()
    for workload in workloads:
        try:
            current = await workload_status(client, workload.workflow_id)
        except NotFound:
            continue
        if current.phase == "Deleted":
            continue  # a finished workflow: applying starts a new one
        existing.add(workload.workflow_id)
        if current.phase == "Deleting":
            problems.append(f"{workload.workflow_id}: is being deleted; apply it again later")
        changes = disallowed_changes(current.workload, workload)
        problems += [f"{workload.workflow_id}: {problem}" for problem in changes]
    return problems, existing


async def workload_status(client: Client, workflow_id: str) -> WorkloadStatus:
    handle = client.get_workflow_handle(workflow_id)
    try:
        return await handle.query(WorkloadWorkflow.status)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise NotFound(f"no workload {workflow_id.removeprefix('workload/')} found") from None
        raise


async def send_signal(
    client: Client, workflow_id: str, name: str, request: SignalRequest | None = None
) -> None:
    handle = client.get_workflow_handle(workflow_id)
    try:
        description = await handle.describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise NotFound(f"no workload {workflow_id.removeprefix('workload/')} found") from None
        raise
    if description.status != WorkflowExecutionStatus.RUNNING:
        raise NotFound(
            f"workload {workflow_id.removeprefix('workload/')} is not running "
            f"({description.status.name.lower() if description.status else 'unknown'})"
        )
    await handle.signal(name, request or SignalRequest())


@dataclass(frozen=True)
class WorkloadRow:
    name: str
    system: str
    phase: str
    destination: str
    owner: str
    started: datetime


async def list_workloads(client: Client, system: str | None = None) -> list[WorkloadRow]:
    query = "WorkflowType = 'WorkloadWorkflow' AND ExecutionStatus = 'Running'"
    if system:
        query += f" AND IdpSystem = '{system}'"
    rows = []
    async for execution in client.list_workflows(query):
        attributes = execution.typed_search_attributes
        system_name, _, name = execution.id.removeprefix("workload/").partition("/")
        rows.append(
            WorkloadRow(
                name=name,
                system=attributes.get(sa.SYSTEM) or system_name,
                phase=attributes.get(sa.PHASE) or "Unknown",
                destination=attributes.get(sa.DESTINATION) or "",
                owner=attributes.get(sa.OWNER) or "",
                started=execution.start_time,
            )
        )
    return sorted(rows, key=lambda r: (r.system, r.name))


# ---- ApiAggregators ---------------------------------------------------------------------------


def aggregator_id(hostname: str) -> str:
    return f"api-aggregator/{hostname.removeprefix('api-aggregator/')}"


async def apply_aggregator(
    client: Client, task_queue: str, aggregator: ApiAggregator, request_id: str | None = None
) -> ApplyResult:
    """Create the hostname's workflow if needed (workloads may have created it already, holding
    their targets) and apply the spec, in one update-with-start."""
    spec = aggregator.spec
    start = WithStartWorkflowOperation(
        ApiAggregatorWorkflow.run,
        AggregatorInput(hostname=spec.hostname),
        id=aggregator.workflow_id,
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=f"API routes of {spec.hostname}",
    )
    return await client.execute_update_with_start_workflow(
        ApiAggregatorWorkflow.apply,
        AggregatorApplyRequest(aggregator=aggregator, request_id=request_id),
        start_workflow_operation=start,
    )


async def aggregator_status(client: Client, hostname: str) -> AggregatorStatus:
    handle = client.get_workflow_handle(aggregator_id(hostname))
    try:
        return await handle.query(ApiAggregatorWorkflow.status)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise NotFound(f"no ApiAggregator for hostname {hostname} found") from None
        raise


async def delete_aggregator(client: Client, hostname: str, request_id: str | None = None) -> None:
    handle = client.get_workflow_handle(aggregator_id(hostname))
    try:
        await handle.execute_update(
            ApiAggregatorWorkflow.delete, AggregatorDeleteRequest(request_id=request_id)
        )
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise NotFound(f"no ApiAggregator for hostname {hostname} found") from None
        raise


@dataclass(frozen=True)
class AggregatorRow:
    hostname: str
    name: str
    phase: str
    destination: str
    targets: int
    refused: int
    started: datetime


async def list_aggregators(client: Client) -> list[AggregatorRow]:
    """Running aggregators, from visibility and the memo each keeps (no query: listing must not
    depend on every workflow's worker being there to answer)."""
    query = "WorkflowType = 'ApiAggregatorWorkflow' AND ExecutionStatus = 'Running'"
    rows = []
    async for execution in client.list_workflows(query):
        attributes = execution.typed_search_attributes
        memo = await execution.memo()
        rows.append(
            AggregatorRow(
                hostname=execution.id.removeprefix("api-aggregator/"),
                name=memo.get("name") or "-",
                phase=attributes.get(sa.PHASE) or "Unknown",
                destination=attributes.get(sa.DESTINATION) or "",
                targets=memo.get("targets", 0),
                refused=memo.get("refused", 0),
                started=execution.start_time,
            )
        )
    return sorted(rows, key=lambda r: r.hostname)
