"""The worker log: an expected failure is one line an operator can read; a bug keeps its traceback.

A real worker on the dev server runs activities that fail the ways the reconciler's do: with a
classified error (a PermanentError or TransientError turned into an ApplicationError with its
reason) or with an exception nobody anticipated.
"""

import io
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import pytest
from support.stack import task_queue
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError
from temporalio.worker import Worker

import worker
from activities.errors import as_activity_errors
from idp.errors import PermanentError, TransientError

UNKNOWN_ACCOUNT = "account 'nope' does not exist in system 'demo'; create it in Synadia Cloud"


@activity.defn
async def ensure_user_in_unknown_account() -> None:
    with as_activity_errors():
        raise PermanentError(UNKNOWN_ACCOUNT, reason="UnknownAccount")


@activity.defn
async def call_unavailable_api() -> None:
    with as_activity_errors():
        raise TransientError("Synadia answered 503 Service Unavailable", reason="Unavailable")


@activity.defn
async def hit_a_bug() -> None:
    raise KeyError("accounts")


@workflow.defn(sandboxed=False)
class RunOneActivity:
    @workflow.run
    async def run(self, name: str, attempts: int) -> str:
        try:
            await workflow.execute_activity(
                name,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(milliseconds=1), maximum_attempts=attempts
                ),
            )
        except ActivityError as error:
            return type(error.cause).__name__
        return "completed"


@pytest.fixture
def worker_log() -> Iterator[io.StringIO]:
    """What the worker process writes: its format, its logging setup, on a stream we can read."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(worker.LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


@pytest.fixture
async def running(client: Client) -> AsyncIterator[Worker]:
    # `idp-worker`'s own logging setup; pytest's capture handlers make its basicConfig a no-op.
    worker.configure_logging()
    queue = task_queue()
    async with Worker(
        client,
        task_queue=queue,
        workflows=[RunOneActivity],
        activities=[ensure_user_in_unknown_account, call_unavailable_api, hit_a_bug],
    ) as running:
        yield running


async def run_activity(client: Client, running: Worker, name: str, attempts: int) -> str:
    workflow_id = f"log-{name}-{uuid.uuid4().hex[:8]}"
    outcome = await client.execute_workflow(
        RunOneActivity.run, args=[name, attempts], id=workflow_id, task_queue=running.task_queue
    )
    assert outcome == "ApplicationError"
    return workflow_id


async def test_a_classified_failure_is_one_line_with_reason_and_sentence(
    client: Client, running: Worker, worker_log: io.StringIO
) -> None:
    workflow_id = await run_activity(client, running, "ensure_user_in_unknown_account", 1)
    log = worker_log.getvalue()
    assert "Traceback" not in log
    [line] = [line for line in log.splitlines() if workflow_id in line]
    assert line.endswith(
        f"WARNING temporalio.activity: activity ensure_user_in_unknown_account failed for "
        f"{workflow_id} (attempt 1): UnknownAccount: {UNKNOWN_ACCOUNT}"
    )


async def test_a_retried_classified_failure_is_one_line_per_attempt(
    client: Client, running: Worker, worker_log: io.StringIO
) -> None:
    workflow_id = await run_activity(client, running, "call_unavailable_api", 2)
    log = worker_log.getvalue()
    assert "Traceback" not in log
    lines = [line for line in log.splitlines() if workflow_id in line]
    assert [line.split(f"{workflow_id} ", 1)[1] for line in lines] == [
        f"(attempt {n}): Unavailable: Synadia answered 503 Service Unavailable" for n in (1, 2)
    ]


async def test_an_unexpected_exception_keeps_its_traceback(
    client: Client, running: Worker, worker_log: io.StringIO
) -> None:
    workflow_id = await run_activity(client, running, "hit_a_bug", 1)
    log = worker_log.getvalue()
    assert "Completing activity as failed" in log and workflow_id in log
    assert "Traceback (most recent call last)" in log
    assert "KeyError: 'accounts'" in log
