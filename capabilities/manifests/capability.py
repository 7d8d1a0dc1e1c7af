"""The Manifests capability's pure half: the files a workload keeps in its directory of the
destination's git state store (its ServiceAccount, annotated with the Registry's role).

The plan is the state store's own preview (idp/statechange.py) of the commit that would make the
directory hold what the workload renders, against the object ids observe listed: what would be
written and removed, and why. Who holds a name is not part of it: the store decides that when it
commits, on the head it commits on (idp/manifests.py says how names are held).

Its fingerprint is the object ids of the files a pass repairs (`Holding`), which the fleet read
finds for every workload of a state store in one look at the remote and one ls-tree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from capabilities import ASSIGNED_ON_APPLY
from capabilities.registry import RegistryOutput
from idp import statechange
from idp.capability import Capability, Change, Context, Fingerprint, Plan, dump
from idp.capability import digest as fingerprint_digest
from idp.manifests import (
    SERVICE_ACCOUNT_FILE,
    digest,
    owner_records,
    render_workload,
    resource_directory,
    workload_claims,
    workload_directory,
)
from idp.models import Model, Workload
from idp.platform import Platform

if TYPE_CHECKING:
    from capabilities.manifests.actions import ManifestsActions

# The files this capability manages in the workload's directory, which also holds the delivered
# NATS secret (idp/delivery/): only these are written or deleted by a write, never that secret.
MANIFEST_FILES = frozenset({SERVICE_ACCOUNT_FILE})


class ManifestsOutput(Model):
    directory: str
    digest: str = Field(description="Of the rendered files: tells drift repairs from changes.")
    commit: str | None = Field(None, description="The last commit that wrote them.")


class ManifestsObservation(Model):
    base: str = Field(description="The destination's base directory in its state store.")
    files: dict[str, str] = Field(
        description="Path -> git object id of what the commit would look at (statestore.listing)."
    )


def manifests_change(
    base: str, ctx: Context, files: Mapping[str, str], verb: str
) -> statechange.Change:
    """The state-store change writing (or, with no files, removing) a workload's manifests,
    holding its directory and ServiceAccount against every other workload; its message names
    the generation and the workflow."""
    workload = ctx.workload
    return statechange.Change(
        workload_directory(base, workload),
        files,
        (
            f"{verb} Workload {workload.metadata.system}/{workload.metadata.name} "
            f"generation {ctx.generation}\n\nWorkflow: {ctx.workflow_id}"
        ),
        # A write manages its own files beside the delivered secret; a removal empties the
        # directory, unless another workload holds it (then nothing there is ours).
        owned=MANIFEST_FILES if files else None,
        owner=workload.workflow_id,
        claims=workload_claims(base, workload),
        records=owner_records(base, workload.spec.destination, workload.spec.namespace),
    )


def role_arn(ctx: Context) -> str | None:
    """The role the ServiceAccount is annotated with: the Registry's, when it made one."""
    registry = ctx.input("Registry", RegistryOutput)
    return registry.role_arn if registry else None


def write(ctx: Context, base: str) -> statechange.Change:
    """The change a pass commits: the rendered files, as of this generation."""
    files = render_workload(ctx.workload, role_arn=role_arn(ctx))
    return manifests_change(base, ctx, files, "apply")


def recorded(ctx: Context, change: statechange.Change, commit: str | None) -> ManifestsOutput:
    """The outputs of a pass that made `commit` (None: it committed nothing, so the files are
    still the last commit's)."""
    previous = ctx.own(ManifestsOutput)
    return ManifestsOutput(
        directory=change.directory,
        digest=digest(change.files),
        commit=commit or (previous.commit if previous else None),
    )


def plan_manifests(ctx: Context, observation: ManifestsObservation) -> Plan:
    change = write(ctx, observation.base)
    written, removed = statechange.preview(change, observation.files)
    inside = change.directory + "/"
    return Plan(
        changes=[
            *(_written(path, path.startswith(inside), observation.files) for path in written),
            *(_removed(path, path.startswith(inside)) for path in removed),
        ]
    )


def _written(path: str, manifest: bool, observed: Mapping[str, str]) -> Change:
    if path not in observed:
        why = "it is missing" if manifest else "the workload's ownership record is missing"
    elif manifest:
        why = "it differs from what the workload renders"
    else:
        why = "the ownership record names another holder"
    return Change(action="write", subject=path, why=why)


