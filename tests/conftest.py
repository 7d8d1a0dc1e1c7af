from collections.abc import AsyncIterator

import pytest
from support.stack import start_dev_server
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """One real Temporal dev server for the session; each test uses its own task queue."""
    async with await start_dev_server() as env:
        yield env


@pytest.fixture
def client(dev_env: WorkflowEnvironment) -> Client:
    return dev_env.client
