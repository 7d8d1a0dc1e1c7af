"""The durable memory of a workload: what it was asked for and what it created.

One pydantic model, carried across continue-as-new, so a workflow that lives for years keeps
knowing which commit, registry, user and credential version are its own.
"""

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from idp.models import Workload

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


# Reasons of a False condition that is not a failure: the workload waits for something that
# comes by itself or by another resource's apply, so it is not Degraded. An ApiAggregator not
# applied yet leaves the workload Pending; routes accepted but not yet written, Provisioning.
WAITING = {"AggregatorPending": Phase.PENDING, "RoutesNotWritten": Phase.PROVISIONING}


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


def blocking(conditions: Iterable[Condition]) -> list[Condition]:
    """The False conditions that retrying cannot fix: a person must act."""
    return [c for c in conditions if c.status == ConditionStatus.FALSE and c.permanent]


class Event(State):
    """A notable thing the workflow did, kept briefly for `describe`."""

    time: datetime
    step: str
    message: str


class ManifestsOutput(State):
    directory: str
    digest: str
    commit: str | None = None


class RegistryOutput(State):
    repository_uri: str
    role_arn: str


class NatsOutput(State):
    user_id: str
    account_id: str
    name: str
    public_key: str


class CredentialsOutput(State):
    """What was issued and delivered; never the credentials themselves."""

    version: int
    public_key: str
    issued_at: datetime
    expires_at: datetime = Field(description="From the user JWT.")
    fingerprint: str
    delivery: str
    location: str
    permissions_digest: str
    delivery_digest: str
    next_refresh_at: datetime = Field(description="By the workflow's clock and the policy.")
    reason: str


class ApiRoute(State):
    """Where one hostname's aggregator has this workload's targets, as it last answered."""

    hostname: str
    paths: list[str]
    state: str = Field(
        description="Accepted, PathConflict, WrongDestination, AggregatorPending or "
        "RoutesNotWritten."
    )
    reason: str | None = None
    commit: str | None = None


class Outputs(State):
    registry: RegistryOutput | None = None
    nats: NatsOutput | None = None
    credentials: CredentialsOutput | None = None
    manifests: ManifestsOutput | None = None
    api: list[ApiRoute] = []


class Rotation(State):
    """An explicit rotate_credentials request waiting for the loop."""

    reason: str
    revoke_old_now: bool


class Revocation(State):
    """An old nkey to revoke once the workload had time to pick up the new one."""

    public_key: str
    revoke_at: datetime


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
    ) -> None:
        current = self.condition(type_)
        if current and (current.status, current.reason, current.message, current.permanent) == (
            status,
            reason,
            message,
            permanent,
        ):
            return
        changed = current is None or current.status != status
        condition = Condition(
            type=type_,
            status=status,
            reason=reason,
            message=message,
            last_transition_time=now if changed else current.last_transition_time,
            permanent=permanent,
        )
        if current is None:
            self.conditions.append(condition)
        else:
            self.conditions = [condition if c.type == type_ else c for c in self.conditions]

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def settled_phase(self) -> "Phase":
        """The phase a finished pass shows: Ready only when every condition is True. A False
        condition waiting on something that resolves by itself keeps its own phase (see
        WAITING); any other is Degraded."""
        false = [c for c in self.conditions if c.status != ConditionStatus.TRUE]
        if any(c.reason not in WAITING for c in false):
            return Phase.DEGRADED
        waiting = {WAITING[c.reason] for c in false}
        if Phase.PENDING in waiting:
            return Phase.PENDING
        return Phase.PROVISIONING if waiting else Phase.READY

    def add_event(self, step: str, message: str, now: datetime) -> None:
        self.events = [
            *self.events[-(MAX_EVENTS - 1) :],
            Event(time=now, step=step, message=message),
        ]


class WorkloadState(Ledger):
    workload: Workload
    generation: int = 1
    observed_generation: int = 0
    phase: Phase = Phase.PENDING
    paused: bool = False
    deleting: bool = False
    reconcile_requested: bool = False
    outputs: Outputs = Outputs()
    failures: int = 0
    next_check_at: datetime | None = None
    rotation: Rotation | None = None
    key_rotated_at: datetime | None = None
    revocations: list[Revocation] = []
    published: str | None = Field(None, description="Digest of what Port last showed.")
