from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support.moto import moto_server
from support.postgres import local_postgres
from support.secrets import ControllerKeys, controller_keys
from support.stack import bare_repo, start_dev_server, task_queue
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from emulators.synadia import SynadiaEmulator
from idp_postgres.local import LocalPostgres


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """One real Temporal dev server for the session; each test uses its own task queue."""
    async with await start_dev_server() as env:
        yield env


@pytest.fixture
def client(dev_env: WorkflowEnvironment) -> Client:
    return dev_env.client


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> ControllerKeys:
    """The sealed-secrets controller's key pair: tests seal to its certificate and open what was
    delivered with its private key, as the cluster's controller would."""
    return controller_keys(tmp_path_factory.mktemp("sealing"))


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPostgres]:
    """One real PostgreSQL server for the session; each test uses its own database and roles."""
    with local_postgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server


# moto's server and the Synadia emulator (with its nats-server), for a module's tests to share.
@pytest.fixture(scope="module")
def aws_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
async def synadia(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SynadiaEmulator]:
    async with SynadiaEmulator.running(tmp_path_factory.mktemp("synadia")) as emulator:
        yield emulator


# A state-store repository and a task queue of the test's own: workflow ids and queues are
# global on the session's server.
@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return bare_repo(tmp_path / "state.git")


@pytest.fixture
def queue() -> str:
    return task_queue()
