"""The Postgres plugin capability through WorkloadWorkflow, with real parts only: the session's
Temporal dev server, a worker in this event loop, a bare git repository as the state store,
sealing with a throwaway controller key whose private half opens what was delivered (as the
cluster's controller would), and the session's PostgreSQL server.

Workflow ids and databases are global on the session's servers, so every test has its own
system name (its task queue) and so its own databases and roles.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql
from support.cli import Cli, write_platform
from support.postgres import (
    admin_env,
    conninfo,
    login_verifiers,
    postgres_platform,
    postgres_section,
    postgres_workload,
    postgres_workload_document,
    workload_roles,
)
from support.secrets import ControllerKeys, assert_nowhere, unsealed
from support.stack import bare_repo, git, read, running_worker, task_queue, workflow_exists
from temporalio.client import Client, WorkflowHandle

from idp.models import Workload
from idp_postgres.local import LocalPostgres
from starter.operations import apply_workload, send_request
from workflows.messages import RotateRequest, WaitReadyRequest, WorkloadStatus
from workflows.state import Phase
from workflows.workload import WorkloadWorkflow

LIBPQ_KEYS = {"host", "port", "dbname", "user", "password", "sslmode", "uri"}
EXTENSIONS = ["citext", "pg_trgm"]  # the platform's
# What every workload here asks for: each pass then has an extension to observe too, and the drift
# test one to drop.
CITEXT = ["citext"]
TIMEOUT = 30.0
POLL = 0.02
# Each attempt is a new backend on the server: poll logins more gently than the workflow.
LOGIN_POLL = 0.1


@pytest.fixture(autouse=True)
def _admin_password(
    monkeypatch: pytest.MonkeyPatch,
    postgres_server: LocalPostgres,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The worker reads it from the variable the platform file names, as in production.
    for name, value in admin_env(postgres_server).items():
        monkeypatch.setenv(name, value)
    # Everything the worker logs, down to DEBUG, is scanned for passwords.
    caplog.set_level(logging.DEBUG)


@dataclass(frozen=True)
class Stack:
    """One test's worker on its own task queue, its state store and the shared servers."""

    client: Client
    queue: str
    repo: Path
    keys: ControllerKeys
    server: LocalPostgres

    async def apply(self, w: Workload) -> WorkflowHandle[Any, Any]:
        await apply_workload(self.client, self.queue, w)
        return self.client.get_workflow_handle(w.workflow_id)

    def secret(self, status: WorkloadStatus) -> dict[str, str]:
        """The data of the Secret delivered where the outputs say, unsealed with the
        controller's key."""
        return unsealed(self.repo, status.outputs["Postgres"]["location"], self.keys.key)


@pytest.fixture
async def stack(
    client: Client, postgres_server: LocalPostgres, keys: ControllerKeys, tmp_path: Path
) -> AsyncIterator[Stack]:
    queue = task_queue()
    repo = bare_repo(tmp_path / "state.git")
    platform = postgres_platform(repo, postgres_server, keys.cert_file, extensions=EXTENSIONS)
    async with running_worker(client, platform, queue, tmp_path / "cache"):
        yield Stack(client, queue, repo, keys, postgres_server)


# ---- reading the workflow ----------------------------------------------------------------------


async def ready(handle: WorkflowHandle[Any, Any], generation: int = 1) -> WorkloadStatus:
    status = await handle.execute_update(
        WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=generation, timeout_seconds=60)
    )
    assert status.phase == Phase.READY, status.conditions
    return status


async def until(
    handle: WorkflowHandle[Any, Any],
    predicate: Callable[[WorkloadStatus], bool],
    timeout: float = TIMEOUT,
) -> WorkloadStatus:
    status: WorkloadStatus | None = None
    try:
        async with asyncio.timeout(timeout):
            while not predicate(status := await handle.query(WorkloadWorkflow.status)):
                await asyncio.sleep(POLL)
    except TimeoutError:
        raise AssertionError(f"not reached in {timeout:g}s; last status: {status}") from None
    return status


async def one_pass(client: Client, handle: WorkflowHandle[Any, Any]) -> WorkloadStatus:
    """Ask for a reconcile pass, as `idpctl reconcile` does, and wait until it is over: every
    pass ends by setting the next drift check, so a new `nextCheckAt` means the loop went back
    to sleep after it."""
    before = (await handle.query(WorkloadWorkflow.status)).next_check_at
    await send_request(client, handle.id, "reconcile")
    return await until(handle, lambda s: s.next_check_at != before)


