"""Plan before apply: what applying resources would change, without changing anything.

For each workload, the capabilities are walked as the engine's next pass would walk them
(workflows/engine.py): in dependency waves, only those the platform offers and the new spec
wants, releasing those it no longer wants. Each one's observe and plan run on the worker, which
has the access they need, as the activity `<Name>.preview` started as a standalone activity: no
workflow schedules it, so no workflow history is written, and its code has no apply. A
capability whose plan depends on the outputs of one it requires is planned with the outputs
that one expects once applied, or shown as waiting for it when only its apply can tell.

Used by `idpctl diff` and the Port bridge's diff action, which print `Diff.lines()`.
"""

import asyncio
import difflib
import uuid
from abc import ABC, abstractmethod
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import yaml
from pydantic import Field
from temporalio import exceptions
from temporalio.client import ActivityFailureError, Client, WorkflowQueryFailedError
from temporalio.common import RetryPolicy
from temporalio.service import RPCError, RPCStatusCode

from activities.capabilities import activity_name
from activities.heartbeat import HEARTBEAT_TIMEOUT
from activities.platform import RuntimeSettings
from idp import ids
from idp.capability import Capability, Change, Context, Preview, installed, waves
from idp.models import API_VERSION, ApiAggregator, Model, Workload
from starter import operations
from workflows.messages import WorkloadBooks
from workflows.state import Phase

T = TypeVar("T")

# A person waits at a terminal: previews only read, so a short bound and few retries.
PREVIEW_TIMEOUT = timedelta(minutes=1)
PREVIEW_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    maximum_interval=timedelta(seconds=2),
    maximum_attempts=3,
)
# No worker polling the task queue would otherwise leave the command waiting for ever.
PICKUP_TIMEOUT = timedelta(seconds=30)
# Workloads previewed at once: 50 stay fast without flooding the worker's activity slots.
CONCURRENT_WORKLOADS = 8


class PreviewError(Exception):
    """No preview could be computed at all (the server or the worker cannot run it)."""


class CapabilityDiff(Model):
    name: str
    changes: list[Change] = []
    details: list[str] = Field([], description="What it explains beneath its changes.")
    refused: str | None = Field(None, description="The sentence its next pass would stop at.")
    waiting_for: list[str] = Field(
        [], description="Required capabilities whose apply decides this one's plan."
    )
    release: bool = Field(False, description="Torn down: its section was removed.")
    missing: bool = Field(
        False, description="It made something, but the worker's platform offers it no more."
    )
    error: str | None = Field(None, description="Why its preview could not be computed.")

    @property
    def changed(self) -> bool:
        return bool(self.changes or self.waiting_for) or self.release or self.refused is not None


class ResourceDiff(Model, ABC):
    """What applying one resource would do to its spec (its workflow's generation)."""

    workflow_id: str
    exists: bool
    generation: int
    next_generation: int
    spec: list[str] = Field(description="The unified diff of the spec's YAML, live → applied.")

    @property
    def changed(self) -> bool:
        return bool(self.spec)

    @abstractmethod
    def title(self) -> str:
        """How the header names it."""

    def lines(self) -> list[str]:
        if not self.exists:
            header = f"{self.title()} (new: generation {self.generation} → {self.next_generation})"
        elif self.next_generation == self.generation:
            header = f"{self.title()}: unchanged (generation {self.generation})"
        else:
            header = f"{self.title()}: generation {self.generation} → {self.next_generation}"
        return [header, *(f"  {line}" for line in self.spec)]


