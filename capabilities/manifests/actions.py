"""The Manifests capability's worker half: reading and committing through the destination's git
state store, and the report of a pass."""

from __future__ import annotations

from pathlib import Path

from activities.statestore import destination_store
from capabilities.manifests.capability import (
    ManifestsObservation,
    ManifestsOutput,
    manifests_change,
    write,
)
from idp.capability import Actions, Context, Outcome, Plan, Report, dump
from idp.manifests import digest
from idp.platform import Destination, Platform
from idp.statestore import ChangeResult, StateStore


class ManifestsActions(Actions[ManifestsObservation, Plan]):
    def __init__(self, platform: Platform, cache_dir: Path) -> None:
        self._platform = platform
        self._cache_dir = cache_dir

    def _destination(self, ctx: Context) -> Destination:
        return self._platform.require_destination(ctx.workload.spec.destination)

    def _store(self, destination: Destination) -> StateStore:
        return destination_store(destination, self._cache_dir)

    async def observe(self, ctx: Context) -> ManifestsObservation:
        destination = self._destination(ctx)
        base = destination.state_store.path
        files = await self._store(destination).listing(write(ctx, base))
        return ManifestsObservation(base=base, files=files)

    async def apply(self, ctx: Context, plan: Plan, observation: ManifestsObservation) -> Report:
        change = write(ctx, observation.base)
        result = None
        # In sync: no commit and no second fetch. Otherwise the store commits the desired state
        # on the head it fetches then: what the plan says, or, if someone pushed since observe,
        # what the plan would say now.
        if plan:
            result = await self._store(self._destination(ctx)).apply(change)
        return report(change.directory, digest(change.files), result, ctx.own(ManifestsOutput))

    async def teardown(self, ctx: Context) -> Report:
        destination = self._destination(ctx)
        change = manifests_change(destination.state_store.path, ctx, {}, "delete")
        result = await self._store(destination).apply(change)
        message = (
            f"removed {change.directory}" if result.commit else f"{change.directory} already absent"
        )
        return Report(reason=Outcome.DELETED, message=message)


def report(
    directory: str,
    rendered: str,
    result: ChangeResult | None,
    previous: ManifestsOutput | None,
) -> Report:
    """A pass as the condition and the events say it. A commit of the same rendering as last
    time can only have put back what someone changed; a new rendering is the spec applied."""
    commit = result.commit if result else None
    outputs = dump(
        ManifestsOutput(
            directory=directory,
            digest=rendered,
            commit=commit or (previous.commit if previous else None),
        )
    )
    if result is None or result.commit is None:
        message = f"{directory} in sync"
        return Report(reason=Outcome.IN_SYNC, message=message, outputs=outputs)
    files = _files(result)
    if previous is not None and previous.digest == rendered:
        message = f"restored files changed outside the reconciler: {files}"
        return Report(reason=Outcome.DRIFT_REPAIRED, changed=True, message=message, outputs=outputs)
    message = f"committed {files} at {result.commit[:12]}"
    return Report(reason=Outcome.APPLIED, changed=True, message=message, outputs=outputs)


def _files(result: ChangeResult) -> str:
    names = [
        *(path.rsplit("/", 1)[-1] for path in result.written),
        *(f"-{path.rsplit('/', 1)[-1]}" for path in result.removed),
    ]
    return ", ".join(names) or "nothing"
