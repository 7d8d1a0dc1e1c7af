"""The Registry capability's fleet read against a real moto server: the digest it gives a workload
is the one the workload's own pass fingerprinted for the same outside, and every drift a pass
repairs changes it (or drops the key), at a few calls per workload and a few pages per fleet."""

import asyncio
import json
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from support.awscalls import CallCounter
from temporalio.testing import ActivityEnvironment
from test_registry import (
    _drift_inline,
    _drift_lifecycle,
    _drift_lifecycle_deleted,
    _drift_mutability,
    _drift_repository_tag,
    _drift_role_tag,
    _drift_trust,
    make_policy,
)
from test_registry_capability import (  # noqa: F401 (fixtures)
    REGION,
    REGISTRY,
    REPOSITORY,
    ROLE,
    actions,
    context,
    platform,
    run_pass,
    workload,
)

from activities.capabilities import capability_activities
from capabilities.registry.actions import RegistryActions
from capabilities.registry.target import RegistryTarget
from idp.aws.client import AwsClients
from idp.aws.tags import ownership_tags, tag_list
from idp.capability import Context, Fingerprint
from idp.errors import PermanentError
from idp.models import Workload


@pytest.fixture
def outside(aws_url: str) -> AwsClients:
    """Someone else's clients (a person at the console), as test_registry's drifts take them."""
    return AwsClients.create(REGION, endpoint_url=aws_url)


@pytest.fixture
def managed(outside: AwsClients) -> str:
    return make_policy(outside, "team-reads")


async def in_sync(registry: RegistryActions, ctx: Context) -> Fingerprint:
    """A pass, then the fingerprint a workload records when the next one finds it in sync."""
    await run_pass(registry, ctx)
    observation = await registry.observe(ctx)
    assert not REGISTRY.plan(ctx, observation)
    fingerprint = REGISTRY.fingerprint(ctx, observation)
    assert fingerprint is not None
    return fingerprint


@pytest.mark.parametrize("with_managed", [False, True], ids=["no-managed-policy", "managed-policy"])
async def test_what_a_pass_records_is_what_the_fleet_read_finds(
    actions: RegistryActions,  # noqa: F811 (the fixture imported above)
    managed: str,
    with_managed: bool,
) -> None:
    ctx = context(workload(registry={"managedPolicyArns": [managed] if with_managed else []}))
    reconcile = capability_activities(REGISTRY, actions)[0]

    with CallCounter(actions.clients()) as counter:
        created = await ActivityEnvironment().run(reconcile, ctx)
    recorded = (await ActivityEnvironment().run(reconcile, ctx)).fingerprint

    # The pass that creates takes the fingerprint of what it made from its creates' answers,
    # without reading it back (its only reads are the two that find nothing), so the workload
    # is watched at once, on what the next pass records.
    assert created.reason == "Created" and created.fingerprint == recorded
    assert [c for c in counter.calls if c not in counter.writes] == [
        "ecr:DescribeRepositories",
        "iam:GetRole",
    ]
    assert recorded is not None
    # Attached policies are in the digest exactly when the pass listed them.
    assert recorded.key == f"{REPOSITORY}|{ROLE}" + ("|attached" if with_managed else "")
    assert await actions.fleet_observe([recorded.key]) == {recorded.key: recorded.digest}
    assert await actions.fleet_observe([f"{REPOSITORY}|{ROLE}|other", "no-bar"]) == {}

    # IAM may give a policy as a dict or as URL-encoded text: the digest does not tell them apart.
    observation = await actions.observe(ctx)
    assert observation.role is not None
    as_text = observation.role.model_copy(
        update={
            "trust_policy": urllib.parse.quote(json.dumps(observation.role.trust_policy)),
            "inline_policy": json.dumps(observation.role.inline_policy, indent=2),
        }
    )
    assert REGISTRY.fingerprint(ctx, observation.model_copy(update={"role": as_text})) == recorded


# ---- drift ---------------------------------------------------------------------------------------


Drift = Callable[[AwsClients, RegistryTarget], None]


def _repository_deleted(outside: AwsClients, target: RegistryTarget) -> None:
    outside.ecr.delete_repository(repositoryName=target.repository_name, force=True)


def _role_deleted(outside: AwsClients, target: RegistryTarget) -> None:
    _managed_detached(outside, target)  # IAM deletes no role that still has policies
    _inline_deleted(outside, target)
    outside.iam.delete_role(RoleName=target.role_name)


def _scan_on_push(outside: AwsClients, target: RegistryTarget) -> None:
    outside.ecr.put_image_scanning_configuration(
        repositoryName=target.repository_name, imageScanningConfiguration={"scanOnPush": False}
    )


def _encryption(outside: AwsClients, target: RegistryTarget) -> None:
    """Recreated, ours and as before but for its encryption, which ECR cannot change."""
    ecr, name = outside.ecr, target.repository_name
    lifecycle = ecr.get_lifecycle_policy(repositoryName=name)["lifecyclePolicyText"]
    ecr.delete_repository(repositoryName=name, force=True)
    ecr.create_repository(
        repositoryName=name,
        imageTagMutability="IMMUTABLE",
        imageScanningConfiguration={"scanOnPush": True},
        encryptionConfiguration={"encryptionType": "KMS"},
        tags=tag_list(ownership_tags(target)),
    )
    ecr.put_lifecycle_policy(repositoryName=name, lifecyclePolicyText=lifecycle)


