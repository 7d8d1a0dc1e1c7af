"""The capability engine: walks a workload's capabilities and keeps the books for all of them.

It knows capabilities only through the contract in idp/capability.py. Per pass it runs each one
that the platform offers and the workload wants, in dependency order, and turns what comes back
into conditions, events, metrics and search attributes (Crossplane's managed reconciler owns
conditions the same way, while each ExternalClient only observes and acts). On delete it tears
them down in reverse order.

Installing a capability on the workers of a fleet never breaks the replay of running workflows:
a pass runs only what its recorded settings offered, so replaying a pass recorded without it
skips it, and the next live pass takes it up. Runs begun before the settings were trusted for
this (before workflows.steps.BASELINE) gate its first run by a patch keyed on its name and the
pass: the SDK memoises `patched` per id for a whole run, and with one id per capability, a run
that replayed without the capability would never take it up until it continued as new.
"""

import asyncio
from collections.abc import Iterable
from datetime import datetime
from typing import Any, NoReturn

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.capabilities import activity_name
    from activities.heartbeat import HEARTBEAT_TIMEOUT
    from activities.platform import RuntimeSettings
    from idp import fleet
    from idp.capability import (
        Capability,
        Context,
        Fingerprint,
        Outcome,
        Report,
        dump,
        installed,
        waves,
    )
    from idp.errors import PermanentError
    from workflows import metrics
    from workflows.state import ConditionStatus, Phase, WorkloadState
    from workflows.steps import (
        ROLLOUT,
        STEP_RETRY,
        STEP_TIMEOUT,
        TEARDOWN_AFTER_FAILED_PASS,
        StepFailed,
        failure,
        is_permanent,
        patched,
    )

DELETED = Outcome.DELETED.value
MISSING = "CapabilityMissing"


def rollout_patch(name: str, passes: int) -> str:
    return f"{ROLLOUT}{name}-{passes}"


