"""The capability contract: what every provisioning step implements, built-in or from a plugin.

A capability has two halves, so that the workflow never imports I/O:

- `Capability`, pure and deterministic: its name (condition type and key in `outputs`), the spec
  section and platform settings it owns, the capabilities whose outputs it reads, when it is
  wanted, its **plan** and its **deadline**. The workflow engine runs this half.
- `Actions`, made by `Capability.actions` on the worker: the read-only **observe**, the idempotent
  **apply** of a plan and the **teardown**. They run inside activities, the only place where
  clients, tokens and secrets exist.

Every function takes one `Context`, plain data recorded in history, and the engine turns what
comes back (a `Report`) into conditions, events, metrics, search attributes, `describe` and the
Port entity. A capability never sets a condition itself.

By default observe, plan and apply run inside one activity (`one_activity`): one round trip per
pass, the plan still the same pure function, and recorded in history with the report. A
capability whose plan must see something only the workflow has can set `one_activity = False`:
observe runs as an activity, plan in the workflow, and apply only when the plan is not empty.

Capabilities are found through the entry-point group `idp.capabilities` (the built-in ones too),
so a platform team adds one by installing a package: see docs/capabilities.md.
"""

import functools
import hashlib
import importlib.metadata
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, Field
from temporalio.common import SearchAttributeKey

from idp.aws.grants import AwsGrant
from idp.models import Model, Workload
from idp.sections import field_names

ENTRY_POINT_GROUP = "idp.capabilities"


class Outcome(StrEnum):
    """The reasons a finished pass gives a True condition; the engine counts and shows them."""

    CREATED = "Created"
    APPLIED = "Applied"
    DRIFT_REPAIRED = "DriftRepaired"
    ISSUED = "Issued"
    IN_SYNC = "InSync"
    DELETED = "Deleted"


class Change(Model):
    """One thing a plan would do outside, and why: what `idpctl diff` shows, line by line."""

    action: str = Field(description="A verb: create, update, delete, issue, rotate, revoke, write.")
    subject: str = Field(description="What is acted on, as a person would name it.")
    why: str


class Plan(Model):
    """What would change and why; empty when nothing would. A capability subclasses it to carry
    what its apply needs (ids, versions) besides the changes, never a secret."""

    changes: list[Change] = []

    def __bool__(self) -> bool:
        return bool(self.changes)

    def summary(self) -> str:
        return "; ".join(f"{c.action} {c.subject} ({c.why})" for c in self.changes)


M = TypeVar("M", bound=BaseModel)


class Books(Protocol):
    """What a workflow keeps for every capability, by its name (WorkloadState has these)."""

    outputs: dict[str, Any]
    memory: dict[str, Any]
    requests: dict[str, Any]


class Context(Model):
    """All a capability gets to decide and act by: the workload, what the workflow remembers of
    this capability (its outputs and memory), the outputs of the ones it requires, open requests
    and the workflow's clock."""

    workload: Workload
    workflow_id: str
    generation: int
    now: datetime
    outputs: dict[str, Any] | None = Field(None, description="This capability's, as last recorded.")
    memory: dict[str, Any] = Field({}, description="This capability's durable bookkeeping.")
    inputs: dict[str, Any] = Field({}, description="Outputs of the capabilities it requires.")
    requests: dict[str, Any] = Field({}, description="Open requests, by operation name.")
    unsettled: bool = Field(
        False,
        description="Its last pass failed in a way a retry may fix (a timeout, a 5xx), so what "
        "that pass was making may exist without being recorded: look it up before creating.",
    )

    @classmethod
    def of(
        cls,
        capability: "Capability[Any, Any]",
        workload: Workload,
        workflow_id: str,
        generation: int,
        now: datetime,
        books: "Books",
        unsettled: bool = False,
    ) -> "Context":
        """What `capability` sees of the books a workflow keeps for all of them: its own
        outputs and memory, the outputs of those it requires, the requests it acts on."""
        outputs = books.outputs
        return cls(
            workload=workload,
            workflow_id=workflow_id,
            generation=generation,
            now=now,
            outputs=outputs.get(capability.name),
            memory=books.memory.get(capability.name) or {},
            inputs={n: outputs[n] for n in capability.requires if n in outputs},
            requests={op: r for op, r in books.requests.items() if op in capability.requests},
            unsettled=unsettled,
        )

    def own(self, model: type[M]) -> M | None:
        return None if self.outputs is None else model.model_validate(self.outputs)

    def remembered(self, model: type[M]) -> M:
        return model.model_validate(self.memory)

    def input(self, name: str, model: type[M]) -> M | None:
        value = self.inputs.get(name)
        return None if value is None else model.model_validate(value)