def postgres(status: WorkloadStatus) -> dict[str, Any]:
    return status.outputs["Postgres"]


def condition(status: WorkloadStatus) -> tuple[str, str]:
    found = next(c for c in status.conditions if c.type == "Postgres")
    return found.status, found.reason


# ---- PostgreSQL, as the workload and as the admin ----------------------------------------------


async def connect(dsn: str = "", **params: Any) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=5, **params)


async def as_workload(secret: dict[str, str], **overrides: str) -> psycopg.AsyncConnection[Any]:
    """A session with the separate libpq keys, as PG* variables would give them."""
    params = {k: secret[k] for k in ("host", "port", "dbname", "user", "password", "sslmode")}
    return await connect(**{**params, **overrides})


async def refusal(secret: dict[str, str], **overrides: str) -> str:
    """Why the server refuses the secret's login; fails when it lets it in."""
    try:
        session = await as_workload(secret, **overrides)
    except psycopg.OperationalError as error:
        return str(error)
    await session.close()
    raise AssertionError(f"{secret['user']} still logs in")


async def admin(server: LocalPostgres, dbname: str = "postgres") -> psycopg.AsyncConnection[Any]:
    return await connect(conninfo(server, dbname=dbname))


async def one(server: LocalPostgres, query: str, *params: Any, dbname: str = "postgres") -> Any:
    """The first column of the first row (None without rows), read as the admin."""
    async with await admin(server, dbname) as session:
        row = await (await session.execute(query, params)).fetchone()
    return None if row is None else row[0]


async def rows(server: LocalPostgres, query: str, *params: Any) -> list[tuple[Any, ...]]:
    async with await admin(server) as session:
        return await (await session.execute(query, params)).fetchall()


async def verifier(server: LocalPostgres, secret: dict[str, str]) -> str | None:
    """The SCRAM verifier the server holds for the secret's login (None: no password)."""
    # In a thread: the worker shares this event loop.
    found = await asyncio.to_thread(login_verifiers, server, secret["dbname"])
    return found[secret["user"]]


# ---- secrets stay where they belong ------------------------------------------------------------


