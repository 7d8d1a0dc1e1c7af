"""The registry step inside WorkloadWorkflow: dev server, worker, git, and AWS through moto."""

import asyncio
from pathlib import Path

import boto3
import pytest
import yaml
from support.moto import MOTO_ACCOUNT_ID
from support.stack import bare_repo, platform_for, read, running_worker, task_queue
from temporalio.client import Client, WorkflowHandle

from capabilities.registry import RegistryOutput
from idp.models import Workload
from idp.platform import AwsConfig, ClusterIdentity, Platform
from starter.operations import apply_workload
from workflows.messages import WaitReadyRequest, WorkloadStatus
from workflows.state import ConditionStatus, Phase
from workflows.workload import WorkloadWorkflow

REGION = "eu-west-1"
OIDC = f"arn:aws:iam::{MOTO_ACCOUNT_ID}:oidc-provider/oidc.eks.{REGION}.amazonaws.com/id/ABC"


def aws_platform(repo: Path, aws_url: str) -> Platform:
    base = platform_for(repo)
    destination = base.destinations[0].model_copy(
        update={"cluster": ClusterIdentity(oidc_provider_arn=OIDC)}
    )
    return base.model_copy(
        update={
            "destinations": [destination],
            "aws": AwsConfig(
                region=REGION,
                account_id=MOTO_ACCOUNT_ID,
                endpoint_url=aws_url,
                attachable_policies=[f"arn:aws:iam::{MOTO_ACCOUNT_ID}:policy/*"],
            ),
        }
    )


def workload(system: str, **spec: object) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": "cart", "system": system},
            "spec": {"owner": "team-shop", "destination": "dev", "namespace": "shop", **spec},
        }
    )


async def ready(handle: WorkflowHandle, generation: int = 1) -> WorkloadStatus:
    status = await handle.execute_update(
        WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=generation, timeout_seconds=30)
    )
    assert status.phase == Phase.READY, status.conditions
    return status


async def until(handle: WorkflowHandle, predicate) -> WorkloadStatus:
    async with asyncio.timeout(30):
        while not predicate(status := await handle.query(WorkloadWorkflow.status)):
            await asyncio.sleep(0.1)
    return status


def registry_condition(status: WorkloadStatus):
    return next(c for c in status.conditions if c.type == "Registry")


async def test_registry_role_arn_reaches_the_service_account(
    client: Client, aws_url: str, tmp_path: Path
) -> None:
    queue = task_queue()
    repo = bare_repo(tmp_path / "state.git")
    w = workload(queue)
    async with running_worker(client, aws_platform(repo, aws_url), queue, tmp_path / "c"):
        await apply_workload(client, queue, w)
        handle = client.get_workflow_handle(w.workflow_id)
        status = await ready(handle)
        registry = RegistryOutput.model_validate(status.outputs["Registry"])
        assert registry.repository_uri.endswith(f"/{queue}/cart")
        assert registry_condition(status).reason == "Created"

        manifest = yaml.safe_load(read(repo, "dev/shop/cart/serviceaccount.yaml"))
        assert manifest["metadata"]["annotations"] == {
            "eks.amazonaws.com/role-arn": registry.role_arn
        }

        # Someone shortens the lifecycle policy in the console: the next pass puts it back.
        ecr = boto3.client("ecr", region_name=REGION, endpoint_url=aws_url)
        ecr.put_lifecycle_policy(
            repositoryName=f"{queue}/cart",
            lifecyclePolicyText='{"rules":[{"rulePriority":1,"selection":{"tagStatus":"any",'
            '"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}',
        )
        await handle.signal(WorkloadWorkflow.reconcile)
        status = await until(handle, lambda s: registry_condition(s).reason == "DriftRepaired")
        assert "repository.lifecyclePolicy" in registry_condition(status).message
        await handle.signal(WorkloadWorkflow.reconcile)
        status = await until(handle, lambda s: registry_condition(s).reason == "InSync")

        await handle.signal(WorkloadWorkflow.delete)
        final = await handle.result()

    iam = boto3.client("iam", region_name=REGION, endpoint_url=aws_url)
    roles = [r["RoleName"] for r in iam.list_roles()["Roles"]]
    assert registry.role_arn.rsplit("/", 1)[-1] not in roles
    # deletionPolicy Retain (the default) keeps the repository and its images.
    repositories = [r["repositoryName"] for r in ecr.describe_repositories()["repositories"]]
    assert f"{queue}/cart" in repositories
    assert final["phase"] == "Deleted"


async def test_deletion_policy_delete_removes_the_repository(
    client: Client, aws_url: str, tmp_path: Path
) -> None:
    queue = task_queue()
    repo = bare_repo(tmp_path / "state.git")
    w = workload(queue, deletionPolicy="Delete")
    async with running_worker(client, aws_platform(repo, aws_url), queue, tmp_path / "c"):
        await apply_workload(client, queue, w)
        handle = client.get_workflow_handle(w.workflow_id)
        await ready(handle)
        await handle.signal(WorkloadWorkflow.delete)
        await handle.result()
    ecr = boto3.client("ecr", region_name=REGION, endpoint_url=aws_url)
    repositories = [r["repositoryName"] for r in ecr.describe_repositories()["repositories"]]
    assert f"{queue}/cart" not in repositories


