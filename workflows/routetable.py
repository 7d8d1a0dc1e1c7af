"""The durable memory of an ApiAggregator: its spec and the route table of its hostname, plus the
messages workloads and `idpctl` exchange with it.

Workloads register their `spec.api` entries for a hostname whether or not its ApiAggregator has
been applied yet, so the table can exist before the spec does; it is rendered once both are there.
"""

from datetime import datetime

from pydantic import Field

from idp.models import ApiAggregator, Model
from idp.names import Hostname
from idp.routes import RouteTarget, TargetState
from workflows.state import Condition, Event, Ledger, ManifestsOutput, Phase, State


class TableEntry(State):
    target: RouteTarget
    destination: str
    state: TargetState
    reason: str | None = None
    generation: int = Field(0, description="The table generation that last changed it.")


class AggregatorState(Ledger):
    hostname: str
    aggregator: ApiAggregator | None = None
    entries: list[TableEntry] = []
    generation: int = 0
    written_generation: int = 0
    phase: Phase = Phase.PENDING
    deleting: bool = False
    reconcile_requested: bool = False
    failures: int = 0
    nudge: list[str] = Field(
        [], description="Workloads to ask for a reconcile once written: their answer changed."
    )
    output: ManifestsOutput | None = None
    next_check_at: datetime | None = None

    def accepted(self) -> list[RouteTarget]:
        return [e.target for e in self.entries if e.state == TargetState.ACCEPTED]

    def holders(self) -> list[str]:
        return sorted({e.target.holder for e in self.entries})


# ---- messages --------------------------------------------------------------------------------


class AggregatorInput(Model):
    """Start input: the hostname, and the state when continuing as new."""

    hostname: Hostname
    state: AggregatorState | None = Field(
        None, description="Internal: carried across continue-as-new."
    )


class AggregatorApplyRequest(Model):
    aggregator: ApiAggregator
    request_id: str | None = None


class AggregatorDeleteRequest(Model):
    request_id: str | None = None


class AggregatorStatus(State):
    hostname: str
    aggregator: ApiAggregator | None
    phase: Phase
    generation: int
    written_generation: int
    entries: list[TableEntry]
    conditions: list[Condition]
    events: list[Event]
    output: ManifestsOutput | None
    next_check_at: datetime | None