async def assert_never_leaked(
    passwords: Iterable[str],
    logins: Iterable[str],
    handles: Iterable[WorkflowHandle[Any, Any]],
    stack: Stack,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No password (nor its base64) is in any workflow history, in any git object of the state
    store, in a log record of the worker, or in the PostgreSQL server's log. The logins they
    belong to are in each of the first three, which shows the scan reads what was written."""
    assert_nowhere(
        passwords,
        [stack.repo],
        caplog,
        histories=[await h.fetch_history() for h in handles],
        files=[stack.server.log_file],
        seen=logins,
    )


# ---- 1. what a workload gets -------------------------------------------------------------------


async def test_the_delivered_secret_opens_the_workloads_database_and_no_other(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    orders, billing = (
        postgres_workload(stack.queue, name, extensions=CITEXT) for name in ("orders", "billing")
    )
    handles = [await stack.apply(w) for w in (orders, billing)]
    statuses = [await ready(h) for h in handles]
    secret, other = (stack.secret(s) for s in statuses)
    output = postgres(statuses[0])
    database = f"{stack.queue.replace('-', '_')}_orders"

    assert set(secret) == LIBPQ_KEYS
    assert len(secret["password"]) >= 43  # 256 random bits, URL-safe: no quoting in the uri
    assert secret == {
        "host": "127.0.0.1",
        "port": str(stack.server.port),
        "dbname": database,
        "user": f"{database}_login1",
        "password": secret["password"],
        "sslmode": "disable",
        "uri": f"postgresql://{database}_login1:{secret['password']}@127.0.0.1:"
        f"{stack.server.port}/{database}?sslmode=disable",
    }
    assert (output["database"], output["publicKey"], output["version"]) == (
        database,
        f"{database}_login1",
        1,
    )
    assert condition(statuses[0]) == ("True", "Issued")

    async with await connect(secret["uri"]) as session:
        await session.execute("CREATE TABLE orders (id int PRIMARY KEY, item citext)")
        await session.execute("INSERT INTO orders VALUES (1, 'Coffee')")
        # citext came with the spec: the comparison ignores case.
        found = await session.execute("SELECT id FROM orders WHERE item = 'COFFEE'")
        assert await found.fetchall() == [(1,)]
    async with await as_workload(secret) as session:
        cursor = await session.execute(
            "SELECT session_user, current_user, "
            "(SELECT tableowner FROM pg_tables WHERE tablename = 'orders')"
        )
        # The table is the owner role's, so it outlives this login's turn.
        assert await cursor.fetchone() == (
            f"{database}_login1",
            f"{database}_owner",
            f"{database}_owner",
        )

    # The other workload's login does not get into this database, nor this one into its.
    assert "permission denied for database" in await refusal(other, dbname=database)
    assert "permission denied for database" in await refusal(secret, dbname=other["dbname"])

    # Nor the SCRAM verifiers set from them, which must stay inside the activity too.
    verifiers = [await verifier(stack.server, s) for s in (secret, other)]
    assert all(verifiers)
    passwords = [secret["password"], other["password"], *verifiers]
    logins = [secret["user"], other["user"]]
    await assert_never_leaked(passwords, logins, handles, stack, caplog)


# ---- 2. rotation -------------------------------------------------------------------------------


async def test_a_rotation_keeps_the_old_login_for_its_grace_and_a_leak_ends_it_at_once(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    # No lower bound on rotationGrace: a few seconds keep the test short, yet leave room to see
    # both logins work.
    grace = 5
    handle = await stack.apply(
        postgres_workload(
            stack.queue, extensions=CITEXT, credentials={"rotationGrace": f"{grace}s"}
        )
    )
    first = stack.secret(await ready(handle))

    await send_request(
        stack.client, handle.id, "rotate_credentials", RotateRequest(reason="routine")
    )
    status = await until(handle, lambda s: postgres(s)["version"] == 2)
    rotated_at = postgres(status)["issuedAt"]
    second = stack.secret(status)
    assert (postgres(status)["reason"], condition(status)) == ("Requested", ("True", "Issued"))
    assert second["user"] != first["user"]
    assert second["password"] != first["password"]
    assert status.requests == []  # the request was acted on
    # During the grace both work: pods still holding the old secret keep connecting.
    for secret in (first, second):
        async with await connect(secret["uri"]) as session:
            await session.execute("SELECT 1")
    assert datetime.now(UTC) < datetime.fromisoformat(rotated_at) + timedelta(seconds=grace), (
        "the checks above ran after the grace: lengthen it"
    )

    # The workflow wakes at the end of the grace by itself and retires the old login.
    reason = await eventually_refused(first, timeout=grace + TIMEOUT)
    # A login whose password was checked just before the retirement committed is refused by the
    # LOGIN check that follows instead (seen in CI): refused either way.
    assert "password authentication failed" in reason or "is not permitted to log in" in reason
    status = await until(handle, lambda s: any("retired" in e.message for e in s.events))
    assert f"login {first['user']} retired: no LOGIN, no password" in messages(status)
    assert await verifier(stack.server, first) is None
    async with await connect(second["uri"]) as session:
        await session.execute("SELECT 1")

    # A leak: the old password stops working as soon as the pass that delivers the new one ends.
    await send_request(
        stack.client, handle.id, "rotate_credentials", RotateRequest(revoke_old="now")
    )
    status = await until(handle, lambda s: postgres(s)["version"] == 3)
    third = stack.secret(status)
    assert third["user"] == first["user"]  # the logins take turns
    assert "password authentication failed" in await refusal(second)
    async with await connect(third["uri"]) as session:
        await session.execute("SELECT 1")

    passwords = [first["password"], second["password"], third["password"]]
    logins = [first["user"], second["user"]]
    await assert_never_leaked(passwords, logins, [handle], stack, caplog)


async def eventually_refused(secret: dict[str, str], timeout: float = TIMEOUT) -> str:
    """Poll the secret's login until the server refuses it; why it was refused."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    session = await as_workload(secret)
                except psycopg.OperationalError as error:
                    return str(error)
                await session.close()
                await asyncio.sleep(LOGIN_POLL)
    except TimeoutError:
        raise AssertionError(f"{secret['user']} still logs in after {timeout:g}s") from None


def plan_of(status: WorkloadStatus) -> str:
    """What the last pass did, as its condition says."""
    return next(c for c in status.conditions if c.type == "Postgres").message


def messages(status: WorkloadStatus) -> list[str]:
    return [e.message for e in status.events]


# ---- 3. a pass that finds things in order sets nothing -----------------------------------------


async def test_a_hundred_forced_reconciles_set_no_password(stack: Stack) -> None:
    handle = await stack.apply(postgres_workload(stack.queue, extensions=CITEXT))
    status = await ready(handle)
    secret = stack.secret(status)
    location = postgres(status)["location"]
    stored = await verifier(stack.server, secret)
    assert stored is not None and stored.startswith("SCRAM-SHA-256$")

    for _ in range(100):
        status = await one_pass(stack.client, handle)
        assert condition(status) == ("True", "InSync"), status.conditions

    assert postgres(status)["version"] == 1
    assert postgres(status)["reason"] == "Initial"
    touching = git("log", "--format=%H", "main", "--", location, cwd=stack.repo).split()
    assert len(touching) == 1
    assert await verifier(stack.server, secret) == stored
    async with await connect(secret["uri"]) as session:
        await session.execute("SELECT 1")


# ---- 4. drift ----------------------------------------------------------------------------------


async def test_drift_is_put_back_without_a_new_password_unless_the_active_login_went(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    handle = await stack.apply(postgres_workload(stack.queue, extensions=CITEXT, connectionLimit=7))
    status = await ready(handle)
    secret = stack.secret(status)
    database, login1 = secret["dbname"], secret["user"]
    owner, login2 = f"{database}_owner", f"{database}_login2"
    stored = await verifier(stack.server, secret)
    async with await connect(secret["uri"]) as session:
        await session.execute("CREATE TABLE kept AS SELECT 'before the drift' AS note")

    # One thing drifted: the plan names that one thing, nothing it would not need to do.
    async with await admin(stack.server) as session:
        await session.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO postgres").format(sql.Identifier(database))
        )
    status = await one_pass(stack.client, handle)
    assert condition(status) == ("True", "DriftRepaired")
    assert plan_of(status) == f"put back: update database {database} (owner (now postgres) drifted)"

    async with await admin(stack.server) as session:
        for statement in (
            "ALTER ROLE {login1} SUPERUSER",
            "ALTER DATABASE {database} CONNECTION LIMIT 3",
            "ALTER DATABASE {database} OWNER TO postgres",
            "GRANT CONNECT ON DATABASE {database} TO PUBLIC",
            "DROP ROLE {login2}",
        ):
            await session.execute(sql.SQL(statement).format(
                login1=sql.Identifier(login1),
                login2=sql.Identifier(login2),
                database=sql.Identifier(database),
            ))  # fmt: skip
    async with await admin(stack.server, database) as session:
        await session.execute("DROP EXTENSION citext")

    status = await one_pass(stack.client, handle)
    assert condition(status) == ("True", "DriftRepaired")
    repaired = plan_of(status)
    for line in (
        f"update role {login1} (no SUPERUSER drifted)",
        f"create role {login2} (it was dropped)",
        f"update database {database} (owner (now postgres), CONNECT revoked from PUBLIC "
        "drifted; connection limit drifted (now 3))",
        f"create extension citext in {database} (it was dropped)",
    ):
        assert line in repaired, repaired
    assert "password" not in repaired
    assert (postgres(status)["version"], postgres(status)["publicKey"]) == (1, login1)
    assert await verifier(stack.server, secret) == stored

    roles = await rows(
        stack.server,
        "SELECT rolname, rolcanlogin, rolsuper, pg_has_role(rolname, %s, 'MEMBER'), rolconfig "
        "FROM pg_roles WHERE rolname = ANY (%s) ORDER BY rolname",
        owner,
        [login1, login2],
    )
    assert roles == [
        (login1, True, False, True, [f"role={owner}"]),
        (login2, False, False, True, [f"role={owner}"]),  # back, and idle
    ]
    assert await rows(
        stack.server,
        "SELECT pg_get_userbyid(datdba), datconnlimit, has_database_privilege('public', "
        "datname, 'CONNECT') FROM pg_database WHERE datname = %s",
        database,
    ) == [(owner, 7, False)]
    assert (
        await one(
            stack.server,
            "SELECT extname FROM pg_extension WHERE extname = 'citext'",
            dbname=database,
        )
        == "citext"
    )
    async with await connect(secret["uri"]) as session:
        cursor = await session.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [login1])
        assert await cursor.fetchone() == (False,)
    # Put back for good: the next pass finds it in order.
    assert condition(await one_pass(stack.client, handle)) == ("True", "InSync")

    # The login in use dropped: its password went with it, so the idle one takes over with a
    # new one, and the dropped one comes back idle.
    async with await admin(stack.server) as session:
        await session.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(login1)))
    status = await one_pass(stack.client, handle)
    assert condition(status) == ("True", "Issued")
    assert (postgres(status)["version"], postgres(status)["reason"]) == (2, "UserRecreated")
    reissued = stack.secret(status)
    assert reissued["user"] == login2
    async with await connect(reissued["uri"]) as session:
        cursor = await session.execute("SELECT note FROM kept")
        assert await cursor.fetchall() == [("before the drift",)]
    assert "password authentication failed" in await refusal(secret)
    assert await rows(
        stack.server, "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", login1
    ) == [(False,)]

    passwords = [secret["password"], reissued["password"]]
    logins = [secret["user"], reissued["user"]]
    await assert_never_leaked(passwords, logins, [handle], stack, caplog)