class Engine:
    def __init__(self, state: WorkloadState) -> None:
        self.state = state
        # Capabilities whose activities this run has scheduled (a new run starts empty), and
        # whether one of them is offered no more, so the run should continue as new.
        self._ran: set[str] = set()
        self.stale = False

    @property
    def capabilities(self) -> tuple[Capability[Any, Any], ...]:
        return installed()

    def context(self, capability: Capability[Any, Any]) -> Context:
        return context(capability, self.state)

    def active(self, offered: Iterable[str]) -> list[Capability[Any, Any]]:
        """The capabilities this pass runs: offered by the platform, wanted by the workload."""
        names = set(offered)
        return [c for c in self.capabilities if c.name in names and c.wanted(self.context(c))]

    # ---- a pass ---------------------------------------------------------------------------

    async def reconcile(self, settings: RuntimeSettings) -> bool:
        """One pass over every active capability; False when one failed.

        They run in waves: each wave holds those whose required capabilities have finished,
        side by side, so independent observations share workflow tasks. A failure skips only
        the capabilities that read the failed one's outputs; the others still converge."""
        self.state.passes += 1
        self._report_missing(settings)
        offered = set(settings.capabilities)
        # What ran in this run but is offered no more must not be needed to replay it once
        # uninstalled: the loop continues as new (docs/capabilities.md, Rolling it out).
        self.stale = bool(self._ran - offered)
        failed = await self._release(offered)
        for wave in waves([c for c in self.active(offered) if self._rolled_out(c)]):
            runnable = [c for c in wave if not failed & set(c.requires)]
            failed |= {c.name for c in wave if c not in runnable}
            results = await asyncio.gather(*(self._pass(c) for c in runnable))
            # Recorded in the walk's order, whatever order the activities finished in.
            for capability, report in zip(runnable, results, strict=True):
                if report is None or not self._record(capability, report):
                    failed.add(capability.name)
        return not failed

    async def _release(self, offered: set[str]) -> set[str]:
        """Tear down, in reverse order, what capabilities the workload no longer wants still
        hold (a section removed from the spec); the names of those that failed.

        Only where the platform still offers them: a platform file that lost a section must
        not tear down a fleet's resources."""
        failed: set[str] = set()
        for capability in reversed(self.capabilities):
            ctx = self.context(capability)
            if capability.name not in offered or capability.wanted(ctx):
                continue
            if not capability.holds(ctx):
                continue
            try:
                report = await self._teardown(capability, ctx)
            except StepFailed:
                failed.add(capability.name)
                continue
            self.state.add_event(capability.name, f"released: {report.message}", workflow.now())
            self.state.drop_condition(capability.name)
            # Nothing of it need stay in the history it may be uninstalled from.
            self.stale = True
        return failed

    def _rolled_out(self, capability: Capability[Any, Any]) -> bool:
        if capability.name in self.state.rolled_out:
            return True
        if not patched(rollout_patch(capability.name, self.state.passes)):
            return False  # replaying a pass recorded before this capability was installed
        self.state.rolled_out.append(capability.name)
        return True

    async def _pass(self, capability: Capability[Any, Any]) -> Report | None:
        """The capability's report, or None when it failed (its condition says why)."""
        try:
            return await self._converge(capability, self.context(capability))
        except StepFailed:
            return None

    async def _converge(self, capability: Capability[Any, Any], ctx: Context) -> Report:
        name, what = capability.name, capability.summary or capability.name
        if capability.one_activity:
            return await self._activity(name, "reconcile", [ctx], Report, f"reconcile {what}")
        observation = await self._activity(
            name, "observe", [ctx], capability.observation_model, f"observe {what}"
        )
        try:
            plan = capability.plan(ctx, observation)
        except PermanentError as error:
            self._failed(name, error.reason, str(error), permanent=True)
        if not plan:
            report = capability.in_sync(ctx, observation)
            fingerprint = capability.fingerprint(ctx, observation)
            return report.model_copy(update={"fingerprint": fingerprint})
        return await self._activity(
            name, "apply", [ctx, plan, observation], Report, f"{name}: {plan.summary()}"
        )

    async def _activity(
        self, name: str, verb: str, args: list[Any], result_type: type[Any], summary: str
    ) -> Any:
        """Run one of a capability's activities; on failure record why in its condition and
        raise StepFailed."""
        self._ran.add(name)
        try:
            return await workflow.execute_activity(
                activity_name(name, verb),
                args=args,
                result_type=result_type,
                start_to_close_timeout=STEP_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=STEP_RETRY,
                summary=summary,
            )
        except ActivityError as error:
            reason, message = failure(error)
            self._failed(name, reason, message, permanent=is_permanent(error))

    def _failed(self, name: str, reason: str, message: str, permanent: bool) -> NoReturn:
        self._failure(name, reason, message, permanent)
        raise StepFailed(name)

    def _failure(self, name: str, reason: str, message: str, permanent: bool) -> None:
        """A failed condition, with an event when it newly fails or for another reason."""
        metrics.step_failed(name, reason)
        current = self.state.condition(name)
        if current is None or current.status != ConditionStatus.FALSE or current.reason != reason:
            self.state.add_event(name, f"failed: {message}", workflow.now())
        self._condition(name, ConditionStatus.FALSE, reason, message, permanent=permanent)

    def _record(self, capability: Capability[Any, Any], report: Report) -> bool:
        """Keep what the report says; False when it reports a failure."""
        name, state, now = capability.name, self.state, workflow.now()
        _put(state.outputs, name, report.outputs)
        _put(state.memory, name, report.memory or None)
        _put(state.fingerprints, name, report.fingerprint and dump(report.fingerprint))
        for operation in report.handled:
            state.requests.pop(operation, None)
        for line in report.events:
            state.add_event(name, line, now)
        if report.changed:
            state.add_event(name, report.message, now)
            metrics.step_changed(name, report.reason)
            if report.reason == Outcome.ISSUED and report.cause:
                metrics.credentials_issued(report.cause)
        if report.status == "Ready":
            self._condition(name, ConditionStatus.TRUE, report.reason, report.message)
        elif report.status == "Failed":
            self._failure(name, report.reason, report.message, permanent=False)
        else:
            waiting = Phase(report.phase or Phase.PROVISIONING)
            self._condition(
                name,
                ConditionStatus.FALSE,
                report.reason,
                report.message,
                permanent=report.status == "Blocked",
                waiting=waiting if report.status == "Waiting" else None,
            )
        return report.status != "Failed"

    def _report_missing(self, settings: RuntimeSettings) -> None:
        """Outputs of a capability the worker lacks: a condition, not a failed workflow (it was
        uninstalled before its teardown ran, or this worker is behind the others).

        Judged by what the worker that ran the pass had installed, as its settings recorded
        it, not this one: a replay on a worker with more or fewer must decide as the pass did
        (the phase, hence a search attribute, depends on it)."""
        for name in sorted(self.state.outputs.keys() - set(settings.installed)):
            self._condition(
                name,
                ConditionStatus.FALSE,
                MISSING,
                f"this workload holds outputs of capability {name}, which the worker does not "
                "have installed; install it on every worker of the task queue (to remove it, "
                "let its teardown run first: docs/capabilities.md)",
                permanent=True,
            )

    def attributes(self) -> list[Any]:
        """The search attributes capabilities keep current, from their outputs."""
        pairs = []
        for capability in self.capabilities:
            keys = {key.name: key for key in capability.search_attributes}
            values = capability.attributes(self.state.outputs.get(capability.name))
            pairs += [keys[name].value_set(v) for name, v in values.items() if v is not None]
        return pairs

    def fleet_entries(self, settings: RuntimeSettings) -> list[str] | None:
        """What the fleet observer must find for this workload to sleep on, one entry per
        active capability ('capability key digest', then the platform file's digest); None
        when one of them has no fleet read or its last pass did not find it in sync, or when
        they are too long for a search attribute value."""
        entries = []
        for capability in self.active(settings.capabilities):
            fingerprint = self.state.fingerprints.get(capability.name)
            if fingerprint is None:
                return None
            entries.append(fleet.entry(capability.name, Fingerprint.model_validate(fingerprint)))
        if not entries or settings.platform_digest is None:
            return None
        entries.append(fleet.platform_entry(settings.platform_digest))
        return entries if fleet.fits(entries) else None

    def deadline(self, settings: RuntimeSettings) -> datetime | None:
        """The earliest time a capability must act even if nothing drifts."""
        deadlines = [c.deadline(self.context(c)) for c in self.active(settings.capabilities)]
        return min((d for d in deadlines if d is not None), default=None)

    # ---- delete ---------------------------------------------------------------------------

    async def teardown(self, settings: RuntimeSettings) -> None:
        """Tear down, in reverse order, every capability holding outputs or memory, and look for
        what a failed pass of another may have left; StepFailed when one fails (the loop retries
        after its backoff)."""
        state = self.state
        holding = state.outputs.keys() | state.memory.keys()
        missing = sorted(holding - set(settings.installed))
        if missing:
            # Deleting now would leave its resources behind with nobody knowing of them.
            self._report_missing(settings)
            raise StepFailed(missing[0])
        for capability in reversed(self.capabilities):
            ctx = self.context(capability)
            if capability.holds(ctx):
                report = await self._teardown(capability, ctx)
                self.deleted(capability.name, report.message)
            elif failed_last(self.state, capability.name) and patched(TEARDOWN_AFTER_FAILED_PASS):
                await self._teardown_leftovers(capability, ctx)

    async def _teardown_leftovers(self, capability: Capability[Any, Any], ctx: Context) -> None:
        """The teardown of a capability whose failed pass recorded nothing, though its apply may
        have made something before it failed; a teardown looks by name and leaves what is not
        the workload's. A refusal here (say, a destination that never existed) does not hold up
        the delete: it ends in the capability's Deleted condition, which names it."""
        name = capability.name
        try:
            report = await self._teardown(capability, ctx)
        except StepFailed:
            condition = self.state.condition(name)
            if condition is None or not condition.permanent:
                raise
            self.deleted(
                name,
                f"nothing recorded, and the teardown of what its failed pass may have left was "
                f"refused: {condition.message}",
            )
            return
        self.deleted(name, report.message)

    async def _teardown(self, capability: Capability[Any, Any], ctx: Context) -> Report:
        """Run its teardown and forget what it held; StepFailed when it fails."""
        name, what = capability.name, capability.summary or capability.name
        report = await self._activity(name, "teardown", [ctx], Report, f"tear down {what}")
        self.state.outputs.pop(name, None)
        self.state.memory.pop(name, None)
        self.state.fingerprints.pop(name, None)
        for line in report.events:
            self.state.add_event(name, line, workflow.now())
        return report

    def deleted(self, name: str, message: str) -> None:
        self.state.add_event(name, message, workflow.now())
        self._condition(name, ConditionStatus.FALSE, DELETED, message)

    def _condition(
        self,
        type_: str,
        status: ConditionStatus,
        reason: str,
        message: str,
        permanent: bool = False,
        waiting: Phase | None = None,
    ) -> None:
        self.state.set_condition(type_, status, reason, message, workflow.now(), permanent, waiting)


