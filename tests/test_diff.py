"""`idpctl diff`: what apply would change, computed by the worker and changing nothing.

Real parts: the session's Temporal dev server running each capability's preview as a standalone
activity, a worker in the test's event loop, moto for AWS and a bare git repository as the
state store; idpctl runs as a process, as a user runs it. What must not happen is checked where
it would show: the workflow's history, the server's workflows, the repository's commits and
moto's repositories.
"""

from collections.abc import AsyncIterator
from pathlib import Path

import boto3
import pytest
from support.cli import Cli, Result, write_platform
from support.stack import (
    commits,
    running_worker,
    start_dev_server,
    workflow_exists,
)
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from test_cli import stderr_lines, workload_doc, write_yaml
from test_registry_step import REGION, aws_platform

from capabilities.registry.actions import RegistryActions
from idp.capability import Context
from idp.errors import TransientError
from starter.preview import Diff
from workflows.messages import WaitReadyRequest
from workflows.state import Phase
from workflows.workload import WorkloadWorkflow


@pytest.fixture
def name(queue: str) -> str:
    """Workload names are unique too: apply and diff ask running workloads of other systems
    with the same name for what they hold, and those of finished tests have no worker."""
    return f"cart-{queue.removeprefix('t-')}"


@pytest.fixture
def cli(dev_env: WorkflowEnvironment, repo: Path, queue: str, tmp_path: Path) -> Cli:
    address = dev_env.client.service_client.config.target_host
    return Cli(address, queue, write_platform(tmp_path / "platform.yaml", repo, address))


@pytest.fixture
async def worker(
    client: Client, repo: Path, queue: str, aws_url: str, tmp_path: Path
) -> AsyncIterator[None]:
    async with running_worker(client, aws_platform(repo, aws_url), queue, tmp_path / "cache"):
        yield


def repositories(aws_url: str) -> list[str]:
    ecr = boto3.client("ecr", region_name=REGION, endpoint_url=aws_url)
    return [r["repositoryName"] for r in ecr.describe_repositories()["repositories"]]


async def history_length(client: Client, workflow_id: str) -> int:
    return len((await client.get_workflow_handle(workflow_id).fetch_history()).events)


async def workflows_on(client: Client, queue: str) -> list[str]:
    return [e.id async for e in client.list_workflows(f"TaskQueue = '{queue}'")]


async def applied(cli: Cli, client: Client, file: str, workflow_id: str) -> None:
    result = await cli.idpctl("apply", "-f", file)
    assert result.code == 0, result
    status = await client.get_workflow_handle(workflow_id).execute_update(
        WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=1, timeout_seconds=30)
    )
    assert status.phase == Phase.READY, status.conditions


def capability_lines(result: Result, name: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith(f"  {name}: ")]


async def test_a_new_workload_shows_everything_created_and_starts_nothing(
    cli: Cli,
    worker: None,
    client: Client,
    repo: Path,
    aws_url: str,
    queue: str,
    name: str,
    tmp_path: Path,
) -> None:
    file = write_yaml(tmp_path / "w.yaml", workload_doc(queue, name))
    workflow_id = f"workload/{queue}/{name}"

    result = await cli.idpctl("diff", "-f", file)

    assert result.code == 1, result
    lines = result.stdout.splitlines()
    assert lines[0] == f"workload {queue}/{name} (new: generation 0 → 1)"
    assert "  +++ applied (generation 1)" in lines
    assert f"  +  name: {name}" in lines
    registry = capability_lines(result, "Registry")
    created = f"  Registry: create ECR repository {queue}/{name} (it does not exist)"
    assert created in registry, result
    assert all(line.startswith("  Registry: create ") for line in registry), result
    # Manifests renders the role's ARN, which only Registry's apply tells unless it expects it.
    manifests = capability_lines(result, "Manifests")
    assert manifests == ["  Manifests: after Registry applies (its plan depends on it)"] or all(
        line.startswith("  Manifests: write ") for line in manifests
    ), result
    assert "Traceback" not in result.stderr

    assert not await workflow_exists(client, workflow_id)
    assert await workflows_on(client, queue) == []
    assert commits(repo) == []
    assert f"{queue}/{name}" not in repositories(aws_url)


async def test_after_apply_the_same_file_is_in_sync_and_writes_no_history(
    cli: Cli, worker: None, client: Client, repo: Path, queue: str, name: str, tmp_path: Path
) -> None:
    file = write_yaml(tmp_path / "w.yaml", workload_doc(queue, name))
    workflow_id = f"workload/{queue}/{name}"
    await applied(cli, client, file, workflow_id)
    events, written = await history_length(client, workflow_id), commits(repo)

    result = await cli.idpctl("diff", "-f", file)

    assert result.code == 0, result
    assert result.stdout.splitlines() == [
        f"workload {queue}/{name}: unchanged (generation 1)",
        "  Registry: in sync",
        "  Manifests: in sync",
    ]
    assert await history_length(client, workflow_id) == events
    assert await workflows_on(client, queue) == [workflow_id]
    assert commits(repo) == written

    # A paused workload would record the spec and do nothing more.
    await client.get_workflow_handle(workflow_id).execute_update("pause")
    events = await history_length(client, workflow_id)
    paused = await cli.idpctl("diff", "-f", file)
    assert paused.code == 0, paused
    assert paused.stdout.splitlines() == [
        f"workload {queue}/{name}: unchanged (generation 1)",
        "  paused: apply records the spec; nothing changes until resume",
    ]
    assert await history_length(client, workflow_id) == events


