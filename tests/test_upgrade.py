"""The one deliberate break before 1.0: workflows recorded by the first version (steps wired by
hand, tests/histories/v0/) no longer replay, but the state such a workflow carries across
continue-as-new loads in the capability engine and carries on (docs/architecture.md, Upgrading).
"""

import base64
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from support.cli import eventually
from support.secrets import ControllerKeys
from support.stack import bare_repo, commits, running_worker, task_queue
from temporalio.client import Client
from test_nats_workflow import (  # noqa: F401 (fixtures)
    TOKEN_ENV,
    emulator,
    nats_platform,
    ready,
    until,
    workload,
)

from emulators.synadia import DEFAULT_TOKEN, SynadiaEmulator
from starter import upgrade
from starter.operations import apply_workload
from workflows.messages import WorkloadInput
from workflows.state import ConditionStatus, Phase

V0 = Path(__file__).parent / "histories" / "v0"


def continued_as_new_inputs() -> list[dict[str, Any]]:
    """The input of every continue-as-new the first version recorded."""
    found = []
    for path in sorted(V0.glob("*.json")):
        for event in json.loads(path.read_text())["events"]:
            attributes = event.get("workflowExecutionContinuedAsNewEventAttributes")
            if attributes:
                payload = attributes["input"]["payloads"][0]
                found.append(json.loads(base64.b64decode(payload["data"])))
    return found


def test_every_state_the_first_version_continued_as_new_with_loads() -> None:
    inputs = continued_as_new_inputs()
    assert len(inputs) >= 2
    for raw in inputs:
        old = raw["state"]["outputs"]
        state = WorkloadInput.model_validate(raw).state
        assert state is not None
        assert state.outputs["Registry"] == old["registry"]
        assert state.outputs["Manifests"] == old["manifests"]
        assert state.outputs.get("Api", {"routes": []})["routes"] == old.get("api", [])
        assert state.rolled_out == []
        assert [c.type for c in state.conditions] == [c["type"] for c in raw["state"]["conditions"]]


def as_first_version(status: dict[str, Any]) -> dict[str, Any]:
    """This status as a 0.1 worker answered `status`: each output in a field of its own."""
    outputs = status["outputs"]
    return {
        **status,
        "outputs": {
            "registry": outputs.get("Registry"),
            "nats": {k: v for k, v in outputs["Nats"].items() if k != "keyReason"},
            "credentials": outputs["Credentials"],
            "manifests": outputs["Manifests"],
            "api": [],
        },
        "conditions": [
            {k: v for k, v in c.items() if k != "waiting"} for c in status["conditions"]
        ],
    }


async def test_a_workload_started_before_the_upgrade_carries_on_after_it(
    client: Client,
    emulator: SynadiaEmulator,  # noqa: F811 (the fixture imported above)
    keys: ControllerKeys,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOKEN_ENV, DEFAULT_TOKEN)
    queue = task_queue()
    repo = bare_repo(tmp_path / "state.git")
    w = workload(queue)
    saved = tmp_path / "saved.json"
    async with running_worker(client, nats_platform(repo, emulator, keys), queue, tmp_path / "c"):
        await apply_workload(client, queue, w)
        handle = client.get_workflow_handle(w.workflow_id)
        before = await ready(handle)
        user_id = before.outputs["Nats"]["userId"]
        written = commits(repo)

        # `save` records each running workload's status and where it runs (this one only: the
        # dev server holds other tests' workloads, whose workers are gone).
        query = f"{upgrade.QUERY} AND WorkflowId = '{w.workflow_id}'"
        assert await upgrade.save(client, saved, query) == 1
        entry = json.loads(saved.read_text())[w.workflow_id]
        assert (entry["taskQueue"], entry["status"]["generation"]) == (queue, 1)
        # A workload no worker serves cannot answer: nothing is saved, and the sentence says why.
        orphan = f"workload/{queue}/orphan"
        await client.start_workflow(
            "WorkloadWorkflow", {"workload": {}}, id=orphan, task_queue=f"{queue}-nobody"
        )
        # `save` works from the visibility listing, which shows a run a moment after it starts.
        listed = f"WorkflowId = '{orphan}'"
        await eventually(lambda: client.count_workflows(listed), lambda found: found.count == 1)
        with pytest.raises(upgrade.UpgradeError, match="cannot answer its status"):
            await upgrade.save(client, tmp_path / "not.json", listed, timedelta(seconds=1))
        assert not (tmp_path / "not.json").exists()
        await client.get_workflow_handle(orphan).terminate("test")
        # A 0.2 run is not restarted: its outputs are already keyed by capability.
        with pytest.raises(upgrade.UpgradeError, match=r"already ran on 0\.2"):
            await upgrade.restart(client, saved)

        # As a 0.1 worker would have answered: `restart` terminates that run and starts the
        # next from the state 0.1 showed, which the workflow decodes itself.
        entry["status"] = as_first_version(entry["status"])
        saved.write_text(json.dumps({w.workflow_id: entry}))
        assert await upgrade.restart(client, saved) == [w.workflow_id]
        first_run = entry["runId"]
        assert (await handle.describe()).run_id != first_run
        # Its first pass finds everything in place.
        after = await until(handle, lambda s: {c.reason for c in s.conditions} == {"InSync"})

    assert after.outputs["Nats"]["userId"] == user_id
    assert after.outputs["Credentials"]["version"] == 1
    # Nothing was made again: the same user, one credential, no new commit.
    assert emulator.creds_issued(user_id) == 1
    assert commits(repo) == written
    assert after.phase == Phase.READY
    assert all(c.status == ConditionStatus.TRUE for c in after.conditions)