P = TypeVar("P", bound=Plan)
Obs = TypeVar("Obs", bound=BaseModel)

Status = Literal["Ready", "Waiting", "Blocked", "Failed"]


class Fingerprint(Model):
    """The outside state a pass found in sync, as the capability's fleet read gives it back:
    `key` names what the workload holds (unique within the capability), `digest` what it holds
    there. The fleet observer wakes a workload only when the two differ (docs/fleet.md)."""

    key: str = Field(pattern=r"^\S{1,400}$", description="No whitespace.")
    digest: str = Field(pattern=r"^\S{1,64}$", description="No whitespace.")


def digest(value: Any) -> str:
    """A short, stable digest of plain data: what both halves of a fingerprint compute."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Report(Model):
    """What a pass or a teardown of one capability came to.

    `Ready` makes the condition True with `reason`; `Waiting` False, but resolving by itself
    (`phase` is what the workload shows meanwhile); `Blocked` False until a person acts, which
    `wait_ready` answers at once; `Failed` False and retried after the backoff, like a raised
    error, but keeping the outputs of the part that was done. `changed` means something outside
    changed: worth an event."""

    status: Status = "Ready"
    reason: str = Outcome.IN_SYNC
    message: str
    changed: bool = False
    phase: Literal["Pending", "Provisioning"] | None = Field(
        None, description="Waiting only: the phase the workload shows until it resolves."
    )
    cause: str | None = Field(None, description="Why an issuance happened (Issued only).")
    outputs: dict[str, Any] | None = None
    memory: dict[str, Any] = {}
    events: list[str] = Field([], description="Further things worth telling, one line each.")
    handled: list[str] = Field([], description="Requests this pass acted on, by operation.")
    plan: list[Change] = Field([], description="The plan it carried out (empty: in sync).")
    fingerprint: Fingerprint | None = Field(
        None,
        description="What a fleet read must find for this workload to stay asleep; only "
        "when the capability has a fleet read and the pass found it in sync, or, after an "
        "apply, a second observe did. An apply that knows what it left without reading it "
        "back (what its creates answered) may set it; the second observe is then skipped.",
    )


class Preview(Model):
    """What `idpctl diff` shows of one capability: the plan a pass would carry out now, computed
    by the same observe and plan, with no apply."""

    changes: list[Change] = []
    details: list[str] = Field(
        [], description="What a person reads beneath the plan: a unified diff of files, say."
    )
    expected: dict[str, Any] | None = Field(
        None,
        description="Its outputs once the plan is applied, for planning the capabilities that "
        "build on it; None when only the apply can tell.",
    )
    refused: str | None = Field(
        None, description="The sentence a pass would stop at (a foreign resource, say)."
    )


class Related(Model):
    """Entities a capability relates the workload's Port entity to (an API hostname, say)."""

    relation: str = Field(description="The relation on the workload blueprint.")
    blueprint: str = Field(description="The blueprint of the related entities.")
    entities: list[dict[str, Any]] = Field(
        description="Each as Port takes it: identifier, title, properties."
    )


def dump(model: BaseModel | None) -> dict[str, Any] | None:
    return None if model is None else model.model_dump(mode="json", by_alias=True)


class Actions(ABC, Generic[Obs, P]):
    """The worker's half: what runs inside activities."""

    @abstractmethod
    async def observe(self, ctx: Context) -> Obs:
        """Read what exists outside; change nothing."""

    @abstractmethod
    async def apply(self, ctx: Context, plan: P, observation: Obs) -> Report:
        """Carry out `plan` (empty when in sync) and report the outputs; idempotent, so a retry
        after a crash mid-way finishes the job instead of doing it twice."""

    @abstractmethod
    async def teardown(self, ctx: Context) -> Report:
        """Remove what this capability made, as `deletionPolicy` says; idempotent too."""

    async def fleet_observe(self, keys: list[str]) -> dict[str, str]:
        """One read for many workloads: the digest of each of `keys` (see
        `Capability.fingerprint`) as it is outside now, with the keys it found nothing for
        left out. Read-only; raises when it cannot tell, and the fleet observer then wakes
        those workloads for a pass of their own. Only called when `fingerprint` gives keys."""
        raise NotImplementedError(f"{type(self).__name__} has no fleet read")

    async def explain(self, ctx: Context, plan: P, observation: Obs) -> list[str]:
        """What `idpctl diff` shows beneath the plan's lines, such as a unified diff of the
        files it would write, or "no issuance" where people want to hear it; read-only, like
        observe. Never a secret."""
        return []


