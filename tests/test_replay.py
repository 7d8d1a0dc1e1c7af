"""The committed histories still replay: workflow code changes must stay deterministic."""

from pathlib import Path

from starter.replay import from_files, replay

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_histories_cover_every_scenario() -> None:
    names = {path.stem for path in HISTORIES}
    for scenario in (
        "apply-change-pause",
        "drift-repair",
        "continue-as-new",
        "delete",
        "registry-lifecycle",
        "nats-rotation",
        "api-routes",
        "port-run",
        "refusals",
        "fleet-observer",
    ):
        assert f"workload-{scenario}" in names
    assert {"api-aggregator-lifecycle", "port-run", "fleet-observer"} <= names


async def test_every_committed_history_replays() -> None:
    outcomes = await replay(from_files(HISTORIES))
    assert len(outcomes) == len(HISTORIES)
    assert [o for o in outcomes if o.error] == []