def _inline_deleted(outside: AwsClients, target: RegistryTarget) -> None:
    outside.iam.delete_role_policy(RoleName=target.role_name, PolicyName="idp-registry")


def _managed_detached(outside: AwsClients, target: RegistryTarget) -> None:
    iam, name = outside.iam, target.role_name
    for policy in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
        iam.detach_role_policy(RoleName=name, PolicyArn=policy["PolicyArn"])


@dataclass(frozen=True)
class Case:
    drift: Drift
    with_managed: bool = False
    # The managed policy was attached by someone else before the spec named it, so the role
    # carries no record of ours for it: only the key says that attachments count.
    attached_first: bool = False
    # What the plan refuses with, for what it cannot put back.
    refused: str | None = None


DRIFTS = {
    "repository-deleted": Case(_repository_deleted),
    "role-deleted": Case(_role_deleted, with_managed=True),
    "repository-tags": Case(_drift_repository_tag),
    "lifecycle-policy-changed": Case(_drift_lifecycle),
    "lifecycle-policy-deleted": Case(_drift_lifecycle_deleted),
    "scan-on-push": Case(_scan_on_push),
    "tag-mutability": Case(_drift_mutability),
    "encryption": Case(_encryption, refused="EncryptionImmutable"),
    "trust-policy": Case(_drift_trust),
    "inline-policy-widened": Case(_drift_inline),
    "inline-policy-deleted": Case(_inline_deleted),
    "managed-policy-detached": Case(_managed_detached, with_managed=True),
    "managed-policy-attached-first-detached": Case(
        _managed_detached, with_managed=True, attached_first=True
    ),
    "role-tags": Case(_drift_role_tag, with_managed=True),
}


@pytest.mark.parametrize("case", DRIFTS.values(), ids=DRIFTS.keys())
async def test_every_drift_a_pass_repairs_changes_what_the_fleet_read_finds(
    actions: RegistryActions,  # noqa: F811 (the fixture imported above)
    outside: AwsClients,
    managed: str,
    case: Case,
) -> None:
    ctx = context(workload(registry={"managedPolicyArns": [managed] if case.with_managed else []}))
    target = actions.target(ctx.workload)
    if case.attached_first:
        await in_sync(actions, context())
        outside.iam.attach_role_policy(RoleName=ROLE, PolicyArn=managed)
    recorded = await in_sync(actions, ctx)

    case.drift(outside, target)

    observation = await actions.observe(ctx)
    # A pass would act on it: repair, recreate, or refuse what it cannot change.
    if case.refused is None:
        assert REGISTRY.plan(ctx, observation)
    else:
        with pytest.raises(PermanentError) as refused:
            REGISTRY.plan(ctx, observation)
        assert refused.value.reason == case.refused
    now = REGISTRY.fingerprint(ctx, observation)
    found = await actions.fleet_observe([recorded.key, *([now.key] if now else [])])
    assert found.get(recorded.key) != recorded.digest
    # And the two halves still agree on the drifted outside.
    if now is None:
        assert found == {}
    else:
        assert found.get(now.key) == now.digest


# ---- cost ----------------------------------------------------------------------------------------


def named(name: str) -> Workload:
    w = workload()
    return w.model_copy(update={"metadata": w.metadata.model_copy(update={"name": name})})


@pytest.mark.parametrize(
    ("workloads", "others", "tags"),
    [
        # 110 repositories: two pages of tags (100 a page) for 50 workloads.
        (50, 60, {"resourcegroupstaggingapi:GetResources": 2}),
        # 202 repositories: three pages would cost more than the 2 workloads' own reads.
        (2, 200, {"ecr:ListTagsForResource": 2}),
    ],
    ids=["tags-in-pages", "tags-one-by-one"],
)
async def test_a_fleet_read_costs_its_listings_and_one_or_two_calls_per_workload(
    actions: RegistryActions,  # noqa: F811 (the fixture imported above)
    outside: AwsClients,
    workloads: int,
    others: int,
    tags: dict[str, int],
) -> None:
    fleet = [context(named(f"svc-{i:02d}")) for i in range(workloads)]
    recorded = await asyncio.gather(*(in_sync(actions, ctx) for ctx in fleet))
    # Other teams' tagged repositories and a role, which the listings hold too.
    for i in range(others):
        team = [{"Key": "team", "Value": "platform"}]
        outside.ecr.create_repository(repositoryName=f"base/python-{i}", tags=team)
    outside.iam.create_role(RoleName="admin", AssumeRolePolicyDocument="{}")

    with CallCounter(actions.clients()) as counter:
        found = await actions.fleet_observe([f.key for f in recorded])

    assert found == {f.key: f.digest for f in recorded}
    assert Counter(counter.calls) == {
        "ecr:DescribeRepositories": 1,
        "iam:GetAccountAuthorizationDetails": 1,
        "ecr:GetLifecyclePolicy": workloads,
        **tags,
    }
