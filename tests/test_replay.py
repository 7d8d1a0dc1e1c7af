"""The committed histories still replay: workflow code changes must stay deterministic."""

from pathlib import Path

import pytest

from starter.replay import from_files, replay
from workflows.observer import SWEEP_AT_FIXED_RATE
from workflows.steps import patched

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_histories_cover_every_scenario() -> None:
    names = {path.stem for path in HISTORIES}
    for scenario in (
        "apply-change-pause",
        "drift-repair",
        "continue-as-new",
        "delete",
        "delete-after-refused-pass",
        "registry-lifecycle",
        "nats-rotation",
        "api-routes",
        "port-run",
        "refusals",
        "fleet-observer",
        "baseline-fleet-observer",
        "baseline-continue-as-new",
        "compact-continue-as-new",
        "compact-fleet-observer",
    ):
        assert f"workload-{scenario}" in names
    assert {"api-aggregator-lifecycle", "port-run", "fleet-observer"} <= names
    assert {"baseline-fleet-observer", "waiting-fleet-observer"} <= names


async def test_every_committed_history_replays() -> None:
    outcomes = await replay(from_files(HISTORIES))
    assert len(outcomes) == len(HISTORIES)
    assert [o for o in outcomes if o.error] == []


def test_a_patch_newer_than_the_baseline_is_asked_on_its_own() -> None:
    # A run recorded after the baseline has its marker and did not take the new branch: were
    # the new patch folded in, replaying that run would take it.
    with pytest.raises(ValueError, match="newer than baseline"):
        patched(SWEEP_AT_FIXED_RATE)
