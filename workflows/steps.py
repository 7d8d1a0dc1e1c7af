"""What every entity workflow here shares about running a step: retries, timeouts, how a failed
activity becomes a condition's reason and message, and how a request is refused."""

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, NoReturn, Protocol

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import TimeoutError as ActivityTimeoutError

with workflow.unsafe.imports_passed_through():
    from activities.platform import PlatformActivities, RuntimeSettings
    from idp.platform import ReconcileSettings
    from workflows.state import Condition, ConditionStatus

# Retries inside one pass absorb blips; longer outages are the loop's job (backoff between passes),
# so the workflow keeps answering queries and messages instead of sitting in one activity for hours.
STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=3,
)
STEP_TIMEOUT = timedelta(minutes=2)

# Changes to what running workflows send, each gated by workflow.patched so that histories
# recorded before them keep replaying.
# A run that begins on code with this one records it in place of the patches older than it
# (FOLDED): one marker and one TemporalChangeVersion upsert a run instead of one of each per
# patch.
BASELINE = "baseline-2026-12b"
# The baseline before it, which runs begun on earlier code recorded; it stands for
# FOLDED_EARLIER (a new workload passed 5 patches before it).
EARLIER_BASELINE = "baseline-2026-12"
# The first run of a capability in a workflow, one id per capability and pass
# (workflows/engine.py).
ROLLOUT = "capability-"
# The aggregator's phase is derived from every condition (refused targets are Degraded, not
# Ready), which changes the IdpPhase search attribute it upserts.
PHASE_FROM_CONDITIONS = "phase-from-conditions"
# A versioned worker pins each run to its build; with this the next run starts on the
# deployment's current build instead of inheriting the pin, so long-lived entities move to new
# code at continue-as-new (docs/architecture.md, Upgrading workers). It changes the
# continue-as-new command itself.
AUTO_UPGRADE_ON_CONTINUE_AS_NEW = "auto-upgrade-on-continue-as-new"
# A workload the fleet observer watches sleeps until a deadline or a message, with no drift
# timer, and publishes what the observer must find (docs/fleet.md): other timers, and a search
# attribute upsert.
FLEET_OBSERVED = "fleet-observed"
# A delete also tears down a capability that recorded nothing but whose last pass failed: its
# apply may have made something first (a repository, then a role policy IAM refused). One more
# teardown activity on such a delete.
TEARDOWN_AFTER_FAILED_PASS = "teardown-after-failed-pass"
# A run's first pass uses the settings the run read as it began, rather than reading them
# again in the same workflow task; a new workload's first upsert carries the Provisioning
# phase, and a pass's last one carries IdpFleet. Three commands fewer for a new workload (a
# local activity, two upserts), two billable actions: a local activity's marker is billed with
# the others of its workflow task.
COMPACT_PASSES = "compact-passes"
FOLDED_EARLIER = frozenset({AUTO_UPGRADE_ON_CONTINUE_AS_NEW, FLEET_OBSERVED})
# What BASELINE stands for. A patch added after it is asked with workflow.patched alone: a run
# recorded between the two has the BASELINE marker and did not take the new branch.
FOLDED = FOLDED_EARLIER | {TEARDOWN_AFTER_FAILED_PASS, COMPACT_PASSES}
# How long a watched workload sleeps at most: should the observer be gone (terminated, its
# workers stopped), each workload still checks on its own, at less than one action a day.
WATCHED_BACKSTOP = timedelta(days=7)


def patched(patch_id: str) -> bool:
    """`workflow.patched(patch_id)` for a patch a baseline stands for, with no marker of its own
    in a run that began on code with that baseline. The SDK memoises each id for the run, and
    the baselines are asked first, newest first: a run recorded before one (replaying, without
    its marker) answers False for the whole run and asks on as it did, while a new run answers
    True once and never asks the others."""
    rollout = patch_id.startswith(ROLLOUT)
    if patch_id not in FOLDED and not rollout:
        raise ValueError(f"{patch_id} is newer than {BASELINE}: ask workflow.patched itself")
    if workflow.patched(BASELINE):
        return True
    if (rollout or patch_id in FOLDED_EARLIER) and workflow.patched(EARLIER_BASELINE):
        return True
    return workflow.patched(patch_id)


class StepFailed(Exception):
    """A step's activity failed for good in this pass; its condition already says why."""


