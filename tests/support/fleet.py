"""Many workloads onboarding at once on every real part (registry on moto's server, a NATS user
from the Synadia emulator with its nats-server, credentials sealed into the git state store, the
ServiceAccount beside them), and the census that proves afterwards that nothing exists twice.

The census reads the systems themselves, not the workflows' word for it: ECR repositories and IAM
roles with our ownership tags through boto3 against moto, NATS users through the emulator's API,
and the state store's history commit by commit.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import boto3
import yaml
from support.moto import MOTO_ACCOUNT_ID
from support.processes import WorkerProcess
from support.stack import bare_repo, git, task_queue
from temporalio.client import Client

from emulators.port import PortEmulator
from emulators.synadia import DEFAULT_TOKEN, SynadiaEmulator
from idp.aws.iam import role_name_for
from idp.aws.tags import SYSTEM_TAG
from idp.manifests import SEALED_FILE, workload_directory
from idp.models import Workload
from idp.natsusers import user_name
from idp.platform import (
    AwsConfig,
    ClusterIdentity,
    Destination,
    Platform,
    PortConfig,
    ReconcileSettings,
    StateStoreConfig,
    SynadiaConfig,
)
from idp.sealing import CertificateSource
from idp.synadia import SynadiaClient
from starter.operations import apply_workload
from workflows.messages import WaitReadyRequest, WorkloadStatus
from workflows.state import Phase
from workflows.workload import WorkloadWorkflow

REGION = "eu-west-1"
SYNADIA_TOKEN_ENV = "IDP_FAULTS_SYNADIA_TOKEN"
# The worker's environment: the emulator's token, and moto's fake AWS keys so that boto3's
# credential chain never reaches for a developer's real profile.
WORKER_ENV = {
    SYNADIA_TOKEN_ENV: DEFAULT_TOKEN,
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
}
SERVICE_ACCOUNT = "serviceaccount.yaml"
PLATFORM_FILE = "platform.yaml"


def workloads(system: str, count: int) -> list[Workload]:
    """`count` workloads of `system`, each with a registry and a NATS user whose credentials
    the destination's default delivery (a SealedSecret in git) carries."""
    return [
        Workload.model_validate(
            {
                "metadata": {"name": f"w{i:03}", "system": system},
                "spec": {
                    "owner": "team-faults",
                    "destination": "dev",
                    "namespace": "onboard",
                    "nats": {"permissions": {"publish": {"allow": [f"{system}.>"]}}},
                },
            }
        )
        for i in range(count)
    ]


@dataclass
class Onboarding:
    """One test's workloads, its state store and the worker process that onboards them."""

    queue: str
    workloads: list[Workload]
    repo: Path
    worker: WorkerProcess
    directory: Path
    address: str
    worker_env: dict[str, str]

    @property
    def system(self) -> str:
        # Workflow ids are global on a shared server: each run's own task queue names its system.
        return self.queue

    async def apply(self, client: Client) -> None:
        await asyncio.gather(*(apply_workload(client, self.queue, w) for w in self.workloads))

    def another_worker(self, name: str, *, metrics_address: str | None = None) -> WorkerProcess:
        """One more worker process on this run's task queue, platform and state store, with a
        cache directory (so a clone of the state store) and a log of its own."""
        return WorkerProcess(
            self.address,
            self.directory / PLATFORM_FILE,
            self.queue,
            self.directory / f"cache-{name}",
            self.directory / f"worker-{name}.log",
            self.worker_env,
            metrics_address=metrics_address,
        )