def context(capability: Capability[Any, Any], state: WorkloadState) -> Context:
    """What `capability` sees of the workflow now (in workflow code only)."""
    return Context.of(
        capability,
        state.workload,
        workflow.info().workflow_id,
        state.generation,
        workflow.now(),
        state,
        unsettled=unsettled(state, capability.name),
    )


def unsettled(state: WorkloadState, name: str) -> bool:
    """Whether the capability's last pass failed in a way a retry may fix (a timeout, a 5xx):
    that failure may have come after its apply made something, which the workflow then never
    recorded. Read from the condition the engine keeps anyway, so histories recorded before
    Context had the field decide the same. A refusal (bad input, access denied) is not: a
    retry would be refused too. What a refused pass made is found by the delete's teardown."""
    condition = state.condition(name)
    return (
        condition is not None
        and failed_last(state, name)
        and condition.waiting is None
        and not condition.permanent
    )


def failed_last(state: WorkloadState, name: str) -> bool:
    """Whether the capability's last pass failed, whatever the cause: what it was making may
    exist without being recorded."""
    condition = state.condition(name)
    return (
        condition is not None
        and condition.status == ConditionStatus.FALSE
        and condition.reason != DELETED
    )


def _put(book: dict[str, Any], name: str, value: Any) -> None:
    if value is None:
        book.pop(name, None)
    else:
        book[name] = value
