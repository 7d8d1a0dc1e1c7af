"""The worker's IAM policy (idp/aws/policy.py) checked against the code it is generated for.

deploy/aws/worker-policy.json is the policy for examples/platform/platform.yaml, the
production-style platform file (its aws section: account 111122223333 in eu-west-1, with a
Secrets Manager secret store on its destination and no idp-postgres section).

The policy is what the capabilities and the external-secret delivery declare; three sides check
that it is enough and no more:
- statically: every action the scan finds in the code is granted on the names the code builds,
  with IAM's wildcard and condition semantics (support/iampolicy.py), and a call the policy does
  not grant is reported;
- byte for byte: the checked-in policy is what the generator makes now;
- dynamically: the real code paths (create, observe, repair and delete of a repository and a
  role, deliver, re-deliver, resume and remove of an external secret) run against moto's server
  through the project's own clients, and every call they make is one the scan found and one the
  policy grants on the resource it touched, with the tags the call gave and the resource had.
"""

from __future__ import annotations

import ast
import json
from datetime import timedelta
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from support.iampolicy import AwsCallRecorder, Request, allowed, tag_context, ungranted
from support.moto import MOTO_ACCOUNT_ID, reset_moto
from support.secrets import mint_creds
from support.stack import bare_repo

from activities.deliveries import Deliveries
from capabilities.registry.actions import RegistryActions
from capabilities.registry.aws import apply, observe, teardown
from capabilities.registry.capability import plan_registry
from capabilities.registry.target import RegistryTarget
from idp.aws.iam import trust_policy
from idp.aws.policy import PROJECT_ROOT, PolicyError, policy_document, render_policy, worker_calls
from idp.capability import installed
from idp.delivery import SECRET_KEY, credential_metadata, nats_target
from idp.delivery.external import secret_id
from idp.models import Delivery, RegistrySpec, Workload
from idp.platform import Platform, load_platform
from idp.sections import field_names

EXAMPLE = PROJECT_ROOT / "examples" / "platform" / "platform.yaml"
CHECKED_IN = PROJECT_ROOT / "deploy" / "aws" / "worker-policy.json"
REGENERATE = (
    "idpctl platform iam-policy -f examples/platform/platform.yaml > deploy/aws/worker-policy.json"
)
REGION, ACCOUNT = "eu-west-1", "111122223333"
OURS = {"idp.managed-by": "idp", "idp.system": "shop", "idp.workload": "cart"}
# What the code sends and finds on its own resources: their tags given with a create, and
# present on every resource it has read and kept.
OWNED = tag_context("Request", OURS) | tag_context("Resource", OURS)
# Admin logins of idp-postgres servers: one with RDS IAM authentication, one with a password.
SERVERS = [
    {
        "name": "main",
        "host": "main.example",
        "admin": {"user": "idp_admin", "iam": {"region": "eu-central-1"}},
    },
    {"name": "old", "host": "old.example", "admin": {"user": "postgres", "passwordEnv": "PG_PW"}},
]
DB_USER = f"arn:aws:rds-db:eu-central-1:{ACCOUNT}:dbuser:db-ABCDEFGHIJKLMNOP/"
# What AWS authorizes besides the called action: the tags given to a create as the service's
# tagging action, and for a KMS-encrypted repository the KMS calls ECR makes on our behalf.
DEPENDENT_ACTIONS = (
    "ecr:TagResource",
    "iam:TagRole",
    "kms:CreateGrant",
    "kms:DescribeKey",
    "kms:RetireGrant",
    "secretsmanager:TagResource",
)


def workload(name: str = "cart", system: str = "shop", **spec: Any) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": name, "system": system},
            "spec": {"owner": "team-shop", "destination": "dev", "namespace": "shop", **spec},
        }
    )


def example(**changes: Any) -> Platform:
    document = yaml.safe_load(EXAMPLE.read_text())
    return Platform.model_validate(document | changes)


