"""Activities that write a workload's manifests into its destination's git state store."""

from collections.abc import Mapping
from pathlib import Path

from temporalio import activity

from activities.errors import as_activity_errors
from idp.manifests import (
    SERVICE_ACCOUNT_FILE,
    digest,
    owner_records,
    render_workload,
    workload_claims,
    workload_directory,
)
from idp.models import Model, Workload
from idp.platform import Destination, Platform
from idp.statestore import Change, ChangeResult, StateStore, state_store

# The files this step manages in the workload's directory, which also holds the delivered NATS
# secret (idp/delivery/): only these are written or deleted by a write, never that secret.
MANIFEST_FILES = frozenset({SERVICE_ACCOUNT_FILE})


class ManifestsInput(Model):
    workload: Workload
    generation: int
    workflow_id: str
    role_arn: str | None = None


class ManifestsResult(Model):
    directory: str
    digest: str
    commit: str | None
    written: list[str] = []
    removed: list[str] = []

    @classmethod
    def of(
        cls, directory: str, files: Mapping[str, str], result: ChangeResult
    ) -> "ManifestsResult":
        return cls(
            directory=directory,
            digest=digest(files),
            commit=result.commit,
            written=list(result.written),
            removed=list(result.removed),
        )


def destination_store(destination: Destination, cache_dir: Path) -> StateStore:
    """The worker's one StateStore per repository and branch, shared by every step."""
    config = destination.state_store
    return state_store(config.url, config.branch, cache_dir)


class StateStoreActivities:
    def __init__(self, platform: Platform, cache_dir: Path) -> None:
        self._platform = platform
        self._cache_dir = cache_dir

    def _destination(self, workload: Workload) -> Destination:
        return self._platform.require_destination(workload.spec.destination)

    def _store(self, destination: Destination) -> StateStore:
        return destination_store(destination, self._cache_dir)

    @activity.defn
    async def write_workload_manifests(self, request: ManifestsInput) -> ManifestsResult:
        with as_activity_errors():
            files = render_workload(request.workload, role_arn=request.role_arn)
            return await self._apply(request, files, "apply")

    @activity.defn
    async def remove_workload_manifests(self, request: ManifestsInput) -> ManifestsResult:
        with as_activity_errors():
            return await self._apply(request, {}, "delete")

    async def _apply(
        self, request: ManifestsInput, files: Mapping[str, str], verb: str
    ) -> ManifestsResult:
        destination = self._destination(request.workload)
        change = manifests_change(destination.state_store.path, request, files, verb)
        result = await self._store(destination).apply(change)
        return ManifestsResult.of(change.directory, files, result)


def manifests_change(
    base: str, request: ManifestsInput, files: Mapping[str, str], verb: str
) -> Change:
    """The state-store change writing (or, with no files, removing) a workload's manifests,
    holding its directory and ServiceAccount against every other workload."""
    workload = request.workload
    return Change(
        workload_directory(base, workload),
        files,
        _message(request, verb),
        # A write manages its own files beside the delivered secret; a removal empties the
        # directory, unless another workload holds it (then nothing there is ours).
        owned=MANIFEST_FILES if files else None,
        owner=workload.workflow_id,
        claims=workload_claims(base, workload),
        records=owner_records(base, workload.spec.destination, workload.spec.namespace),
    )


def _message(request: ManifestsInput, verb: str) -> str:
    workload = request.workload
    return (
        f"{verb} Workload {workload.metadata.system}/{workload.metadata.name} "
        f"generation {request.generation}\n\nWorkflow: {request.workflow_id}"
    )
