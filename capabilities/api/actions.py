"""The Api capability's worker half: it reads and updates the ApiAggregatorWorkflow of each
hostname through the activity's Temporal client, all hostnames of a pass at once.

A pass queries each hostname it looks at (`held`), whatever its outcome. The fleet read
(`fleet_observe`) reads the same for a whole fleet with one `held_by` query per hostname the
watched workloads name, whatever their number (one per 500 workloads on a hostname, to keep each
answer well below the server's payload limit), where their own passes make one query per
workload and hostname each drift interval. A query adds no event to the aggregator's history.
An aggregator run still on a build without `held_by` is asked `held` workload by workload, as
their passes would, until it continues as new onto a newer one.
"""

import asyncio
import collections
import logging
from datetime import timedelta
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
    FleetKey,
    Registering,
    answers_of,
    api_digest,
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
# The fleet read's queries: some 500 bytes of `Held` per workload with one target, so 500 answer
# in well under the 2 MB a payload may hold, even with a few targets each; at most this many
# aggregators asked at once; and a bound on each, so that one aggregator whose worker hangs
# cannot hold up the whole sweep.
HOLDERS_PER_QUERY = 500
QUERIES_AT_ONCE = 16
FLEET_QUERY_TIMEOUT = timedelta(seconds=30)

log = logging.getLogger(__name__)


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

    async def fleet_observe(self, keys: list[str]) -> dict[str, str]:
        """The digest (`api_digest`) of each of `keys` as its aggregators hold it now: for each,
        what observe would find on the hostnames it names, from one `held_by` query per
        aggregator for every key naming it. An aggregator that does not run holds nothing, as
        observe reads it. A key of another form is left out, which wakes its workload, and so
        is each key naming a hostname whose query failed: a failing aggregator wakes only the
        workloads that route through it. Read-only."""
        wanted = {key: parsed for key in keys if (parsed := FleetKey.parse(key)) is not None}
        asking: dict[str, set[str]] = collections.defaultdict(set)
        for k in wanted.values():
            for hostname in k.hostnames:
                asking[hostname].add(k.holder)
        answers, failed = await self._held_by_all(asking)
        return {
            key: api_digest({h: _held_for(answers[h], k.holder) for h in k.hostnames})
            for key, k in wanted.items()
            if failed.isdisjoint(k.hostnames)
        }

    async def _held_by_all(
        self, asking: dict[str, set[str]]
    ) -> tuple[dict[str, dict[str, Held] | None], set[str]]:
        """Each hostname's answer for the holders asked of it (None where no aggregator runs),
        and the hostnames whose query failed."""
        limit = asyncio.Semaphore(QUERIES_AT_ONCE)

        async def ask(hostname: str) -> dict[str, Held] | None:
            async with limit:
                return await self._held_by(hostname, sorted(asking[hostname]))

        hostnames = sorted(asking)
        outcomes = await asyncio.gather(*map(ask, hostnames), return_exceptions=True)
        answers: dict[str, dict[str, Held] | None] = {}
        failed: set[str] = set()
        for hostname, outcome in zip(hostnames, outcomes, strict=True):
            if isinstance(outcome, Exception):
                # The type only, as the sweep logs it: a failure's text may quote a payload.
                log.warning("fleet read of %s failed (%s)", hostname, type(outcome).__name__)
                failed.add(hostname)
            elif isinstance(outcome, BaseException):
                raise outcome  # cancelled: the sweep is going away
            else:
                answers[hostname] = outcome
        return answers, failed

    async def _held_by(self, hostname: str, holders: list[str]) -> dict[str, Held] | None:
        """What the aggregator of `hostname` holds for each of `holders`, in one `held_by` query
        per HOLDERS_PER_QUERY of them; None where no aggregator workflow runs."""
        answered: dict[str, Held] = {}
        for start in range(0, len(holders), HOLDERS_PER_QUERY):
            asked = holders[start : start + HOLDERS_PER_QUERY]
            try:
                answer = await self._ask(
                    hostname, "held_by", asked, dict[str, Held], rpc_timeout=FLEET_QUERY_TIMEOUT
                )
            except WorkflowQueryFailedError:
                # A run still on a build without `held_by` (runs stay on theirs until they
                # continue as new): asked as each workload's own pass would ask it.
                answer = await self._held_each(hostname, asked)
            if answer is None:
                return None
            if missing := set(asked) - answer.keys():
                # Not what `held_by` answers: fail this hostname rather than guess.
                raise LookupError(f"{hostname} left out {len(missing)} workload(s) asked about")
            answered |= answer
        return answered

    async def _held_each(self, hostname: str, holders: list[str]) -> dict[str, Held] | None:
        """`held`, workload by workload; None where no aggregator workflow runs."""
        limit = asyncio.Semaphore(QUERIES_AT_ONCE)

        async def ask(asked: str) -> Held | None:
            async with limit:
                return await self._ask(
                    hostname, "held", asked, Held, rpc_timeout=FLEET_QUERY_TIMEOUT
                )

        answers = await asyncio.gather(*map(ask, holders))
        if any(answer is None for answer in answers):
            return None
        return {h: a for h, a in zip(holders, answers, strict=True) if a is not None}

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

    async def _ask(
        self,
        hostname: str,
        query: str,
        arg: Any,
        result_type: type[T],
        rpc_timeout: timedelta | None = None,
    ) -> T | None:
        """A query to the aggregator of `hostname`; None where no aggregator workflow runs."""
        handle = activity.client().get_workflow_handle(ids.aggregator_id(hostname))
        try:
            return await handle.query(
                query,
                arg,
                result_type=result_type,
                # A run that has ended holds nothing: registering would start a new one.
                reject_condition=QueryRejectCondition.NOT_OPEN,
                rpc_timeout=rpc_timeout,
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


def _held_for(answer: dict[str, Held] | None, holder: str) -> Held | None:
    """What an aggregator's answer holds for `holder`; None where no aggregator runs, as
    observe reads it."""
    return None if answer is None else answer[holder]
