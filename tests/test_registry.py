"""The Registry capability's observe, plan and apply against a real moto server over HTTP with
real boto3 (no mocks); tests/test_registry_capability.py drives it through its contract.

What moto does NOT check, and so what the capability checks itself (see the last tests):
- CreateRole accepts any trust policy text, even non-JSON (IAM rejects it as
  MalformedPolicyDocument); moto validates it only on UpdateAssumeRolePolicy.
- CreateRole accepts role names longer than 64 characters.
- PutLifecyclePolicy checks property names only, not ECR's rule semantics: unique priorities, a
  ``tagStatus: any`` rule last, ``countUnit`` with ``sinceImagePushed`` only, tag filters only
  with ``tagStatus: tagged``.
- IAM tag values are not checked against IAM's character set.
- The OIDC provider named in an IRSA trust policy need not exist, and nothing is enforced about
  who may assume the role (no STS semantics).
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from support.awscalls import REGISTRY_READS, CallCounter
from support.moto import MOTO_ACCOUNT_ID, moto_auth, reset_moto

from capabilities.registry.aws import apply, observe, teardown
from capabilities.registry.capability import RegistryPlan, plan_registry, registry_fingerprint
from capabilities.registry.target import RegistryTarget
from idp.aws.client import AwsClients, call_aws, map_client_error
from idp.aws.ecr import lifecycle_policy, normalize_lifecycle, validate_lifecycle_policy
from idp.aws.iam import (
    normalize_policy,
    registry_policy,
    role_name_for,
    trust_policy,
    validate_policy_document,
    validate_role_name,
)
from idp.errors import PermanentError, TransientError
from idp.models import RegistrySpec

REGION = "eu-west-1"
ISSUER = "oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
OUR_TAGS = {"idp.managed-by": "idp", "idp.system": "shop", "idp.workload": "cart"}
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 7023,
            "digest": "sha256:" + "a" * 64,
        },
        "layers": [],
    }
)


@pytest.fixture
def clients(aws_url: str) -> AwsClients:
    reset_moto(aws_url)
    return AwsClients.create(REGION, endpoint_url=aws_url)


@pytest.fixture
def oidc_arn(clients: AwsClients) -> str:
    # A real provider in moto, as a cluster would have; moto would not mind its absence.
    return clients.iam.create_open_id_connect_provider(
        Url=f"https://{ISSUER}", ClientIDList=["sts.amazonaws.com"], ThumbprintList=["9" * 40]
    )["OpenIDConnectProviderArn"]


@pytest.fixture
def target(oidc_arn: str) -> RegistryTarget:
    return make_target(oidc_arn)


def make_target(oidc_arn: str, **overrides: Any) -> RegistryTarget:
    fields: dict[str, Any] = {
        "system": "shop",
        "name": "cart",
        "namespace": "shop-prod",
        "service_account": "cart",
        "account_id": MOTO_ACCOUNT_ID,
        "region": REGION,
        "repository_prefix": "idp/",
        "oidc_provider_arn": oidc_arn,
    }
    return RegistryTarget(**(fields | overrides))


def repo_of(clients: AwsClients, target: RegistryTarget) -> dict[str, Any]:
    names = [target.repository_name]
    return clients.ecr.describe_repositories(repositoryNames=names)["repositories"][0]


def repo_tags(clients: AwsClients, target: RegistryTarget) -> dict[str, str]:
    arn = repo_of(clients, target)["repositoryArn"]
    tags = clients.ecr.list_tags_for_resource(resourceArn=arn)["tags"]
    return {t["Key"]: t["Value"] for t in tags}


def role_of(clients: AwsClients, target: RegistryTarget) -> dict[str, Any]:
    return clients.iam.get_role(RoleName=target.role_name)["Role"]


def attached(clients: AwsClients, target: RegistryTarget) -> set[str]:
    listing = clients.iam.list_attached_role_policies(RoleName=target.role_name)
    return {p["PolicyArn"] for p in listing["AttachedPolicies"]}


def make_policy(clients: AwsClients, name: str) -> str:
    document = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}],
    }
    return clients.iam.create_policy(PolicyName=name, PolicyDocument=json.dumps(document))[
        "Policy"
    ]["Arn"]


@dataclass
class Pass:
    plan: RegistryPlan
    repository_uri: str
    role_arn: str

    @property
    def created(self) -> list[str]:
        return self.plan.created

    @property
    def repaired(self) -> list[str]:
        return self.plan.repaired


def ensure(target: RegistryTarget, spec: RegistrySpec, clients: AwsClients) -> Pass:
    """One pass, as the capability's activity makes it: observe, plan, apply."""
    observation = observe(target, spec, clients)
    plan = plan_registry(spec, observation)
    output, _ = apply(plan, observation, clients)
    return Pass(plan, output.repository_uri, output.role_arn)