def onboarding(
    directory: Path,
    address: str,
    count: int,
    *,
    aws_url: str,
    synadia: SynadiaEmulator,
    sealing_cert: Path,
    min_backoff: timedelta = timedelta(seconds=1),
    max_backoff: timedelta = timedelta(seconds=5),
    metrics_address: str | None = None,
    port: PortEmulator | None = None,
) -> Onboarding:
    """`count` workloads on their own task queue and state store, and a (not yet started)
    worker for the Temporal server at `address` whose platform reaches AWS at `aws_url` (and
    reports to `port`, when given)."""
    queue = task_queue()
    repo = bare_repo(directory / "state.git")
    platform = _platform(repo, aws_url, synadia, sealing_cert, min_backoff, max_backoff)
    env = dict(WORKER_ENV)
    if port is not None:
        config = PortConfig(url=port.url)
        platform = platform.model_copy(update={"port": config})
        env |= {config.client_id_env: port.client_id, config.client_secret_env: port.client_secret}
    platform_file = directory / PLATFORM_FILE
    platform_file.write_text(yaml.safe_dump(platform.model_dump(mode="json")))
    worker = WorkerProcess(
        address,
        platform_file,
        queue,
        directory / "cache",
        directory / "worker.log",
        env,
        metrics_address=metrics_address,
    )
    return Onboarding(queue, workloads(queue, count), repo, worker, directory, address, env)


def _platform(
    repo: Path,
    aws_url: str,
    synadia: SynadiaEmulator,
    sealing_cert: Path,
    min_backoff: timedelta,
    max_backoff: timedelta,
) -> Platform:
    return Platform(
        destinations=[
            Destination(
                name="dev",
                state_store=StateStoreConfig(url=str(repo)),
                cluster=ClusterIdentity(
                    oidc_provider_arn=f"arn:aws:iam::{MOTO_ACCOUNT_ID}:oidc-provider/oidc.test/id/F"
                ),
                sealing=CertificateSource(file=sealing_cert),
            )
        ],
        reconcile=ReconcileSettings(min_backoff=min_backoff, max_backoff=max_backoff),
        aws=AwsConfig(
            region=REGION,
            account_id=MOTO_ACCOUNT_ID,
            endpoint_url=aws_url,
            attachable_policies=[f"arn:aws:iam::{MOTO_ACCOUNT_ID}:policy/*"],
        ),
        synadia=SynadiaConfig(
            url=synadia.api_url,
            token_env=SYNADIA_TOKEN_ENV,
            system=synadia.system_name,
            default_account=synadia.account_name,
        ),
    )


async def wait_all_ready(
    client: Client, items: Iterable[Workload], timeout: float = 300
) -> list[WorkloadStatus]:
    """Each workload's status once it is Ready at generation 1; fails naming the ones that are
    not, with their conditions."""

    async def one(workload: Workload) -> WorkloadStatus:
        return await client.get_workflow_handle(workload.workflow_id).execute_update(
            WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=1, timeout_seconds=timeout)
        )

    statuses = await asyncio.gather(*(one(w) for w in items))
    stuck = {
        f"{s.system}/{s.name}": [(c.type, c.reason, c.message) for c in s.conditions]
        for s in statuses
        if s.phase != Phase.READY
    }
    assert not stuck, f"not Ready after {timeout:g}s: {stuck}"
    return statuses


# ---- the census ------------------------------------------------------------------------------


def aws_inventory(aws_url: str, system: str) -> tuple[list[str], list[str]]:
    """(ECR repository names, IAM role names) that carry `system`'s ownership tag, read from
    moto directly (not through any fault proxy)."""
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    ecr = session.client("ecr", endpoint_url=aws_url)
    iam = session.client("iam", endpoint_url=aws_url)
    repositories = [
        repo["repositoryName"]
        for page in ecr.get_paginator("describe_repositories").paginate()
        for repo in page["repositories"]
        if _tag(ecr.list_tags_for_resource(resourceArn=repo["repositoryArn"])["tags"]) == system
    ]
    roles = [
        role["RoleName"]
        for page in iam.get_paginator("list_roles").paginate()
        for role in page["Roles"]
        if _tag(iam.list_role_tags(RoleName=role["RoleName"])["Tags"]) == system
    ]
    return repositories, roles


def _tag(tags: list[dict[str, str]]) -> str | None:
    return next((t["Value"] for t in tags if t["Key"] == SYSTEM_TAG), None)


