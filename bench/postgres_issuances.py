"""Database passwords set over 30 days: the reconciler's policy beside a naive pipeline.

    .venv/bin/python bench/postgres_issuances.py [--days 30] [--drift 4h] [--reconciles 100]

One workload with a database (`ttl` 7 days, refreshBefore a third of it, sealed-secret delivery)
on a real PostgreSQL server (the plugin's LocalPostgres, in a temporary directory) and a bare git
repository each:

- **reconciler**: the WorkloadWorkflow on the time-skipping test server for `--days` simulated
  days, drift checks every `--drift`; then `--reconciles` forced passes (`idpctl reconcile`), one
  after the other, none of which may set a password;
- **naive pipeline**: a re-run every 10 hours that sets and delivers a fresh password each time,
  run here as `days * 24 / 10` calls of the very same capability actions (observe, plan, apply)
  with a rotation asked for on every run, each on the simulated clock of its run.

Passwords set are counted on the server itself: the SCRAM verifiers of the workload's logins in
pg_authid, read after every simulated step or run (each password has a salt of its own, so a new
password is a new verifier; one stays for days, so no step misses it). Beside them, the
deliveries (commits that changed the sealed secret) and the version the outputs record.
"""

import argparse
import asyncio
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import running
from temporalio.client import Client, WorkflowHandle

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS)]  # the helpers the tests build the same stack with

from support.fleet import commits_per_file, wait_all_ready  # noqa: E402
from support.postgres import (  # noqa: E402
    ADMIN_PASSWORD_ENV,
    database_of,
    login_verifiers,
    postgres_platform,
    postgres_workload,
    secret_path,
)
from support.secrets import controller_keys  # noqa: E402
from support.stack import bare_repo, running_worker, start_time_skipping  # noqa: E402

from idp.capability import Context, dump  # noqa: E402
from idp.durations import format_duration, parse_duration  # noqa: E402
from idp.models import Workload  # noqa: E402
from idp.platform import Platform  # noqa: E402
from idp_postgres.capability import ROTATE, Postgres, RotateCredentials  # noqa: E402
from idp_postgres.local import LocalPostgres  # noqa: E402
from starter.operations import apply_workload, send_request  # noqa: E402
from workflows.workload import WorkloadWorkflow  # noqa: E402

TTL = "7d"
PIPELINE_PERIOD = timedelta(hours=10)
# Simulated time skipped per call: one long skip holds a single RPC open while every pass in it
# runs.
STEP = timedelta(hours=6)


class Verifiers:
    """The passwords a workload's logins have held, as the distinct verifiers seen on them."""

    def __init__(self, server: LocalPostgres, database: str) -> None:
        self._server = server
        self._database = database
        self.seen: set[str] = set()

    async def look(self) -> int:
        """How many passwords are new since the last look."""
        found = await asyncio.to_thread(login_verifiers, self._server, self._database)
        new = {v for v in found.values() if v is not None} - self.seen
        self.seen |= new
        return len(new)


@dataclass
class Counts:
    passwords: int
    deliveries: int
    version: int


def counts(verifiers: Verifiers, repo: Path, workload: Workload, version: int) -> Counts:
    return Counts(len(verifiers.seen), commits_per_file(repo)[secret_path(workload)], version)


async def forced_pass(client: Client, handle: WorkflowHandle) -> None:
    """Ask for a pass, as `idpctl reconcile` does, and wait until it is over: each pass ends by
    setting its next drift check."""
    before = (await handle.query(WorkloadWorkflow.status)).next_check_at
    await send_request(client, handle.id, "reconcile")
    async with asyncio.timeout(60):
        while (await handle.query(WorkloadWorkflow.status)).next_check_at == before:
            await asyncio.sleep(0.01)