def assert_quiet_pass(clients: AwsClients, target: RegistryTarget, spec: RegistrySpec) -> None:
    with CallCounter(clients) as counter:
        observation = ensure(target, spec, clients)
    assert (observation.created, observation.repaired) == ([], [])
    assert counter.writes == []


# --- create and steady state -----------------------------------------------------------------


@pytest.mark.parametrize("managed", [False, True], ids=["plain", "with-managed-policy"])
def test_a_create_tells_what_a_read_back_would_find(
    clients: AwsClients, target: RegistryTarget, managed: bool
) -> None:
    """A new workload sleeps on the fingerprint of what its create made, taken from the
    answers: it must be the one its own observe and the fleet read give, or every new workload
    would be woken by the first sweep."""
    arns = [make_policy(clients, "extra")] if managed else []
    spec = RegistrySpec(managed_policy_arns=arns)
    observation = observe(target, spec, clients)
    plan = plan_registry(spec, observation)

    _, made = apply(plan, observation, clients)

    assert made is not None
    read_back = observe(target, spec, clients)
    assert registry_fingerprint(made) == registry_fingerprint(read_back) is not None
    # Anything but a create from nothing is read back.
    clients.ecr.delete_lifecycle_policy(repositoryName=target.repository_name)
    observation = observe(target, spec, clients)
    assert apply(plan_registry(spec, observation), observation, clients)[1] is None


def test_create_makes_repository_and_role_as_specified(
    clients: AwsClients, target: RegistryTarget, oidc_arn: str
) -> None:
    spec = RegistrySpec.model_validate({"lifecycle": {"keepLast": 10}})
    with CallCounter(clients) as counter:
        observation = ensure(target, spec, clients)

    assert observation.created == ["repository", "role"]
    assert observation.repaired == []
    repo = repo_of(clients, target)
    assert repo["repositoryName"] == "idp/shop/cart"
    assert observation.repository_uri == repo["repositoryUri"]
    assert repo["repositoryArn"] == target.repository_arn
    assert repo["imageTagMutability"] == "IMMUTABLE"
    assert repo["imageScanningConfiguration"] == {"scanOnPush": True}
    assert repo["encryptionConfiguration"]["encryptionType"] == "AES256"
    assert repo_tags(clients, target) == OUR_TAGS

    text = clients.ecr.get_lifecycle_policy(repositoryName="idp/shop/cart")["lifecyclePolicyText"]
    rules = sorted(json.loads(text)["rules"], key=lambda r: r["rulePriority"])
    assert [r["selection"] for r in rules] == [
        {
            "tagStatus": "untagged",
            "countType": "sinceImagePushed",
            "countUnit": "days",
            "countNumber": 14,
        },
        {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 10},
    ]
    assert all(r["action"] == {"type": "expire"} for r in rules)

    role = role_of(clients, target)
    assert target.role_name == "idp-shop-cart" == role["RoleName"]
    assert observation.role_arn == role["Arn"]
    assert {t["Key"]: t["Value"] for t in role["Tags"]} == OUR_TAGS
    (statement,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Federated": oidc_arn}
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Condition"] == {
        "StringEquals": {
            f"{ISSUER}:sub": "system:serviceaccount:shop-prod:cart",
            f"{ISSUER}:aud": "sts.amazonaws.com",
        }
    }
    inline = clients.iam.get_role_policy(RoleName="idp-shop-cart", PolicyName="idp-registry")
    own, login = inline["PolicyDocument"]["Statement"]
    assert own["Resource"] == repo["repositoryArn"]
    assert set(own["Action"]) == {
        "ecr:BatchCheckLayerAvailability",
        "ecr:BatchGetImage",
        "ecr:GetDownloadUrlForLayer",
        "ecr:CompleteLayerUpload",
        "ecr:InitiateLayerUpload",
        "ecr:PutImage",
        "ecr:UploadLayerPart",
    }
    assert (login["Action"], login["Resource"]) == ("ecr:GetAuthorizationToken", "*")
    # Each change says why, and apply sent exactly the plan's calls.
    assert [(c.action, c.subject, c.why) for c in observation.plan.changes] == [
        ("create", "ECR repository idp/shop/cart", "it does not exist"),
        ("create", "IAM role idp-shop-cart", "it does not exist"),
    ]
    assert counter.writes == [
        "ecr:CreateRepository",
        "ecr:PutLifecyclePolicy",
        "iam:CreateRole",
        "iam:PutRolePolicy",
    ]
    assert len(observation.plan.calls) == len(counter.writes)


