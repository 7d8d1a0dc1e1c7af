"""The fleet observer's sweep: one read per capability for every workload that sleeps on it, and
a `reconcile` signal to each workload whose outside differs from what it recorded.

Workloads publish what they recorded in the IdpFleet search attribute (one entry per capability,
'capability key digest', and the platform file's digest), so the sweep learns its members from
visibility, which costs no billable action, rather than from a workflow's state. A capability
whose fleet read fails wakes every workload that sleeps on it: they fall back to a pass of their
own, so drift is still found within one interval, at the old price (docs/fleet.md).
"""

import asyncio
import logging
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import Field
from temporalio import activity
from temporalio.api.workflowservice.v1 import ListWorkflowExecutionsRequest
from temporalio.client import Client
from temporalio.converter import PayloadConverter
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from activities.heartbeat import heartbeating
from activities.platform import platform_digest
from idp import fleet
from idp.capability import Actions, Fingerprint
from idp.errors import PermanentError
from idp.models import Model
from idp.platform import Platform
from workflows import search_attributes as sa
from workflows.messages import SignalRequest

log = logging.getLogger(__name__)

# Signals in flight at once, so as not to flood the frontend.
SIGNALS_AT_ONCE = 32
# Woken workloads each run a pass, which for a workflow evicted from the worker's cache starts
# with a replay of its history: a thousand at once time out their workflow tasks and starve
# everything else on the worker (seen in a 10,000-workload run). So wakes go out at this rate at
# least, or faster where that would not spread them over half the drift interval: still well
# within the interval, in which drift must be found.
WAKES_PER_SECOND = 10
# A fleet read that fails wakes every workload on it, so a blip (a 5xx, a dropped connection)
# is worth these retries first, this many seconds apart.
READ_RETRIES = (1.0, 5.0)


class SweepInput(Model):
    sweep: int
    at: datetime | None = Field(None, description="When to sweep; None: at once.")


class SweepResult(Model):
    members: int
    woken: int
    failed: list[str] = []
    interval_seconds: float
    began: datetime | None = Field(None, description="None from a worker older than the field.")
    took_seconds: float = 0


class Member(Model):
    workflow_id: str
    entries: dict[str, Fingerprint]


