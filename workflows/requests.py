"""Which requests a workload can act on: the one rule every entry point meets.

idpctl, the Port bridge and `temporal workflow update execute` all send the same updates, whose
validators refuse with the sentence below before anything reaches history; the signals of the
same names (kept for callers that cannot wait for an answer) leave the sentence as an event.
"""

from typing import Literal, TypeVar

from pydantic import ValidationError
from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue

with workflow.unsafe.imports_passed_through():
    from idp.capability import installed
    from idp.loading import describe_errors
    from idp.models import Model
    from workflows.engine import context
    from workflows.messages import RotateRequest, SignalRequest
    from workflows.state import WorkloadState

M = TypeVar("M", bound="Model")
Operation = Literal["reconcile", "pause", "resume", "rotate_credentials", "delete"]
# The input each request reads (an update and a signal of the same name read the same).
REQUEST_MODELS: dict[Operation, type[SignalRequest]] = {
    "reconcile": SignalRequest,
    "pause": SignalRequest,
    "resume": SignalRequest,
    "rotate_credentials": RotateRequest,
    "delete": SignalRequest,
}
# What a handler gets when the message came without input (`temporal workflow signal` with no
# --input, the aggregator's nudge): the SDK passes a RawValue through only when the parameter
# is annotated exactly so, hence a sentinel rather than None.
NO_INPUT = RawValue(Payload())
# Requests that only a capability acts on, with the refusal when no capability the workload
# wants does (the first installed one's sentence: "has no NATS user, so ...").
ACTED_ON: dict[str, str] = {
    op: sentence for c in reversed(installed()) for op, sentence in c.requests.items()
}


class UnreadableInput(Exception):
    """A message's input is not the documented JSON; the message says which field and why."""


def refusal(operation: Operation, state: WorkloadState) -> str | None:
    """Why `operation` cannot take effect on this workload now; None when it can."""
    metadata = state.workload.metadata
    name = f"{metadata.system}/{metadata.name}"
    if state.deleting:
        # Asking again to delete is the same request: answered, not refused.
        return None if operation == "delete" else f"workload {name} is being deleted"
    # What resuming would not fix comes first.
    if operation in ACTED_ON and not _wanted_by_any(operation, state):
        return f"workload {name} {ACTED_ON[operation]}"
    if state.paused and operation in ("reconcile", "rotate_credentials"):
        return f"workload {name} is paused; resume it first"
    return None


def _wanted_by_any(operation: str, state: WorkloadState) -> bool:
    """Whether a capability this workload wants acts on `operation`."""
    return any(operation in c.requests and c.wanted(context(c, state)) for c in installed())


def read_input(raw: RawValue, model: type[M], message: str) -> M:
    """Decode a message's input; an absent or null input is the model's defaults.

    Taken raw so that a bad input is answered with the field path, as `idpctl apply` does,
    instead of the SDK's "Failed decoding arguments" (updates) or a dropped signal."""
    try:
        if raw.payload.metadata.get("encoding") in (None, b"binary/null"):
            return model()
        return workflow.payload_converter().from_payload(raw.payload, model)
    except ValidationError as error:
        problems = "; ".join(describe_errors(error, model))
        raise UnreadableInput(f"{message}: {problems}") from None
    except ValueError:
        raise UnreadableInput(f"{message}: the input is not a JSON object") from None