def test_steady_state_pass_makes_five_reads_and_no_write(
    clients: AwsClients, target: RegistryTarget
) -> None:
    spec = RegistrySpec()
    ensure(target, spec, clients)

    for _ in range(2):
        with CallCounter(clients) as counter:
            observation = ensure(target, spec, clients)
        assert counter.calls == REGISTRY_READS
        assert counter.writes == []
        assert (observation.created, observation.repaired) == ([], [])


def test_steady_state_with_managed_policies_adds_one_listing(
    clients: AwsClients, target: RegistryTarget
) -> None:
    spec = RegistrySpec(managed_policy_arns=[make_policy(clients, "extra")])
    ensure(target, spec, clients)

    with CallCounter(clients) as counter:
        ensure(target, spec, clients)
    assert counter.calls == [*REGISTRY_READS, "iam:ListAttachedRolePolicies"]
    assert counter.writes == []


def test_pod_identity_trust(clients: AwsClients, oidc_arn: str) -> None:
    target = make_target(oidc_arn, trust="pod-identity", oidc_provider_arn=None)
    ensure(target, RegistrySpec(), clients)

    (statement,) = role_of(clients, target)["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "pods.eks.amazonaws.com"}
    assert sorted(statement["Action"]) == ["sts:AssumeRole", "sts:TagSession"]
    assert statement["Condition"]["StringEquals"] == {
        "aws:RequestTag/kubernetes-namespace": "shop-prod",
        "aws:RequestTag/kubernetes-service-account": "cart",
    }
    assert_quiet_pass(clients, target, RegistrySpec())


# --- adopt and refuse ------------------------------------------------------------------------


def test_adopts_resources_carrying_our_tags(clients: AwsClients, target: RegistryTarget) -> None:
    tags = [{"Key": k, "Value": v} for k, v in OUR_TAGS.items()]
    clients.ecr.create_repository(
        repositoryName=target.repository_name, imageTagMutability="MUTABLE", tags=tags
    )
    other_trust = trust_policy(target.model_copy(update={"service_account": "someone-else"}))
    clients.iam.create_role(
        RoleName=target.role_name, AssumeRolePolicyDocument=json.dumps(other_trust), Tags=tags
    )

    observation = ensure(target, RegistrySpec(), clients)

    assert observation.created == []
    assert observation.repaired == [
        "repository.imageTagMutability",
        "repository.scanOnPush",
        "repository.lifecyclePolicy",
        "role.trustPolicy",
        "role.inlinePolicy",
    ]
    assert repo_of(clients, target)["imageTagMutability"] == "IMMUTABLE"
    assert_quiet_pass(clients, target, RegistrySpec())


@pytest.mark.parametrize(
    "tags",
    [[], [{"Key": "idp.managed-by", "Value": "idp"}, {"Key": "idp.workload", "Value": "other"}]],
    ids=["untagged", "other-workload"],
)
def test_refuses_a_foreign_repository(
    clients: AwsClients, target: RegistryTarget, tags: list[dict[str, str]]
) -> None:
    clients.ecr.create_repository(repositoryName=target.repository_name, tags=tags)

    with pytest.raises(PermanentError) as caught:
        ensure(target, RegistrySpec(), clients)

    assert caught.value.reason == "ForeignResource"
    assert "ECR repository idp/shop/cart already exists" in str(caught.value)
    # Refused before anything was written: no role, the repository as it was.
    assert clients.iam.list_roles()["Roles"] == []
    assert repo_of(clients, target)["imageTagMutability"] == "MUTABLE"


def test_refuses_a_foreign_role(clients: AwsClients, target: RegistryTarget) -> None:
    foreign_trust = trust_policy(target.model_copy(update={"namespace": "elsewhere"}))
    clients.iam.create_role(
        RoleName=target.role_name, AssumeRolePolicyDocument=json.dumps(foreign_trust)
    )

    with pytest.raises(PermanentError) as caught:
        ensure(target, RegistrySpec(), clients)

    assert caught.value.reason == "ForeignResource"
    assert "IAM role idp-shop-cart already exists" in str(caught.value)
    assert normalize_policy(role_of(clients, target)["AssumeRolePolicyDocument"]) == (
        normalize_policy(foreign_trust)
    )
    assert clients.iam.list_role_policies(RoleName=target.role_name)["PolicyNames"] == []
    # The plan refuses before anything is written, the repository included.
    assert clients.ecr.describe_repositories()["repositories"] == []


# --- drift -----------------------------------------------------------------------------------


def _drift_lifecycle(clients: AwsClients, target: RegistryTarget) -> None:
    loose = lifecycle_policy(RegistrySpec.model_validate({"lifecycle": {"keepLast": 500}}))
    clients.ecr.put_lifecycle_policy(
        repositoryName=target.repository_name, lifecyclePolicyText=json.dumps(loose)
    )


def _drift_lifecycle_deleted(clients: AwsClients, target: RegistryTarget) -> None:
    clients.ecr.delete_lifecycle_policy(repositoryName=target.repository_name)


def _drift_trust(clients: AwsClients, target: RegistryTarget) -> None:
    wider = trust_policy(target.model_copy(update={"service_account": "intruder"}))
    clients.iam.update_assume_role_policy(
        RoleName=target.role_name, PolicyDocument=json.dumps(wider)
    )


def _drift_inline(clients: AwsClients, target: RegistryTarget) -> None:
    everything = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "ecr:*", "Resource": "*"}],
    }
    clients.iam.put_role_policy(
        RoleName=target.role_name, PolicyName="idp-registry", PolicyDocument=json.dumps(everything)
    )


