"""The Registry capability through its contract (observe, plan, apply, teardown, and the pure
half's describe and Port properties), against a real moto server over HTTP with real boto3."""

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from support.awscalls import REGISTRY_READS, CallCounter
from support.moto import MOTO_ACCOUNT_ID, reset_moto
from temporalio.testing import ActivityEnvironment

from activities.capabilities import capability_activities
from capabilities.registry import Registry
from capabilities.registry.actions import RegistryActions
from capabilities.registry.capability import RegistryObservation, RegistryPlan
from idp.capability import Change, Context, Report
from idp.errors import PermanentError
from idp.models import Workload
from idp.platform import AwsConfig, ClusterIdentity, Destination, Platform, StateStoreConfig

REGION = "eu-west-1"
OIDC = f"arn:aws:iam::{MOTO_ACCOUNT_ID}:oidc-provider/oidc.eks.{REGION}.amazonaws.com/id/ABC"
REPOSITORY = "idp/shop/cart"
ROLE = "idp-shop-cart"
REGISTRY = Registry()
BLUEPRINT = Path(__file__).parents[1] / "starter/port/blueprints/idpWorkload.json"


@pytest.fixture
def platform(aws_url: str, tmp_path: Path) -> Platform:
    reset_moto(aws_url)
    return Platform(
        destinations=[
            Destination(
                name="dev",
                state_store=StateStoreConfig(url=str(tmp_path / "state.git")),
                cluster=ClusterIdentity(oidc_provider_arn=OIDC),
            )
        ],
        aws=AwsConfig(
            region=REGION,
            account_id=MOTO_ACCOUNT_ID,
            endpoint_url=aws_url,
            repository_prefix="idp/",
            attachable_policies=[f"arn:aws:iam::{MOTO_ACCOUNT_ID}:policy/*"],
        ),
    )


@pytest.fixture
def actions(platform: Platform, tmp_path: Path) -> RegistryActions:
    return REGISTRY.actions(platform, platform.section("aws"), tmp_path)


@pytest.fixture
def aws(aws_url: str) -> tuple[Any, Any]:
    """Clients of someone else: a person at the console, another tool."""
    return (
        boto3.client("ecr", region_name=REGION, endpoint_url=aws_url),
        boto3.client("iam", region_name=REGION, endpoint_url=aws_url),
    )


def workload(**spec: Any) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": "cart", "system": "shop"},
            "spec": {"owner": "team-shop", "destination": "dev", "namespace": "shop", **spec},
        }
    )


def context(w: Workload | None = None, outputs: dict[str, Any] | None = None) -> Context:
    w = w or workload()
    now = datetime(2025, 1, 1, tzinfo=UTC)
    return Context(workload=w, workflow_id=w.workflow_id, generation=1, now=now, outputs=outputs)


async def run_pass(actions: RegistryActions, ctx: Context) -> tuple[RegistryPlan, Report]:
    """One pass, as the engine runs it in one activity."""
    observation = await actions.observe(ctx)
    plan = REGISTRY.plan(ctx, observation)
    return plan, await actions.apply(ctx, plan, observation)


async def test_the_first_pass_creates_and_the_next_plans_nothing(
    actions: RegistryActions, aws: tuple[Any, Any]
) -> None:
    ecr, iam = aws
    plan, report = await run_pass(actions, context())

    uri = ecr.describe_repositories(repositoryNames=[REPOSITORY])["repositories"][0]
    arn = iam.get_role(RoleName=ROLE)["Role"]["Arn"]
    assert plan.changes == [
        Change(action="create", subject=f"ECR repository {REPOSITORY}", why="it does not exist"),
        Change(action="create", subject=f"IAM role {ROLE}", why="it does not exist"),
    ]
    # With the fingerprint of what it made (tests/test_registry_fleet.py checks it).
    assert report.fingerprint is not None
    assert report.model_copy(update={"fingerprint": None}) == Report(
        reason="Created",
        changed=True,
        message=f"created repository, role: {uri['repositoryUri']}",
        outputs={"repositoryUri": uri["repositoryUri"], "roleArn": arn},
    )

    for _ in range(2):
        with CallCounter(actions.clients()) as counter:
            again, in_sync = await run_pass(actions, context(outputs=report.outputs))
        assert not again and again.calls == []
        assert counter.calls == REGISTRY_READS
        assert counter.writes == []
        assert in_sync == Report(
            reason="InSync", message=uri["repositoryUri"], outputs=report.outputs
        )


