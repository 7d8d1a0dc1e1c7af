"""FleetObserverWorkflow: one per task queue, so that an idle fleet costs next to nothing.

Every drift interval it runs one sweep (activities/fleet.py): each capability reads the whole
fleet's part of the outside at once, and the workloads whose outside differs from what they
recorded get a `reconcile` signal. Meanwhile those workloads sleep with no timer of their own.
One billable action per interval (the sweep, which waits for its time itself) for the whole
fleet, instead of a timer, a local activity and an activity per capability for every workload
(docs/fleet.md).
"""

from datetime import datetime, timedelta

from pydantic import Field
from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.fleet import FleetActivities, SweepInput, SweepResult
    from activities.heartbeat import HEARTBEAT_TIMEOUT
    from idp.models import Model
    from workflows.steps import STEP_RETRY, STEP_TIMEOUT, failure

# Sweeps start one interval apart, however long each takes, so that drift is found within one
# interval; before this, each waited one interval after the last had ended.
SWEEP_AT_FIXED_RATE = "sweep-at-fixed-rate"
# A drift made just after a sweep read it is found by the next sweep, which signals its workload
# only when it ends, and that workload's pass repairs it a moment later. So that it is repaired,
# not only found, within one interval, each sweep starts the last sweep's duration and a repair's
# lead before one interval after the one before: at a 10-minute interval and a sweep of a few
# seconds, about 2% more sweeps.
SWEEP_AHEAD_OF_REPAIR = "sweep-ahead-of-repair"
# Each sweep waits for its time in its activity, not behind a timer: Temporal Cloud bills a timer
# as much as the activity, so this halves what an idle fleet pays (146 actions a day at a
# 10-minute interval rather than 292). The wait sends no heartbeat, which would be billed too, so
# a worker killed while it waits is found one heartbeat timeout after the sweep's time.
SWEEP_WAITS_IN_ACTIVITY = "sweep-waits-in-activity"
# What a woken workload's pass takes to repair, with room (about a second on the local stack);
# at most a quarter of a short interval.
REPAIR_LEAD = timedelta(seconds=5)
# Sweeps per run: its history stays a few hundred events, whatever the fleet.
SWEEPS_PER_RUN = 100
# Between a sweep that took its whole interval and the next: the fleet's workloads and the
# systems it reads get a breath.
MIN_PAUSE = timedelta(seconds=1)
# Before a sweep has said what the platform's drift interval is, and after one failed.
RETRY_AFTER = timedelta(minutes=1)


def observer_id(task_queue: str) -> str:
    return f"idp-fleet-observer-{task_queue}"


class ObserverInput(Model):
    sweeps: int = 0
    interval: timedelta = Field(
        timedelta(0), description="The drift interval the last sweep gave; zero before one."
    )
    next_sweep_at: datetime | None = Field(
        None, description="When the first sweep of this run is due; None: at once."
    )


@workflow.defn
class FleetObserverWorkflow:
    @workflow.run
    async def run(self, input: ObserverInput) -> None:
        sweeps, interval = input.sweeps, input.interval
        at = input.next_sweep_at
        for _ in range(SWEEPS_PER_RUN):
            sweeps += 1
            began = workflow.now()
            wait = timedelta(0) if at is None else max(at - began, timedelta(0))
            try:
                result = await workflow.execute_activity_method(
                    FleetActivities.sweep,
                    SweepInput(sweep=sweeps, at=at),
                    # A fleet whose reads take longer than an interval is swept back to back,
                    # rather than never; the heartbeat finds a worker gone meanwhile.
                    start_to_close_timeout=wait + max(STEP_TIMEOUT, interval),
                    heartbeat_timeout=wait + HEARTBEAT_TIMEOUT,
                    retry_policy=STEP_RETRY,
                    summary="observe the fleet" + ("" if at is None else f" at {at:%H:%M:%S}"),
                )
            except ActivityError as error:
                _, message = failure(error)
                workflow.set_current_details(f"**sweep {sweeps} failed**: {message}")
                at = None
                await workflow.sleep(RETRY_AFTER, summary="retry the sweep")
                continue
            workflow.set_current_details(_details(sweeps, result))
            interval = timedelta(seconds=result.interval_seconds)
            # A sweep run by a worker older than this code says nothing of when it began: the
            # next is paced the older way.
            if result.began is not None and workflow.patched(SWEEP_WAITS_IN_ACTIVITY):
                took = timedelta(seconds=result.took_seconds)
                at = max(
                    result.began + sweep_period(interval, took), result.began + took + MIN_PAUSE
                )
                continue
            pause = interval
            if workflow.patched(SWEEP_AT_FIXED_RATE):
                period = interval
                if workflow.patched(SWEEP_AHEAD_OF_REPAIR):
                    period = sweep_period(interval, workflow.now() - began)
                pause = max(began + period - workflow.now(), MIN_PAUSE)
            await workflow.sleep(pause, summary="next sweep")
        workflow.continue_as_new(ObserverInput(sweeps=sweeps, interval=interval, next_sweep_at=at))


def sweep_period(interval: timedelta, took: timedelta) -> timedelta:
    """From the start of a sweep that took `took` to the start of the next."""
    return interval - took - min(REPAIR_LEAD, interval / 4)


def _details(sweeps: int, result: SweepResult) -> str:
    line = f"sweep {sweeps}: {result.members} workloads watched, {result.woken} woken"
    if result.failed:
        line += f"; fleet read failed for {', '.join(result.failed)} (they checked on their own)"
    return line
