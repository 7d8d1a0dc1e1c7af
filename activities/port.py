"""Activities that report a Port action run back to Port, for PortRunWorkflow.

`wait_for_workload` watches the workload's `status` query until the request the run made has
settled (Temporal is the external system here: the activity reads another workflow). The others
talk to Port through idp/port.py and are idempotent: a log line is the one exception, and a
retried log line repeats a progress message, never a terminal status (`finish_port_run` reads
the run first and sends nothing to a finished run).

Entities (workflows/portview.py makes them from the status) are upserted only when what Port
shows would change: the activity reads each entity and compares the properties and relations we
own. Reading Port rather than remembering what we sent keeps no state in any workflow and
repairs an entity someone edited in Port; it costs one GET per entity and report.
"""

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import ConfigDict
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.errors import as_activity_errors
from idp import ids, links
from idp.models import Model
from idp.port import PortClient, PortUnavailable, RunStatus, entity_differs
from workflows.messages import WorkloadStatus
from workflows.portview import port_entities
from workflows.state import ConditionStatus, Phase

# First look soon (most requests settle in a second or two), then back off to spare queries.
_POLL_FIRST = 0.1
_POLL_MAX = 2.0


class Target(Model):
    """What the run asked for, and what the workload looked like just before, so the activity
    can tell when that request has been acted on."""

    # Runs recorded by the first version also kept the credentials version they started from.
    model_config = ConfigDict(extra="ignore")

    kind: Literal["generation", "paused", "resumed", "reconciled", "rotated", "deleted"]
    generation: int = 0
    baseline_next_check_at: datetime | None = None


class WaitInput(Model):
    workflow_id: str
    target: Target
    since: datetime
    give_up_after: timedelta = timedelta(minutes=30)


class Settled(Model):
    outcome: RunStatus
    label: str
    message: str
    summary: str
    status: WorkloadStatus | None = None
    progress: list[str] = []


class LogInput(Model):
    run_id: str
    message: str


class EntitiesInput(Model):
    run_id: str | None
    status: WorkloadStatus
    workload_link: str
    system_link: str


class EntitiesResult(Model):
    upserted: list[str] = []
    unchanged: list[str] = []


class FinishInput(Model):
    run_id: str
    status: RunStatus
    message: str
    label: str
    summary: str
    link: str


class PublishInput(Model):
    status: WorkloadStatus


class PortActivities:
    def __init__(self, port: PortClient, temporal: Client, ui_url: str) -> None:
        self._port = port
        self._temporal = temporal
        self._ui_url = ui_url

    @activity.defn
    async def publish_workload(self, input: PublishInput) -> EntitiesResult:
        """The workload's entities as its own passes see it, outside any Port run (a workload
        applied with idpctl or the temporal CLI shows in Port too)."""
        workload = input.status.workload
        namespace = self._temporal.namespace
        return await self.sync_port_entities(
            EntitiesInput(
                run_id=None,
                status=input.status,
                workload_link=links.workflow_link(self._ui_url, namespace, workload.workflow_id),
                system_link=links.system_link(self._ui_url, namespace, workload.metadata.system),
            )
        )

    @activity.defn
    async def log_to_port_run(self, input: LogInput) -> None:
        with port_errors():
            await self._port.add_run_log(input.run_id, input.message)

    @activity.defn
    async def finish_port_run(self, input: FinishInput) -> bool:
        """False when the run had finished already (an earlier attempt got through)."""
        with port_errors():
            return await self._port.finish_run(
                input.run_id,
                input.status,
                input.message,
                status_label=input.label,
                summary=input.summary,
                link=input.link,
            )

    @activity.defn
    async def sync_port_entities(self, input: EntitiesInput) -> EntitiesResult:
        result = EntitiesResult()
        with port_errors():
            shown = port_entities(input.status, input.workload_link, input.system_link)
            for blueprint, entity in shown:
                current = await self._port.get_entity(blueprint, entity.identifier)
                name = f"{blueprint}/{entity.identifier}"
                if entity_differs(current, entity):
                    await self._port.upsert_entity(blueprint, entity, run_id=input.run_id)
                    result.upserted.append(name)
                else:
                    result.unchanged.append(name)
        return result

    @activity.defn
    async def wait_for_workload(self, input: WaitInput) -> Settled:
        handle = self._temporal.get_workflow_handle(input.workflow_id)
        deadline = input.since + input.give_up_after
        delay = _POLL_FIRST
        while True:
            try:
                status = await handle.query("status", result_type=WorkloadStatus)
            except RPCError as error:
                if error.status != RPCStatusCode.NOT_FOUND:
                    raise
                return vanished(input.workflow_id)
            if input.target.kind == "deleted" and status.phase == Phase.DELETED:
                description = await handle.describe()
                if description.status != WorkflowExecutionStatus.COMPLETED:
                    await _pause(delay)  # the last workflow task is still running
                    continue
            verdict = judge(input.target, status)
            if verdict is not None:
                return settled(*verdict, status, input.since)
            if datetime.now(UTC) >= deadline:
                return settled(
                    "FAILURE",
                    "Timed out",
                    f"did not settle within {input.give_up_after}; it is {status.phase.value}",
                    status,
                    input.since,
                )
            activity.heartbeat(status.phase.value)
            await _pause(delay)
            delay = min(delay * 2, _POLL_MAX)