class WorkloadDiff(ResourceDiff):
    capabilities: list[CapabilityDiff] = []
    paused: bool = Field(False, description="Apply records the spec; nothing changes until resume.")
    deleting: bool = Field(False, description="Being deleted: apply is refused until it is gone.")

    @property
    def changed(self) -> bool:
        return super().changed or self.deleting or any(c.changed for c in self.capabilities)

    def title(self) -> str:
        return f"workload {ids.workload_reference(self.workflow_id)}"

    def lines(self) -> list[str]:
        lines = super().lines()
        if self.paused:
            lines.append("  paused: apply records the spec; nothing changes until resume")
        if self.deleting:
            lines.append("  being deleted: apply is refused until deletion has finished")
        # Transitively, as the engine skips whatever builds on a skipped one (in walk order).
        stopped: set[str] = set()
        for capability in self.capabilities:
            lines += _capability_lines(capability, stopped)
            if capability.refused or capability.error or stopped & set(capability.waiting_for):
                stopped.add(capability.name)
        return lines


class AggregatorDiff(ResourceDiff):
    def title(self) -> str:
        return f"apiaggregator {ids.aggregator_hostname(self.workflow_id)}"


class Diff(Model):
    workloads: list[WorkloadDiff] = []
    aggregators: list[AggregatorDiff] = []

    @property
    def changed(self) -> bool:
        return any(r.changed for r in [*self.aggregators, *self.workloads])

    @property
    def problems(self) -> list[str]:
        """One sentence per capability whose preview failed: the diff is incomplete."""
        return [
            f"could not preview {c.name} of {ids.workload_reference(w.workflow_id)}: {c.error}"
            for w in self.workloads
            for c in w.capabilities
            if c.error
        ]

    def lines(self) -> list[str]:
        """What `idpctl diff` prints and the Port run log shows: aggregators first, as apply
        applies them."""
        return [line for r in [*self.aggregators, *self.workloads] for line in r.lines()]


def _capability_lines(capability: CapabilityDiff, stopped: set[str]) -> list[str]:
    name = capability.name
    if capability.error:
        return [f"  {name}: could not preview: {capability.error}"]
    if capability.missing:
        return [f"  {name}: no longer offered by the worker's platform (what it made stays)"]
    if capability.release:
        return [f"  {name}: released (its teardown runs)"]
    if capability.refused:
        return [f"  {name}: would be refused: {capability.refused}"]
    if capability.waiting_for:
        waiting = " and ".join(capability.waiting_for)
        them = "them" if len(capability.waiting_for) > 1 else "it"
        if stopped & set(capability.waiting_for):
            return [f"  {name}: skipped while {waiting} cannot apply (its plan depends on {them})"]
        verb = "apply" if len(capability.waiting_for) > 1 else "applies"
        return [f"  {name}: after {waiting} {verb} (its plan depends on {them})"]
    changes = [f"{c.action} {c.subject} ({c.why})" for c in capability.changes] or ["in sync"]
    return [f"  {name}: {change}" for change in changes] + [
        f"    {line}" for line in capability.details
    ]


def document(resource: Workload | ApiAggregator) -> str:
    """The resource as a person writes it, defaults left out, so a diff shows what they
    changed."""
    body = resource.model_dump(mode="json", exclude_defaults=True)
    return yaml.safe_dump(
        {"apiVersion": API_VERSION, "kind": resource.kind, **body}, sort_keys=False
    )


def spec_diff(
    live: Workload | ApiAggregator | None, new: Workload | ApiAggregator, generation: int
) -> list[str]:
    """The unified diff from the live resource (None: nothing yet) to `new`; [] when equal."""
    if live == new:
        return []
    return list(
        difflib.unified_diff(
            document(live).splitlines() if live else [],
            document(new).splitlines(),
            fromfile=f"live (generation {generation})" if live else "none",
            tofile=f"applied (generation {generation + 1})",
            lineterm="",
        )
    )


async def diff(
    client: Client, task_queue: str, workloads: list[Workload], aggregators: list[ApiAggregator]
) -> Diff:
    """What applying `workloads` and `aggregators` (already validated as apply validates them)
    would change; PreviewError when the server or the worker cannot tell."""
    previewer = _Previewer(client, task_queue, await runtime_settings(client, task_queue))
    bound = asyncio.Semaphore(CONCURRENT_WORKLOADS)

    async def bounded(workload: Workload) -> WorkloadDiff:
        async with bound:
            return await previewer.workload(workload)

    try:
        # A task group: the first PreviewError cancels the previews still running.
        async with asyncio.TaskGroup() as group:
            planned = [group.create_task(bounded(w)) for w in workloads]
            routed = [group.create_task(_aggregator(client, a)) for a in aggregators]
    except* PreviewError as errors:
        raise errors.exceptions[0] from None
    return Diff(workloads=[t.result() for t in planned], aggregators=[t.result() for t in routed])


