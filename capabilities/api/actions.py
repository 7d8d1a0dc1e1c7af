"""The Api capability's worker half: it reads and updates the ApiAggregatorWorkflow of each
hostname through the activity's Temporal client, all hostnames of a pass at once."""

import asyncio
import collections
from typing import Any, TypeVar

from temporalio import activity
from temporalio.client import (
    WithStartWorkflowOperation,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
from temporalio.common import QueryRejectCondition, WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from capabilities.api import (
    ApiObservation,
    ApiPlan,
    Registering,
    answers_of,
    explain_routes,
    hostnames,
    registrations,
    report,
    unheld,
)
from idp import ids
from idp.capability import Actions, Context, Outcome, Report
from idp.routes import Held, Registration, holder

T = TypeVar("T")

# The workflow and its messages are named, not imported: activities sit below workflows.
AGGREGATOR_WORKFLOW = "ApiAggregatorWorkflow"
# Temporal admits only a few updates in flight per workflow (10 by default) and makes the rest
# retry with backoff; queueing here instead keeps a burst of workloads on one hostname from
# spending most of its time in that backoff.
UPDATES_IN_FLIGHT = 8


class ApiActions(Actions[ApiObservation, ApiPlan]):
    def __init__(self) -> None:
        self._in_flight: dict[str, asyncio.Semaphore] = collections.defaultdict(
            lambda: asyncio.Semaphore(UPDATES_IN_FLIGHT)
        )

    async def observe(self, ctx: Context) -> ApiObservation:
        names = hostnames(ctx)
        me = holder(ctx.workload.metadata.system, ctx.workload.metadata.name)
        held = await asyncio.gather(*(self._held(hostname, me) for hostname in names))
        return ApiObservation(held=dict(zip(names, held, strict=True)))

    async def apply(self, ctx: Context, plan: ApiPlan, observation: ApiObservation) -> Report:
        registered = await self._register_all(plan)
        return report(ctx, answers_of(observation, registered))

    async def explain(self, ctx: Context, plan: ApiPlan, observation: ApiObservation) -> list[str]:
        """The routes as the aggregators would answer the plan's registrations now, by their
        own decisions (`would_register`, a query: nothing changes)."""
        registering = [r for r in plan.registrations if r.request.targets]
        would = await asyncio.gather(*(self._would_register(r) for r in registering))
        answered = {r.hostname: a for r, a in zip(registering, would, strict=True)}
        return explain_routes(plan, observation, answered)

    async def teardown(self, ctx: Context) -> Report:
        # Every hostname the spec names as well as the known ones: a pass that failed after
        # registering somewhere new recorded no outputs.
        plan = registrations(ctx, await self.observe(ctx), {}, "the workload is deleted")
        await self._register_all(plan)
        gone = [r.hostname for r in plan.registrations]
        message = f"unregistered from {', '.join(gone)}" if gone else "no aggregator held them"
        return Report(reason=Outcome.DELETED, message=message, changed=bool(gone))

    async def _held(self, hostname: str, me: str) -> Held | None:
        return await self._ask(hostname, "held", me, Held)

    async def _would_register(self, registering: Registering) -> Registration | str:
        """The answer `register` would give, or the sentence that refuses it."""
        try:
            answer = await self._ask(
                registering.hostname, "would_register", registering.request, Registration
            )
        except WorkflowQueryFailedError as error:
            return error.message
        return unheld(registering) if answer is None else answer

    async def _ask(self, hostname: str, query: str, arg: Any, result_type: type[T]) -> T | None:
        """A query to the aggregator of `hostname`; None where no aggregator workflow runs."""
        handle = activity.client().get_workflow_handle(ids.aggregator_id(hostname))
        try:
            return await handle.query(
                query,
                arg,
                result_type=result_type,
                # A run that has ended holds nothing: registering would start a new one.
                reject_condition=QueryRejectCondition.NOT_OPEN,
            )
        except WorkflowQueryRejectedError:
            return None
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                return None
            raise

    async def _register_all(self, plan: ApiPlan) -> dict[str, Registration]:
        answers = await asyncio.gather(*(self._register(r) for r in plan.registrations))
        return {r.hostname: answer for r, answer in zip(plan.registrations, answers, strict=True)}

    async def _register(self, registering: Registering) -> Registration:
        hostname = registering.hostname
        # Update-with-start: the aggregator of a hostname exists as soon as a workload names
        # it, and holds the targets until its ApiAggregator is applied.
        start = WithStartWorkflowOperation(
            AGGREGATOR_WORKFLOW,
            {"hostname": hostname},
            id=ids.aggregator_id(hostname),
            task_queue=activity.info().task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary=f"API routes of {hostname}",
        )
        async with self._in_flight[hostname]:
            return await activity.client().execute_update_with_start_workflow(
                "register",
                registering.request,
                start_workflow_operation=start,
                result_type=Registration,
            )
