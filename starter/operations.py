"""What entry points do to workflows: shared by idpctl and the Port bridge so both behave alike."""

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio.api.errordetails.v1 import (
    MultiOperationExecutionFailure,
    WorkflowNotReadyFailure,
)
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateHandle,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from idp import ids
from idp.manifests import shared_name
from idp.models import ApiAggregator, Workload, disallowed_changes
from workflows import search_attributes as sa
from workflows.aggregator import ApiAggregatorWorkflow
from workflows.messages import (
    ApplyRequest,
    ApplyResult,
    SignalRequest,
    WorkloadApplyResult,
    WorkloadBooks,
    WorkloadInput,
    WorkloadStatus,
)
from workflows.requests import Operation
from workflows.routetable import (
    AggregatorApplyRequest,
    AggregatorDeleteRequest,
    AggregatorInput,
    AggregatorStatus,
)
from workflows.workload import WorkloadWorkflow

T = TypeVar("T")
log = logging.getLogger("idp.operations")

# The capability whose outputs show that a workload wrote its manifests (the names it holds).
MANIFESTS = "Manifests"


class NotFound(Exception):
    """No running workflow for the resource."""


class Refused(Exception):
    """The workflow cannot act on the request; the message says why."""


def workload_id(reference: str) -> str:
    """`system/name` (or a full workflow id) → the workload's workflow id."""
    system, name = ids.parse_workload_id(reference)
    if not system or not name or "/" in name:
        raise ValueError(f"expected SYSTEM/NAME, got {ids.workload_reference(reference)!r}")
    return ids.workload_id(system, name)


# A loaded server answers an update DEADLINE_EXCEEDED when the workflow's task waits behind
# others too long (seen about halfway through applying 10,000, 100 at a time, on a 2-core
# machine), and a client's own deadline ends the call as CANCELLED. Either way the update may have
# been admitted, so each further attempt sends the same update id: the server answers it with
# that update's outcome instead of running it again.
# It turns an update away as not ready (FAILED_PRECONDITION, WorkflowNotReadyFailure) once the
# workflow's task has failed or timed out twice in a row, until an attempt of it completes (seen
# once on that bench, under the same load). Those are asked again after a pause, 1 s and
# doubling.
UPDATE_ATTEMPTS = 5
NOT_ANSWERED_IN_TIME = (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED)
NOT_READY_PAUSE = timedelta(seconds=1)


def _not_answered_in_time(error: WorkflowUpdateRPCTimeoutOrCancelledError) -> RPCError | None:
    """The server's error when an update's call ran out of time; None when the caller itself was
    cancelled (the SDK raises the same exception for both), which is never asked again."""
    cause = error.__cause__
    late = isinstance(cause, RPCError) and cause.status in NOT_ANSWERED_IN_TIME
    return cause if late else None


def _not_ready(error: RPCError) -> bool:
    """Whether the server turned an update away until the workflow's failing task completes an
    attempt: said directly to an update, inside the multi-operation failure to an
    update-with-start."""
    details = error.grpc_status.details
    if error.status != RPCStatusCode.FAILED_PRECONDITION or not details:
        return False
    if details[0].Is(WorkflowNotReadyFailure.DESCRIPTOR):
        return True
    outcome = MultiOperationExecutionFailure()
    return details[0].Unpack(outcome) and any(
        detail.Is(WorkflowNotReadyFailure.DESCRIPTOR)
        for status in outcome.statuses
        for detail in status.details
    )


async def answered(workflow_id: str, send: Callable[[str], Awaitable[T]]) -> T:
    """What `send(update_id)` returns, asked again (`_asked_again`) with the same update id, so
    that the server answers a repeat with the outcome of the update it admitted."""
    update_id = str(uuid.uuid4())
    return await _asked_again(workflow_id, lambda: send(update_id))


async def outcome(handle: WorkflowUpdateHandle[T]) -> T:
    """The answer of an update the server admitted, polled again (`_asked_again`): an apply that
    waits for its workload can outlast a poll's deadline on a loaded server."""
    return await _asked_again(handle.workflow_id, handle.result)