async def test_an_out_of_band_change_is_planned_as_a_repair_that_says_why(
    actions: RegistryActions, aws: tuple[Any, Any]
) -> None:
    ecr, iam = aws
    _, created = await run_pass(actions, context())
    ecr.put_image_tag_mutability(repositoryName=REPOSITORY, imageTagMutability="MUTABLE")
    iam.delete_role_policy(RoleName=ROLE, PolicyName="idp-registry")

    with CallCounter(actions.clients()) as counter:
        plan, report = await run_pass(actions, context(outputs=created.outputs))

    assert plan.changes == [
        Change(
            action="update",
            subject=f"image tag mutability of ECR repository {REPOSITORY}",
            why="it is MUTABLE, the spec says IMMUTABLE",
        ),
        Change(
            action="update",
            subject=f"inline policy idp-registry of IAM role {ROLE}",
            why="it is missing",
        ),
    ]
    assert counter.writes == ["ecr:PutImageTagMutability", "iam:PutRolePolicy"]
    assert report == Report(
        reason="DriftRepaired",
        changed=True,
        message="put back what changed outside the reconciler: "
        "repository.imageTagMutability, role.inlinePolicy",
        outputs=created.outputs,
    )
    repaired = ecr.describe_repositories(repositoryNames=[REPOSITORY])["repositories"][0]
    assert repaired["imageTagMutability"] == "IMMUTABLE"
    assert not (await run_pass(actions, context(outputs=created.outputs)))[0]


async def test_the_plan_is_deterministic(actions: RegistryActions, aws: tuple[Any, Any]) -> None:
    ecr, iam = aws
    policies = [
        iam.create_policy(
            PolicyName=name,
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}],
                }
            ),
        )["Policy"]["Arn"]
        for name in ("b", "a")
    ]
    await run_pass(actions, context())
    ecr.delete_lifecycle_policy(repositoryName=REPOSITORY)
    iam.untag_role(RoleName=ROLE, TagKeys=["idp.system"])
    ctx = context(workload(registry={"managedPolicyArns": policies, "scanOnPush": False}))

    observation = await actions.observe(ctx)
    plan = REGISTRY.plan(ctx, observation)

    assert plan == REGISTRY.plan(ctx, observation)
    # The same from what crosses activity boundaries (JSON), and from a fresh look.
    again = RegistryObservation.model_validate(json.loads(observation.model_dump_json()))
    assert REGISTRY.plan(ctx, again) == plan
    assert REGISTRY.plan(ctx, await actions.observe(ctx)) == plan
    assert RegistryPlan.model_validate(plan.model_dump(mode="json")) == plan
    assert plan.repaired == [
        "repository.scanOnPush",
        "repository.lifecyclePolicy",
        "role.tags",
        "role.managedPolicies",
    ]
    assert [c.operation for c in plan.calls] == [
        "put_image_scanning_configuration",
        "put_lifecycle_policy",
        "tag_role",
        "tag_role",  # the records of the policies about to be attached, before attaching
        "attach_role_policy",
        "attach_role_policy",
    ]
    assert [c.params["PolicyArn"] for c in plan.calls[-2:]] == policies  # the spec's order


async def test_a_foreign_repository_is_refused_by_the_plan_before_any_write(
    actions: RegistryActions, aws: tuple[Any, Any]
) -> None:
    ecr, _ = aws
    ecr.create_repository(repositoryName=REPOSITORY)
    ctx = context()

    with CallCounter(actions.clients()) as counter:
        observation = await actions.observe(ctx)
        with pytest.raises(PermanentError) as caught:
            REGISTRY.plan(ctx, observation)

    assert caught.value.reason == "ForeignResource"
    assert str(caught.value) == (
        f"ECR repository {REPOSITORY} already exists but is not managed by idp for workload "
        "shop/cart (it has no idp.managed-by=idp tag); rename the workload or tag the "
        "resource to adopt it."
    )
    assert counter.writes == []