def _drift_repository_tag(clients: AwsClients, target: RegistryTarget) -> None:
    arn = repo_of(clients, target)["repositoryArn"]
    clients.ecr.untag_resource(resourceArn=arn, tagKeys=["idp.workload"])


def _drift_role_tag(clients: AwsClients, target: RegistryTarget) -> None:
    clients.iam.untag_role(RoleName=target.role_name, TagKeys=["idp.system"])


def _drift_mutability(clients: AwsClients, target: RegistryTarget) -> None:
    clients.ecr.put_image_tag_mutability(
        repositoryName=target.repository_name, imageTagMutability="MUTABLE"
    )


@pytest.mark.parametrize(
    ("drift", "repaired"),
    [
        (_drift_lifecycle, "repository.lifecyclePolicy"),
        (_drift_lifecycle_deleted, "repository.lifecyclePolicy"),
        (_drift_trust, "role.trustPolicy"),
        (_drift_inline, "role.inlinePolicy"),
        (_drift_repository_tag, "repository.tags"),
        (_drift_role_tag, "role.tags"),
        (_drift_mutability, "repository.imageTagMutability"),
    ],
    ids=lambda value: value.__name__.removeprefix("_drift_") if callable(value) else None,
)
def test_drift_is_repaired_once_and_reported(
    clients: AwsClients, target: RegistryTarget, drift: Any, repaired: str
) -> None:
    spec = RegistrySpec()
    ensure(target, spec, clients)
    drift(clients, target)

    with CallCounter(clients) as counter:
        observation = ensure(target, spec, clients)

    assert observation.repaired == [repaired]
    assert observation.created == []
    assert len(counter.writes) == 1
    assert_quiet_pass(clients, target, spec)
    # And what was put back is what we want, not merely something different.
    text = clients.ecr.get_lifecycle_policy(repositoryName=target.repository_name)
    assert normalize_lifecycle(text["lifecyclePolicyText"]) == normalize_lifecycle(
        lifecycle_policy(spec)
    )
    role = role_of(clients, target)
    assert normalize_policy(role["AssumeRolePolicyDocument"]) == normalize_policy(
        trust_policy(target)
    )
    inline = clients.iam.get_role_policy(RoleName=target.role_name, PolicyName="idp-registry")
    assert normalize_policy(inline["PolicyDocument"]) == normalize_policy(registry_policy(target))
    assert {t["Key"]: t["Value"] for t in role["Tags"]} == OUR_TAGS == repo_tags(clients, target)