class FleetActivities:
    def __init__(self, client: Client, platform: Platform, actions: dict[str, Actions[Any, Any]]):
        self._client = client
        self._platform = platform
        self._actions = actions

    @activity.defn(name="Fleet.sweep")
    async def sweep(self, input: SweepInput) -> SweepResult:
        if input.at is not None:
            await _wait_until(input.at)
        began, start = datetime.now(UTC), time.monotonic()
        result = await heartbeating(self._sweep(input))
        return result.model_copy(update={"began": began, "took_seconds": time.monotonic() - start})

    async def _sweep(self, input: SweepInput) -> SweepResult:
        members = await self._members()
        reasons = self._changed(members, platform_digest(self._platform))
        keyed_by = _by_capability(members)
        # Side by side: each reads a system of its own, so a sweep takes its slowest read.
        reads = await asyncio.gather(*(self._read(n, sorted(k)) for n, k in keyed_by.items()))
        failed = [name for name, found in zip(keyed_by, reads, strict=True) if found is None]
        for (name, keyed), found in zip(keyed_by.items(), reads, strict=True):
            for key, (digest, workflow_ids) in keyed.items():
                if found is None:
                    why = f"the fleet read of {name} failed: checking on its own"
                elif found.get(key) != digest:
                    why = f"{name} changed outside ({key})"
                else:
                    continue
                for workflow_id in workflow_ids:
                    reasons.setdefault(workflow_id, why)
        info = activity.info()
        await self._wake(reasons, f"fleet-{info.workflow_run_id}-{input.sweep}")
        return SweepResult(
            members=len(members),
            woken=len(reasons),
            failed=failed,
            interval_seconds=self._platform.reconcile.drift_interval / timedelta(seconds=1),
        )

    async def _read(self, name: str, keys: list[str]) -> dict[str, str] | None:
        """The capability's fleet read, None when it failed, retries included."""
        actions = self._actions.get(name)
        if actions is None:
            log.warning("fleet read of %s failed: not installed on this worker", name)
            return None
        pauses = iter(READ_RETRIES)
        while True:
            try:
                return await actions.fleet_observe(keys)
            except Exception as error:
                # Misconfigured (a PermanentError), another try cannot do better.
                permanent = isinstance(error, PermanentError)
                pause = None if permanent else next(pauses, None)
                again = "" if pause is None else f"; again in {pause:g} s"
                # The type only: an exception's text may quote what a client sent.
                log.warning("fleet read of %s failed (%s)%s", name, type(error).__name__, again)
                if pause is None:
                    return None
                await asyncio.sleep(pause)

    async def _members(self) -> list[Member]:
        """The watched workloads of this task queue: another's have a platform file, and so
        capabilities and a fleet observer, of their own."""
        queue = activity.info().task_queue.replace("\\", "\\\\").replace('"', '\\"')
        query = (
            f'{sa.KIND.name} = "Workload" AND ExecutionStatus = "Running" AND TaskQueue = "{queue}"'
        )
        # The listing's own pages, not the client's iterator: that decodes every search attribute
        # of every workload twice (untyped and typed), at several times the cost of IdpFleet
        # alone, which is a sweep's largest cost in the worker after the capabilities' reads.
        request = ListWorkflowExecutionsRequest(namespace=self._client.namespace, query=query)
        members = []
        while True:
            page = await self._client.workflow_service.list_workflow_executions(request, retry=True)
            for execution in page.executions:
                listed = execution.search_attributes.indexed_fields.get(sa.FLEET.name)
                if listed is None:
                    continue
                entries = PayloadConverter.default.from_payload(listed, list[str])
                if entries:
                    workflow_id = execution.execution.workflow_id
                    members.append(Member(workflow_id=workflow_id, entries=fleet.parse(entries)))
            if not page.next_page_token:
                return members
            request.next_page_token = page.next_page_token

    @staticmethod
    def _changed(members: list[Member], platform: str) -> dict[str, str]:
        """Workloads that recorded another platform file: their plans may differ now."""
        return {
            m.workflow_id: "the platform configuration changed"
            for m in members
            if fleet.PLATFORM not in m.entries or m.entries[fleet.PLATFORM].digest != platform
        }

    async def _wake(self, reasons: dict[str, str], request_id: str) -> None:
        """Signal `reconcile` to each, paced (WAKES_PER_SECOND); the same request id on a
        retried sweep, so a workload woken twice acts once."""
        limit = asyncio.Semaphore(SIGNALS_AT_ONCE)
        half = self._platform.reconcile.drift_interval.total_seconds() / 2
        gap = 1 / max(WAKES_PER_SECOND, len(reasons) / half)

        async def wake(workflow_id: str, why: str) -> None:
            async with limit:
                request = SignalRequest(request_id=request_id, reason=f"fleet observer: {why}")
                try:
                    await self._client.get_workflow_handle(workflow_id).signal("reconcile", request)
                except Exception as error:
                    log.info("could not wake %s (%s)", workflow_id, type(error).__name__)

        sent = []
        for workflow_id, why in sorted(reasons.items()):
            if sent:
                await asyncio.sleep(gap)
            sent.append(asyncio.create_task(wake(workflow_id, why)))
        await asyncio.gather(*sent)


def _by_capability(members: list[Member]) -> dict[str, dict[str, tuple[str, list[str]]]]:
    """{capability: {key: (recorded digest, workflow ids)}}; one key is one workload's."""
    found: dict[str, dict[str, tuple[str, list[str]]]] = defaultdict(dict)
    for member in members:
        for name, fingerprint in member.entries.items():
            if name != fleet.PLATFORM:
                entry = found[name].setdefault(fingerprint.key, (fingerprint.digest, []))
                entry[1].append(member.workflow_id)
    return found


async def _wait_until(moment: datetime) -> None:
    """Sleep until `moment` with no heartbeat (the sweep's heartbeat timeout allows for the
    wait), unless this worker begins to shut down first: then the sweep fails, to be retried
    by another worker at once, which waits out the rest."""
    try:
        await asyncio.wait_for(
            activity.wait_for_worker_shutdown(),
            (moment - datetime.now(UTC)) / timedelta(seconds=1),
        )
    except TimeoutError:
        return
    raise ApplicationError(
        "this worker is shutting down; another takes the sweep",
        category=ApplicationErrorCategory.BENIGN,
    )