def built_names(platform: Platform, w: Workload) -> dict[str, str]:
    """Per IAM prefix, the resource the code names for workload `w`."""
    assert platform.aws is not None
    target = RegistryActions(platform, platform.aws).target(w)
    secret = secret_id(nats_target(w, platform.require_destination("dev")))
    where = f"{platform.aws.region}:{platform.aws.account_id}"
    return {
        "ecr": target.repository_arn,
        "iam": target.role_arn,
        "kms": f"arn:aws:kms:{where}:key/1234abcd",
        "rds-db": DB_USER + "idp_admin",
        # Secrets Manager ends a secret's ARN with six random characters of its own.
        "secretsmanager": f"arn:aws:secretsmanager:{where}:secret:{secret}-AbCdEf",
        # The Tagging API takes no resource.
        "tag": "*",
    }


def requests_for(actions: list[str], names: dict[str, str]) -> list[Request]:
    via_ecr = {"kms:ViaService": f"ecr.{REGION}.amazonaws.com"}
    # A policy the example platform file lets workloads attach.
    attached = {"iam:PolicyARN": f"arn:aws:iam::{ACCOUNT}:policy/workloads/shop/reads"}
    return [Request(a, names[a.split(":")[0]], OWNED | via_ecr | attached) for a in actions]


# ---- statically ----------------------------------------------------------------------------------


def test_the_scan_finds_the_calls_the_code_makes_and_where() -> None:
    files = {
        action: {w.rsplit(":", 1)[0] for w in where} for action, where in worker_calls().items()
    }

    # Named as data in the Registry plan, sent by aws.apply through getattr in idp/aws/client.py.
    assert "capabilities/registry/capability.py" in files["iam:CreateRole"]
    assert files["secretsmanager:PutSecretValue"] == {"idp/delivery/external.py"}
    # The idp-postgres plugin signs an RDS IAM authentication token: no API call, an action.
    assert files["rds-db:connect"] == {"plugins/idp-postgres/idp_postgres/client.py"}
    # The Tagging API's actions are "tag:", not its signing name "tagging:".
    assert files["tag:GetResources"] == {"capabilities/registry/aws.py"}
    # The plugin's RDS client is not the core's: ECR's list_tags_for_resource is no RDS call.
    assert {action.split(":")[0] for action in files} == {
        "ecr",
        "iam",
        "rds-db",
        "secretsmanager",
        "tag",
    }


def test_paginators_count_as_the_operation_they_call_and_waiters_fail_the_scan() -> None:
    source = """
from idp.aws.client import AwsClients


def sweep(clients: AwsClients) -> None:
    for page in clients.iam.get_paginator("list_roles").paginate():
        print(page)
"""
    assert worker_calls({"sweep": source})["iam:ListRoles"] == ["<sweep>:6"]
    waits = "def wait(clients):\n    clients.ecr.get_waiter('image_scan_complete').wait()\n"
    with pytest.raises(PolicyError, match="<wait>:2: waiters are not scanned"):
        worker_calls({"wait": waits})


@pytest.mark.parametrize(
    "w",
    [
        workload(),
        # Past IAM's 64 characters: the role name is cut and ends in a hash.
        workload(name="inventory-reservations-" + "x" * 40, system="fulfilment-platform"),
    ],
    ids=["short", "long"],
)
def test_every_action_the_code_calls_is_granted_on_the_names_it_builds(w: Workload) -> None:
    platform = example(postgres={"servers": SERVERS})
    policy = policy_document(platform)
    actions = [*worker_calls(), *DEPENDENT_ACTIONS]

    assert ungranted(policy, requests_for(actions, built_names(platform, w))) == []


