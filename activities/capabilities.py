"""The activities of every installed capability, made from its `Actions`.

Each capability gets four, named `<Name>.<verb>`: `reconcile` (observe, plan and apply in one
round trip), `observe` and `apply` (when its plan runs in the workflow), and `teardown`. Here
domain errors become Temporal failures and long calls heartbeat, once for all of them.
"""

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from temporalio import activity

from activities.errors import as_activity_errors
from activities.heartbeat import heartbeating
from idp.capability import Actions, Capability, Context, Plan, Preview, Report, installed
from idp.errors import PermanentError

T = TypeVar("T")


def activity_name(capability: str, verb: str) -> str:
    return f"{capability}.{verb}"


def settings_of(capability: Capability[Any, Any], platform: Any) -> Any:
    """A capability's own section of the platform file, None when absent."""
    return platform.section(capability.settings_field) if capability.settings_field else None


def offered(platform: Any) -> list[str]:
    """The installed capabilities this platform offers, by name."""
    return [c.name for c in installed() if c.offered(settings_of(c, platform))]


def installed_names() -> list[str]:
    """Every installed capability, by name: recorded with the platform settings, so that a
    workflow replays the same on a worker with more or fewer installed (workflows/engine.py)."""
    return [c.name for c in installed()]


async def _run(work: Awaitable[T]) -> T:
    with as_activity_errors():
        return await heartbeating(work)


def has_fleet_read(capability: Capability[Any, Any]) -> bool:
    return type(capability).fingerprint is not Capability.fingerprint


def after(ctx: Context, report: Report) -> Context:
    """What the next pass will see once the workflow has recorded `report`."""
    return ctx.model_copy(
        update={
            "outputs": report.outputs,
            "memory": report.memory,
            "requests": {op: r for op, r in ctx.requests.items() if op not in report.handled},
            "unsettled": False,
        }
    )


def capability_activities(
    capability: Capability[Any, Any], actions: Actions[Any, Any]
) -> list[Callable[..., Any]]:
    name = capability.name

    def reported(report: Report, plan: Plan) -> Report:
        """The report with the plan it carried out, its outputs checked against the
        capability's model here, where a mistake is one clear failure rather than a state the
        workflow would keep."""
        if capability.outputs_model is not None and report.outputs is not None:
            try:
                capability.outputs_model.model_validate(report.outputs)
            except ValidationError as error:
                raise PermanentError(
                    f"capability {name} reported outputs its outputs model refuses: "
                    f"{error.error_count()} error(s), the first at "
                    f"{'.'.join(map(str, error.errors()[0]['loc']))}",
                    reason="InvalidOutputs",
                ) from None
        return report.model_copy(update={"plan": plan.changes})

    @activity.defn(name=activity_name(name, "reconcile"))
    async def reconcile(ctx: Context) -> Report:
        async def work() -> Report:
            observation = await actions.observe(ctx)
            plan = capability.plan(ctx, observation)
            report = reported(await actions.apply(ctx, plan, observation), plan)
            if report.status != "Ready" or not has_fleet_read(capability) or report.fingerprint:
                return report  # not in sync, no fleet read, or the apply knew what it left
            now = ctx
            if plan:
                # Read back what the apply left, so that the workload sleeps on it from now
                # on rather than after a pass of its own one drift interval later, which every
                # new workload of a large onboarding would take at about the same time.
                now = after(ctx, report)
                observation = await actions.observe(now)
                if capability.plan(now, observation):
                    return report
            # What the fleet observer must find for the workload to sleep on.
            return report.model_copy(
                update={"fingerprint": capability.fingerprint(now, observation)}
            )

        return await _run(work())

    @activity.defn(name=activity_name(name, "observe"))
    async def observe(ctx: Context) -> dict[str, Any]:
        observation = await _run(actions.observe(ctx))
        return observation.model_dump(mode="json", by_alias=True)

    @activity.defn(name=activity_name(name, "apply"))
    async def apply(ctx: Context, plan: dict[str, Any], observation: dict[str, Any]) -> Report:
        planned = capability.plan_model.model_validate(plan)
        observed = capability.observation_model.model_validate(observation)

        async def work() -> Report:
            return reported(await actions.apply(ctx, planned, observed), planned)

        return await _run(work())

    @activity.defn(name=activity_name(name, "teardown"))
    async def teardown(ctx: Context) -> Report:
        return await _run(actions.teardown(ctx))

    @activity.defn(name=activity_name(name, "preview"))
    async def preview(ctx: Context) -> Preview:
        """Observe and plan as a pass would, and no more: what `idpctl diff` runs, as a
        standalone activity that no workflow schedules."""

        async def work() -> Preview:
            try:
                observation = await actions.observe(ctx)
                plan = capability.plan(ctx, observation)
            except PermanentError as error:
                return Preview(refused=str(error))
            return Preview(
                changes=plan.changes,
                details=await actions.explain(ctx, plan, observation),
                expected=capability.expect(ctx, plan, observation),
            )

        return await _run(work())

    return [reconcile, observe, apply, teardown, preview]


def all_actions(platform: Any, cache_dir: Path) -> dict[str, Actions[Any, Any]]:
    """Every installed capability's worker half, by name, made once for this worker: its
    activities and the fleet observer's sweep share them (and their clients)."""
    return {c.name: c.actions(platform, settings_of(c, platform), cache_dir) for c in installed()}


def all_activities(actions: dict[str, Actions[Any, Any]]) -> list[Callable[..., Any]]:
    """Every installed capability's activities."""
    found = []
    for capability in installed():
        found += capability_activities(capability, actions[capability.name])
    return found