async def test_a_managed_policy_the_platform_does_not_list_is_refused_before_any_call(
    actions: RegistryActions, platform: Platform
) -> None:
    admin = "arn:aws:iam::aws:policy/AdministratorAccess"
    own = f"arn:aws:iam::{MOTO_ACCOUNT_ID}:policy/reads"
    ctx = context(workload(registry={"managedPolicyArns": [own, admin]}))
    expected = (
        f"spec.registry.managedPolicyArns[1]: {admin} is not a policy the platform lets "
        f"workloads attach; allowed: arn:aws:iam::{MOTO_ACCOUNT_ID}:policy/*"
    )

    # What idpctl apply and the Port bridge refuse before starting anything...
    assert REGISTRY.check(ctx.workload.spec.registry, platform.aws) == [expected]
    # ...the activity refuses too, for a spec that came in another way, calling nothing.
    with CallCounter(actions.clients()) as counter:
        with pytest.raises(PermanentError) as caught:
            await actions.observe(ctx)
    assert (str(caught.value), caught.value.reason) == (expected, "InvalidSpec")
    assert counter.calls == []
    # A platform that lists none lets none be attached.
    assert platform.aws is not None
    bare = platform.aws.model_copy(update={"attachable_policies": []})
    assert REGISTRY.check(ctx.workload.spec.registry, bare) == [
        f"spec.registry.managedPolicyArns[{i}]: {arn} is not a policy the platform lets "
        "workloads attach; allowed: none (aws.attachablePolicies is empty)"
        for i, arn in enumerate([own, admin])
    ]


async def test_teardown_reports_what_it_removed(
    actions: RegistryActions, aws: tuple[Any, Any]
) -> None:
    ecr, _ = aws
    await run_pass(actions, context())

    assert await actions.teardown(context()) == Report(reason="Deleted", message="removed role")
    assert await actions.teardown(context()) == Report(
        reason="Deleted", message="removed nothing left to remove"
    )
    assert ecr.describe_repositories()["repositories"]  # deletionPolicy Retain, the default

    deleting = context(workload(deletionPolicy="Delete"))
    await run_pass(actions, deleting)
    assert await actions.teardown(deleting) == Report(
        reason="Deleted", message="removed repository, role"
    )
    assert ecr.describe_repositories()["repositories"] == []


async def test_the_generic_activity_reports_the_plan_it_carried_out(
    actions: RegistryActions,
) -> None:
    reconcile = capability_activities(REGISTRY, actions)[0]

    report = await ActivityEnvironment().run(reconcile, context())

    assert report.reason == "Created"
    assert [(c.action, c.subject) for c in report.plan] == [
        ("create", f"ECR repository {REPOSITORY}"),
        ("create", f"IAM role {ROLE}"),
    ]


def test_offered_wanted_describe_and_port() -> None:
    outputs = {"repositoryUri": "1.dkr.ecr/idp/shop/cart", "roleArn": "arn:aws:iam::1:role/r"}

    assert not REGISTRY.offered(None)
    assert REGISTRY.offered(AwsConfig(region=REGION, account_id=MOTO_ACCOUNT_ID))
    assert REGISTRY.wanted(context())
    assert not REGISTRY.wanted(context(workload(registry={"enabled": False})))
    assert REGISTRY.describe(outputs) == [
        "repository:  1.dkr.ecr/idp/shop/cart",
        "role:        arn:aws:iam::1:role/r",
    ]
    assert REGISTRY.port_properties(outputs) == {
        "registryUri": "1.dkr.ecr/idp/shop/cart",
        "roleArn": "arn:aws:iam::1:role/r",
    }
    assert REGISTRY.port_properties(None) == {"registryUri": None, "roleArn": None}
    blueprint = json.loads(BLUEPRINT.read_text())["schema"]["properties"]
    schema = REGISTRY.port_schema()
    assert schema == {key: blueprint[key] for key in schema}
    assert schema.keys() == REGISTRY.port_properties(None).keys()
