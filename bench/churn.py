"""Churn over 30 days: this reconciler beside the old pipeline that re-ran everything.

    .venv/bin/python bench/churn.py [--days 30]

One workload with a NATS user (`ttl` 7 days, sealed-secret delivery), against the Synadia
emulator (real nats-server), moto's server and a bare git repository:

- **reconciler**: the WorkloadWorkflow on the time-skipping test server, drift checks every 10
  minutes, for `--days` simulated days;
- **old pipeline**: what the previous orchestrator did every 10 hours, a full re-run that issues
  and delivers fresh credentials each time; run here by calling the very same capability actions
  (the Nats pass, then Credentials' issue and deliver) unconditionally, `days * 24 / 10` times,
  against the same emulator and a fresh repository.

Counted for each: credential issuances (Synadia's own record of downloaded creds) beside secret
deliveries (commits that changed the SealedSecret), the issued credentials still valid that were
never delivered (should be 0: Synadia's issuance history against the keys the SealedSecret ever
named), state-store commits, and simulated workload restarts (a pod restarts, Reloader-style,
whenever its mounted secret changes: one per delivery).
"""

import argparse
import os
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import no_churn
import running
import yaml
from moto.server import ThreadedMotoServer
from temporalio.testing import WorkflowEnvironment

from capabilities import credentials, nats
from capabilities.credentials import CredentialsObservation, CredentialsPlan, Issue
from emulators.synadia import DEFAULT_TOKEN, SynadiaEmulator
from idp.capability import Context
from idp.credentials import IssueReason
from idp.delivery import PUBLIC_KEY_ANNOTATION
from idp.models import Workload
from idp.natsusers import LIVE_ISSUANCE
from idp.platform import Platform, load_platform
from idp.synadia import SynadiaClient
from starter.operations import apply_workload
from starter.temporal import data_converter
from worker import build_worker
from workflows.messages import WaitReadyRequest
from workflows.workload import WorkloadWorkflow

PIPELINE_PERIOD = timedelta(hours=10)


def the_workload() -> Workload:
    return no_churn.workload("orders", "sealed-secret")


def sealed_path(workload: Workload) -> str:
    return f"dev/bench/{workload.metadata.name}/sealedsecret-nats.yaml"


def sealed_changes(repo: Path, workload: Workload) -> list[str]:
    out = subprocess.run(
        ["git", "log", "--format=%H", "main", "--", sealed_path(workload)],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    return out.stdout.split()


def delivered_keys(repo: Path, workload: Workload, changes: list[str]) -> set[str]:
    """The user key of every credential the SealedSecret held at `changes` (its annotations)."""
    keys = set()
    for sha in changes:
        text = subprocess.run(
            ["git", "show", f"{sha}:{sealed_path(workload)}"],
            cwd=repo,
            capture_output=True,
            text=True,
        ).stdout
        keys.add(yaml.safe_load(text)["metadata"]["annotations"][PUBLIC_KEY_ANNOTATION])
    return keys


async def valid_undelivered(
    synadia: SynadiaEmulator, user_id: str, repo: Path, workload: Workload, changes: list[str]
) -> int:
    """Issued credentials nats-server would still accept on keys nothing was delivered on."""
    async with SynadiaClient(synadia.api_url, synadia.token) as client:
        issuances = await client.list_nats_user_issuances(user_id)
    delivered = delivered_keys(repo, workload, changes)
    return sum(i.status in LIVE_ISSUANCE and i.sub not in delivered for i in issuances)


async def reconciler(
    platform: Platform, synadia: SynadiaEmulator, repo: Path, days: int
) -> dict[str, float]:
    workload = the_workload()
    started = time.perf_counter()
    async with await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(no_churn.BIN / "temporal-test-server"),
        data_converter=data_converter(None),
    ) as env:
        async with build_worker(env.client, platform, "idp", repo.parent / "cache-reconciler"):
            await apply_workload(env.client, "idp", workload)
            handle = env.client.get_workflow_handle(workload.workflow_id)
            await handle.execute_update(
                WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=1, timeout_seconds=60)
            )
            # A day per call: one month-long sleep outlives the RPC.
            for _ in range(days):
                await env.sleep(timedelta(days=1))
            status = await handle.query(WorkloadWorkflow.status)
    user = status.outputs["Nats"]["userId"]
    changes = sealed_changes(repo, workload)
    return {
        "issuances": synadia.creds_issued(user),
        "deliveries": len(changes),
        "undelivered": await valid_undelivered(synadia, user, repo, workload, changes),
        "commits": no_churn.commits(repo),
        "restarts": len(changes),
        "seconds": time.perf_counter() - started,
    }