class Capability(ABC, Generic[Obs, P]):
    """The pure half, which the workflow engine runs (see the module's doc)."""

    name: ClassVar[str]
    # The section of `Workload.spec` it owns (camelCase, as users write it) and its model.
    spec_field: ClassVar[str | None] = None
    spec_model: ClassVar[type[Model] | None] = None
    # Its section of the platform file and the model that validates it.
    settings_field: ClassVar[str | None] = None
    settings_model: ClassVar[type[Model] | None] = None
    # The capabilities it builds on: it runs after them and reads their outputs (ctx.inputs),
    # is skipped in a pass where one of them failed, and is torn down before them.
    requires: ClassVar[tuple[str, ...]] = ()
    observation_model: ClassVar[type[BaseModel]]
    plan_model: ClassVar[type[Plan]] = Plan
    # What its outputs hold; the activity checks every report's outputs against it.
    outputs_model: ClassVar[type[BaseModel] | None] = None
    one_activity: ClassVar[bool] = True
    # The requests it acts on, by operation, each with the sentence that refuses it when this
    # workload does not want the capability ("has no NATS user, so no credentials to rotate").
    requests: ClassVar[dict[str, str]] = {}
    # Search attributes it keeps current on the workflow; registered with the rest at start-up.
    search_attributes: ClassVar[tuple[SearchAttributeKey[Any], ...]] = ()
    # What it looks after, for activity summaries in the UI ("ECR repository and IAM role").
    summary: ClassVar[str] = ""

    def offered(self, settings: Any) -> bool:
        """Whether the platform offers it at all: `settings` is its validated section of the
        platform file, None when absent. Evaluated on the worker."""
        return self.settings_model is None or settings is not None

    def wanted(self, ctx: Context) -> bool:
        """Whether this workload asks for it now; by default, when its spec section is present.
        `ctx.outputs` lets a capability keep running to undo what a removed section made."""
        return self.spec_field is None or self.section(ctx.workload) is not None

    def section(self, workload: Workload) -> Any:
        return workload.spec.section(self.spec_field) if self.spec_field else None

    def check(self, section: Any, settings: Any) -> list[str]:
        """Problems with a workload's section (already validated by spec_model) that only the
        platform file can tell (an unknown server name, say), each one sentence starting with
        the field's path, such as "spec.postgres.server: 'x' is not a server of the platform
        configuration; allowed: main". `settings` is its validated platform section, None when
        the platform does not offer it. Run by idpctl and the Port bridge before anything is
        started; the activity refuses the same input as Blocked when they could not check."""
        return []

    @abstractmethod
    def plan(self, ctx: Context, observation: Obs) -> P:
        """What would change and why: pure and deterministic, from `ctx` and `observation`."""

    def holds(self, ctx: Context) -> bool:
        """Whether a delete must run its teardown: by default when it has outputs or memory.
        Otherwise the engine still runs it when the last pass failed, since that pass may have
        made something before failing, but lets a refusal through, so a workload whose
        capability never got anywhere (an unknown destination, say) stays deletable."""
        return ctx.outputs is not None or bool(ctx.memory)

    def in_sync(self, ctx: Context, observation: Obs) -> Report:
        """The report of a pass whose plan is empty, when plan runs in the workflow (with
        `one_activity`, apply reports every pass itself)."""
        return Report(message="in sync", outputs=ctx.outputs, memory=ctx.memory)

    def expect(self, ctx: Context, plan: P, observation: Obs) -> dict[str, Any] | None:
        """The outputs it will report once `plan` is applied, so that `idpctl diff` can plan the
        capabilities that build on it; None when only the apply can tell (those are then shown
        as waiting for it). By default: what it has, when the plan changes nothing."""
        return None if plan else ctx.outputs

    def fingerprint(self, ctx: Context, observation: Obs) -> Fingerprint | None:
        """When `Actions.fleet_observe` can read this workload's part of the outside together
        with the fleet's: the key and digest of `observation` that the fleet read gives for the
        same state. A workload all of whose capabilities have one sleeps until a deadline or a
        message, and a fleet observer wakes it when a digest changes. None (the default): the
        workload keeps its own drift checks."""
        return None

    def deadline(self, ctx: Context) -> datetime | None:
        """When the loop must wake for this capability even without drift (a refresh, say)."""
        return None

    def describe(self, outputs: Mapping[str, Any]) -> list[str]:
        """The lines `idpctl describe` shows of its outputs."""
        return [f"{key}: {value}" for key, value in outputs.items() if value is not None]

    def port_properties(self, outputs: Mapping[str, Any] | None) -> dict[str, Any]:
        """Its properties on the Port workload entity (declared in the blueprint, see
        `port_schema`); None values when it has no outputs."""
        return {}

    def port_related(self, workload: Workload) -> list[Related]:
        """Entities the workload's entity relates to through this capability."""
        return []

    def port_schema(self) -> dict[str, dict[str, Any]]:
        """The blueprint properties `port_properties` fills, as Port's JSON schema has them."""
        return {}

    def attributes(self, outputs: Mapping[str, Any] | None) -> dict[str, Any]:
        """Values of its `search_attributes`, by name, from its outputs."""
        return {}

    def aws_grants(self, platform: Any, settings: Any) -> list[AwsGrant]:
        """The IAM statements its worker half needs for `platform` (the whole platform file;
        `settings` its own section, None when absent), on the resources its own naming gives,
        for `idpctl platform iam-policy`. None by default: most capabilities call no AWS API."""
        return []

    @abstractmethod
    def actions(self, platform: Any, settings: Any, cache_dir: Path) -> Actions[Obs, P]:
        """The worker's half, made once per worker: `platform` is the whole platform file (the
        shared machinery: destinations, state stores), `settings` its own section."""