async def runtime_settings(client: Client, task_queue: str) -> RuntimeSettings:
    """What the worker's platform offers, as its workflows read it before a pass."""
    try:
        return await _execute(
            client,
            task_queue,
            "runtime_settings",
            None,
            RuntimeSettings,
            f"preview/runtime-settings/{uuid.uuid4().hex}",
            "read platform settings for idpctl diff",
        )
    except ActivityFailureError as error:
        raise PreviewError(
            f"could not read the worker's platform settings: {_failure(error)}"
        ) from None


async def _execute(
    client: Client,
    task_queue: str,
    activity: str,
    arg: Any,
    result_type: type[T],
    activity_id: str,
    summary: str,
) -> T:
    """Run `activity` on the worker as a standalone activity. PreviewError when the server
    cannot run it or no worker takes it; ActivityFailureError when it failed."""
    try:
        return await client.execute_activity(
            activity,
            args=[] if arg is None else [arg],
            id=activity_id,
            task_queue=task_queue,
            result_type=result_type,
            start_to_close_timeout=PREVIEW_TIMEOUT,
            schedule_to_start_timeout=PICKUP_TIMEOUT,
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=PREVIEW_RETRY,
            summary=summary,
        )
    except RPCError as error:
        if error.status == RPCStatusCode.UNIMPLEMENTED:
            raise PreviewError(
                "idpctl diff needs a Temporal server that runs standalone activities (verified "
                "with server 1.32, where a self-hosted server's dynamic config "
                "activity.enableStandalone must be on, and Temporal Cloud); this one answered: "
                f"{error.message}"
            ) from None
        raise PreviewError(
            f"the Temporal server refused to run {activity}: {error.message}"
        ) from None
    except ActivityFailureError as error:
        cause = error.cause
        if (
            isinstance(cause, exceptions.TimeoutError)
            and cause.type == exceptions.TimeoutType.SCHEDULE_TO_START
        ):
            raise PreviewError(
                f"no worker on task queue {task_queue} took {activity} within "
                f"{PICKUP_TIMEOUT.total_seconds():g}s; start one, or pass the task queue it "
                "polls with --task-queue"
            ) from None
        raise