async def nats_user_names(synadia: SynadiaEmulator, system: str) -> list[str]:
    """Names of the users in the application account that belong to `system`, repeats kept."""
    async with SynadiaClient(synadia.api_url, synadia.token) as api:
        users = await api.list_nats_users(synadia.account_id)
    return [u.name for u in users if u.name.startswith(f"{system}-")]


def commits_per_file(repo: Path) -> Counter[str]:
    """How many commits on main touched each path (none before the first commit); fails on an
    empty commit."""
    touched: Counter[str] = Counter()
    try:
        log = git("log", "--format=%x1e%H", "--name-only", "main", cwd=repo)
    except subprocess.CalledProcessError:
        return touched
    for entry in log.split("\x1e")[1:]:
        sha, *paths = entry.split()
        assert paths, f"commit {sha} changes nothing"
        touched.update(paths)
    return touched


def onboarded(repo: Path) -> int:
    """How many workloads have their ServiceAccount committed, the last step of onboarding."""
    return sum(1 for path in commits_per_file(repo) if path.endswith(f"/{SERVICE_ACCOUNT}"))


async def wait_onboarded(repo: Path, at_least: int, worker: WorkerProcess) -> None:
    """Until `at_least` workloads are onboarded; fails if the worker dies meanwhile."""
    async with asyncio.timeout(120):
        while onboarded(repo) < at_least:
            worker.check_alive()
            await asyncio.sleep(0.1)


async def assert_onboarded_once(
    run: Onboarding, statuses: list[WorkloadStatus], *, aws_url: str, synadia: SynadiaEmulator
) -> None:
    """Everything each workload needs exists exactly once: one repository and role, one NATS
    user, credentials issued as version 1 and committed once, the ServiceAccount committed once."""
    items = run.workloads
    repositories, roles = await asyncio.to_thread(aws_inventory, aws_url, run.system)
    assert sorted(repositories) == sorted(f"{run.system}/{w.metadata.name}" for w in items)
    assert sorted(roles) == sorted(role_name_for(run.system, w.metadata.name) for w in items)
    users = await nats_user_names(synadia, run.system)
    assert sorted(users) == sorted(user_name(w) for w in items)
    assert [s.outputs["Credentials"]["version"] for s in statuses] == [1] * len(items)
    touched = commits_per_file(run.repo)
    for workload in items:
        directory = workload_directory("", workload)
        for file in (SERVICE_ACCOUNT, SEALED_FILE):
            count = touched[f"{directory}/{file}"]
            assert count == 1, f"{directory}/{file} was committed {count} times"


def assert_linear_history(repo: Path) -> None:
    """Writers on several workers rebased onto each other and never merged: no commit on main
    has two parents, and the first-parent chain from the head holds every commit of every ref."""
    merges = git("rev-list", "--min-parents=2", "--all", cwd=repo).split()
    assert not merges, f"merge commits in the state store: {merges}"
    chain = git("rev-list", "--first-parent", "main", cwd=repo).split()
    every = git("rev-list", "--all", cwd=repo).split()
    assert sorted(chain) == sorted(every), "commits off the first-parent chain of main"


def assert_nothing_lost(run: Onboarding, statuses: list[WorkloadStatus]) -> None:
    """No push overwrote another: every workload's files are at the head of main, and every
    commit a workload recorded as carrying its files is on main."""
    at_head = set(git("ls-tree", "-r", "--name-only", "main", cwd=run.repo).split())
    expected = {
        f"{workload_directory('', w)}/{file}"
        for w in run.workloads
        for file in (SERVICE_ACCOUNT, SEALED_FILE)
    }
    missing = sorted(expected - at_head)
    assert not missing, f"not at the head of main: {missing}"
    on_main = set(git("rev-list", "main", cwd=run.repo).split())
    recorded = {
        f"{s.system}/{s.name}": s.outputs["Manifests"]["commit"]
        for s in statuses
        if s.outputs["Manifests"].get("commit")
    }
    lost = {name: sha for name, sha in recorded.items() if sha not in on_main}
    assert not lost, f"recorded commits that are not on main: {lost}"