class CapabilityError(Exception):
    """An installed capability is broken: named twice, requiring an unknown one, or circular."""


def order(capabilities: list[Capability[Any, Any]]) -> list[Capability[Any, Any]]:
    """Dependency order, by depth and then by name, so every worker walks them the same way:
    the ones that build on nothing first, then those that build on them, and so on (the waves
    a pass runs in). Deletion walks it backwards, so what builds on the others goes first.
    CapabilityError when a required one is missing, or the requirements run in a circle."""
    by_name: dict[str, Capability[Any, Any]] = {}
    for capability in capabilities:
        if capability.name in by_name:
            raise CapabilityError(f"two installed capabilities are named {capability.name!r}")
        by_name[capability.name] = capability
    depths: dict[str, int] = {}

    def depth(name: str, path: tuple[str, ...]) -> int:
        if name in path:
            raise CapabilityError(f"capability {name!r} requires itself, indirectly")
        if name not in depths:
            required = by_name[name].requires
            for other in required:
                if other not in by_name:
                    raise CapabilityError(
                        f"capability {name!r} requires {other!r}, which is not installed"
                    )
            depths[name] = 1 + max((depth(r, (*path, name)) for r in required), default=-1)
        return depths[name]

    return sorted(by_name.values(), key=lambda c: (depth(c.name, ()), c.name))


def waves(capabilities: list[Capability[Any, Any]]) -> list[list[Capability[Any, Any]]]:
    """The waves a pass runs `capabilities` in (given in dependency order): each holds those
    whose required ones, among `capabilities`, are in earlier waves. The engine runs a wave's
    side by side; `idpctl diff` previews them the same way."""
    found: list[list[Capability[Any, Any]]] = []
    pending = list(capabilities)
    while pending:
        blocked = {c.name for c in pending}
        wave = [c for c in pending if not blocked & set(c.requires)]
        pending = [c for c in pending if c not in wave]
        found.append(wave)
    return found


@functools.cache
def installed() -> tuple[Capability[Any, Any], ...]:
    """Every capability installed in this Python environment, in dependency order.

    Loaded once per process: the workflow engine reads this list, so every worker on a task
    queue must have the same capabilities installed, as it must have the same workflow code."""
    found = []
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        loaded = entry_point.load()
        capability = loaded() if isinstance(loaded, type) else loaded
        if not isinstance(capability, Capability):
            raise CapabilityError(
                f"entry point {entry_point.name!r} in group {ENTRY_POINT_GROUP} is not a Capability"
            )
        if capability.name != entry_point.name:
            raise CapabilityError(
                f"entry point {entry_point.name!r} names capability {capability.name!r}; "
                "register it under its own name"
            )
        found.append(capability)
    return tuple(order(found))


def by_name() -> dict[str, Capability[Any, Any]]:
    return {c.name: c for c in installed()}


def check_sections(workload: Workload, settings: Mapping[str, Any]) -> list[str]:
    """What the `check` of every capability named in `settings` (its platform section, None
    when not offered) finds wrong with the section of `workload` it owns, when present."""
    problems: list[str] = []
    for capability in installed():
        section = capability.section(workload)
        if capability.name in settings and section is not None:
            problems += capability.check(section, settings[capability.name])
    return problems


def plugin_sections(
    model: type[BaseModel], kind: Literal["spec", "settings"]
) -> dict[str, type[BaseModel]]:
    """The sections of `model` (WorkloadSpec or Platform) that installed capabilities own
    beyond its own fields, each with the model that validates it."""
    own = field_names(model)
    found: dict[str, type[BaseModel]] = {}
    for capability in installed():
        field, section = (
            (capability.spec_field, capability.spec_model)
            if kind == "spec"
            else (capability.settings_field, capability.settings_model)
        )
        if field and section is not None and field not in own:
            found[field] = section
    return found
