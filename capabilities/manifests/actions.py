"""The Manifests capability's worker half: reading and committing through the destination's git
state store, and the report of a pass."""

from __future__ import annotations

import asyncio
import difflib
from pathlib import Path

from activities.statestore import destination_store
from capabilities.manifests.capability import (
    Holding,
    ManifestsObservation,
    ManifestsOutput,
    Tree,
    manifests_change,
    recorded,
    write,
)
from idp import statechange
from idp.capability import Actions, Context, Outcome, Plan, Report, dump
from idp.platform import Destination, Platform
from idp.statechange import ChangeResult
from idp.statestore import StateStore


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
        output = recorded(ctx, change, result.commit if result else None)
        return report(output, result, ctx.own(ManifestsOutput))

    async def fleet_observe(self, keys: list[str]) -> dict[str, str]:
        """One fetch and one ls-tree per state store, however many keys: each key's digest at
        the store's head, by the `Holding.digest` its fingerprint was taken with. A key naming a
        destination the platform no longer has is left out, so its workload looks for itself."""
        held: dict[StateStore, list[tuple[str, Holding, str]]] = {}
        for key in keys:
            holding = Holding.parse(key)
            destination = self._platform.destination(holding.destination) if holding else None
            if holding and destination:
                entry = (key, holding, destination.state_store.path)
                held.setdefault(self._store(destination), []).append(entry)
        reads = [_read(store, keyed) for store, keyed in held.items()]
        found: dict[str, str] = {}
        for digests in await asyncio.gather(*reads):
            found |= digests
        return found

    async def explain(
        self, ctx: Context, plan: Plan, observation: ManifestsObservation
    ) -> list[str]:
        """A unified diff, git's way, of each file the plan writes or deletes, from its text at
        the state store's head to the text the store would commit."""
        if not plan:
            return []
        change = write(ctx, observation.base)
        written, removed = statechange.preview(change, observation.files)
        # The bytes the store writes, ownership records included, from its own rendering.
        wanted = statechange.desired_files(change) | statechange.record_files(change)
        current = await self._texts(self._store(self._destination(ctx)), [*written, *removed])
        lines: list[str] = []
        for path in sorted([*written, *removed]):
            before = current.get(path)
            after = wanted[path].decode() if path in written else None
            lines += difflib.unified_diff(
                [] if before is None else before.splitlines(),
                [] if after is None else after.splitlines(),
                "/dev/null" if before is None else f"a/{path}",
                "/dev/null" if after is None else f"b/{path}",
                lineterm="",
            )
        return lines

    @staticmethod
    async def _texts(store: StateStore, paths: list[str]) -> dict[str, str]:
        """The text of each of `paths` that exists at the head, read directory by directory."""
        found: dict[str, str] = {}
        for directory in sorted({path.rsplit("/", 1)[0] for path in paths}):
            files = await store.read(directory)
            found |= {f"{directory}/{name}": text for name, text in files.items()}
        return {path: found[path] for path in paths if path in found}

    async def teardown(self, ctx: Context) -> Report:
        destination = self._destination(ctx)
        change = manifests_change(destination.state_store.path, ctx, {}, "delete")
        result = await self._store(destination).apply(change)
        message = (
            f"removed {change.directory}" if result.commit else f"{change.directory} already absent"
        )
        return Report(reason=Outcome.DELETED, message=message)


async def _read(store: StateStore, keyed: list[tuple[str, Holding, str]]) -> dict[str, str]:
    """The digests of one store's keys, from one listing of its destinations' directories."""
    # Each destination's directory: it holds the workloads' directories and their records.
    roots = sorted({"/".join(filter(None, (base, h.destination))) for _, h, base in keyed})
    tree = Tree.of(await store.files(roots))
    digests = ((key, holding.digest(base, tree)) for key, holding, base in keyed)
    return {key: digest for key, digest in digests if digest is not None}


def report(
    output: ManifestsOutput, result: ChangeResult | None, previous: ManifestsOutput | None
) -> Report:
    """A pass as the condition and the events say it. A commit of the same rendering as last
    time can only have put back what someone changed; a new rendering is the spec applied."""
    outputs = dump(output)
    if result is None or result.commit is None:
        message = f"{output.directory} in sync"
        return Report(reason=Outcome.IN_SYNC, message=message, outputs=outputs)
    files = _files(result)
    if previous is not None and previous.digest == output.digest:
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
