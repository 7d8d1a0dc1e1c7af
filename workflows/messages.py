"""The JSON contract of the workflows: inputs, message arguments, and what `status` returns.

These names are what `temporal workflow start/signal/update/query` users type, so they are kept
stable and documented in the README.
"""

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from idp.models import Model, Workload
from workflows.state import Condition, Event, Phase, State, WorkloadState


class WorkloadStatus(State):
    name: str
    system: str
    workload: Workload
    phase: Phase
    paused: bool
    generation: int
    observed_generation: int
    conditions: list[Condition]
    outputs: dict[str, Any] = Field(description="Each capability's outputs, by its name.")
    events: list[Event]
    next_check_at: datetime | None
    requests: list[str] = Field([], description="Requests not acted on yet, by operation.")
    watched: bool = Field(
        False,
        description="The fleet observer checks it for drift each interval (docs/fleet.md); "
        "next_check_at is then only its own check, should the observer be gone.",
    )


class WorkloadBooks(State):
    """What the next pass would plan from (the `books` query): `idpctl diff` runs each
    capability's preview on it as the engine would run its reconcile (starter/preview.py)."""

    workload: Workload
    generation: int
    phase: Phase
    paused: bool = False
    deleting: bool = False
    outputs: dict[str, Any] = Field({}, description="Each capability's outputs, by its name.")
    memory: dict[str, dict[str, Any]] = Field({}, description="Each capability's bookkeeping.")
    requests: dict[str, dict[str, Any]] = Field(
        {}, description="Requests the next pass acts on, by operation."
    )


class WorkloadInput(Model):
    """Start input: the Workload document, and the state when continuing as new."""

    workload: Workload
    request_id: str | None = None
    state: WorkloadState | None = Field(
        None, description="Internal: carried across continue-as-new."
    )


# The longest an update waits for a generation to settle: a caller that would wait longer asks
# again.
MAX_WAIT_SECONDS = 3600


class ApplyRequest(Model):
    workload: Workload
    request_id: str | None = None
    wait_seconds: int | None = Field(
        None,
        ge=1,
        le=MAX_WAIT_SECONDS,
        description="Answer once the applied generation settles, as `wait_ready` would, or after "
        "this many seconds; the answer then carries the status. One update where apply and "
        "`wait_ready` were two, each with a workflow task of its own.",
    )


class ApplyResult(Model):
    generation: int
    changed: bool


class WorkloadApplyResult(ApplyResult):
    status: WorkloadStatus | None = Field(None, description="Only when the apply waited.")

    @model_serializer(mode="wrap")
    def _status_only_when_waited(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # An apply that did not wait answers exactly as before the field existed.
        data = handler(self)
        if self.status is None:
            data.pop("status", None)
        return data


class WaitReadyRequest(Model):
    generation: int = Field(ge=1)
    timeout_seconds: int = Field(300, ge=1, le=MAX_WAIT_SECONDS)


class SignalRequest(Model):
    """Argument of every signal; all optional, so `temporal workflow signal` needs no input."""

    request_id: str | None = None
    reason: str | None = Field(None, max_length=500)


class RotateRequest(SignalRequest):
    """`rotate_credentials`: a new key at once; the old one is revoked after the grace period,
    or immediately with `revokeOld: now` (a leak)."""

    revoke_old: Literal["now", "after-grace"] = "after-grace"