# --- crashes part-way ------------------------------------------------------------------------


def test_crash_between_repository_and_role_converges(
    clients: AwsClients, target: RegistryTarget
) -> None:
    spec = RegistrySpec()
    observation = observe(target, spec, clients)
    plan = plan_registry(spec, observation)
    for call in plan.calls:
        if call.service == "ecr":
            call_aws(clients.ecr, call.operation, **call.params)
    # ... and the worker died here, before the role's calls

    observation = ensure(target, spec, clients)

    assert observation.created == ["role"]
    assert observation.repaired == []
    repositories = clients.ecr.describe_repositories()["repositories"]
    assert [r["repositoryName"] for r in repositories] == ["idp/shop/cart"]
    assert [r["RoleName"] for r in clients.iam.list_roles()["Roles"]] == ["idp-shop-cart"]
    assert_quiet_pass(clients, target, spec)


def test_crash_right_after_the_create_calls_converges(
    clients: AwsClients, target: RegistryTarget
) -> None:
    """The create calls went through but the follow-up writes (lifecycle, inline policy) did not."""
    tags = [{"Key": k, "Value": v} for k, v in OUR_TAGS.items()]
    clients.ecr.create_repository(
        repositoryName=target.repository_name,
        imageTagMutability="IMMUTABLE",
        imageScanningConfiguration={"scanOnPush": True},
        tags=tags,
    )
    clients.iam.create_role(
        RoleName=target.role_name,
        AssumeRolePolicyDocument=json.dumps(trust_policy(target)),
        Tags=tags,
    )

    observation = ensure(target, RegistrySpec(), clients)

    assert observation.created == []
    assert observation.repaired == ["repository.lifecyclePolicy", "role.inlinePolicy"]
    assert_quiet_pass(clients, target, RegistrySpec())


# --- managed policies ------------------------------------------------------------------------


