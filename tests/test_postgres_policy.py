"""How often a workload's database password changes: exactly as often as its policy says, over
simulated weeks, counted three independent ways.

The WorkloadWorkflow runs on the time-skipping test server against the session's real PostgreSQL
and a bare git repository. The passwords set are counted from the server's catalogue (each new
password is a new SCRAM verifier in pg_authid, since every one has its own salt), from the state
store (commits that changed the sealed secret) and from the workflow's own outputs (the version).
A pass that sets one unasked shows in the first, one delivered twice in the second.
"""

import asyncio
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from support.fleet import commits_per_file, wait_all_ready
from support.postgres import (
    ADMIN_PASSWORD_ENV,
    database_of,
    delivered_secret,
    login_verifiers,
    postgres_platform,
    postgres_workload,
    secret_path,
)
from support.secrets import ControllerKeys
from support.stack import bare_repo, running_worker, start_time_skipping, task_queue

from idp_postgres.local import LocalPostgres
from starter.operations import apply_workload
from workflows.workload import WorkloadWorkflow

# A drift check every few simulated hours keeps a month to a couple of hundred passes; the
# refreshes and the ends of grace periods wake the workflow on their own deadlines anyway.
DRIFT = timedelta(hours=4)
# Six hours at a time: one long skip holds a single RPC open while every pass in it runs, and on
# a loaded machine a day of passes outlasts the RPC's timeout.
STEP = timedelta(hours=6)


@pytest.mark.parametrize(
    ("days", "issued"),
    [
        # ttl 7d, refreshBefore a third of it: set at day 0, then every 4d16h (day 4.7, 9.3).
        (10, 3),
        # Up to day 28, the month bench/postgres_issuances.py prints beside a naive pipeline.
        (30, 7),
    ],
)
async def test_simulated_days_set_exactly_the_passwords_the_policy_schedules(
    postgres_server: LocalPostgres,
    keys: ControllerKeys,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    days: int,
    issued: int,
) -> None:
    monkeypatch.setenv(ADMIN_PASSWORD_ENV, postgres_server.admin_password)
    repo = bare_repo(tmp_path / "state.git")
    platform = postgres_platform(
        repo, postgres_server, keys.cert_file, DRIFT, search_attributes=False
    )
    w = postgres_workload(task_queue(), credentials={"ttl": "7d"})
    database = database_of(w)
    verifiers: set[str] = set()

    async def look_at_the_server() -> None:
        # A password stays on its login until an hour after the next one is set, days later,
        # so looking after every step sees each one.
        found = await asyncio.to_thread(login_verifiers, postgres_server, database)
        verifiers.update(v for v in found.values() if v is not None)

    async with await start_time_skipping() as env:
        async with running_worker(env.client, platform, "idp", tmp_path / "cache"):
            await apply_workload(env.client, "idp", w)
            await wait_all_ready(env.client, [w], timeout=60)
            await look_at_the_server()
            for _ in range(timedelta(days=days) // STEP):
                await env.sleep(STEP)
                await look_at_the_server()
            handle = env.client.get_workflow_handle(w.workflow_id)
            status = await handle.query(WorkloadWorkflow.status)

    assert len(verifiers) == issued
    assert commits_per_file(repo)[secret_path(w)] == issued
    assert status.outputs["Postgres"]["version"] == issued
    # The last one set is the one delivered: it logs in (its VALID UNTIL is on the workflow's
    # clock, which ran weeks ahead of this one).
    secret = delivered_secret(repo, w, keys.key)
    with psycopg.connect(secret["uri"], connect_timeout=5) as session:
        assert session.execute("SELECT session_user").fetchone() == (secret["user"],)