async def test_a_foreign_repository_degrades_with_the_reason(
    client: Client, aws_url: str, tmp_path: Path
) -> None:
    queue = task_queue()
    ecr = boto3.client("ecr", region_name=REGION, endpoint_url=aws_url)
    ecr.create_repository(repositoryName=f"{queue}/cart")
    repo = bare_repo(tmp_path / "state.git")
    w = workload(queue)
    async with running_worker(client, aws_platform(repo, aws_url), queue, tmp_path / "c"):
        await apply_workload(client, queue, w)
        handle = client.get_workflow_handle(w.workflow_id)
        status = await until(handle, lambda s: s.phase == Phase.DEGRADED)
        condition = registry_condition(status)
        assert condition.status == ConditionStatus.FALSE
        assert condition.reason == "ForeignResource"
        assert f"{queue}/cart" in condition.message
        # The later step waits: nothing written for a workload whose registry is not ours.
        assert read(repo, "dev/shop/cart/serviceaccount.yaml") is None


async def test_a_registry_switched_off_is_released_as_the_deletion_policy_says(
    client: Client, aws_url: str, tmp_path: Path
) -> None:
    # `registry.enabled: false` on a live workload: the next pass runs the Registry teardown
    # (Retain: the role goes, the repository and its images stay), drops the condition and
    # outputs, and the workload stays Ready; the ServiceAccount loses its role annotation.
    queue = task_queue()
    repo = bare_repo(tmp_path / "state.git")
    iam = boto3.client("iam", region_name=REGION, endpoint_url=aws_url)
    ecr = boto3.client("ecr", region_name=REGION, endpoint_url=aws_url)
    async with running_worker(client, aws_platform(repo, aws_url), queue, tmp_path / "cache"):
        w = workload(queue)
        await apply_workload(client, queue, w)
        handle = client.get_workflow_handle(w.workflow_id)
        before = RegistryOutput.model_validate((await ready(handle)).outputs["Registry"])
        role = before.role_arn.rsplit("/", 1)[-1]
        assert iam.get_role(RoleName=role)["Role"]["Arn"] == before.role_arn

        await apply_workload(client, queue, workload(queue, registry={"enabled": False}))
        after = await ready(handle, 2)

    assert "Registry" not in after.outputs
    assert [c.type for c in after.conditions] == ["Manifests"]
    assert any(e.step == "Registry" and e.message.startswith("released: ") for e in after.events)
    with pytest.raises(iam.exceptions.NoSuchEntityException):
        iam.get_role(RoleName=role)
    assert ecr.describe_repositories(repositoryNames=[f"{queue}/cart"])["repositories"]
    manifest = yaml.safe_load(read(repo, "dev/shop/cart/serviceaccount.yaml"))
    assert "annotations" not in manifest["metadata"]


async def test_a_delete_after_a_refused_first_pass_removes_what_that_pass_made(
    client: Client, aws_url: str, tmp_path: Path
) -> None:
    """The first pass creates the repository and the role, then IAM refuses to attach a managed
    policy that does not exist: the pass records nothing. Deleting the workload still removes
    what it made, found by name and tags."""
    queue = task_queue()
    repo = bare_repo(tmp_path / "state.git")
    missing = f"arn:aws:iam::{MOTO_ACCOUNT_ID}:policy/{queue}-missing"
    w = workload(queue, deletionPolicy="Delete", registry={"managedPolicyArns": [missing]})
    ecr = boto3.client("ecr", region_name=REGION, endpoint_url=aws_url)
    iam = boto3.client("iam", region_name=REGION, endpoint_url=aws_url)

    def made() -> tuple[list[str], list[str]]:
        repositories = [r["repositoryName"] for r in ecr.describe_repositories()["repositories"]]
        roles = [r["RoleName"] for r in iam.list_roles()["Roles"]]
        return [r for r in repositories if r.startswith(f"{queue}/")], [
            r for r in roles if queue in r
        ]

    async with running_worker(client, aws_platform(repo, aws_url), queue, tmp_path / "c"):
        await apply_workload(client, queue, w)
        handle = client.get_workflow_handle(w.workflow_id)
        status = await until(handle, lambda s: s.phase == Phase.DEGRADED)
        condition = registry_condition(status)
        assert condition.permanent and "Registry" not in status.outputs, condition
        repositories, roles = made()
        assert repositories == [f"{queue}/cart"] and len(roles) == 1

        await handle.signal(WorkloadWorkflow.delete)
        final = await handle.result()

    assert final["phase"] == "Deleted"
    assert made() == ([], [])
    deleted = next(c for c in final["conditions"] if c["type"] == "Registry")
    assert deleted["reason"] == "Deleted" and "repository" in deleted["message"], deleted
