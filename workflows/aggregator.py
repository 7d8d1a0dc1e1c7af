"""ApiAggregatorWorkflow: one long-running entity workflow per API hostname.

It holds the route table of the hostname: workloads register their targets (update-with-start
from their API step, so the table exists before the ApiAggregator is applied), conflicting paths
are refused at registration with a message naming the workload that holds them, and the loop
renders the accepted targets as Gateway API objects into the aggregator's state-store directory.
Handlers only decide and record; the loop writes, then asks the workloads whose answer was "not
written yet" to look again, so a workload says its routes are in git only once they are.

Reads are queries, which add nothing to the history: `held` (what a workload's pass observes of
its own targets), `held_by` (the same for many workloads in one query: the fleet observer's
sweep asks each hostname once, whatever the number of its workloads), `would_register` (what
`idpctl diff` shows) and `status`.
"""

import asyncio
from collections.abc import Iterable
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributeUpdate
from temporalio.exceptions import ActivityError, FailureError

with workflow.unsafe.imports_passed_through():
    from activities.apiroutes import ApiRouteActivities, RoutesInput
    from activities.heartbeat import HEARTBEAT_TIMEOUT
    from activities.platform import RuntimeSettings
    from activities.statestore import ManifestsResult
    from idp import ids
    from idp.models import disallowed_aggregator_changes
    from idp.routes import (
        Held,
        RegisterTargets,
        Registration,
        TargetResult,
        TargetState,
        conflicts,
    )
    from workflows import metrics
    from workflows import search_attributes as sa
    from workflows.messages import ApplyResult
    from workflows.routetable import (
        AggregatorApplyRequest,
        AggregatorDeleteRequest,
        AggregatorInput,
        AggregatorState,
        AggregatorStatus,
        TableEntry,
    )
    from workflows.state import ConditionStatus, ManifestsOutput, Phase
    from workflows.steps import (
        PHASE_FROM_CONDITIONS,
        STEP_RETRY,
        STEP_TIMEOUT,
        continue_as_new_if_suggested,
        details,
        failure,
        read_settings,
        reject,
        wait_for_work,
    )

ROUTES = "Routes"
TARGETS = "Targets"
# Nudges wait until the holder's routes are written (see _send_nudges); runs recorded before
# told every holder after any write.
NUDGE_ONCE_WRITTEN = "nudge-once-written"


