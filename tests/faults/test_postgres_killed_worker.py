"""The worker SIGKILLed between setting a workload's first database password and delivering it.

A pre-receive hook in the state store's bare repository holds the push that would deliver the
password until the test gives its verdict, so the window is real and the test knows it is in it:
the login has a password on the server, and the commit that would deliver it waits at the
remote. Then the worker (`python -m worker`, a real process) is killed. Its push either dies with
it (the hook refuses it) or had already reached the remote (the hook accepts it once the worker
is gone); either way a new worker must leave one set of roles, one delivered secret and a
password that logs in. Each case waits out the killed attempt's heartbeat timeout (15 s).
"""

import asyncio
import shlex
from pathlib import Path
from typing import Literal

import psycopg
import pytest
import yaml
from support.fleet import commits_per_file, wait_all_ready
from support.postgres import (
    admin_env,
    database_of,
    delivered_secret,
    login_verifiers,
    postgres_platform,
    postgres_workload,
    secret_path,
    workload_roles,
)
from support.processes import WorkerProcess
from support.secrets import ControllerKeys
from support.stack import bare_repo, task_queue
from temporalio.client import Client

from idp_postgres.local import LocalPostgres
from starter.operations import apply_workload

Verdict = Literal["accept", "refuse"]
# The hook gives up on its own (refusing) after this long, so a failed test leaves no push
# hanging behind it.
HOOK_TIMEOUT_SECONDS = 90
HOOK = """#!/bin/sh
held=
while read old new ref; do
    if git diff-tree -r --root --name-only --no-commit-id "$new" | grep -qxF {path}; then
        held=yes
    fi
done
[ -n "$held" ] || exit 0
echo held >> {log}
deadline=$(( $(date +%s) + {timeout} ))
while [ ! -f {verdict} ] && [ "$(date +%s)" -lt "$deadline" ]; do
    sleep 0.05
done
if [ "$(cat {verdict} 2>/dev/null)" = accept ]; then
    echo accepted >> {log}
    exit 0
fi
echo refused >> {log}
exit 1
"""


class HeldPushes:
    """A pre-receive hook that holds a push to `repo` changing `path` until `release` says how
    it ends; other pushes (the workload's manifests) go through."""

    def __init__(self, repo: Path, path: str, directory: Path) -> None:
        directory.mkdir()
        self.log = directory / "pushes.log"
        self.verdict = directory / "verdict"
        self.hook = repo / "hooks" / "pre-receive"
        self.hook.write_text(
            HOOK.format(
                path=shlex.quote(path),
                log=shlex.quote(str(self.log)),
                verdict=shlex.quote(str(self.verdict)),
                timeout=HOOK_TIMEOUT_SECONDS,
            )
        )
        self.hook.chmod(0o755)

    def outcomes(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []

    @property
    def holding(self) -> bool:
        return self.outcomes()[-1:] == ["held"]

    async def release(self, verdict: Verdict) -> None:
        """End the held push (if any) as `verdict` says, then remove the hook, so that later
        pushes go straight through."""
        if not self.verdict.exists():
            self.verdict.write_text(verdict)
        async with asyncio.timeout(10):
            while self.holding:
                await asyncio.sleep(0.02)
        self.hook.unlink(missing_ok=True)


@pytest.mark.parametrize(
    "verdict",
    [
        # The new worker sets another password on the same login and delivers that one.
        "refuse",
        # The new worker finds the password delivered and sets none: the slow suite covers it.
        pytest.param("accept", marks=pytest.mark.faults),
    ],
)
async def test_a_worker_killed_between_setting_and_delivering_a_password_leaves_one_that_works(
    client: Client,
    postgres_server: LocalPostgres,
    keys: ControllerKeys,
    tmp_path: Path,
    verdict: Verdict,
) -> None:
    queue = task_queue()
    repo = bare_repo(tmp_path / "state.git")
    w = postgres_workload(queue)
    database = database_of(w)
    secret = secret_path(w)
    pushes = HeldPushes(repo, secret, tmp_path / "pushes")
    platform = postgres_platform(repo, postgres_server, keys.cert_file)
    platform_file = tmp_path / "platform.yaml"
    platform_file.write_text(yaml.safe_dump(platform.model_dump(mode="json")))
    worker = WorkerProcess(
        client.service_client.config.target_host,
        platform_file,
        queue,
        tmp_path / "cache",
        tmp_path / "worker.log",
        admin_env(postgres_server),
    )

    async def password_set() -> bool:
        found = await asyncio.to_thread(login_verifiers, postgres_server, database)
        return found.get(f"{database}_login1") is not None

    await worker.start()
    try:
        await apply_workload(client, queue, w)
        async with asyncio.timeout(60):
            while not (pushes.holding and await password_set()):
                worker.check_alive()
                await asyncio.sleep(0.05)
        assert commits_per_file(repo)[secret] == 0, "delivered before the kill"
        await worker.kill()
        await pushes.release(verdict)
        if verdict == "accept":
            # Landed before the new worker starts, so that it finds the password delivered.
            async with asyncio.timeout(10):
                while commits_per_file(repo)[secret] == 0:
                    await asyncio.sleep(0.02)
        else:
            assert commits_per_file(repo)[secret] == 0
        await worker.start()
        [status] = await wait_all_ready(client, [w], timeout=120)
    finally:
        await pushes.release("refuse")
        await worker.stop()

    roles = await asyncio.to_thread(workload_roles, postgres_server, database)
    assert roles == [f"{database}_login1", f"{database}_login2", f"{database}_owner"]
    assert commits_per_file(repo)[secret] == 1
    assert status.outputs["Postgres"]["version"] == 1
    delivered = delivered_secret(repo, w, keys.key)
    with psycopg.connect(delivered["uri"], connect_timeout=5) as session:
        assert session.execute("SELECT session_user").fetchone() == (f"{database}_login1",)