def pipeline_run(
    workload: Workload, run: int, outputs: dict[str, Any] | None, **inputs: Any
) -> Context:
    return Context(
        workload=workload,
        workflow_id=f"pipeline-run-{run}",
        generation=1,
        now=datetime.now(UTC),
        outputs=outputs,
        inputs=inputs,
    )


async def old_pipeline(
    platform: Platform, synadia: SynadiaEmulator, repo: Path, days: int
) -> dict[str, float]:
    workload = the_workload()
    cache = repo.parent / "cache-pipeline"
    users = nats.capability.actions(platform, platform.synadia, cache)
    deliveries = credentials.capability.actions(platform, None, cache)
    runs = int(timedelta(days=days) / PIPELINE_PERIOD)
    started = time.perf_counter()
    user: dict[str, Any] | None = None
    issued: dict[str, Any] | None = None
    for run in range(1, runs + 1):
        found = pipeline_run(workload, run, user)
        observed = await users.observe(found)
        user = (await users.apply(found, nats.capability.plan(found, observed), observed)).outputs
        # Issued and delivered on every run, whatever the policy would say.
        plan = CredentialsPlan(issue=Issue(version=run, reason=IssueReason.REQUESTED))
        target = pipeline_run(workload, run, issued, Nats=user)
        issued = (await deliveries.apply(target, plan, CredentialsObservation())).outputs
    assert user is not None
    user_id = user["userId"]
    changes = sealed_changes(repo, workload)
    return {
        "issuances": synadia.creds_issued(user_id),
        "deliveries": len(changes),
        "undelivered": await valid_undelivered(synadia, user_id, repo, workload, changes),
        "commits": no_churn.commits(repo),
        "restarts": len(changes),
        "seconds": time.perf_counter() - started,
    }


async def main(days: int) -> None:
    os.environ |= {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    os.environ["IDP_BENCH_SYNADIA_TOKEN"] = DEFAULT_TOKEN
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    try:
        with tempfile.TemporaryDirectory(prefix="idp-churn-") as tmp:
            root = Path(tmp)
            results = {}
            for name, run in (("reconciler", reconciler), ("old pipeline", old_pipeline)):
                folder = root / name.replace(" ", "-")
                folder.mkdir()
                # Each its own emulator and repository, so every count is its own.
                async with SynadiaEmulator.running(folder / "synadia") as synadia:
                    repo = no_churn.bare_repo(folder / "state.git")
                    platform_file = folder / "platform.yaml"
                    platform_file.write_text(
                        no_churn.PLATFORM.format(
                            repo=repo,
                            cert=no_churn.sealing_certificate(folder),
                            aws=f"http://{host}:{port}",
                            synadia=synadia.api_url,
                            system=synadia.system_name,
                            account=synadia.account_name,
                        )
                    )
                    platform = load_platform(platform_file)
                    results[name] = await run(platform, synadia, repo, days)
    finally:
        moto.stop()
    print(f"\none workload, {days} simulated days, ttl 7d, drift checks every 10 minutes")
    print(f"old pipeline: a full re-run every {PIPELINE_PERIOD.total_seconds() / 3600:g} hours")
    rows = [
        ("credential issuances", "issuances"),
        ("secret deliveries", "deliveries"),
        ("valid, never delivered", "undelivered"),
        ("state-store commits", "commits"),
        ("workload restarts (simulated)", "restarts"),
        ("wall-clock seconds to run", "seconds"),
    ]
    print(f"{'measure':<32} {'reconciler':>12} {'old pipeline':>14}")
    for label, key in rows:
        ours, theirs = results["reconciler"][key], results["old pipeline"][key]
        print(f"{label:<32} {ours:>12.0f} {theirs:>14.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=30)
    running.run(main(parser.parse_args().days))
