"""A disallowed change is one clear error and changes nothing: a live workload applied again with
another spec.destination (its ServiceAccount, role trust and credentials live on the first)."""

from pathlib import Path

import pytest
import yaml
from support.cli import Cli
from support.stack import bare_repo, commits, platform_for, running_worker, task_queue
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from idp.models import Workload
from idp.platform import Destination, StateStoreConfig
from workflows.messages import ApplyRequest
from workflows.state import Phase
from workflows.workload import WorkloadWorkflow


def write_workload(path: Path, system: str, destination: str) -> Path:
    document = {
        "apiVersion": "idp.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": "hello", "system": system},
        "spec": {"owner": "team-demo", "destination": destination, "namespace": "demo"},
    }
    path.write_text(yaml.safe_dump(document))
    return path


async def test_moving_a_live_workload_to_another_destination_is_refused_and_changes_nothing(
    dev_env: WorkflowEnvironment, client: Client, tmp_path: Path
) -> None:
    queue = task_queue()
    dev, prod = bare_repo(tmp_path / "dev.git"), bare_repo(tmp_path / "prod.git")
    base = platform_for(dev)
    second = Destination(name="prod", state_store=StateStoreConfig(url=str(prod)))
    platform = base.model_copy(update={"destinations": [*base.destinations, second]})
    platform_file = tmp_path / "platform.yaml"
    platform_file.write_text(yaml.safe_dump(platform.model_dump(mode="json")))
    cli = Cli(dev_env.client.service_client.config.target_host, queue, platform_file)
    handle = client.get_workflow_handle(f"workload/{queue}/hello")

    async with running_worker(client, platform, queue, tmp_path / "cache"):
        live = write_workload(tmp_path / "live.yaml", queue, "dev")
        applied = await cli.idpctl("apply", "-f", str(live), "--wait", "--timeout", "60")
        assert applied.code == 0, applied
        events = len((await handle.fetch_history()).events)
        written = commits(dev)

        moved = write_workload(tmp_path / "moved.yaml", queue, "prod")
        result = await cli.idpctl("apply", "-f", str(moved), "--wait", "--timeout", "60")
        assert result.code == 2, result
        assert result.stdout == ""
        assert result.stderr == (
            f"error: workload/{queue}/hello: spec.destination cannot change on a live workload "
            "(it is 'dev', the new spec says 'prod'); delete the workload and apply it again to "
            "move it\n"
        )

        # The workflow's own validator refuses it too: what `temporal workflow update` or an
        # apply racing this one meets.
        workload = Workload.model_validate(yaml.safe_load(moved.read_text()))
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(WorkloadWorkflow.apply, ApplyRequest(workload=workload))
        assert "spec.destination cannot change on a live workload" in str(refused.value.cause)

        status = await handle.query(WorkloadWorkflow.status)
        assert (status.phase, status.generation) == (Phase.READY, 1)
        assert status.workload.spec.destination == "dev"
        # A refused update leaves no trace in history.
        assert len((await handle.fetch_history()).events) == events
    assert commits(dev) == written
    assert commits(prod) == []