async def reconciler(
    server: LocalPostgres, cert: Path, root: Path, days: int, drift: timedelta, reconciles: int
) -> tuple[Counts, Counts]:
    """Counts after `days`, then after `reconciles` forced passes on top."""
    repo = bare_repo(root / "reconciler.git")
    platform = postgres_platform(repo, server, cert, drift, search_attributes=False)
    workload = postgres_workload("reconciler", credentials={"ttl": TTL})
    verifiers = Verifiers(server, database_of(workload))
    async with await start_time_skipping() as env:
        async with running_worker(env.client, platform, "idp", root / "cache-reconciler"):
            await apply_workload(env.client, "idp", workload)
            await wait_all_ready(env.client, [workload], timeout=60)
            await verifiers.look()
            for _ in range(timedelta(days=days) // STEP):
                await env.sleep(STEP)
                await verifiers.look()
            handle = env.client.get_workflow_handle(workload.workflow_id)
            status = await handle.query(WorkloadWorkflow.status)
            month = counts(verifiers, repo, workload, status.outputs["Postgres"]["version"])
            for _ in range(reconciles):
                await forced_pass(env.client, handle)
                await verifiers.look()
            status = await handle.query(WorkloadWorkflow.status)
    return month, counts(verifiers, repo, workload, status.outputs["Postgres"]["version"])


async def pipeline(server: LocalPostgres, cert: Path, root: Path, days: int) -> Counts:
    repo = bare_repo(root / "pipeline.git")
    platform: Platform = postgres_platform(repo, server, cert)
    workload = postgres_workload("pipeline", credentials={"ttl": TTL})
    capability = Postgres()
    actions = capability.actions(platform, platform.section("postgres"), root / "cache-pipeline")
    # Every run asks for a fresh password, and the old one to stop working at once.
    rotate = dump(RotateCredentials(reason="pipeline re-run", revoke_old="now"))
    verifiers = Verifiers(server, database_of(workload))
    start = datetime.now(UTC)
    outputs, memory, changes = None, {}, 0
    for run in range(timedelta(days=days) // PIPELINE_PERIOD):
        ctx = Context(
            workload=workload,
            workflow_id=workload.workflow_id,
            generation=1,
            now=start + run * PIPELINE_PERIOD,
            outputs=outputs,
            memory=memory,
            requests={ROTATE: rotate},
        )
        observation = await actions.observe(ctx)
        report = await actions.apply(ctx, capability.plan(ctx, observation), observation)
        outputs, memory = report.outputs, report.memory
        changes += await verifiers.look()
    assert outputs is not None and changes == len(verifiers.seen)
    return counts(verifiers, repo, workload, outputs["version"])


async def main(days: int, drift: timedelta, reconciles: int) -> None:
    with tempfile.TemporaryDirectory(prefix="idp-pg-issuances-") as tmp:
        root = Path(tmp)
        cert = controller_keys(root / "sealing").cert_file
        with LocalPostgres(root / "postgres", durable=False) as server:
            os.environ[ADMIN_PASSWORD_ENV] = server.admin_password
            month, forced = await reconciler(server, cert, root, days, drift, reconciles)
            naive = await pipeline(server, cert, root, days)
    runs = timedelta(days=days) // PIPELINE_PERIOD
    period = format_duration(PIPELINE_PERIOD)
    print(f"\none workload, {days} simulated days, ttl {TTL} (refreshBefore a third of it)")
    print(f"reconciler: drift checks every {format_duration(drift)}")
    print(f"naive pipeline: a re-run every {period} setting a fresh password ({runs} runs)")
    print(f"{'measure':<40} {'reconciler':>11} {'naive pipeline':>15}")
    rows = [
        ("passwords set (verifiers in pg_authid)", "passwords"),
        ("deliveries (sealed-secret commits)", "deliveries"),
        ("password version in the outputs", "version"),
    ]
    for label, field in rows:
        print(f"{label:<40} {getattr(month, field):>11} {getattr(naive, field):>15}")
    print(
        f"\n{reconciles} forced reconciles after day {days}: "
        f"{forced.passwords - month.passwords} passwords set, "
        f"{forced.deliveries - month.deliveries} deliveries, version {forced.version}"
    )
    print(f"command: {shlex.join([os.path.relpath(sys.executable), *sys.argv])}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--drift", default="4h", help="the reconciler's drift interval (4h)")
    parser.add_argument("--reconciles", type=int, default=100)
    args = parser.parse_args()
    running.run(main(args.days, parse_duration(args.drift), args.reconciles))