async def _asked_again(workflow_id: str, ask: Callable[[], Awaitable[T]]) -> T:
    """What `ask()` returns, asked again while the server does not answer in time or turns the
    update away as not ready; the last attempt's RPCError when none of UPDATE_ATTEMPTS was
    answered."""
    attempt = 1
    while True:
        try:
            return await ask()
        except WorkflowUpdateRPCTimeoutOrCancelledError as error:
            late = _not_answered_in_time(error)
            if late is None:
                raise
            failure, why, pause = late, "the Temporal server did not answer in time", 0.0
        except RPCError as error:
            if not _not_ready(error):
                raise
            why = "the workflow takes no update until its failing task completes"
            failure, pause = error, NOT_READY_PAUSE.total_seconds() * 2 ** (attempt - 1)
        if attempt == UPDATE_ATTEMPTS:
            raise failure from None
        attempt += 1
        log.warning(
            "%s: %s (%s); asking again%s (%d of %d)",
            workflow_id,
            why,
            failure.message,
            f" in {pause:.0f} s" if pause else "",
            attempt,
            UPDATE_ATTEMPTS,
        )
        await asyncio.sleep(pause)


async def _update_with_start(
    client: Client,
    workflow_id: str,
    update: Any,
    request: Any,
    start: Callable[[], WithStartWorkflowOperation[Any, Any]],
    rpc_timeout: timedelta | None,
    stage: WorkflowUpdateStage = WorkflowUpdateStage.COMPLETED,
) -> WorkflowUpdateHandle[Any]:
    """`update` with `request` on the workflow `start` makes, once it reached `stage`, asked again
    as `answered` says (the operation is made anew for each attempt: the SDK uses one only
    once)."""

    async def send(update_id: str) -> WorkflowUpdateHandle[Any]:
        operation = start()
        try:
            return await client.start_update_with_start_workflow(
                update,
                request,
                start_workflow_operation=operation,
                wait_for_stage=stage,
                id=update_id,
                rpc_timeout=rpc_timeout,
            )
        except Exception:
            # The SDK hands the start's outcome to the operation too; read, it is not logged
            # again as an exception nobody retrieved.
            with contextlib.suppress(Exception):
                await operation.workflow_handle()
            raise

    return await answered(workflow_id, send)


async def apply_workload(
    client: Client,
    task_queue: str,
    workload: Workload,
    request_id: str | None = None,
    *,
    rpc_timeout: timedelta | None = None,
) -> WorkloadApplyResult:
    """Create the workflow if needed and apply the spec, in one update-with-start;
    `rpc_timeout` bounds each attempt (default: the SDK's)."""
    handle = await start_apply_workload(
        client, task_queue, workload, request_id, rpc_timeout=rpc_timeout
    )
    return await outcome(handle)