async def _pause(seconds: float) -> None:
    """Sleep between polls, unless the worker is shutting down: the wait then fails at once and
    is retried on another worker, instead of holding the shutdown that lets steps finish."""
    shutdown = asyncio.ensure_future(activity.wait_for_worker_shutdown())
    try:
        await asyncio.wait_for(asyncio.shield(shutdown), seconds)
    except TimeoutError:
        return
    finally:
        shutdown.cancel()
    raise ApplicationError("the worker is shutting down; another worker goes on waiting")


def judge(target: Target, status: WorkloadStatus) -> tuple[RunStatus, str, str] | None:
    """(outcome, label, message) once the request has been acted on; None while it has not."""
    phase = status.phase
    passed = phase in (Phase.READY, Phase.DEGRADED)
    new_pass = status.next_check_at != target.baseline_next_check_at
    failing = "; ".join(
        f"{c.type}: {c.reason}: {c.message}"
        for c in status.conditions
        if c.status == ConditionStatus.FALSE
    )
    if target.kind == "deleted":
        if phase == Phase.DELETED:
            return "SUCCESS", "Deleted", "deleted; its workflow has ended"
        if phase == Phase.DELETING and new_pass and status.next_check_at is not None:
            return "FAILURE", "Deletion failing", f"deletion is failing and retried: {failing}"
        return None
    if phase == Phase.DELETED:
        return "FAILURE", "Deleted", "was deleted before the request was acted on"
    if phase == Phase.DELETING:
        return "FAILURE", "Deleting", "is being deleted"
    if target.kind == "paused":
        return ("SUCCESS", "Paused", "is paused") if phase == Phase.PAUSED else None
    if target.kind == "generation":
        if status.paused and phase == Phase.PAUSED:
            return (
                "SUCCESS",
                "Applied (paused)",
                f"took generation {target.generation}; it is paused, so that generation is "
                "reconciled when it resumes",
            )
        if status.observed_generation < target.generation or not passed:
            return None
    elif target.kind == "resumed":
        if status.paused or not passed:
            return None
    elif target.kind == "reconciled":
        if not (passed and new_pass):
            return None
    elif target.kind == "rotated":
        # The capability that rotates drops the request in the pass that acted on it.
        rotated = new_pass and "rotate_credentials" not in status.requests
        if not (passed and (rotated or (phase == Phase.DEGRADED and new_pass))):
            return None
    if phase == Phase.DEGRADED:
        return "FAILURE", "Degraded", f"is Degraded: {failing or 'see its conditions'}"
    if target.kind == "rotated":
        return "SUCCESS", "Rotated", "is Ready with its credentials rotated"
    return "SUCCESS", "Ready", f"is Ready at generation {status.observed_generation}"


def settled(
    outcome: RunStatus, label: str, message: str, status: WorkloadStatus, since: datetime
) -> Settled:
    name = f"{status.system}/{status.name}"
    return Settled(
        outcome=outcome,
        label=label,
        message=f"Workload {name} {message}.",
        summary=summary(status),
        status=status,
        progress=[f"{e.step}: {e.message}" for e in status.events if e.time >= since],
    )


def vanished(workflow_id: str) -> Settled:
    name = ids.workload_reference(workflow_id)
    return Settled(
        outcome="FAILURE",
        label="Not found",
        message=f"Workload {name} has no workflow any more.",
        summary=f"No workflow {workflow_id} was found.",
    )


def summary(status: WorkloadStatus) -> str:
    """Markdown for the run page: phase, generation, one line per condition."""
    lines = [f"**{status.phase.value}** · generation {status.observed_generation}"]
    for c in status.conditions:
        mark = "✅" if c.status == ConditionStatus.TRUE else "❌"
        lines.append(f"- {mark} {c.type}: {c.reason}: {c.message}")
    return "\n".join(lines)


@contextmanager
def port_errors() -> Iterator[None]:
    """Like activities.errors, plus Port's own wait: a 429's reset or a Retry-After becomes the
    activity's next retry delay, so Temporal, not a sleeping worker slot, does the waiting."""
    with as_activity_errors():
        try:
            yield
        except PortUnavailable as error:
            delay = timedelta(seconds=error.retry_after) if error.retry_after else None
            raise ApplicationError(str(error), type=error.reason, next_retry_delay=delay) from None
