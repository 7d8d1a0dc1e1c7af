"""WorkloadWorkflow: one long-running entity workflow per workload.

Handlers only record intent in the state; the main loop does all the work: a reconcile pass
walks the workload's capabilities (workflows/engine.py), then the loop sleeps until a message
arrives, the next drift check, or a capability's next deadline. An external failure never fails
the workflow: the capability's condition goes False, the phase Degraded, and the next pass
retries after a capped backoff. Nothing here knows a capability by name.
"""

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue, SearchAttributeUpdate
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.platform import RuntimeSettings
    from activities.port import PortActivities, PublishInput
    from idp.models import disallowed_changes
    from workflows import metrics
    from workflows import search_attributes as sa
    from workflows.engine import DELETED, Engine
    from workflows.messages import (
        ApplyRequest,
        RotateRequest,
        SignalRequest,
        WaitReadyRequest,
        WorkloadApplyResult,
        WorkloadBooks,
        WorkloadInput,
        WorkloadStatus,
    )
    from workflows.portview import port_view
    from workflows.requests import (
        NO_INPUT,
        REQUEST_MODELS,
        M,
        Operation,
        UnreadableInput,
        read_input,
        refusal,
    )
    from workflows.state import ConditionStatus, Phase, WorkloadState, blocking
    from workflows.steps import (
        COMPACT_PASSES,
        FLEET_OBSERVED,
        STEP_RETRY,
        StepFailed,
        continue_as_new_if_suggested,
        details,
        failure,
        patched,
        read_settings,
        reject,
        wait_for_work,
    )

PORT = "Port"
WORKLOAD = "Workload"
# Events about messages the workflow could not act on.
SIGNAL = "Signal"


