"""The Api capability's worker half: it reads and updates the ApiAggregatorWorkflow of each
hostname through the activity's Temporal client, all hostnames of a pass at once."""

import asyncio
import collections

from temporalio import activity
from temporalio.client import WithStartWorkflowOperation, WorkflowQueryRejectedError
from temporalio.common import QueryRejectCondition, WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from capabilities.api import ApiObservation, ApiPlan, Registering, hostnames, registrations, report
from idp import ids
from idp.capability import Actions, Context, Outcome, Report
from idp.routes import Held, Registration, holder

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
        answers = [
            registered[hostname] if hostname in registered else held.registration
            for hostname, held in sorted(observation.held.items())
            if hostname in registered or held is not None
        ]
        return report(ctx, answers)

    async def teardown(self, ctx: Context) -> Report:
        # Every hostname the spec names as well as the known ones: a pass that failed after
        # registering somewhere new recorded no outputs.
        plan = registrations(ctx, await self.observe(ctx), {}, "the workload is deleted")
        await self._register_all(plan)
        gone = [r.hostname for r in plan.registrations]
        message = f"unregistered from {', '.join(gone)}" if gone else "no aggregator held them"
        return Report(reason=Outcome.DELETED, message=message, changed=bool(gone))

    async def _held(self, hostname: str, me: str) -> Held | None:
        handle = activity.client().get_workflow_handle(ids.aggregator_id(hostname))
        try:
            return await handle.query(
                "held",
                me,
                result_type=Held,
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