# ---- 5. deletion -------------------------------------------------------------------------------


async def test_deletion_retains_the_data_or_drops_everything_as_the_policy_says(
    stack: Stack,
) -> None:
    kept, dropped = (
        postgres_workload(stack.queue, "kept", extensions=CITEXT),
        postgres_workload(
            stack.queue, "dropped", spec={"deletionPolicy": "Delete"}, extensions=CITEXT
        ),
    )
    handles = [await stack.apply(w) for w in (kept, dropped)]
    statuses = [await ready(h) for h in handles]
    secrets_ = [stack.secret(s) for s in statuses]
    locations = [postgres(s)["location"] for s in statuses]
    async with await connect(secrets_[0]["uri"]) as session:
        await session.execute("CREATE TABLE orders AS SELECT 42 AS id")
    # Pods still connected do not hold deletion up: their sessions are ended.
    sessions = [await connect(s["uri"]) for s in secrets_]

    for handle in handles:
        await send_request(stack.client, handle.id, "delete")
        final = await asyncio.wait_for(handle.result(), TIMEOUT)
        assert final["phase"] == "Deleted"
    for session in sessions:
        with pytest.raises(psycopg.OperationalError):
            await session.execute("SELECT 1")
        await session.close()
    for location in locations:
        assert read(stack.repo, location) is None

    # Retain: the database, its owner and its data stay; neither login gets in any more.
    database = secrets_[0]["dbname"]
    assert await one(stack.server, "SELECT id FROM orders", dbname=database) == 42
    assert await rows(
        stack.server,
        "SELECT rolname, rolcanlogin, rolpassword IS NULL FROM pg_authid "
        "WHERE rolname = ANY (%s) ORDER BY rolname",
        await asyncio.to_thread(workload_roles, stack.server, database),
    ) == [
        (f"{database}_login1", False, True),
        (f"{database}_login2", False, True),
        (f"{database}_owner", False, True),
    ]
    assert "password authentication failed" in await refusal(secrets_[0])

    # Delete: the database and its three roles are gone.
    database = secrets_[1]["dbname"]
    assert await rows(stack.server, "SELECT 1 FROM pg_database WHERE datname = %s", database) == []
    assert await asyncio.to_thread(workload_roles, stack.server, database) == []

    # Applied again, the retained workload gets its data back under a new password.
    handle = await stack.apply(kept)
    back = stack.secret(await ready(handle))
    assert back["password"] != secrets_[0]["password"]
    async with await connect(back["uri"]) as session:
        cursor = await session.execute("SELECT id FROM orders")
        assert await cursor.fetchall() == [(42,)]