@workflow.defn
class WorkloadWorkflow:
    @workflow.init
    def __init__(self, input: WorkloadInput) -> None:
        if input.state is not None:
            self.state = input.state
        else:
            self.state = WorkloadState(workload=input.workload)
            self.state.seen(input.request_id)
        self._settings = RuntimeSettings()
        self._engine = Engine(self.state)
        self._publishing: asyncio.Task[None] | None = None
        self._reconciling = False

    # ---- messages: they only record intent; the loop acts on it -------------------------------

    # Inputs are taken raw and read by requests.read_input: a bad one is answered with the
    # field path, not with the SDK's "Failed decoding arguments" or a silently dropped signal.

    @workflow.update
    async def apply(self, request: RawValue) -> WorkloadApplyResult:
        apply = read_input(request, ApplyRequest, "apply")
        changed = not (self.state.seen(apply.request_id) or apply.workload == self.state.workload)
        if changed:
            self.state.workload = apply.workload
            self.state.generation += 1
        generation = self.state.generation
        status = None
        if apply.wait_seconds is not None:
            status = await self._settled(generation, apply.wait_seconds, "apply's wait deadline")
        return WorkloadApplyResult(generation=generation, changed=changed, status=status)

    @apply.validator
    def _validate_apply(self, request: RawValue) -> None:
        apply = self._read_or_reject(request, ApplyRequest, "apply")
        if self.state.handled(apply.request_id):
            return
        new = apply.workload
        workflow_id = workflow.info().workflow_id
        if new.workflow_id != workflow_id:
            reject(f"this workflow manages {workflow_id!r}; the spec names {new.workflow_id!r}")
        if self.state.deleting:
            reject(f"{workflow_id} is being deleted; apply it again once deletion has finished")
        for problem in disallowed_changes(self.state.workload, new):
            reject(problem)

    @workflow.update
    async def wait_ready(self, request: RawValue) -> WorkloadStatus:
        wait = read_input(request, WaitReadyRequest, "wait_ready")
        return await self._settled(wait.generation, wait.timeout_seconds, "wait_ready deadline")

    @wait_ready.validator
    def _validate_wait_ready(self, request: RawValue) -> None:
        self._read_or_reject(request, WaitReadyRequest, "wait_ready")

    async def _settled(self, generation: int, timeout_seconds: int, summary: str) -> WorkloadStatus:
        """The status once `generation` is Ready, or cannot get there without a person (a
        `permanent` condition, paused, deleted), or after `timeout_seconds`."""

        def settled() -> bool:
            state = self.state
            observed = state.observed_generation >= generation
            # A pass asked for or under way may clear what blocked the last one.
            blocked = not (state.reconcile_requested or self._reconciling) and blocking(
                state.conditions
            )
            # Paused and deleted workloads will not get there, nor one that a person must fix
            # first; tell the caller now.
            return (
                (observed and state.phase == Phase.READY)
                or (observed and state.phase == Phase.DEGRADED and blocked)
                or (state.paused and state.phase == Phase.PAUSED)
                or state.phase == Phase.DELETED
            )

        try:
            await workflow.wait_condition(settled, timeout=timeout_seconds, timeout_summary=summary)
        except TimeoutError:
            pass
        return self.status()

    # Each request is an update, so every caller is refused with the same sentence (`refusal`)
    # before anything reaches history, and a signal of the same name, for callers that do not
    # wait for an answer: it records the refusal as an event instead.

    @workflow.update(name="reconcile")
    def request_reconcile(self, request: RawValue = NO_INPUT) -> None:
        self._request("reconcile", request)

    @request_reconcile.validator
    def _validate_reconcile(self, request: RawValue = NO_INPUT) -> None:
        self._validate_request("reconcile", request)

    @workflow.update(name="pause")
    def request_pause(self, request: RawValue = NO_INPUT) -> None:
        self._request("pause", request)

    @request_pause.validator
    def _validate_pause(self, request: RawValue = NO_INPUT) -> None:
        self._validate_request("pause", request)

    @workflow.update(name="resume")
    def request_resume(self, request: RawValue = NO_INPUT) -> None:
        self._request("resume", request)

    @request_resume.validator
    def _validate_resume(self, request: RawValue = NO_INPUT) -> None:
        self._validate_request("resume", request)

    @workflow.update(name="rotate_credentials")
    def request_rotate_credentials(self, request: RawValue = NO_INPUT) -> None:
        self._request("rotate_credentials", request)

    @request_rotate_credentials.validator
    def _validate_rotate_credentials(self, request: RawValue = NO_INPUT) -> None:
        self._validate_request("rotate_credentials", request)

    @workflow.update(name="delete")
    def request_delete(self, request: RawValue = NO_INPUT) -> None:
        self._request("delete", request)

    @request_delete.validator
    def _validate_delete(self, request: RawValue = NO_INPUT) -> None:
        self._validate_request("delete", request)

    @workflow.signal
    def reconcile(self, request: RawValue = NO_INPUT) -> None:
        self._signal("reconcile", request)

    @workflow.signal
    def pause(self, request: RawValue = NO_INPUT) -> None:
        self._signal("pause", request)

    @workflow.signal
    def resume(self, request: RawValue = NO_INPUT) -> None:
        self._signal("resume", request)

    @workflow.signal
    def rotate_credentials(self, request: RawValue = NO_INPUT) -> None:
        self._signal("rotate_credentials", request)

    @workflow.signal
    def delete(self, request: RawValue = NO_INPUT) -> None:
        self._signal("delete", request)

    def _read_or_reject(self, raw: RawValue, model: type[M], operation: str) -> M:
        try:
            return read_input(raw, model, operation)
        except UnreadableInput as error:
            reject(str(error))

    def _validate_request(self, operation: Operation, raw: RawValue) -> None:
        request = self._read_or_reject(raw, REQUEST_MODELS[operation], operation)
        if self.state.handled(request.request_id):
            return  # a re-delivery of a request already acted on
        problem = refusal(operation, self.state)
        if problem is not None:
            reject(problem)

    def _signal(self, operation: Operation, raw: RawValue) -> None:
        try:
            request = read_input(raw, REQUEST_MODELS[operation], operation)
        except UnreadableInput as error:
            self.state.add_event(SIGNAL, f"ignored: {error}", workflow.now())
            return
        if self.state.seen(request.request_id):
            return
        problem = refusal(operation, self.state)
        if problem is not None:
            self.state.add_event(SIGNAL, f"ignored {operation}: {problem}", workflow.now())
            return
        self._intend(operation, request)

    def _request(self, operation: Operation, raw: RawValue) -> None:
        request = read_input(raw, REQUEST_MODELS[operation], operation)
        if not self.state.seen(request.request_id):
            self._intend(operation, request)

    def _intend(self, operation: Operation, request: SignalRequest) -> None:
        state = self.state
        if operation == "reconcile":
            state.reconcile_requested = True
        elif operation == "pause":
            state.paused = True
        elif operation == "resume":
            state.paused = False
        elif operation == "delete":
            state.deleting = True
        else:
            # Kept for the capability that acts on it (see Capability.requests).
            revoke_old = request.revoke_old if isinstance(request, RotateRequest) else "after-grace"
            state.requests[operation] = {
                "reason": request.reason or "requested",
                "revokeOld": revoke_old,
            }
            state.reconcile_requested = True

    @workflow.query
    def status(self) -> WorkloadStatus:
        state = self.state
        return WorkloadStatus(
            name=state.workload.metadata.name,
            system=state.workload.metadata.system,
            workload=state.workload,
            phase=state.phase,
            paused=state.paused,
            generation=state.generation,
            observed_generation=state.observed_generation,
            conditions=state.conditions,
            outputs=state.outputs,
            events=state.events,
            next_check_at=state.next_check_at,
            requests=sorted(state.requests),
            watched=bool(workflow.info().typed_search_attributes.get(sa.FLEET)),
        )

    @workflow.query
    def books(self) -> WorkloadBooks:
        state = self.state
        return WorkloadBooks(
            workload=state.workload,
            generation=state.generation,
            phase=state.phase,
            paused=state.paused,
            deleting=state.deleting,
            outputs=state.outputs,
            memory=state.memory,
            requests=state.requests,
        )

    # ---- the loop --------------------------------------------------------------------------

    @workflow.run
    async def run(self, input: WorkloadInput) -> WorkloadStatus:
        await self._read_settings()
        fresh = True  # the settings were read in this workflow task
        if self._provisions_first() and patched(COMPACT_PASSES):
            # The first pass's phase goes in the same upsert as what every workload shows.
            self.state.phase = Phase.PROVISIONING
        self._sync_search_attributes()
        while True:
            if self.state.deleting:
                if await self._teardown():
                    self._set_phase(Phase.DELETED)
                    self._publish()
                    if self._publishing:
                        await self._publishing
                    return self.status()
            elif self.state.paused:
                self._set_phase(Phase.PAUSED)
            else:
                self._reconciling = True
                await self._reconcile(fresh)
                self._reconciling = False
            fresh = False
            self._publish()
            continue_as_new_if_suggested(
                WorkloadInput(workload=self.state.workload, state=self.state),
                now=self._engine.stale,
            )
            await self._sleep()

    async def _read_settings(self) -> None:
        self._settings = await read_settings()

    def _has_work(self) -> bool:
        """Something the loop has not acted on yet (a failed teardown waits for its backoff)."""
        state = self.state
        if state.deleting:
            return state.phase != Phase.DELETING
        if state.paused != (state.phase == Phase.PAUSED):
            return True
        return not state.paused and (
            state.reconcile_requested or state.generation > state.observed_generation
        )

    async def _sleep(self) -> None:
        await wait_for_work(
            self.state,
            self._settings.reconcile,
            self._has_work,
            idle=self.state.paused and not self.state.deleting,
            deadline=self._engine.deadline(self._settings),
            watched=self._watched(),
        )

    def _watched(self) -> bool:
        """Whether the fleet observer checks this workload for drift, so that the loop sleeps
        with no drift timer (docs/fleet.md); keeps IdpFleet to what the observer must find,
        and clears it when the observer must leave the workload alone."""
        entries = self._fleet_entries()
        change = self._fleet_change(entries)
        if change is not None:
            workflow.upsert_search_attributes([change])
        return entries is not None and patched(FLEET_OBSERVED)

    def _fleet_entries(self) -> list[str] | None:
        settings, state = self._settings, self.state
        if (
            settings.reconcile.fleet_observer
            and settings.reconcile.search_attributes
            and state.phase == Phase.READY
            and not (state.failures or state.paused or state.deleting)
        ):
            return self._engine.fleet_entries(settings)
        return None

    def _fleet_change(self, entries: list[str] | None) -> SearchAttributeUpdate[Any] | None:
        """The IdpFleet upsert that `entries` call for, if any."""
        current = workflow.info().typed_search_attributes.get(sa.FLEET)
        if entries is None:
            return sa.FLEET.value_unset() if current else None
        if not patched(FLEET_OBSERVED) or entries == current:
            return None
        return sa.FLEET.value_set(entries)

    def _provisions_first(self) -> bool:
        """Whether the loop's first pass applies a generation not applied yet."""
        state = self.state
        return (
            not state.deleting and not state.paused and state.observed_generation < state.generation
        )

    async def _reconcile(self, fresh: bool) -> None:
        """One pass; `fresh` when the run read the settings in this workflow task."""
        generation = self.state.generation
        if self.state.observed_generation < generation:
            self._set_phase(Phase.PROVISIONING)
        self.state.reconcile_requested = False
        if not (fresh and patched(COMPACT_PASSES)):
            await self._read_settings()
        ok = await self._engine.reconcile(self._settings)
        self.state.observed_generation = generation
        self.state.failures = 0 if ok else self.state.failures + 1
        compact = patched(COMPACT_PASSES)
        # With IdpFleet in the same upsert, the loop's sleep finds nothing left to upsert.
        self._set_phase(self.state.settled_phase(), fleet=compact)
        if not compact:
            self._sync_search_attributes()
        metrics.reconcile_pass("Workload")

    async def _teardown(self) -> bool:
        """Undo the capabilities in reverse order; False when one failed and must be retried."""
        self._set_phase(Phase.DELETING)
        await self._read_settings()
        try:
            await self._engine.teardown(self._settings)
        except StepFailed:
            self.state.failures += 1
            return False
        # What `describe` shows of a deleted workload: everything deleted, nothing scheduled.
        for condition in self.state.conditions:
            if condition.reason != DELETED:
                self._engine.deleted(condition.type, "nothing to remove")
        self.state.next_check_at = None
        self.state.add_event(WORKLOAD, "deleted", workflow.now())
        return True

    # ---- Port --------------------------------------------------------------------------------

    def _publish(self) -> None:
        """Show the workload in Port, only when what Port shows would change. In the background:
        the loop must not wait on a portal, and Port being down costs nothing but the entity's
        freshness (the next pass tries again)."""
        if not self._settings.port or (self._publishing and not self._publishing.done()):
            return
        status = self.status()
        shown = port_view(status)
        if shown != self.state.published:
            self._publishing = asyncio.create_task(self._publish_now(status, shown))

    async def _publish_now(self, status: WorkloadStatus, shown: str) -> None:
        try:
            await workflow.execute_activity_method(
                PortActivities.publish_workload,
                PublishInput(status=status),
                start_to_close_timeout=timedelta(minutes=1),
                retry_policy=STEP_RETRY,
                summary="publish to Port",
            )
        except ActivityError as error:
            _, message = failure(error)
            self.state.add_event(PORT, f"could not publish to Port: {message}", workflow.now())
            return
        self.state.published = shown

    def _set_phase(self, phase: Phase, *, fleet: bool = False) -> None:
        """With `fleet`, sync the search attributes, IdpFleet included, even if the phase
        stays."""
        changed = phase != self.state.phase
        self.state.phase = phase
        if changed or fleet:
            self._sync_search_attributes(fleet=fleet)
        workflow.set_current_details(self._details())

    def _sync_search_attributes(self, *, fleet: bool = False) -> None:
        if not self._settings.reconcile.search_attributes:
            return
        workload = self.state.workload
        desired: list[SearchAttributeUpdate[Any]] = [
            sa.KIND.value_set("Workload"),
            sa.SYSTEM.value_set(workload.metadata.system),
            sa.PHASE.value_set(self.state.phase.value),
            sa.DESTINATION.value_set(workload.spec.destination),
            sa.OWNER.value_set(workload.spec.owner),
            *self._engine.attributes(),
        ]
        if fleet and (change := self._fleet_change(self._fleet_entries())) is not None:
            desired.append(change)
        sa.upsert_changed(desired)

    def _details(self) -> str:
        headline = f"**{self.state.phase.value}** · generation {self.state.generation}"
        if self.state.phase not in (Phase.READY, Phase.DELETED):
            # The headline names what holds the workload back, as the lines below show it.
            holding = [c for c in self.state.conditions if c.status != ConditionStatus.TRUE]
            headline += "".join(f" · {c.type}: {c.reason}" for c in holding[:1])
        return details(headline, self.state.conditions)