def _removed(path: str, manifest: bool) -> Change:
    why = "the workload no longer renders it" if manifest else "the workload no longer holds it"
    return Change(action="delete", subject=path, why=why)


@dataclass(frozen=True)
class Tree:
    """Regular files of a state store at one commit, as `listing` and `files` read them: path ->
    object id, and the paths holding each id (how an owner's records are found, unread)."""

    files: Mapping[str, str]
    paths: Mapping[str, list[str]]

    @classmethod
    def of(cls, files: Mapping[str, str]) -> Tree:
        paths: dict[str, list[str]] = {}
        for path, oid in files.items():
            paths.setdefault(oid, []).append(path)
        return cls(files, paths)


@dataclass(frozen=True)
class Holding:
    """What a pass repairs for one workload, found the same way in its observation and in a
    fleet read of the whole store: its MANIFEST_FILES, and the ownership records in its
    namespace that hold its owner's id (its ServiceAccount's, which a pass puts back, and any
    it no longer claims, which a pass deletes). Nothing else in the directory: the pass leaves
    the delivered secret and strays alone, so a credential rotation wakes nobody here."""

    destination: str
    namespace: str
    name: str
    owner: str

    @classmethod
    def of(cls, workload: Workload) -> Holding:
        spec = workload.spec
        return cls(spec.destination, spec.namespace, workload.metadata.name, workload.workflow_id)

    @classmethod
    def parse(cls, key: str) -> Holding | None:
        place, _, owner = key.partition(":")
        parts = place.split("/")
        if len(parts) != 3 or not all(parts) or not owner:
            return None
        destination, namespace, name = parts
        return cls(destination, namespace, name, owner)

    @property
    def key(self) -> str:
        """Like "dev/shop/cart:workload/shop/cart": labels and an id, so no whitespace. Without
        the destination's base, so that a fleet read looks where the platform file puts it now."""
        return f"{self.destination}/{self.namespace}/{self.name}:{self.owner}"

    def digest(self, base: str, tree: Tree) -> str | None:
        """Of what it holds in `tree`; None when it holds nothing there. Object ids only, as
        the plan compares them: either regular mode is the same file to a pass, and a symlink
        or submodule in a manifest's place is missing to both."""
        directory = resource_directory(base, self.destination, self.namespace, self.name)
        manifests = {
            name: tree.files[f"{directory}/{name}"]
            for name in sorted(MANIFEST_FILES)
            if f"{directory}/{name}" in tree.files
        }
        records = owner_records(base, self.destination, self.namespace) + "/"
        held = sorted(
            path.removeprefix(records)
            for path in tree.paths.get(statechange.record_id(self.owner), ())
            if path.startswith(records)
        )
        if not manifests and not held:
            return None
        return fingerprint_digest({"manifests": manifests, "records": held})


class Manifests(Capability[ManifestsObservation, Plan]):
    name = "Manifests"
    requires = ("Registry",)
    observation_model = ManifestsObservation
    outputs_model = ManifestsOutput
    summary = "manifests in the state store"

    def plan(self, ctx: Context, observation: ManifestsObservation) -> Plan:
        return plan_manifests(ctx, observation)

    def expect(self, ctx: Context, plan: Plan, observation: ManifestsObservation) -> dict[str, Any]:
        # Only the commit a write makes is not known before it is made.
        commit = ASSIGNED_ON_APPLY if plan else None
        return dump(recorded(ctx, write(ctx, observation.base), commit))

    def fingerprint(self, ctx: Context, observation: ManifestsObservation) -> Fingerprint | None:
        # observe lists every file a Holding looks at: the directory's, and the owner's records.
        holding = Holding.of(ctx.workload)
        found = holding.digest(observation.base, Tree.of(observation.files))
        return None if found is None else Fingerprint(key=holding.key, digest=found)

    def describe(self, outputs: Mapping[str, Any]) -> list[str]:
        output = ManifestsOutput.model_validate(outputs)
        return [f"state store: {output.directory} (commit {(output.commit or '-')[:12]})"]

    def actions(self, platform: Platform, settings: None, cache_dir: Path) -> ManifestsActions:
        # Imported here: git and the state store belong to the worker, never to the workflow.
        from capabilities.manifests.actions import ManifestsActions

        return ManifestsActions(platform, cache_dir)
