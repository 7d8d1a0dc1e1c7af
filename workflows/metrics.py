"""The project's own metrics, emitted from workflow code.

They go through `workflow.metric_meter()`, which the SDK silences while a workflow replays, so a
worker picking up a long history (after a restart, a cache eviction or continue-as-new) does not
count the same pass or repair twice. The worker exports them with the SDK's metrics (see
starter/telemetry.py); the meter adds namespace, task queue and workflow type to every series.
"""

from temporalio import workflow

DRIFT_REPAIRED = "DriftRepaired"


def reconcile_pass(kind: str) -> None:
    """A reconcile pass finished, whatever its outcome."""
    _count("idp_reconcile_passes", "Reconcile passes finished", {"kind": kind})


def step_changed(step: str, reason: str) -> None:
    """A step changed something outside; only drift repairs are counted."""
    if reason == DRIFT_REPAIRED:
        _count("idp_drift_repairs", "Out-of-band changes put back", {"step": step})


def credentials_issued(reason: str) -> None:
    _count("idp_credential_issuances", "Credentials issued and delivered", {"reason": reason})


def step_failed(step: str, reason: str) -> None:
    _count("idp_step_failures", "Steps whose activity failed", {"step": step, "reason": reason})


def _count(name: str, description: str, labels: dict[str, str | int | float | bool]) -> None:
    workflow.metric_meter().create_counter(name, description).add(1, labels)