def test_managed_policies_only_ours_are_detached(
    clients: AwsClients, target: RegistryTarget
) -> None:
    a, b, theirs, shared = (make_policy(clients, n) for n in ("a", "b", "theirs", "shared"))
    ensure(target, RegistrySpec(managed_policy_arns=[a, b]), clients)
    assert attached(clients, target) == {a, b}

    # Someone else attaches two policies to our role; we come to want one of them too.
    clients.iam.attach_role_policy(RoleName=target.role_name, PolicyArn=theirs)
    clients.iam.attach_role_policy(RoleName=target.role_name, PolicyArn=shared)
    observation = ensure(target, RegistrySpec(managed_policy_arns=[a, shared]), clients)

    assert observation.repaired == ["role.managedPolicies"]  # b detached
    assert attached(clients, target) == {a, theirs, shared}

    # We stop wanting "shared": we never attached it, so it stays.
    observation = ensure(target, RegistrySpec(managed_policy_arns=[a]), clients)
    assert observation.repaired == []
    assert attached(clients, target) == {a, theirs, shared}
    assert_quiet_pass(clients, target, RegistrySpec(managed_policy_arns=[a]))

    ensure(target, RegistrySpec(), clients)
    assert attached(clients, target) == {theirs, shared}
    role_tags = {t["Key"] for t in role_of(clients, target)["Tags"]}
    assert role_tags == set(OUR_TAGS)  # no record of attachments left


def test_a_missing_managed_policy_is_a_permanent_error(
    clients: AwsClients, target: RegistryTarget
) -> None:
    missing = f"arn:aws:iam::{MOTO_ACCOUNT_ID}:policy/does-not-exist"
    with pytest.raises(PermanentError) as caught:
        ensure(target, RegistrySpec(managed_policy_arns=[missing]), clients)

    assert caught.value.reason == "NoSuchEntity"
    assert str(caught.value).startswith("AWS IAM AttachRolePolicy failed with NoSuchEntity: ")


# --- teardown --------------------------------------------------------------------------------


def test_teardown_retain_keeps_the_repository(clients: AwsClients, target: RegistryTarget) -> None:
    spec = RegistrySpec(managed_policy_arns=[make_policy(clients, "extra")])
    ensure(target, spec, clients)
    clients.ecr.put_image(
        repositoryName=target.repository_name, imageManifest=MANIFEST, imageTag="v1"
    )

    assert teardown(target, spec, clients) == ["role"]  # Retain is the default

    assert clients.iam.list_roles()["Roles"] == []
    assert repo_tags(clients, target) == OUR_TAGS
    assert teardown(target, spec, clients) == []  # already gone is fine
    # A workload coming back adopts its retained repository.
    assert ensure(target, spec, clients).created == ["role"]


def deleting(target: RegistryTarget) -> RegistryTarget:
    return target.model_copy(update={"deletion_policy": "Delete"})


def test_teardown_delete_removes_both(clients: AwsClients, target: RegistryTarget) -> None:
    ensure(target, RegistrySpec(), clients)

    assert teardown(deleting(target), RegistrySpec(), clients) == ["repository", "role"]

    assert clients.ecr.describe_repositories()["repositories"] == []
    assert clients.iam.list_roles()["Roles"] == []
    assert teardown(deleting(target), RegistrySpec(), clients) == []


def test_teardown_delete_with_images_needs_force(
    clients: AwsClients, target: RegistryTarget
) -> None:
    ensure(target, RegistrySpec(), clients)
    clients.ecr.put_image(
        repositoryName=target.repository_name, imageManifest=MANIFEST, imageTag="v1"
    )

    with pytest.raises(PermanentError) as caught:
        teardown(deleting(target), RegistrySpec(), clients)
    assert caught.value.reason == "RepositoryNotEmptyException"
    assert "still holds images" in str(caught.value)
    assert "forceDeleteImages" in str(caught.value)
    # Nothing was removed: the refusal comes before the role is touched.
    assert repo_of(clients, target)
    assert role_of(clients, target)

    forced = RegistrySpec(force_delete_images=True)
    assert teardown(deleting(target), forced, clients) == ["repository", "role"]
    assert clients.ecr.describe_repositories()["repositories"] == []


def test_teardown_never_deletes_a_resource_without_our_tags(
    clients: AwsClients, target: RegistryTarget
) -> None:
    clients.ecr.create_repository(repositoryName=target.repository_name)
    clients.iam.create_role(
        RoleName=target.role_name, AssumeRolePolicyDocument=json.dumps(trust_policy(target))
    )

    assert teardown(deleting(target), RegistrySpec(force_delete_images=True), clients) == []

    assert repo_of(clients, target)
    assert role_of(clients, target)


