"""The Manifests capability as a worker runs it for the workflow engine: its real activities,
`Manifests.reconcile` (observe, plan and apply) and `Manifests.teardown`, made by
activities/capabilities.py and run in the SDK's ActivityEnvironment, so a failure arrives as the
workflow sees it (an ApplicationError typed with its reason, non-retryable when permanent)."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from temporalio.testing import ActivityEnvironment

from activities.capabilities import capability_activities
from capabilities.manifests import Manifests
from idp.capability import Context, Report
from idp.models import Workload
from idp.platform import Platform

MANIFESTS = Manifests()
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def context(
    workload: Workload, generation: int = 1, outputs: dict[str, Any] | None = None
) -> Context:
    """What the engine gives the capability: no Registry input, so no role on the
    ServiceAccount."""
    return Context(
        workload=workload,
        workflow_id=workload.workflow_id,
        generation=generation,
        now=NOW,
        outputs=outputs,
    )


class ManifestsWorker:
    """One worker's Manifests activities, with each workload's outputs remembered between passes
    as its workflow remembers them (kept when a pass fails, dropped by a teardown)."""

    def __init__(self, platform: Platform, cache_dir: Path) -> None:
        actions = MANIFESTS.actions(platform, None, cache_dir)
        self._reconcile, _observe, _apply, self._teardown, _preview = capability_activities(
            MANIFESTS, actions
        )
        self._outputs: dict[str, dict[str, Any] | None] = {}

    def _context(self, workload: Workload, generation: int) -> Context:
        return context(workload, generation, self._outputs.get(workload.workflow_id))

    async def reconcile(self, workload: Workload, generation: int = 1) -> Report:
        ctx = self._context(workload, generation)
        report = await ActivityEnvironment().run(self._reconcile, ctx)
        self._outputs[workload.workflow_id] = report.outputs
        return report

    async def teardown(self, workload: Workload, generation: int = 1) -> Report:
        ctx = self._context(workload, generation)
        report = await ActivityEnvironment().run(self._teardown, ctx)
        self._outputs.pop(workload.workflow_id, None)
        return report