async def test_a_database_name_another_workload_holds_is_refused_and_left_alone(
    stack: Stack,
) -> None:
    holder = await stack.apply(postgres_workload(stack.queue, extensions=CITEXT))
    secret = stack.secret(await ready(holder))
    taken = secret["dbname"]

    other = postgres_workload(f"{stack.queue}-x", extensions=CITEXT, database=taken)
    handle = await stack.apply(other)
    status = await handle.execute_update(
        WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=1, timeout_seconds=60)
    )

    assert status.phase == Phase.DEGRADED
    [refused] = [c for c in status.conditions if c.type == "Postgres"]
    assert (refused.reason, refused.permanent) == ("DatabaseTaken", True)
    assert refused.message == (
        f"role {taken}_owner already exists and belongs to workload {stack.queue}/orders; set "
        "another spec.postgres.database"
    )
    assert "Postgres" not in status.outputs
    async with await connect(secret["uri"]) as session:
        await session.execute("SELECT 1")


async def test_a_delivered_secret_deleted_by_hand_is_delivered_anew(stack: Stack) -> None:
    handle = await stack.apply(postgres_workload(stack.queue, extensions=CITEXT))
    status = await ready(handle)
    first, location = stack.secret(status), postgres(status)["location"]

    clone = stack.repo.parent / "someone"
    git("clone", "--quiet", str(stack.repo), str(clone))
    git("rm", "--quiet", location, cwd=clone)
    git("commit", "--quiet", "-m", "hand delete", cwd=clone)
    git("push", "--quiet", "origin", "main", cwd=clone)
    status = await one_pass(stack.client, handle)

    assert (postgres(status)["version"], postgres(status)["reason"]) == (2, "DeliveryDrift")
    second = stack.secret(status)
    assert second["user"] != first["user"]
    # The old password is still within its grace: pods holding it lose nothing.
    for secret in (first, second):
        async with await connect(secret["uri"]) as session:
            await session.execute("SELECT 1")


