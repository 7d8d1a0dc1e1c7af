"""The durable memory of a workload: what it was asked for and what it created.

One pydantic model, carried across continue-as-new, so a workflow that lives for years keeps
knowing which commit, registry, user and credential version are its own.
"""

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from idp.models import Workload
from workflows import legacy

MAX_EVENTS = 20
MAX_REQUEST_IDS = 256


class Phase(StrEnum):
    PENDING = "Pending"
    PROVISIONING = "Provisioning"
    READY = "Ready"
    DEGRADED = "Degraded"
    PAUSED = "Paused"
    DELETING = "Deleting"
    DELETED = "Deleted"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"


class State(BaseModel):
    """Base for mutable workflow state: camelCase JSON like the resources, and lenient about
    fields an older worker did not know, so histories keep replaying as the state grows."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


class Condition(State):
    type: str
    status: ConditionStatus
    reason: str
    message: str
    last_transition_time: datetime
    permanent: bool = Field(
        False,
        description="False and retrying cannot help: a person must change the spec, the "
        "platform file or what is outside (an unknown account, a refused path, a foreign "
        "resource). `wait_ready` and `idpctl apply --wait` answer at once on such a condition.",
    )
    waiting: Phase | None = Field(
        None,
        description="False, but waiting for something that comes by itself or by another "
        "resource's apply; the phase the workload shows meanwhile (Pending or Provisioning) "
        "instead of Degraded.",
    )


def blocking(conditions: Iterable[Condition]) -> list[Condition]:
    """The False conditions that retrying cannot fix: a person must act."""
    return [c for c in conditions if c.status == ConditionStatus.FALSE and c.permanent]


class Event(State):
    """A notable thing the workflow did, kept briefly for `describe`."""

    time: datetime
    step: str
    message: str


class ManifestsOutput(State):
    """Where a set of manifests was committed (the aggregator's routes, say)."""

    directory: str
    digest: str
    commit: str | None = None


class Ledger(State):
    """What every entity workflow keeps for `describe`: conditions, recent events, and the
    external request ids it has acted on (so a re-delivered request changes nothing twice)."""

    conditions: list[Condition] = []
    events: list[Event] = []
    request_ids: list[str] = []

    def handled(self, request_id: str | None) -> bool:
        """Whether a request of this id was acted on already (a validator's question: it must
        not record anything)."""
        return request_id is not None and request_id in self.request_ids

    def seen(self, request_id: str | None) -> bool:
        """Record an external request id; True when it was handled before (a re-delivery)."""
        if request_id is None:
            return False
        if self.handled(request_id):
            return True
        self.request_ids = [*self.request_ids[-(MAX_REQUEST_IDS - 1) :], request_id]
        return False

    def set_condition(
        self,
        type_: str,
        status: ConditionStatus,
        reason: str,
        message: str,
        now: datetime,
        permanent: bool = False,
        waiting: Phase | None = None,
    ) -> None:
        current = self.condition(type_)
        if current and (
            current.status,
            current.reason,
            current.message,
            current.permanent,
            current.waiting,
        ) == (status, reason, message, permanent, waiting):
            return
        changed = current is None or current.status != status
        condition = Condition(
            type=type_,
            status=status,
            reason=reason,
            message=message,
            last_transition_time=now if changed else current.last_transition_time,
            permanent=permanent,
            waiting=waiting,
        )
        if current is None:
            self.conditions.append(condition)
        else:
            self.conditions = [condition if c.type == type_ else c for c in self.conditions]

    def drop_condition(self, type_: str) -> None:
        self.conditions = [c for c in self.conditions if c.type != type_]

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def settled_phase(self) -> "Phase":
        """The phase a finished pass shows: Ready only when every condition is True. A False
        condition waiting on something that resolves by itself shows the phase it waits in;
        any other is Degraded."""
        false = [c for c in self.conditions if c.status != ConditionStatus.TRUE]
        if any(c.waiting is None for c in false):
            return Phase.DEGRADED
        waiting = {c.waiting for c in false}
        if Phase.PENDING in waiting:
            return Phase.PENDING
        return Phase.PROVISIONING if waiting else Phase.READY

    def add_event(self, step: str, message: str, now: datetime) -> None:
        self.events = [
            *self.events[-(MAX_EVENTS - 1) :],
            Event(time=now, step=step, message=message),
        ]


class WorkloadState(Ledger):
    """Everything a workload's workflow remembers. What each capability made is kept under its
    name, as JSON its own models read: the engine stores it without knowing its shape."""

    workload: Workload
    generation: int = 1
    observed_generation: int = 0
    phase: Phase = Phase.PENDING
    paused: bool = False
    deleting: bool = False
    reconcile_requested: bool = False
    outputs: dict[str, Any] = Field({}, description="Each capability's outputs, by its name.")
    memory: dict[str, dict[str, Any]] = Field(
        {}, description="Each capability's bookkeeping (deadlines, keys to revoke), by its name."
    )
    requests: dict[str, dict[str, Any]] = Field(
        {}, description="Requests the loop has yet to act on (rotate_credentials), by operation."
    )
    rolled_out: list[str] = Field(
        [], description="Capabilities that have run in this workflow: past their rollout patch."
    )
    fingerprints: dict[str, dict[str, str]] = Field(
        {},
        description="What each capability's fleet read must find for the workload to sleep on "
        "(a Fingerprint), as its last pass found it in sync.",
    )
    passes: int = 0
    failures: int = 0
    next_check_at: datetime | None = None
    published: str | None = Field(None, description="Digest of what Port last showed.")

    @model_validator(mode="before")
    @classmethod
    def _from_first_version(cls, data: Any) -> Any:
        return legacy.upgrade_state(data)
