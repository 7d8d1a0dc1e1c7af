"""A worker killed with SIGKILL mid-reconcile: a new worker finishes the job, nothing twice."""

import asyncio
import signal
import sys
from pathlib import Path

import yaml
from support.stack import bare_repo, commits, git, task_queue
from temporalio.client import Client

from idp.models import Workload
from starter.operations import apply_workload
from workflows.messages import WaitReadyRequest
from workflows.state import Phase
from workflows.workload import WorkloadWorkflow

COUNT = 30


def workloads(system: str) -> list[Workload]:
    return [
        Workload.model_validate(
            {
                "metadata": {"name": f"w{i:02}", "system": system},
                "spec": {"owner": "team-demo", "destination": "dev", "namespace": "demo"},
            }
        )
        for i in range(COUNT)
    ]


async def start_worker(client: Client, platform: Path, queue: str, cache: Path, log: Path):
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker",
        "--platform", str(platform),
        "--cache-dir", str(cache),
        "--address", client.service_client.config.target_host,
        "--task-queue", queue,
        "--insecure-no-encryption",  # the session server's clients are plain
        stdout=log.open("ab"), stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip


async def test_a_killed_worker_leaves_no_duplicate_commit(client: Client, tmp_path: Path) -> None:
    repo = bare_repo(tmp_path / "state.git")
    platform = tmp_path / "platform.yaml"
    platform.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "idp.dev/v1alpha1",
                "kind": "Platform",
                "destinations": [{"name": "dev", "stateStore": {"url": str(repo)}}],
                "reconcile": {"minBackoff": "1s", "maxBackoff": "2s"},
            }
        )
    )
    queue = task_queue()
    items = workloads(queue)
    log = tmp_path / "worker.log"
    worker = await start_worker(client, platform, queue, tmp_path / "cache", log)
    try:
        await asyncio.gather(*(apply_workload(client, queue, w) for w in items))
        # Kill it as soon as the first commit lands: the rest are mid-flight.
        async with asyncio.timeout(60):
            while not commits(repo):
                assert worker.returncode is None, log.read_text()
                await asyncio.sleep(0.02)
        worker.send_signal(signal.SIGKILL)
        await worker.wait()
        written_before_kill = len(commits(repo))

        worker = await start_worker(client, platform, queue, tmp_path / "cache2", log)
        for w in items:
            status = await client.get_workflow_handle(w.workflow_id).execute_update(
                WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=1, timeout_seconds=120)
            )
            assert status.phase == Phase.READY, (w.workflow_id, status.conditions)
    finally:
        if worker.returncode is None:
            worker.terminate()
            await worker.wait()

    for w in items:
        directory = f"dev/demo/{w.metadata.name}"
        touching = git("log", "--format=%H", "main", "--", directory, cwd=repo).split()
        assert len(touching) == 1, f"{directory} was committed {len(touching)} times"
    # Group commit may carry several workloads per commit, but never an empty one.
    for sha in git("log", "--format=%H", "main", cwd=repo).split():
        assert git("show", "--name-only", "--format=", sha, cwd=repo).strip()
    assert 1 <= written_before_kill <= len(commits(repo)) <= COUNT