# --- names -----------------------------------------------------------------------------------


def test_long_names_get_a_stable_hash_suffix(clients: AwsClients, oidc_arn: str) -> None:
    long_name = "checkout-" + "x" * 70
    name = role_name_for("shop", long_name)

    assert len(name) <= 64
    assert name == role_name_for("shop", long_name)  # stable across calls and processes
    assert name.startswith("idp-shop-checkout-xxx")
    assert name[-9] == "-" and int(name[-8:], 16) >= 0
    assert name != role_name_for("shop", long_name + "y")  # same prefix, different role
    assert role_name_for("shop", "cart") == "idp-shop-cart"  # short names stay readable
    assert validate_role_name(name) == name

    target = make_target(oidc_arn, name=long_name)
    assert ensure(target, RegistrySpec(), clients).role_arn.endswith(f":role/{name}")
    assert role_of(clients, target)["RoleName"] == name


# --- errors ----------------------------------------------------------------------------------


def test_access_denied_from_aws_is_permanent_and_names_code_and_operation(
    clients: AwsClients, target: RegistryTarget, aws_url: str
) -> None:
    """A user who may manage ECR but only read IAM; moto enforces its policy once auth is on.

    The denial comes from IAM on purpose: moto answers a denied call to a JSON-protocol service
    such as ECR with an XML body, which botocore cannot parse (the code arrives as "403"), while
    real ECR answers AccessDeniedException.
    """
    clients.iam.create_user(UserName="ecr-admin")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["ecr:*", "iam:Get*"], "Resource": "*"},
        ],
    }
    clients.iam.put_user_policy(
        UserName="ecr-admin", PolicyName="ecr-only", PolicyDocument=json.dumps(policy)
    )
    key = clients.iam.create_access_key(UserName="ecr-admin")["AccessKey"]
    session = boto3.session.Session(
        aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"]
    )
    limited = AwsClients.create(REGION, endpoint_url=aws_url, session=session)

    with moto_auth(aws_url), pytest.raises(PermanentError) as caught:
        ensure(target, RegistrySpec(), limited)

    assert caught.value.reason == "AccessDenied"
    message = str(caught.value)
    assert message == (
        "AWS IAM CreateRole failed with AccessDenied: User: "
        f"arn:aws:iam::{MOTO_ACCOUNT_ID}:user/ecr-admin is not authorized to perform: "
        "iam:CreateRole."
    )