class _Previewer:
    """Plans workloads against one worker's settings and one clock reading."""

    def __init__(self, client: Client, task_queue: str, settings: RuntimeSettings) -> None:
        self.client = client
        self.task_queue = task_queue
        self.offered = set(settings.capabilities)
        # The client's clock stands in for the workflow's: credentials' refresh deadlines
        # are judged against it.
        self.now = datetime.now(UTC)

    async def workload(self, workload: Workload) -> WorkloadDiff:
        books = await self._books(workload)
        exists = books is not None
        if books is None:
            books = WorkloadBooks(workload=workload, generation=0, phase=Phase.PENDING)
        live = books.workload if exists else None
        generation = books.generation
        next_generation = generation if live == workload else generation + 1
        found = WorkloadDiff(
            workflow_id=workload.workflow_id,
            exists=exists,
            generation=generation,
            next_generation=next_generation,
            spec=spec_diff(live, workload, generation),
            paused=books.paused,
            deleting=books.deleting,
        )
        if books.paused or books.deleting:
            return found  # no pass would run: nothing to plan
        capabilities = await self._walk(workload, next_generation, books)
        return found.model_copy(update={"capabilities": capabilities})

    async def _books(self, workload: Workload) -> WorkloadBooks | None:
        """The live workload's books; None when applying would start a new one."""
        try:
            books = await operations.workload_books(self.client, workload.workflow_id)
        except operations.NotFound:
            return None
        except (RPCError, WorkflowQueryFailedError) as error:
            raise PreviewError(f"could not read {workload.workflow_id}: {error.message}") from None
        return None if books.phase == Phase.DELETED else books

    async def _walk(
        self, workload: Workload, generation: int, books: WorkloadBooks
    ) -> list[CapabilityDiff]:
        """The engine's pass (Engine.reconcile), each apply replaced by a preview."""
        found: dict[str, CapabilityDiff] = {}
        outputs = dict(books.outputs)
        pending = []
        for capability in installed():
            name = capability.name
            ctx = self._context(capability, workload, generation, books)
            if capability.wanted(ctx):
                if name in self.offered:
                    pending.append(capability)
                elif ctx.outputs is not None:
                    # What it made stays as it is; a pass does nothing about it either.
                    found[name] = CapabilityDiff(name=name, missing=True)
            elif name in self.offered and capability.holds(ctx):
                found[name] = CapabilityDiff(name=name, release=True)
                outputs.pop(name, None)  # torn down before the pass: what dependents see
        # Those whose outputs only their apply can tell: what builds on them waits.
        unknown: set[str] = set()
        for wave in waves(pending):
            seen = books.model_copy(update={"outputs": dict(outputs)})
            results = await asyncio.gather(
                *(self._capability(c, workload, generation, seen, unknown) for c in wave)
            )
            for capability, (result, expected) in zip(wave, results, strict=True):
                found[capability.name] = result
                if expected is None:
                    unknown.add(capability.name)
                else:
                    outputs[capability.name] = expected
        return [found[c.name] for c in installed() if c.name in found]

    async def _capability(
        self,
        capability: Capability[Any, Any],
        workload: Workload,
        generation: int,
        books: WorkloadBooks,
        unknown: set[str],
    ) -> tuple[CapabilityDiff, dict[str, Any] | None]:
        """Its diff, and the outputs it expects once applied (None: only the apply can tell)."""
        name = capability.name
        waiting = [r for r in capability.requires if r in unknown]
        if waiting:
            return CapabilityDiff(name=name, waiting_for=waiting), None
        ctx = self._context(capability, workload, generation, books)
        try:
            preview = await _execute(
                self.client,
                self.task_queue,
                activity_name(name, "preview"),
                ctx,
                Preview,
                f"preview/{ctx.workflow_id}/{name}/{uuid.uuid4().hex}",
                f"preview {capability.summary or name} for idpctl diff",
            )
        except ActivityFailureError as error:
            return CapabilityDiff(name=name, error=_failure(error)), None
        result = CapabilityDiff(
            name=name, changes=preview.changes, details=preview.details, refused=preview.refused
        )
        return result, preview.expected

    def _context(
        self,
        capability: Capability[Any, Any],
        workload: Workload,
        generation: int,
        books: WorkloadBooks,
    ) -> Context:
        return Context.of(capability, workload, workload.workflow_id, generation, self.now, books)


def _failure(error: ActivityFailureError) -> str:
    cause = error.cause
    if isinstance(cause, exceptions.ApplicationError):
        return cause.message
    if isinstance(cause, exceptions.TimeoutError):
        return f"it timed out ({cause.type.name if cause.type else 'timeout'})"
    return str(cause)


async def _aggregator(client: Client, aggregator: ApiAggregator) -> AggregatorDiff:
    try:
        status = await operations.aggregator_status(client, aggregator.spec.hostname)
    except operations.NotFound:
        status = None
    except (RPCError, WorkflowQueryFailedError) as error:
        raise PreviewError(f"could not read {aggregator.workflow_id}: {error.message}") from None
    exists = status is not None and status.phase != Phase.DELETED
    live = status.aggregator if status is not None and exists else None
    generation = status.generation if status is not None and exists else 0
    return AggregatorDiff(
        workflow_id=aggregator.workflow_id,
        exists=exists,
        generation=generation,
        next_generation=generation if live == aggregator else generation + 1,
        spec=spec_diff(live, aggregator, generation),
    )