@workflow.defn
class ApiAggregatorWorkflow:
    @workflow.init
    def __init__(self, input: AggregatorInput) -> None:
        self.state = input.state or AggregatorState(hostname=input.hostname)
        self._settings = RuntimeSettings()
        self._memo: dict[str, object] = {}

    # ---- messages: they only decide and record; the loop writes ------------------------------

    @workflow.update
    def apply(self, request: AggregatorApplyRequest) -> ApplyResult:
        if self.state.seen(request.request_id) or request.aggregator == self.state.aggregator:
            return ApplyResult(generation=self.state.generation, changed=False)
        self.state.aggregator = request.aggregator
        # Targets that arrived before the spec were checked for conflicts only; now the
        # destination is known, a workload on another cluster cannot be routed here.
        self.state.entries = [self._checked_destination(e) for e in self.state.entries]
        # Their targets were held as pending: once written, they should say so without
        # waiting for their next drift check.
        self._nudge(self.state.holders())
        self._changed(f"applied ApiAggregator {request.aggregator.metadata.name}")
        return ApplyResult(generation=self.state.generation, changed=True)

    @apply.validator
    def _validate_apply(self, request: AggregatorApplyRequest) -> None:
        if self.state.handled(request.request_id):
            return
        new, current = request.aggregator, self.state.aggregator
        if new.spec.hostname != self.state.hostname:
            reject(
                f"this workflow manages hostname {self.state.hostname!r}; the spec names "
                f"{new.spec.hostname!r}"
            )
        if self.state.deleting:
            reject(f"{self.state.hostname} is being deleted; apply it again once it is gone")
        for problem in disallowed_aggregator_changes(current, new) if current else []:
            reject(problem)

    @workflow.update
    def register(self, request: RegisterTargets) -> Registration:
        """Take a workload's complete set of targets on this hostname (empty: unregister)."""
        holder = request.holder
        others = [e for e in self.state.entries if e.target.holder != holder]
        mine = self._decide(request)
        before = self._entries_of(holder)
        if _differs(mine, before):
            self._changed(_registration_event(holder, mine))
            generation = self.state.generation
            self.state.entries = others + [
                e.model_copy(update={"generation": generation}) for e in mine
            ]
            if _paths(before, TargetState.ACCEPTED) - _paths(mine, TargetState.ACCEPTED):
                # Paths were released: a workload refused for one of them may claim it now.
                self._nudge(e.target.holder for e in others if e.state != TargetState.ACCEPTED)
        answer = self._registration(holder)
        if self.state.aggregator is not None and answer.targets and not answer.written:
            # Answered at once rather than after the write: Temporal allows a workflow only a
            # few updates in flight, and a burst of workloads must not queue behind git. The
            # holder is told to look again once its routes are in the state store.
            self._nudge([holder])
        return answer

    @register.validator
    def _validate_register(self, request: RegisterTargets) -> None:
        if self.state.deleting and request.targets:
            reject(f"the ApiAggregator of {self.state.hostname} is being deleted")

    @workflow.update
    def delete(self, request: AggregatorDeleteRequest) -> None:
        if not self.state.seen(request.request_id):
            self.state.deleting = True

    @delete.validator
    def _validate_delete(self, request: AggregatorDeleteRequest) -> None:
        holders = sorted(
            {e.target.holder for e in self.state.entries if e.state == TargetState.ACCEPTED}
        )
        if holders and not self.state.deleting:
            reject(
                f"{self.state.hostname} still routes to {', '.join(holders)}; remove their "
                "spec.api entries for it first"
            )

    @workflow.signal
    def reconcile(self) -> None:
        self.state.reconcile_requested = True

    @workflow.query
    def held(self, holder: str) -> Held:
        """What this hostname holds for `holder`, and the answer `register` would give it: how
        a workload observes its routes without an update (which costs a workflow task and two
        history events here, however idle the workload)."""
        mine = self._entries_of(holder)
        return Held(
            registration=self._registration(holder),
            targets=[e.target for e in mine],
            destination=mine[0].destination if mine else None,
        )

    @workflow.query
    def held_by(self, holders: list[str] | None = None) -> dict[str, Held]:
        """What `held` answers for each of `holders` (workloads as `system/name` or by workflow
        id, keyed as given), or for every workload holding targets here when None: how the
        fleet observer reads, in one query for the whole fleet, what this hostname holds for
        each workload it watches (capabilities/api/actions.py). By `held` itself, so that the
        same table gives a workload the same answer either way."""
        named = self.state.holders() if holders is None else holders
        return {name: self.held(ids.workload_reference(name)) for name in named}

    @workflow.query
    def would_register(self, request: RegisterTargets) -> Registration:
        """The answer `register` would give `request`, by the same decisions, changing nothing
        (a query adds nothing to the history): how `idpctl diff` shows a workload's routes, a
        refused path with the workload that holds it. Refused as the update would be."""
        self._validate_register(request)
        mine = self._decide(request)
        if not _differs(mine, self._entries_of(request.holder)):
            return self._registration(request.holder)
        # As `register` records them: changed in the next generation, which is not written yet.
        generation = self.state.generation + 1
        return self._answer([e.model_copy(update={"generation": generation}) for e in mine])

    @workflow.query
    def status(self) -> AggregatorStatus:
        # The status is the state minus its internals (request ids, failures, nudges).
        shown = AggregatorStatus.model_fields
        return AggregatorStatus(**{field: getattr(self.state, field) for field in shown})

    # ---- the loop --------------------------------------------------------------------------

    @workflow.run
    async def run(self, input: AggregatorInput) -> AggregatorStatus:
        await self._read_settings()
        while True:
            if self.state.deleting:
                if await self._remove():
                    self._set_phase(Phase.DELETED)
                    return self.status()
            elif self.state.aggregator is not None:
                await self._write()
            elif not self.state.entries:
                # Started by a workload that has since unregistered, and never applied: there
                # is nothing to keep. A later registration starts a new run.
                await workflow.wait_condition(workflow.all_handlers_finished)
                if not self.state.entries and self.state.aggregator is None:
                    return self.status()
            else:
                self._set_phase(Phase.PENDING)
            continue_as_new_if_suggested(
                AggregatorInput(hostname=self.state.hostname, state=self.state)
            )
            await self._sleep()

    async def _read_settings(self) -> None:
        self._settings = await read_settings()

    def _has_work(self) -> bool:
        state = self.state
        if state.deleting:
            return state.phase != Phase.DELETING
        if state.aggregator is None:
            return not state.entries
        return state.reconcile_requested or state.generation > state.written_generation

    async def _sleep(self) -> None:
        await wait_for_work(
            self.state,
            self._settings.reconcile,
            self._has_work,
            idle=self.state.aggregator is None and not self.state.deleting,
        )

    async def _write(self) -> None:
        """Render the accepted targets and make the directory hold exactly them (a drift
        check when nothing changed: the store commits only differences)."""
        self.state.reconcile_requested = False
        await self._read_settings()
        generation = self.state.generation
        targets = self.state.accepted()
        result = await self._routes_step(
            ApiRouteActivities.write_api_routes,
            generation,
            f"write {len(targets)} route(s) for {self.state.hostname}",
        )
        if result is None:
            return
        previous = self.state.output
        self.state.output = ManifestsOutput(
            directory=result.directory,
            digest=result.digest,
            commit=result.commit or (previous.commit if previous else None),
        )
        self.state.written_generation = generation
        self.state.failures = 0
        if result.commit is None:
            message = f"{len(targets)} route(s) in sync in {result.directory}"
            self._condition(ConditionStatus.TRUE, "InSync", message)
        elif previous is not None and previous.digest == result.digest:
            message = f"restored files changed outside the reconciler in {result.directory}"
            metrics.step_changed(ROUTES, metrics.DRIFT_REPAIRED)
            self._event(message)
            self._condition(ConditionStatus.TRUE, "DriftRepaired", message)
        else:
            message = f"committed {len(targets)} route(s) at {result.commit[:12]}"
            self._event(message)
            self._condition(ConditionStatus.TRUE, "Applied", message)
        self._targets_condition()
        if workflow.patched(PHASE_FROM_CONDITIONS):
            self._set_phase(self.state.settled_phase())
        else:
            # Runs recorded before: an aggregator refusing targets still showed Ready.
            self._set_phase(Phase.READY)
        metrics.reconcile_pass("ApiAggregator")
        await self._send_nudges()

    async def _send_nudges(self) -> None:
        # Taken before the first await: registrations arriving meanwhile add to a fresh list.
        holders = self.state.nudge
        if workflow.patched(NUDGE_ONCE_WRITTEN):
            # One whose targets changed after this write began waits for the next write: told
            # now, it would read its routes as not written yet, and a read re-arms no nudge.
            holders = [h for h in holders if self._registration(h).written]
        self.state.nudge = [h for h in self.state.nudge if h not in holders]
        signals = (
            workflow.get_external_workflow_handle(
                ids.workload_id(*ids.parse_workload_id(holder))
            ).signal("reconcile")
            for holder in holders
        )
        for outcome in await asyncio.gather(*signals, return_exceptions=True):
            # A workload gone since it registered has nothing to be told.
            if isinstance(outcome, BaseException) and not isinstance(outcome, FailureError):
                raise outcome

    async def _remove(self) -> bool:
        self._set_phase(Phase.DELETING)
        if self.state.aggregator is None or self.state.output is None:
            return True
        result = await self._routes_step(
            ApiRouteActivities.remove_api_routes,
            self.state.generation,
            f"remove the routes of {self.state.hostname}",
        )
        if result is None:
            return False
        self.state.output = None
        self._condition(ConditionStatus.FALSE, "Deleted", f"removed {result.directory}")
        return True

    async def _routes_step(
        self, activity: Any, generation: int, summary: str
    ) -> ManifestsResult | None:
        """Run a state-store activity; None (with the condition saying why) when it failed."""
        try:
            return await workflow.execute_activity_method(
                activity,
                RoutesInput(
                    aggregator=self.state.aggregator,
                    targets=self.state.accepted(),
                    generation=generation,
                    workflow_id=workflow.info().workflow_id,
                ),
                start_to_close_timeout=STEP_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=STEP_RETRY,
                summary=summary,
            )
        except ActivityError as error:
            reason, message = failure(error)
            metrics.step_failed(ROUTES, reason)
            self._event(f"failed: {message}")
            self._condition(ConditionStatus.FALSE, reason, message)
            self.state.failures += 1
            self._set_phase(Phase.DEGRADED)
            return None

    # ---- bookkeeping -----------------------------------------------------------------------

    def _decide(self, request: RegisterTargets) -> list[TableEntry]:
        """The entries `request` would give its holder: each target accepted, or refused for
        a path another workload holds or for the destination it runs on. Decides only."""
        accepted = [
            e.target
            for e in self.state.entries
            if e.target.holder != request.holder and e.state == TargetState.ACCEPTED
        ]
        mine = []
        for target in request.route_targets():
            found = conflicts(target, accepted)
            reason = "; ".join(c.message(self.state.hostname) for c in found) or None
            entry = TableEntry(
                target=target,
                destination=request.destination,
                state=TargetState.PATH_CONFLICT if reason else TargetState.ACCEPTED,
                reason=reason,
            )
            mine.append(self._checked_destination(entry))
        return mine

    def _entries_of(self, holder: str) -> list[TableEntry]:
        return [e for e in self.state.entries if e.target.holder == holder]

    def _checked_destination(self, entry: TableEntry) -> TableEntry:
        aggregator = self.state.aggregator
        if aggregator is None or entry.destination == aggregator.spec.destination:
            return entry
        if entry.state != TargetState.ACCEPTED:
            return entry
        reason = (
            f"workload {entry.target.holder} runs on destination {entry.destination}, but "
            f"{self.state.hostname} is served on {aggregator.spec.destination}"
        )
        return entry.model_copy(update={"state": TargetState.WRONG_DESTINATION, "reason": reason})

    def _registration(self, holder: str) -> Registration:
        return self._answer(self._entries_of(holder))

    def _answer(self, mine: list[TableEntry]) -> Registration:
        """The answer to the holder of the entries `mine`: written once the write covering
        their last change landed (later changes by others waiting for a newer write are not
        its concern)."""
        state = self.state
        aggregator = state.aggregator
        needed = max((e.generation for e in mine), default=0)
        written = aggregator is not None and state.written_generation >= needed
        condition = state.condition(ROUTES)
        problem = None
        if aggregator is not None and not written and condition is not None:
            if condition.status == ConditionStatus.FALSE:
                problem = f"{condition.reason}: {condition.message}"
        return Registration(
            hostname=state.hostname,
            aggregator=aggregator.metadata.name if aggregator else None,
            targets=[
                TargetResult(paths=e.target.paths, state=e.state, reason=e.reason) for e in mine
            ],
            written=written,
            directory=state.output.directory if state.output else None,
            commit=state.output.commit if state.output else None,
            problem=problem,
        )

    def _nudge(self, holders: Iterable[str]) -> None:
        self.state.nudge = sorted({*self.state.nudge, *holders})

    def _changed(self, event: str) -> None:
        self.state.generation += 1
        self._event(event)

    def _event(self, message: str) -> None:
        self.state.add_event(ROUTES, message, workflow.now())

    def _targets_condition(self) -> None:
        """Refused targets make the aggregator Degraded: an unrouted API must show up where
        operators look (`IdpPhase = 'Degraded'`), not only in the route table."""
        entries = self.state.entries
        refused = [e for e in entries if e.state != TargetState.ACCEPTED]
        if refused:
            status, reason = ConditionStatus.FALSE, "Refused"
            message = "; ".join(f"{e.target.holder}: {e.reason}" for e in refused)
        else:
            status, reason = ConditionStatus.TRUE, "AllAccepted"
            message = f"{len(entries)} target(s) accepted"
        self.state.set_condition(
            TARGETS, status, reason, message, workflow.now(), permanent=bool(refused)
        )

    def _condition(self, status: ConditionStatus, reason: str, message: str) -> None:
        self.state.set_condition(ROUTES, status, reason, message, workflow.now())

    def _set_phase(self, phase: Phase) -> None:
        if phase != self.state.phase:
            self.state.phase = phase
            self._sync_search_attributes()
        self._sync_memo()
        headline = (
            f"**{phase.value}** · {self.state.hostname} · "
            f"{len(self.state.accepted())} route(s), generation {self.state.generation}"
        )
        workflow.set_current_details(details(headline, self.state.conditions))

    def _sync_memo(self) -> None:
        """What `idpctl get apiaggregators` lists, readable from visibility without asking
        each workflow (which needs a worker to answer)."""
        accepted = len(self.state.accepted())
        summary = {
            "name": self.state.aggregator.metadata.name if self.state.aggregator else None,
            "targets": accepted,
            "refused": len(self.state.entries) - accepted,
        }
        if summary != self._memo:
            self._memo = summary
            workflow.upsert_memo(summary)

    def _sync_search_attributes(self) -> None:
        if not self._settings.reconcile.search_attributes:
            return
        desired: list[SearchAttributeUpdate[Any]] = [
            sa.KIND.value_set("ApiAggregator"),
            sa.PHASE.value_set(self.state.phase.value),
        ]
        if self.state.aggregator is not None:
            desired.append(sa.DESTINATION.value_set(self.state.aggregator.spec.destination))
        sa.upsert_changed(desired)


def _differs(mine: list[TableEntry], before: list[TableEntry]) -> bool:
    """Whether a registration's entries change the holder's: generations aside, which only
    say when an entry last changed."""
    return mine != [e.model_copy(update={"generation": 0}) for e in before]


def _paths(entries: list[TableEntry], state: TargetState) -> set[str]:
    return {path for e in entries if e.state == state for path in e.target.paths}


def _registration_event(holder: str, entries: list[TableEntry]) -> str:
    if not entries:
        return f"unregistered {holder}"
    parts = []
    for e in entries:
        paths = ", ".join(e.target.paths)
        parts.append(f"{paths} {e.state.value.lower()}" + (f" ({e.reason})" if e.reason else ""))
    return f"registered {holder}: {'; '.join(parts)}"