async def test_a_spec_change_shows_the_spec_diff_and_the_plan(
    cli: Cli, worker: None, client: Client, repo: Path, queue: str, name: str, tmp_path: Path
) -> None:
    path = tmp_path / "w.yaml"
    workflow_id = f"workload/{queue}/{name}"
    await applied(cli, client, write_yaml(path, workload_doc(queue, name)), workflow_id)
    events, written = await history_length(client, workflow_id), commits(repo)
    changed = workload_doc(queue, name, registry={"lifecycle": {"keepLast": 5}})

    result = await cli.idpctl("diff", "-f", write_yaml(path, changed))

    assert result.code == 1, result
    assert result.stdout.splitlines()[:10] == [
        f"workload {queue}/{name}: generation 1 → 2",
        "  --- live (generation 1)",
        "  +++ applied (generation 2)",
        "  @@ -9,3 +9,6 @@",
        "     owner: team-demo",
        "     destination: dev",
        "     namespace: demo",
        "  +  registry:",
        "  +    lifecycle:",
        "  +      keepLast: 5",
    ], result
    registry = capability_lines(result, "Registry")
    assert len(registry) == 1 and registry[0].startswith(
        f"  Registry: update lifecycle policy of ECR repository {queue}/{name} ("
    ), result
    assert capability_lines(result, "Manifests") == ["  Manifests: in sync"], result
    assert await history_length(client, workflow_id) == events
    assert commits(repo) == written

    # What the workflow's validator refuses, diff refuses as apply does.
    moved = write_yaml(path, workload_doc(queue, name, namespace="elsewhere"))
    refusals = [await cli.idpctl(command, "-f", moved) for command in ("apply", "diff")]
    assert [r.code for r in refusals] == [2, 2], refusals
    assert stderr_lines(refusals[1]) == stderr_lines(refusals[0])
    assert stderr_lines(refusals[1])[0].startswith(
        f"{workflow_id}: spec.namespace cannot change on a live workload"
    )
    assert await history_length(client, workflow_id) == events


async def test_a_preview_that_fails_is_named_and_exits_2(
    cli: Cli,
    client: Client,
    repo: Path,
    aws_url: str,
    queue: str,
    name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def unreachable(self: RegistryActions, ctx: Context) -> None:
        raise TransientError("ECR did not answer in time; try again", reason="Unreachable")

    monkeypatch.setattr(RegistryActions, "observe", unreachable)
    file = write_yaml(tmp_path / "w.yaml", workload_doc(queue, name))
    async with running_worker(client, aws_platform(repo, aws_url), queue, tmp_path / "cache"):
        result = await cli.idpctl("diff", "-f", file)

    assert result.code == 2, result
    assert capability_lines(result, "Registry") == [
        "  Registry: could not preview: ECR did not answer in time; try again"
    ]
    assert capability_lines(result, "Manifests") == [
        "  Manifests: skipped while Registry cannot apply (its plan depends on it)"
    ]
    assert stderr_lines(result) == [
        f"could not preview Registry of {queue}/{name}: ECR did not answer in time; try again"
    ]
    assert not await workflow_exists(client, f"workload/{queue}/{name}")


async def test_bad_input_exits_2_with_the_sentence_apply_gives(
    cli: Cli, client: Client, queue: str, tmp_path: Path
) -> None:
    file = write_yaml(tmp_path / "w.yaml", workload_doc(queue, destination="nowhere"))

    results = [await cli.idpctl(command, "-f", file) for command in ("apply", "diff")]

    assert [r.code for r in results] == [2, 2], results
    assert (
        stderr_lines(results[1])
        == stderr_lines(results[0])
        == [
            f"{file}: document 1: spec.destination: 'nowhere' is not a destination of the platform "
            "configuration; allowed: dev"
        ]
    )
    assert results[1].stdout == ""
    assert not await workflow_exists(client, f"workload/{queue}/hello")


async def test_json_output_parses_as_a_diff(
    cli: Cli, worker: None, client: Client, queue: str, name: str, tmp_path: Path
) -> None:
    file = write_yaml(tmp_path / "w.yaml", workload_doc(queue, name))

    result = await cli.idpctl("diff", "-f", file, "-o", "json")

    assert result.code == 1, result
    found = Diff.model_validate_json(result.stdout)
    [workload] = found.workloads
    assert (workload.workflow_id, workload.exists) == (f"workload/{queue}/{name}", False)
    assert (workload.generation, workload.next_generation) == (0, 1)
    assert [c.name for c in workload.capabilities] == ["Registry", "Manifests"]
    assert found.changed and not found.problems
    assert not await workflow_exists(client, workload.workflow_id)


async def test_a_server_without_standalone_activities_is_one_sentence(
    queue: str, name: str, repo: Path, tmp_path: Path
) -> None:
    async with await start_dev_server(
        "--dynamic-config-value", "activity.enableStandalone=false"
    ) as env:
        address = env.client.service_client.config.target_host
        cli = Cli(address, queue, write_platform(tmp_path / "platform.yaml", repo, address))
        file = write_yaml(tmp_path / "w.yaml", workload_doc(queue, name))

        result = await cli.idpctl("diff", "-f", file)

    assert result.code == 2, result
    assert stderr_lines(result) == [
        "idpctl diff needs a Temporal server that runs standalone activities (verified with "
        "server 1.32, where a self-hosted server's dynamic config activity.enableStandalone "
        "must be on, and Temporal Cloud); this one answered: Standalone activity is disabled"
    ]