async def start_apply_workload(
    client: Client,
    task_queue: str,
    workload: Workload,
    request_id: str | None = None,
    *,
    rpc_timeout: timedelta | None = None,
    wait_seconds: int | None = None,
    stage: WorkflowUpdateStage = WorkflowUpdateStage.COMPLETED,
) -> WorkflowUpdateHandle[WorkloadApplyResult]:
    """`apply_workload`'s update once it reached `stage`. With `wait_seconds` it answers once
    the generation settles (`wait_ready`'s rule) or that time has passed, with the status; asked
    at stage ACCEPTED, the handle comes back as soon as the workflow took the spec."""

    def start() -> WithStartWorkflowOperation[Any, Any]:
        return WithStartWorkflowOperation(
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

    request = ApplyRequest(workload=workload, request_id=request_id, wait_seconds=wait_seconds)
    return await _update_with_start(
        client, workload.workflow_id, WorkloadWorkflow.apply, request, start, rpc_timeout, stage
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
    problems += await names_held_elsewhere(client, workloads)
    return problems, existing


# How long the apply-time check waits for another workload to say what it holds.
HOLDER_QUERY_TIMEOUT = timedelta(seconds=3)


async def names_held_elsewhere(client: Client, workloads: list[Workload]) -> list[str]:
    """Workloads whose directory or ServiceAccount a running workload of another system has
    written on the same destination. The Manifests step refuses them anyway (the state store
    holds the record); this says so before anything starts. Visibility gives the ids, and only
    those with a matching name are asked for their spec. A ServiceAccount named after neither
    workload is left to the Manifests step: finding it would take a query per workload."""
    problems = []
    for destination in sorted({w.spec.destination for w in workloads}):
        applied = [w for w in workloads if w.spec.destination == destination]
        names = {n for w in applied for n in (w.metadata.name, w.service_account)}
        query = (
            "WorkflowType = 'WorkloadWorkflow' AND ExecutionStatus = 'Running' "
            f"AND IdpDestination = '{destination}'"
        )
        candidates = [
            execution.id
            async for execution in client.list_workflows(query)
            if ids.parse_workload_id(execution.id)[1] in names
        ]
        holders = await asyncio.gather(*(_written_spec(client, id) for id in candidates))
        for holder in filter(None, holders):
            for workload in applied:
                if workload.workflow_id == holder.workflow_id:
                    continue
                if refusal := shared_name(workload, holder):
                    problems.append(f"{workload.workflow_id}: {refusal}")
    return problems


async def _written_spec(client: Client, workflow_id: str) -> Workload | None:
    """The spec of a workload that has written its manifests (so holds their names); None when
    it has written nothing or cannot answer at once: an apply must not wait on another
    workload's worker, and the Manifests step refuses in any case."""
    try:
        status = await client.get_workflow_handle(workflow_id).query(
            WorkloadWorkflow.status, rpc_timeout=HOLDER_QUERY_TIMEOUT
        )
    except (RPCError, WorkflowQueryFailedError):
        return None
    return status.workload if MANIFESTS in status.outputs else None


async def workload_status(client: Client, workflow_id: str) -> WorkloadStatus:
    return await _query_workload(client, workflow_id, WorkloadWorkflow.status)


async def workload_books(client: Client, workflow_id: str) -> WorkloadBooks:
    """What the workload's next pass would plan from; a query, so nothing reaches history."""
    return await _query_workload(client, workflow_id, WorkloadWorkflow.books)


async def _query_workload(
    client: Client, workflow_id: str, query: Callable[[WorkloadWorkflow], T]
) -> T:
    try:
        return await client.get_workflow_handle(workflow_id).query(query)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise NotFound(f"no workload {ids.workload_reference(workflow_id)} found") from None
        raise


async def send_request(
    client: Client, workflow_id: str, operation: Operation, request: SignalRequest | None = None
) -> None:
    """Send a request as the workflow's update of that name: it is refused, with the reason,
    before anything is recorded when it cannot take effect (workflows/requests.py)."""
    name = ids.workload_reference(workflow_id)
    handle = client.get_workflow_handle(workflow_id)
    try:
        description = await handle.describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise NotFound(f"no workload {name} found") from None
        raise
    if description.status == WorkflowExecutionStatus.COMPLETED:
        when = description.close_time.isoformat() if description.close_time else "earlier"
        raise Refused(f"workload {name} was deleted at {when}; apply it to create it again")
    if description.status != WorkflowExecutionStatus.RUNNING:
        state = description.status.name.lower() if description.status else "unknown"
        raise Refused(f"workload {name} is not running ({state}); apply it to start it again")
    request = request or SignalRequest()
    try:
        await answered(
            workflow_id, lambda update_id: handle.execute_update(operation, request, id=update_id)
        )
    except WorkflowUpdateFailedError as error:
        raise Refused(cause(error)) from None


def cause(error: BaseException) -> str:
    """The innermost message of a failure: what the workflow or activity said."""
    while error.__cause__ is not None:
        error = error.__cause__
    return getattr(error, "message", None) or str(error)


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
        system_name, name = ids.parse_workload_id(execution.id)
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
    """A hostname (or an aggregator's workflow id, as idpctl accepts) → the workflow id."""
    return ids.aggregator_id(ids.aggregator_hostname(hostname))


async def apply_aggregator(
    client: Client, task_queue: str, aggregator: ApiAggregator, request_id: str | None = None
) -> ApplyResult:
    """Create the hostname's workflow if needed (workloads may have created it already, holding
    their targets) and apply the spec, in one update-with-start."""
    spec = aggregator.spec

    def start() -> WithStartWorkflowOperation[Any, Any]:
        return WithStartWorkflowOperation(
            ApiAggregatorWorkflow.run,
            AggregatorInput(hostname=spec.hostname),
            id=aggregator.workflow_id,
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary=f"API routes of {spec.hostname}",
        )

    request = AggregatorApplyRequest(aggregator=aggregator, request_id=request_id)
    handle = await _update_with_start(
        client, aggregator.workflow_id, ApiAggregatorWorkflow.apply, request, start, None
    )
    return await outcome(handle)


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
    request = AggregatorDeleteRequest(request_id=request_id)
    try:
        await answered(
            handle.id,
            lambda update_id: handle.execute_update(
                ApiAggregatorWorkflow.delete, request, id=update_id
            ),
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
                hostname=ids.aggregator_hostname(execution.id),
                name=memo.get("name") or "-",
                phase=attributes.get(sa.PHASE) or "Unknown",
                destination=attributes.get(sa.DESTINATION) or "",
                targets=memo.get("targets", 0),
                refused=memo.get("refused", 0),
                started=execution.start_time,
            )
        )
    return sorted(rows, key=lambda r: r.hostname)