# ---- 6. bad input ------------------------------------------------------------------------------

LONG_NAME = "a" * 57


@pytest.mark.parametrize(
    ("postgres_spec", "problem"),
    [
        (
            {"server": "nope"},
            "spec.postgres.server: 'nope' is not a server of the platform configuration; "
            "allowed: local",
        ),
        (
            {"server": "local", "extensions": ["citext", "postgis"]},
            "spec.postgres.extensions[1]: 'postgis' is not an extension the platform allows; "
            "allowed: citext, pg_trgm",
        ),
        (
            {"server": "local", "database": LONG_NAME},
            "spec.postgres.database: must be at most 56 lowercase letters, digits or '_', not "
            "starting with a digit (so that its roles, <name>_owner and <name>_login1, fit "
            f"PostgreSQL's 63-byte limit); got '{LONG_NAME}'",
        ),
    ],
    ids=["unknown-server", "extension-not-allowed", "database-name-too-long"],
)
async def test_idpctl_apply_refuses_what_the_platform_cannot_give_and_starts_nothing(
    client: Client,
    postgres_server: LocalPostgres,
    tmp_path: Path,
    postgres_spec: dict[str, Any],
    problem: str,
) -> None:
    queue = task_queue()
    address = client.service_client.config.target_host
    platform_file = write_platform(tmp_path / "platform.yaml", tmp_path / "state.git", address)
    platform = yaml.safe_load(platform_file.read_text())
    platform_file.write_text(
        yaml.safe_dump({**platform, "postgres": postgres_section(postgres_server, EXTENSIONS)})
    )
    document = postgres_workload_document(queue, **postgres_spec)
    file = tmp_path / "orders.yaml"
    file.write_text(yaml.safe_dump(document, sort_keys=False))
    cli = Cli(address=address, task_queue=queue, platform_file=platform_file)

    result = await cli.idpctl("--platform", str(platform_file), "apply", "-f", str(file))

    assert result.code == 2, result
    assert result.stdout == ""
    assert result.stderr == f"error: {file}: document 1: {problem}\n", result
    assert not await workflow_exists(client, f"workload/{queue}/orders")


async def test_removing_the_section_releases_the_database_as_deletion_would(
    stack: Stack,
) -> None:
    with_database = postgres_workload(stack.queue, extensions=CITEXT)
    handle = await stack.apply(with_database)
    status = await ready(handle)
    secret, location = stack.secret(status), postgres(status)["location"]
    async with await connect(secret["uri"]) as session:
        await session.execute("CREATE TABLE orders AS SELECT 42 AS id")

    document = postgres_workload_document(stack.queue)
    del document["spec"]["postgres"]
    await stack.apply(Workload.model_validate(document))
    status = await ready(handle, generation=2)

    assert "Postgres" not in status.outputs
    assert all(c.type != "Postgres" for c in status.conditions)
    database = secret["dbname"]
    assert f"released: kept database {database} (Retain); logins disabled" in messages(status)
    assert read(stack.repo, location) is None
    assert "password authentication failed" in await refusal(secret)
    assert await one(stack.server, "SELECT id FROM orders", dbname=database) == 42