@pytest.mark.parametrize(
    ("code", "status", "transient"),
    [
        ("Throttling", 400, True),
        ("ThrottlingException", 400, True),
        ("TooManyRequestsException", 429, True),
        ("RequestLimitExceeded", 503, True),
        ("ServiceUnavailable", 503, True),
        ("InternalServerError", 500, True),
        ("ValidationError", 400, False),
        ("MalformedPolicyDocument", 400, False),
        ("LimitExceeded", 409, False),
        ("AccessDenied", 403, False),
    ],
)
def test_error_classification(code: str, status: int, transient: bool) -> None:
    # Built by hand: moto cannot be made to throttle or fail with a 5xx on demand.
    response: Any = {
        "Error": {"Code": code, "Message": "Rate exceeded."},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    error = map_client_error(ClientError(response, "PutRolePolicy"), "IAM")

    assert isinstance(error, TransientError if transient else PermanentError)
    assert error.reason == code
    assert str(error) == f"AWS IAM PutRolePolicy failed with {code}: Rate exceeded."


def test_disabled_or_immutable_settings_are_refused(
    clients: AwsClients, target: RegistryTarget
) -> None:
    with pytest.raises(PermanentError) as caught:
        ensure(target, RegistrySpec(enabled=False), clients)
    assert caught.value.reason == "RegistryDisabled"

    ensure(target, RegistrySpec(), clients)
    with pytest.raises(PermanentError) as caught:
        ensure(target, RegistrySpec(encryption="KMS"), clients)
    assert caught.value.reason == "EncryptionImmutable"
    assert "idp/shop/cart is encrypted with AES256" in str(caught.value)


# --- what moto does not check ----------------------------------------------------------------


def test_moto_accepts_what_aws_rejects_so_we_check_it_ourselves(clients: AwsClients) -> None:
    # A 70-character role name and a trust policy that is not even JSON: moto says yes ...
    clients.iam.create_role(RoleName="r" * 70, AssumeRolePolicyDocument="not a policy")
    # ... and a lifecycle policy whose "any" rule is not last, which ECR refuses.
    clients.ecr.create_repository(repositoryName="scratch")
    any_first = {
        "rules": [
            {
                "rulePriority": 1,
                "selection": {
                    "tagStatus": "any",
                    "countType": "imageCountMoreThan",
                    "countNumber": 5,
                },
                "action": {"type": "expire"},
            },
            {
                "rulePriority": 2,
                "selection": {
                    "tagStatus": "untagged",
                    "countType": "sinceImagePushed",
                    "countNumber": 1,
                },
                "action": {"type": "expire"},
            },
        ]
    }
    clients.ecr.put_lifecycle_policy(
        repositoryName="scratch", lifecyclePolicyText=json.dumps(any_first)
    )

    with pytest.raises(PermanentError, match="1 to 64 characters"):
        validate_role_name("r" * 70)
    with pytest.raises(PermanentError) as caught:
        validate_lifecycle_policy(any_first)
    assert "must have the highest rulePriority" in str(caught.value)
    assert "sinceImagePushed needs countUnit days" in str(caught.value)
    with pytest.raises(PermanentError, match="needs a Principal and no Resource"):
        validate_policy_document(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "sts:*", "Resource": "*"}],
            },
            trust=True,
        )
    with pytest.raises(PermanentError, match="needs a Resource and no Principal"):
        validate_policy_document(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ecr:*"}]},
            trust=False,
        )
    # Our own documents pass our own checks.
    validate_lifecycle_policy(lifecycle_policy(RegistrySpec()))


def test_normalize_policy_ignores_encoding_and_order() -> None:
    document = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["b", "a"], "Resource": "*"}],
    }
    encoded = urllib.parse.quote(
        '{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":["a","b"],"Resource":["*"]}}'
    )

    assert normalize_policy(encoded) == normalize_policy(document)


# --- the spec model --------------------------------------------------------------------------


def test_spec_reads_camel_case_and_rejects_unknown_fields() -> None:
    spec = RegistrySpec.model_validate(
        {
            "imageTagMutability": "MUTABLE",
            "scanOnPush": False,
            "encryption": "KMS",
            "kmsKey": "alias/ecr",
            "lifecycle": {"keepLast": 5, "expireUntaggedAfterDays": 2},
            "managedPolicyArns": ["arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"],
            "forceDeleteImages": True,
        }
    )
    assert spec.lifecycle.keep_last == 5
    assert spec.model_dump()["lifecycle"] == {"keepLast": 5, "expireUntaggedAfterDays": 2}
    assert RegistrySpec().model_dump()["imageTagMutability"] == "IMMUTABLE"

    for bad in (
        {"unknown": 1},
        {"lifecycle": {"keepLast": 0}},
        {"lifecycle": {"expireUntaggedAfterDays": 3651}},
        {"managedPolicyArns": ["arn:aws:s3:::bucket"]},
        {"kmsKey": "alias/ecr"},  # only with encryption KMS
    ):
        with pytest.raises(ValueError):
            RegistrySpec.model_validate(bad)


def test_target_needs_an_oidc_provider_for_irsa() -> None:
    with pytest.raises(ValueError, match="OIDC provider"):
        make_target("", oidc_provider_arn=None)
    by_url = make_target("", oidc_provider_arn=None, oidc_issuer_url=f"https://{ISSUER}")
    assert by_url.oidc_arn == f"arn:aws:iam::{MOTO_ACCOUNT_ID}:oidc-provider/{ISSUER}"