def test_the_policy_grants_nothing_beyond_that() -> None:
    policy = policy_document(load_platform(EXAMPLE))
    role = f"arn:aws:iam::{ACCOUNT}:role/idp-shop-cart"
    repository = f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/shop/cart"
    secret = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:idp/shop/cart/nats-AbCdEf"
    refused = [
        # No role is passed to any service.
        Request("iam:PassRole", role, OWNED),
        # Only roles, repositories and secrets of the platform's naming.
        Request("iam:CreateRole", f"arn:aws:iam::{ACCOUNT}:role/admin", OWNED),
        Request("iam:GetRole", f"arn:aws:iam::{ACCOUNT}:role/OrganizationAccountAccessRole"),
        Request("ecr:ListTagsForResource", f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/base"),
        Request("secretsmanager:GetSecretValue", secret.replace("idp/", "prod/"), OWNED),
        Request("ecr:DescribeRepositories", repository.replace(ACCOUNT, "444455556666")),
        # Creates only with our ownership tag; changes only to what carries it.
        Request("iam:CreateRole", role),
        Request("ecr:CreateRepository", repository, tag_context("Request", {"team": "x"})),
        Request("iam:DeleteRole", role),
        # Only the managed policies the platform file lists.
        Request(
            "iam:AttachRolePolicy",
            role,
            OWNED | {"iam:PolicyARN": "arn:aws:iam::aws:policy/AdministratorAccess"},
        ),
        Request(
            "iam:AttachRolePolicy",
            role,
            OWNED | {"iam:PolicyARN": f"arn:aws:iam::{ACCOUNT}:policy/admin"},
        ),
        Request(
            "iam:UpdateAssumeRolePolicy", role, tag_context("Resource", {"idp.managed-by": "x"})
        ),
        Request("ecr:DeleteRepository", repository),
        Request("secretsmanager:GetSecretValue", secret),
        Request("secretsmanager:DeleteSecret", secret),
        # KMS only as ECR's caller.
        Request("kms:CreateGrant", f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd"),
        # Nothing the code does not call.
        Request("ecr:GetAuthorizationToken", "*"),
        Request("ecr:DeleteRegistryPolicy", "*"),
        Request("iam:CreatePolicy", f"arn:aws:iam::{ACCOUNT}:policy/idp-x"),
    ]
    assert [r for r in refused if allowed(policy, r)] == []
    # But the fleet reads list the registry's repositories (authorized on "repository/*"), their
    # tags, with the Tagging API's GetResources, the account's roles, with
    # GetAccountAuthorizationDetails, and the region's secrets, with ListSecrets: those three
    # take no resource.
    listing = f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/*"
    assert allowed(policy, Request("ecr:DescribeRepositories", listing))
    assert [s["Sid"] for s in policy["Statement"] if s["Resource"] == ["*"]] == [
        "ExternalSecretDeliveryFleetRead",
        "RegistryFleetReadRoles",
        "RegistryFleetReadTags",
    ]
    # IAM's limit for a customer managed policy, counted without whitespace.
    assert len(json.dumps(policy, separators=(",", ":"))) <= 6144


SYNTHETIC = {
    "by_name": """
from idp.aws.client import AwsClients, call_aws


def prune_registry(clients: AwsClients) -> None:
    call_aws(clients.ecr, "delete_registry_policy")
""",
    "direct": """
from idp.aws.client import AwsClients


def prune_registry(clients: AwsClients) -> None:
    clients.ecr.delete_registry_policy()
""",
}


@pytest.mark.parametrize("source", SYNTHETIC.values(), ids=SYNTHETIC.keys())
def test_a_call_the_policy_does_not_grant_is_reported(source: str) -> None:
    """A module that calls an action the policy lacks, scanned as if the worker loaded it."""
    platform = example(postgres={"servers": SERVERS})
    calls = worker_calls({"prune": source})

    assert calls["ecr:DeleteRegistryPolicy"] == ["<prune>:6"]
    missing = ungranted(
        policy_document(platform), requests_for([*calls], built_names(platform, workload()))
    )
    assert [r.action for r in missing] == ["ecr:DeleteRegistryPolicy"]


def test_the_checked_in_policy_is_the_generated_one() -> None:
    generated = render_policy(load_platform(EXAMPLE)).encode()
    assert CHECKED_IN.read_bytes() == generated, (
        f"{CHECKED_IN.relative_to(PROJECT_ROOT)} differs from what the code declares now; "
        f"regenerate it with `{REGENERATE}`"
    )


def test_statements_follow_what_the_platform_file_enables() -> None:
    without_store = example(
        destinations=[
            {**d, "secretStore": None} for d in yaml.safe_load(EXAMPLE.read_text())["destinations"]
        ]
    )
    sids = [s["Sid"] for s in policy_document(without_store)["Statement"]]
    assert sids and not [sid for sid in sids if sid.startswith("ExternalSecret")]

    prefixed = policy_document(
        example(aws={"region": REGION, "accountId": ACCOUNT, "repositoryPrefix": "team/"})
    )
    team = f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/team/shop/cart"
    assert allowed(prefixed, Request("ecr:GetLifecyclePolicy", team))
    assert not allowed(prefixed, Request("ecr:GetLifecyclePolicy", team.replace("team/", "")))

    # No policy a workload may attach, no right to attach any.
    bare = example(aws={"region": REGION, "accountId": ACCOUNT})
    assert not [
        s for s in policy_document(bare)["Statement"] if "iam:AttachRolePolicy" in s["Action"]
    ]

    with pytest.raises(PolicyError, match="needs no IAM policy"):
        policy_document(example(aws=None, synadia=None))


def test_rds_iam_authentication_is_granted_for_the_admin_users_that_use_it() -> None:
    policy = policy_document(example(postgres={"servers": SERVERS}))

    (statement,) = [s for s in policy["Statement"] if s["Sid"] == "PostgresIamAuthentication"]
    assert statement["Resource"] == [f"arn:aws:rds-db:eu-central-1:{ACCOUNT}:dbuser:*/idp_admin"]
    assert allowed(policy, Request("rds-db:connect", DB_USER + "idp_admin"))
    assert not allowed(policy, Request("rds-db:connect", DB_USER + "postgres"))
    assert not [
        s
        for s in policy_document(load_platform(EXAMPLE))["Statement"]
        if s["Sid"].startswith("Postgres")
    ]


def test_the_policy_code_names_no_capability() -> None:
    """The core assembles what capabilities declare: it imports none, and names none of them,
    nor the sections they own (those of the platform file's own model, like aws, are core)."""
    plugins = {e.value.split(".")[0].split(":")[0] for e in entry_points(group="idp.capabilities")}
    named = {n for c in installed() for n in (c.name, c.spec_field, c.settings_field) if n}
    named -= field_names(Platform)
    for module in ("idp/aws/policy.py", "idp/aws/grants.py"):
        tree = ast.parse((PROJECT_ROOT / module).read_text())
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
        literals = {
            n.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
        }
        assert imported & plugins == set(), module
        assert literals & named == set(), module


# ---- dynamically ---------------------------------------------------------------------------------


def moto_platform(aws_url: str, state_store: Path) -> Platform:
    return Platform.model_validate(
        {
            "destinations": [
                {
                    "name": "dev",
                    "stateStore": {"url": str(state_store)},
                    "cluster": {
                        "oidcProviderArn": f"arn:aws:iam::{MOTO_ACCOUNT_ID}:oidc-provider/"
                        "oidc.example/id/EXAMPLE"
                    },
                    "secretStore": {"name": "aws-secrets-manager", "forceDelete": True},
                }
            ],
            "aws": {
                "region": REGION,
                "accountId": MOTO_ACCOUNT_ID,
                "endpointUrl": aws_url,
                "repositoryPrefix": "team/",
                "attachablePolicies": [f"arn:aws:iam::{MOTO_ACCOUNT_ID}:policy/team-*"],
            },
        }
    )


def ensure(target: RegistryTarget, spec: RegistrySpec, clients: Any) -> None:
    """One pass of the Registry capability, as its activities make it: observe, plan, apply."""
    observed = observe(target, spec, clients)
    apply(plan_registry(spec, observed), observed, clients)


async def test_every_call_of_the_real_code_paths_is_scanned_and_granted(
    aws_url: str, tmp_path: Path
) -> None:
    reset_moto(aws_url)
    platform = moto_platform(aws_url, bare_repo(tmp_path / "state.git"))
    admin = {
        service: boto3.client(service, region_name=REGION, endpoint_url=aws_url)
        for service in ("ecr", "iam", "secretsmanager")
    }
    managed = admin["iam"].create_policy(
        PolicyName="team-reads",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}],
            }
        ),
    )["Policy"]["Arn"]
    w = workload(deletionPolicy="Delete", registry={"managedPolicyArns": [managed]})
    spec = w.spec.registry
    # The project's own clients, made as the worker makes them from the platform file.
    registry = RegistryActions(platform, platform.aws)
    clients, target = registry.clients(), registry.target(w)
    deliveries = Deliveries(platform, tmp_path / "cache")
    destination = platform.require_destination("dev")
    delivery = deliveries.of(destination, Delivery.EXTERNAL_SECRET, "spec.nats.credentials")
    secret = nats_target(w, destination)
    first, second = mint_creds(), mint_creds()
    ttl = timedelta(hours=1)

    with AwsCallRecorder(clients.ecr, clients.iam, deliveries.secrets_client()) as recorder:
        ensure(target, spec, clients)  # creates both, attaches the managed policy
        ensure(target, spec, clients)  # observes only
        # Drift made outside, which the next pass repairs, and a spec that changed.
        arn = admin["ecr"].describe_repositories(repositoryNames=[target.repository_name])
        admin["ecr"].untag_resource(
            resourceArn=arn["repositories"][0]["repositoryArn"], tagKeys=["idp.workload"]
        )
        admin["iam"].untag_role(RoleName=target.role_name, TagKeys=["idp.system"])
        wider = trust_policy(target.model_copy(update={"service_account": "intruder"}))
        admin["iam"].update_assume_role_policy(
            RoleName=target.role_name, PolicyDocument=json.dumps(wider)
        )
        changed = RegistrySpec.model_validate(
            {"imageTagMutability": "MUTABLE", "scanOnPush": False, "lifecycle": {"keepLast": 5}}
        )
        ensure(target, changed, clients)  # repairs, detaches the policy no longer named

        one = credential_metadata(first, 1, ttl)
        await delivery.deliver(secret, {SECRET_KEY: first.text}, one, "v1")
        assert (await delivery.check(secret, one)).in_place
        two = credential_metadata(second, 2, ttl)
        await delivery.deliver(secret, {SECRET_KEY: second.text}, two, "v2")
        # Someone makes the old version current again: delivering v2 once more moves it back.
        versions = admin["secretsmanager"].list_secret_version_ids(SecretId=secret_id(secret))
        stages = {v["VersionId"]: v.get("VersionStages", []) for v in versions["Versions"]}
        current = next(version for version, stage in stages.items() if "AWSCURRENT" in stage)
        previous = next(version for version in stages if version != current)
        admin["secretsmanager"].update_secret_version_stage(
            SecretId=secret_id(secret),
            VersionStage="AWSCURRENT",
            MoveToVersionId=previous,
            RemoveFromVersionId=current,
        )
        assert not (await delivery.check(secret, two)).in_place
        await delivery.deliver(secret, {SECRET_KEY: second.text}, two, "v2 again")
        assert await delivery.resume(secret, 2, second.user_public_key, "retry") is not None
        await deliveries.remove(destination, secret, Delivery.EXTERNAL_SECRET, "removed")

        assert teardown(target, changed, clients) == ["repository", "role"]

    recorded = {request.action for request in recorder.requests}
    services = ("ecr:", "iam:", "secretsmanager:", "tag:")
    scanned = {action for action in worker_calls() if action.startswith(services)}
    assert recorded - scanned == set(), "calls the scan did not find"
    assert ungranted(policy_document(platform), recorder.requests) == []
    # And these paths make every call the scan found on these services, so none is missed here;
    # but the scan over-approximates: ECR's tag_resource names Secrets Manager's TagResource too
    # (granted, as AWS authorizes CreateSecret's tags with it). The fleet reads of the Registry
    # and the Credentials are left out: their account-wide reads name no resource the recorder
    # could place (tests/test_registry_fleet.py and tests/test_credentials_fleet.py run them).
    assert scanned - recorded == {
        "iam:GetAccountAuthorizationDetails",
        "secretsmanager:ListSecrets",
        "secretsmanager:TagResource",
        "tag:GetResources",
    }, "add these calls to the paths"