def reject(message: str) -> NoReturn:
    """Refuse an update in its validator: nothing reaches history, the caller gets `message`."""
    raise ApplicationError(message, type="InvalidApply", non_retryable=True)


def failure(error: ActivityError) -> tuple[str, str]:
    """(reason, message) of a failed activity, for its step's condition."""
    cause = error.cause
    if isinstance(cause, ApplicationError):
        return cause.type or "Error", cause.message
    if isinstance(cause, ActivityTimeoutError):
        return "Timeout", f"the activity timed out ({cause.type.name if cause.type else 'timeout'})"
    return type(cause).__name__ if cause else "Error", str(cause or error)


def is_permanent(error: ActivityError) -> bool:
    """Whether the activity failed in a way no retry can fix (bad input, access denied, 4xx)."""
    return isinstance(error.cause, ApplicationError) and error.cause.non_retryable


# A word beside each glyph: the UI's current details must read the same without an emoji font.
_MARKS = {
    ConditionStatus.TRUE: "✅ True",
    ConditionStatus.FALSE: "❌ False",
}


def details(headline: str, conditions: Sequence[Condition]) -> str:
    """The UI's current details: the phase line, then one line per condition."""
    lines = [headline]
    for c in conditions:
        lines.append(f"- {_MARKS[c.status]} · {c.type}: {c.reason}: {c.message}")
    return "\n".join(lines)


async def read_settings() -> RuntimeSettings:
    """The platform's settings as of now, recorded in history by a local activity."""
    return await workflow.execute_local_activity_method(
        PlatformActivities.runtime_settings,
        start_to_close_timeout=timedelta(seconds=10),
        summary="read platform settings",
    )


def retry_interval(settings: ReconcileSettings, failures: int) -> timedelta:
    """Capped exponential backoff after `failures` failed passes in a row."""
    backoff = settings.min_backoff * 2 ** min(failures - 1, 16)
    return min(backoff, settings.max_backoff, settings.drift_interval)


class Sleeper(Protocol):
    """The part of an entity workflow's state its sleep reads and writes."""

    failures: int
    next_check_at: datetime | None


async def wait_for_work(
    state: Sleeper,
    settings: ReconcileSettings,
    has_work: Callable[[], bool],
    *,
    idle: bool = False,
    deadline: datetime | None = None,
    watched: bool = False,
) -> None:
    """The loop's sleep in every entity workflow: until `has_work`, or the backoff after failed
    passes, or the next drift check, or `deadline` when sooner; without a timer when `idle`
    (paused, or nothing to check), which costs nothing in history. When `watched` (a fleet
    observer checks for drift instead), until `deadline` or WATCHED_BACKSTOP."""
    if idle:
        state.next_check_at = None
        await workflow.wait_condition(has_work)
        return
    now = workflow.now()
    if watched:
        interval, summary = WATCHED_BACKSTOP, "own check, should the fleet observer be gone"
        if deadline is not None and deadline - now < interval:
            interval, summary = max(deadline - now, timedelta(seconds=1)), "next deadline"
    elif state.failures:
        interval, summary = retry_interval(settings, state.failures), "retry after backoff"
    else:
        interval, summary = settings.drift_interval, "next drift check"
        if deadline is not None and deadline - now < interval:
            interval, summary = max(deadline - now, timedelta(seconds=1)), "next deadline"
    state.next_check_at = now + interval
    try:
        await workflow.wait_condition(has_work, timeout=interval, timeout_summary=summary)
    except TimeoutError:
        pass


def continue_as_new_if_suggested(next_input: Any, now: bool = False) -> None:
    """Start over with `next_input` when history grows long (or `now`), once no handler is
    running: an update cut off mid-way would never answer its caller. While one runs (a
    `wait_ready` waiting for a pass) the loop goes on and asks again after the next pass;
    waiting here instead would hold back the very pass that update waits for.

    The new run starts on the worker deployment's current version (on an unversioned worker
    there is none, and the server ignores the behaviour)."""
    suggested = now or workflow.info().is_continue_as_new_suggested()
    if suggested and workflow.all_handlers_finished():
        # Asked only when continuing: a pass that goes on records no marker.
        upgrade = patched(AUTO_UPGRADE_ON_CONTINUE_AS_NEW)
        workflow.continue_as_new(
            next_input,
            initial_versioning_behavior=(
                workflow.ContinueAsNewVersioningBehavior.AUTO_UPGRADE if upgrade else None
            ),
        )
