"""A workload's container registry: one ECR repository plus the IAM role its pods assume.

``ensure`` observes before it acts: it reads the repository, its tags and lifecycle policy, the
role (whose answer carries its tags), its inline policy and, when managed policies are in play,
its attached policies; then it writes only what differs from the desired state. A steady-state
pass therefore makes 5 read-only calls (6 with managed policies) and no writes.

Ownership lives on the resources themselves as tags (``idp.managed-by``, ``idp.system``,
``idp.workload``): we adopt what carries them for this workload, refuse what does not, and never
delete anything without them.

Plain boto3, synchronous: the activity layer runs these functions in a thread. Free of Temporal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import urllib.parse
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from pydantic import Field, model_validator

from idp.errors import IdpError, PermanentError, TransientError
from idp.models import Model, RegistrySpec

log = logging.getLogger(__name__)

MANAGED_BY = "idp.managed-by"
SYSTEM_TAG = "idp.system"
WORKLOAD_TAG = "idp.workload"
# One role tag per managed policy *we* attached, keyed by a hash of its ARN (see _sync_managed).
POLICY_TAG_PREFIX = "idp.policy."
INLINE_POLICY_NAME = "idp-registry"
ROLE_NAME_MAX = 64

# ECR's documented repository-name pattern (moto checks it too; we check before calling).
_REPOSITORY_NAME = re.compile(r"^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*$")
_ROLE_NAME = re.compile(r"[\w+=,.@-]+")
_OIDC_PROVIDER_ARN = re.compile(r"arn:aws(?:-cn|-us-gov)?:iam::\d{12}:oidc-provider/(.+)")
# Anchored: pydantic's Field(pattern=...) searches rather than matching the whole string.
_K8S_NAME = re.compile(r"^[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?$")
# IAM tag values allow only these characters; ARNs may hold others (a comma, say).
_TAG_VALUE_UNSAFE = re.compile(r"[^\w.:/=+\-@ ]")

# Throttling and server-side trouble: a later attempt may well succeed.
_TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "ServiceFailure",
        "ServerException",
        "ConcurrentModification",
        "ConcurrentModificationException",
        # Only create calls raise these: someone created the resource between our look and our
        # create. The retry observes it and adopts or refuses it like any other existing one.
        "EntityAlreadyExists",
        "RepositoryAlreadyExistsException",
    }
)

# Least privilege for a workload's own images: pull and push on its repository only.
PULL_ACTIONS = (
    "ecr:BatchCheckLayerAvailability",
    "ecr:BatchGetImage",
    "ecr:GetDownloadUrlForLayer",
)
PUSH_ACTIONS = (
    "ecr:CompleteLayerUpload",
    "ecr:InitiateLayerUpload",
    "ecr:PutImage",
    "ecr:UploadLayerPart",
)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class RegistryTarget(Model):
    """Where and for whom: built by the caller from the Workload and the platform config."""

    system: str = Field(pattern=_K8S_NAME.pattern, max_length=63)
    name: str = Field(pattern=_K8S_NAME.pattern, max_length=253)
    namespace: str = Field(pattern=_K8S_NAME.pattern, max_length=63)
    service_account: str = Field(pattern=_K8S_NAME.pattern, max_length=253)
    account_id: str = Field(pattern=r"^\d{12}$")
    region: str = Field(pattern=r"^[a-z]{2,4}(-[a-z]+)+-\d+$")
    repository_prefix: str = ""
    trust: Literal["irsa", "pod-identity"] = "irsa"
    # IRSA needs the cluster's OIDC provider: give its ARN, its issuer URL, or both.
    oidc_provider_arn: str | None = None
    oidc_issuer_url: str | None = None
    deletion_policy: Literal["Retain", "Delete"] = "Retain"

    @model_validator(mode="after")
    def _check(self) -> RegistryTarget:
        if self.trust == "irsa" and not (self.oidc_provider_arn or self.oidc_issuer_url):
            raise ValueError("trust irsa needs the cluster's OIDC provider ARN or issuer URL")
        if self.oidc_provider_arn and not _OIDC_PROVIDER_ARN.fullmatch(self.oidc_provider_arn):
            raise ValueError(f"{self.oidc_provider_arn!r} is not an IAM OIDC provider ARN")
        if self.oidc_provider_arn and self.oidc_issuer_url:
            from_arn = _OIDC_PROVIDER_ARN.fullmatch(self.oidc_provider_arn)
            if from_arn and from_arn.group(1) != _issuer_host_path(self.oidc_issuer_url):
                raise ValueError("the OIDC provider ARN and the issuer URL name different issuers")
        validate_repository_name(self.repository_name)
        return self

    @property
    def repository_name(self) -> str:
        return f"{self.repository_prefix}{self.system}/{self.name}"

    @property
    def role_name(self) -> str:
        return role_name_for(self.system, self.name)

    @property
    def partition(self) -> str:
        if self.region.startswith("cn-"):
            return "aws-cn"
        if self.region.startswith("us-gov-"):
            return "aws-us-gov"
        return "aws"

    @property
    def repository_arn(self) -> str:
        # Deterministic, so the role's policy can be written without reading the repository.
        return (
            f"arn:{self.partition}:ecr:{self.region}:{self.account_id}:"
            f"repository/{self.repository_name}"
        )

    @property
    def oidc_host_path(self) -> str:
        """The issuer without its scheme, e.g. oidc.eks.eu-west-1.amazonaws.com/id/ABC."""
        if self.oidc_issuer_url:
            return _issuer_host_path(self.oidc_issuer_url)
        match = _OIDC_PROVIDER_ARN.fullmatch(self.oidc_provider_arn or "")
        if not match:
            raise PermanentError("IRSA trust needs the cluster's OIDC provider.", reason="NoOidc")
        return match.group(1)

    @property
    def oidc_arn(self) -> str:
        return self.oidc_provider_arn or (
            f"arn:{self.partition}:iam::{self.account_id}:oidc-provider/{self.oidc_host_path}"
        )


class RegistryObservation(Model):
    """What ``ensure`` found and did; metadata only, safe for a workflow payload."""

    repository_uri: str
    repository_arn: str
    role_arn: str
    role_name: str
    repaired: list[str] = Field(default_factory=list)
    created: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Clients, error mapping and call counting
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AwsClients:
    ecr: BaseClient
    iam: BaseClient

    @classmethod
    def create(
        cls,
        region: str,
        *,
        endpoint_url: str | None = None,
        session: boto3.session.Session | None = None,
        max_attempts: int = 4,
    ) -> AwsClients:
        """Clients from the standard credential chain; ``endpoint_url`` points both at moto."""
        session = session or boto3.session.Session()
        # A few quick SDK retries smooth over throttling blips; the activity's own retry policy
        # (TransientError) takes over beyond that, with its longer, capped backoff.
        config = Config(
            region_name=region,
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=5,
            read_timeout=30,
        )
        return cls(
            ecr=session.client("ecr", endpoint_url=endpoint_url, config=config),
            iam=session.client("iam", endpoint_url=endpoint_url, config=config),
        )


_READ_PREFIXES = ("Describe", "Get", "List", "BatchGet", "BatchCheck")


class CallCounter:
    """Records every AWS API call the clients make, as ``"ecr:DescribeRepositories"``.

    Hooks botocore's ``before-call`` event, which fires once per API call (SDK retries of the
    same call are not counted again). Use as a context manager so the hook is removed after.
    """

    def __init__(self, clients: AwsClients) -> None:
        self._clients = (clients.ecr, clients.iam)
        self._hook_id = f"idp-call-counter-{id(self)}"
        self.calls: list[str] = []
        for client in self._clients:
            client.meta.events.register("before-call", self._record, unique_id=self._hook_id)

    def _record(self, model: Any, **_: Any) -> None:
        self.calls.append(f"{model.service_model.service_name}:{model.name}")

    @property
    def writes(self) -> list[str]:
        return [call for call in self.calls if not call.split(":")[1].startswith(_READ_PREFIXES)]

    def reset(self) -> None:
        self.calls.clear()

    def close(self) -> None:
        for client in self._clients:
            client.meta.events.unregister("before-call", unique_id=self._hook_id)

    def __enter__(self) -> CallCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def map_client_error(err: ClientError, service: str = "AWS") -> IdpError:
    """Turn an AWS error answer into a Transient- or PermanentError with one clear sentence."""
    error = err.response.get("Error", {})
    code = str(error.get("Code") or "Unknown")
    status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    detail = " ".join(str(error.get("Message") or "").split()).rstrip(".")
    message = f"AWS {service} {err.operation_name} failed with {code}" + (
        f": {detail}." if detail else "."
    )
    if code in _TRANSIENT_CODES or status >= 500 or status == 429:
        return TransientError(message, reason=code)
    return PermanentError(message, reason=code)


def call_aws(client: BaseClient, operation: str, **params: Any) -> dict[str, Any]:
    """Call ``client.<operation>(**params)``, mapping every failure onto idp's error classes."""
    return invoke_aws(client, operation, (), params) or {}


def _lookup(
    client: BaseClient, operation: str, absent: Collection[str], **params: Any
) -> dict[str, Any] | None:
    """Like ``call_aws`` but answers None when AWS says the thing does not exist."""
    return invoke_aws(client, operation, absent, params)


def invoke_aws(
    client: BaseClient,
    operation: str,
    absent: Collection[str],
    params: Mapping[str, Any],
    *,
    quiet: bool = False,
) -> dict[str, Any] | None:
    """One AWS call with its failures mapped onto idp's error classes; None when the answer's
    error code is in `absent`. `quiet` is for calls that carry a secret: botocore's own
    messages may quote the parameters, so they are left out of ours and not chained."""
    service = client.meta.service_model.service_id
    api = client.meta.method_to_api_mapping.get(operation, operation)
    try:
        return getattr(client, operation)(**params)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in absent:
            return None
        raise map_client_error(err, service) from err
    except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError):
        raise TransientError(
            f"AWS {service} {api} could not reach the endpoint.", reason="ConnectionError"
        ) from None
    except NoCredentialsError:
        raise PermanentError(
            "No AWS credentials were found in the standard credential chain.",
            reason="NoCredentials",
        ) from None
    except BotoCoreError as err:
        # Parameter validation and the like: our request is wrong, sending it again won't help.
        detail = "" if quiet else f": {err}"
        raise PermanentError(
            f"AWS {service} {api} failed before reaching AWS{detail}.", reason=type(err).__name__
        ) from (None if quiet else err)


def _list_iam(iam: BaseClient, operation: str, key: str, **params: Any) -> list[Any]:
    """All pages of an IAM listing (Marker/IsTruncated), each call error-mapped."""
    items: list[Any] = []
    while True:
        page = call_aws(iam, operation, **params)
        items.extend(page.get(key, []))
        if not page.get("IsTruncated"):
            return items
        params["Marker"] = page["Marker"]


# --------------------------------------------------------------------------------------------
# Names and documents (pure)
# --------------------------------------------------------------------------------------------


def role_name_for(system: str, name: str) -> str:
    """``idp-<system>-<name>``; past IAM's 64 characters, cut and add a stable 8-hex hash.

    The hash is of the full system/name pair, so two long names that share a prefix still get
    different roles and the same workload always gets the same one.
    """
    full = f"idp-{system}-{name}"
    if len(full) <= ROLE_NAME_MAX:
        return full
    digest = hashlib.sha256(f"{system}/{name}".encode()).hexdigest()[:8]
    return f"{full[: ROLE_NAME_MAX - len(digest) - 1].rstrip('-.')}-{digest}"


def validate_role_name(name: str) -> str:
    """IAM's rule (moto does not enforce it): 1-64 characters of letters, digits, +=,.@_-."""
    if not 1 <= len(name) <= ROLE_NAME_MAX or not _ROLE_NAME.fullmatch(name):
        raise PermanentError(
            f"IAM role name {name!r} must be 1 to 64 characters of letters, digits and +=,.@_-.",
            reason="InvalidRoleName",
        )
    return name


def validate_repository_name(name: str) -> str:
    if not 2 <= len(name) <= 256 or not _REPOSITORY_NAME.fullmatch(name):
        raise PermanentError(
            f"ECR repository name {name!r} must be 2 to 256 lowercase characters in "
            "slash-separated parts of letters and digits joined by '.', '_' or '-'.",
            reason="InvalidRepositoryName",
        )
    return name


def lifecycle_policy(spec: RegistrySpec) -> dict[str, Any]:
    """The ECR lifecycle policy: expire untagged images after D days, keep the last N images.

    ECR applies rules from the lowest ``rulePriority``; a ``tagStatus: any`` rule must come last.
    """
    days = spec.lifecycle.expire_untagged_after_days
    keep = spec.lifecycle.keep_last
    return {
        "rules": [
            {
                "rulePriority": 1,
                "description": f"Expire untagged images {days} days after push",
                "selection": {
                    "tagStatus": "untagged",
                    "countType": "sinceImagePushed",
                    "countUnit": "days",
                    "countNumber": days,
                },
                "action": {"type": "expire"},
            },
            {
                "rulePriority": 2,
                "description": f"Keep the last {keep} images",
                "selection": {
                    "tagStatus": "any",
                    "countType": "imageCountMoreThan",
                    "countNumber": keep,
                },
                "action": {"type": "expire"},
            },
        ]
    }


def trust_policy(target: RegistryTarget) -> dict[str, Any]:
    """Who may assume the role: this service account only, through IRSA or EKS Pod Identity."""
    if target.trust == "irsa":
        issuer = target.oidc_host_path
        statement = {
            "Effect": "Allow",
            "Principal": {"Federated": target.oidc_arn},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {
                "StringEquals": {
                    f"{issuer}:sub": f"system:serviceaccount:{target.namespace}:"
                    f"{target.service_account}",
                    f"{issuer}:aud": "sts.amazonaws.com",
                }
            },
        }
    else:
        # EKS Pod Identity assumes the role itself and passes the pod's namespace and service
        # account as session tags; conditioning on them keeps other associations out.
        statement = {
            "Effect": "Allow",
            "Principal": {"Service": "pods.eks.amazonaws.com"},
            "Action": ["sts:AssumeRole", "sts:TagSession"],
            "Condition": {
                "StringEquals": {
                    "aws:RequestTag/kubernetes-namespace": target.namespace,
                    "aws:RequestTag/kubernetes-service-account": target.service_account,
                }
            },
        }
    return {"Version": "2012-10-17", "Statement": [statement]}


def registry_policy(target: RegistryTarget) -> dict[str, Any]:
    """The inline policy: pull and push on this repository only, plus the registry login."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "PullPushOwnRepository",
                "Effect": "Allow",
                "Action": sorted({*PULL_ACTIONS, *PUSH_ACTIONS}),
                "Resource": target.repository_arn,
            },
            {
                # GetAuthorizationToken is registry-wide: AWS accepts only "*" as its resource.
                "Sid": "RegistryLogin",
                "Effect": "Allow",
                "Action": "ecr:GetAuthorizationToken",
                "Resource": "*",
            },
        ],
    }


def normalize_policy(document: str | Mapping[str, Any]) -> dict[str, Any]:
    """A canonical form of an IAM policy for comparison, not for sending.

    IAM answers with URL-encoded JSON (boto3 usually decodes it already), may turn a one-item
    list into a string or keep it, and keeps list order as written; none of that is a difference.
    """
    if isinstance(document, str):
        text = document if document.lstrip().startswith("{") else urllib.parse.unquote(document)
        document = json.loads(text)
    doc = dict(document)
    statements = doc.get("Statement", [])
    if isinstance(statements, Mapping):
        statements = [statements]
    doc["Statement"] = sorted(
        (_normalize_statement(s) for s in statements), key=lambda s: json.dumps(s, sort_keys=True)
    )
    return doc


def _normalize_statement(statement: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in statement.items():
        if key in ("Action", "NotAction", "Resource", "NotResource"):
            out[key] = _as_sorted_list(value)
        elif key in ("Principal", "NotPrincipal") and isinstance(value, Mapping):
            out[key] = {k: _as_sorted_list(v) for k, v in value.items()}
        elif key == "Condition" and isinstance(value, Mapping):
            out[key] = {
                op: {k: _as_sorted_list(v) for k, v in keys.items()} for op, keys in value.items()
            }
        else:
            out[key] = value
    return out


def _as_sorted_list(value: Any) -> list[str]:
    return sorted(str(v) for v in (value if isinstance(value, list) else [value]))


def normalize_lifecycle(document: str | Mapping[str, Any]) -> dict[str, Any]:
    """ECR returns the lifecycle policy as text, possibly reformatted: compare parsed rules."""
    doc = json.loads(document) if isinstance(document, str) else dict(document)
    return {"rules": sorted(doc.get("rules", []), key=lambda r: r.get("rulePriority", 0))}


def validate_policy_document(
    document: Mapping[str, Any], *, trust: bool, max_chars: int | None = None
) -> None:
    """The shape IAM insists on, which moto does not check for CreateRole's trust policy.

    Identity policies need ``Resource`` and must not name a ``Principal``; trust policies the
    other way round. Sizes are counted as IAM does, without whitespace.
    """
    kind = "trust policy" if trust else "identity policy"
    problems: list[str] = []
    if document.get("Version") != "2012-10-17":
        problems.append('Version must be "2012-10-17"')
    statements = document.get("Statement")
    if isinstance(statements, Mapping):
        statements = [statements]
    if not isinstance(statements, list) or not statements:
        problems.append("Statement must be a non-empty list")
        statements = []
    for i, statement in enumerate(statements):
        where = f"Statement[{i}]"
        if not isinstance(statement, Mapping):
            problems.append(f"{where} must be an object")
            continue
        if statement.get("Effect") not in ("Allow", "Deny"):
            problems.append(f"{where}.Effect must be Allow or Deny")
        if ("Action" in statement) == ("NotAction" in statement):
            problems.append(f"{where} needs exactly one of Action and NotAction")
        has_principal = "Principal" in statement or "NotPrincipal" in statement
        has_resource = "Resource" in statement or "NotResource" in statement
        if trust and (not has_principal or has_resource):
            problems.append(f"{where} needs a Principal and no Resource in a trust policy")
        if not trust and (has_principal or not has_resource):
            problems.append(f"{where} needs a Resource and no Principal in an identity policy")
        condition = statement.get("Condition", {})
        if not isinstance(condition, Mapping) or not all(
            isinstance(v, Mapping) for v in condition.values()
        ):
            problems.append(f"{where}.Condition must map operators to key/value objects")
    limit = max_chars or (2048 if trust else 10240)
    size = len(json.dumps(document, separators=(",", ":")))
    if size > limit:
        problems.append(f"it is {size} characters, over IAM's {limit}")
    if problems:
        raise PermanentError(
            f"The {kind} is malformed: {'; '.join(problems)}.", reason="MalformedPolicyDocument"
        )


def validate_lifecycle_policy(document: Mapping[str, Any]) -> None:
    """ECR's rule semantics, which moto does not check (it only checks property names)."""
    problems: list[str] = []
    rules = document.get("rules")
    if not isinstance(rules, list) or not rules:
        problems.append("rules must be a non-empty list")
        rules = []
    priorities = [rule.get("rulePriority") for rule in rules]
    if len(set(priorities)) != len(priorities):
        problems.append("each rulePriority must be unique")
    highest = max((p for p in priorities if isinstance(p, int)), default=0)
    for rule in rules:
        priority = rule.get("rulePriority")
        selection = rule.get("selection", {})
        where = f"rule {priority}"
        if not isinstance(priority, int) or priority < 1:
            problems.append(f"{where}: rulePriority must be a positive integer")
        tag_status = selection.get("tagStatus")
        has_tag_filter = "tagPrefixList" in selection or "tagPatternList" in selection
        if tag_status == "any" and priority != highest:
            problems.append(f"{where}: a tagStatus any rule must have the highest rulePriority")
        if tag_status == "tagged" and not has_tag_filter:
            problems.append(f"{where}: tagStatus tagged needs tagPrefixList or tagPatternList")
        if tag_status in ("untagged", "any") and has_tag_filter:
            problems.append(f"{where}: only tagStatus tagged may filter by tag")
        count_type = selection.get("countType")
        if count_type == "sinceImagePushed" and selection.get("countUnit") != "days":
            problems.append(f"{where}: sinceImagePushed needs countUnit days")
        if count_type == "imageCountMoreThan" and "countUnit" in selection:
            problems.append(f"{where}: imageCountMoreThan takes no countUnit")
        count = selection.get("countNumber")
        if not isinstance(count, int) or count < 1:
            problems.append(f"{where}: countNumber must be a positive integer")
    if problems:
        raise PermanentError(
            f"The lifecycle policy is invalid: {'; '.join(problems)}.",
            reason="InvalidLifecyclePolicy",
        )


def ownership_tags(target: RegistryTarget) -> dict[str, str]:
    return {MANAGED_BY: "idp", SYSTEM_TAG: target.system, WORKLOAD_TAG: target.name}


def _policy_tag(arn: str) -> tuple[str, str]:
    """The role tag recording that we attached ``arn``: key by hash, value readable."""
    key = POLICY_TAG_PREFIX + hashlib.sha256(arn.encode()).hexdigest()[:16]
    return key, _TAG_VALUE_UNSAFE.sub("_", arn)[:256]


def _tags(items: list[Mapping[str, str]] | None) -> dict[str, str]:
    return {item["Key"]: item["Value"] for item in items or []}


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def _foreign_reason(tags: Mapping[str, str], target: RegistryTarget) -> str | None:
    """None when the tags say this resource is ours for this workload, else why it is not.

    A missing system or workload tag beside ``idp.managed-by=idp`` is drift we put back; a tag
    naming another workload, or no managed-by tag at all, means someone else's resource.
    """
    if tags.get(MANAGED_BY) != "idp":
        return f"it has no {MANAGED_BY}=idp tag"
    for key, want in ((SYSTEM_TAG, target.system), (WORKLOAD_TAG, target.name)):
        if tags.get(key, want) != want:
            return f"its tags name workload {tags.get(SYSTEM_TAG)}/{tags.get(WORKLOAD_TAG)}"
    return None


def _refuse(kind: str, name: str, target: RegistryTarget, why: str) -> PermanentError:
    return PermanentError(
        f"{kind} {name} already exists but is not managed by idp for workload "
        f"{target.system}/{target.name} ({why}); rename the workload or tag the resource to "
        "adopt it.",
        reason="ForeignResource",
    )


# --------------------------------------------------------------------------------------------
# ensure
# --------------------------------------------------------------------------------------------


@dataclass
class PartResult:
    """One half of ``ensure``: identifiers plus what was created or put back."""

    arn: str
    name: str
    uri: str = ""
    created: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)


def ensure(target: RegistryTarget, spec: RegistrySpec, clients: AwsClients) -> RegistryObservation:
    """Make the repository and role match ``spec``, writing only what differs. Idempotent."""
    if not spec.enabled:
        raise PermanentError(
            f"The registry of workload {target.system}/{target.name} is disabled; tear it down "
            "instead of ensuring it.",
            reason="RegistryDisabled",
        )
    repository = ensure_repository(target, spec, clients)
    role = ensure_role(target, spec, clients)
    return RegistryObservation(
        repository_uri=repository.uri,
        repository_arn=repository.arn,
        role_arn=role.arn,
        role_name=role.name,
        created=repository.created + role.created,
        repaired=repository.repaired + role.repaired,
    )


def ensure_repository(
    target: RegistryTarget, spec: RegistrySpec, clients: AwsClients
) -> PartResult:
    """Steady state: DescribeRepositories, ListTagsForResource, GetLifecyclePolicy."""
    ecr = clients.ecr
    name = validate_repository_name(target.repository_name)
    desired_lifecycle = lifecycle_policy(spec)
    validate_lifecycle_policy(desired_lifecycle)

    found = _lookup(
        ecr, "describe_repositories", {"RepositoryNotFoundException"}, repositoryNames=[name]
    )
    if found is None:
        encryption = {"encryptionType": spec.encryption}
        if spec.kms_key:
            encryption["kmsKey"] = spec.kms_key
        repo = call_aws(
            ecr,
            "create_repository",
            repositoryName=name,
            imageTagMutability=spec.image_tag_mutability,
            imageScanningConfiguration={"scanOnPush": spec.scan_on_push},
            encryptionConfiguration=encryption,
            # Tags go in with the create so the repository is never without its owner.
            tags=_tag_list(ownership_tags(target)),
        )["repository"]
        call_aws(
            ecr,
            "put_lifecycle_policy",
            repositoryName=name,
            lifecyclePolicyText=json.dumps(desired_lifecycle, sort_keys=True),
        )
        log.info("created ECR repository %s", name)
        return PartResult(
            repo["repositoryArn"], name, repo["repositoryUri"], created=["repository"]
        )

    repo = found["repositories"][0]
    arn = repo["repositoryArn"]
    result = PartResult(arn, name, repo["repositoryUri"])
    tags = _tags(call_aws(ecr, "list_tags_for_resource", resourceArn=arn).get("tags"))
    if why := _foreign_reason(tags, target):
        raise _refuse("ECR repository", name, target, why)

    _check_encryption(repo, spec, name)
    if repo.get("imageTagMutability") != spec.image_tag_mutability:
        call_aws(
            ecr,
            "put_image_tag_mutability",
            repositoryName=name,
            imageTagMutability=spec.image_tag_mutability,
        )
        result.repaired.append("repository.imageTagMutability")
    if repo.get("imageScanningConfiguration", {}).get("scanOnPush") != spec.scan_on_push:
        call_aws(
            ecr,
            "put_image_scanning_configuration",
            repositoryName=name,
            imageScanningConfiguration={"scanOnPush": spec.scan_on_push},
        )
        result.repaired.append("repository.scanOnPush")
    missing = {k: v for k, v in ownership_tags(target).items() if tags.get(k) != v}
    if missing:
        call_aws(ecr, "tag_resource", resourceArn=arn, tags=_tag_list(missing))
        result.repaired.append("repository.tags")

    current = _lookup(
        ecr, "get_lifecycle_policy", {"LifecyclePolicyNotFoundException"}, repositoryName=name
    )
    if current is None or normalize_lifecycle(
        current["lifecyclePolicyText"]
    ) != normalize_lifecycle(desired_lifecycle):
        call_aws(
            ecr,
            "put_lifecycle_policy",
            repositoryName=name,
            lifecyclePolicyText=json.dumps(desired_lifecycle, sort_keys=True),
        )
        result.repaired.append("repository.lifecyclePolicy")
    return result


def _check_encryption(repo: Mapping[str, Any], spec: RegistrySpec, name: str) -> None:
    """ECR cannot change a repository's encryption after creation, so a difference is final.

    The key is compared only when the spec names a key ARN: ECR reports the key as an ARN, and
    an alias or bare key id cannot be matched to it without asking KMS.
    """
    observed = repo.get("encryptionConfiguration", {})
    current = observed.get("encryptionType", "AES256")
    differs = current != spec.encryption
    if spec.kms_key and spec.kms_key.startswith("arn:"):
        differs = differs or observed.get("kmsKey") != spec.kms_key
    if differs:
        if observed.get("kmsKey"):
            current += f" with key {observed['kmsKey']}"
        raise PermanentError(
            f"ECR repository {name} is encrypted with {current} and ECR cannot change a "
            "repository's encryption; put that encryption back in the spec, or delete the "
            "repository so that it is recreated.",
            reason="EncryptionImmutable",
        )


def ensure_role(target: RegistryTarget, spec: RegistrySpec, clients: AwsClients) -> PartResult:
    """Steady state: GetRole (tags included), GetRolePolicy, and ListAttachedRolePolicies when
    managed policies are desired or recorded."""
    iam = clients.iam
    name = validate_role_name(target.role_name)
    desired_trust = trust_policy(target)
    desired_inline = registry_policy(target)
    validate_policy_document(desired_trust, trust=True)
    validate_policy_document(desired_inline, trust=False)

    found = _lookup(iam, "get_role", {"NoSuchEntity"}, RoleName=name)
    if found is None:
        # The records of the managed policies we are about to attach go in with the create, so a
        # crash between create and attach still leaves them ours to finish (see _sync_managed).
        tags = ownership_tags(target) | dict(map(_policy_tag, spec.managed_policy_arns))
        role = call_aws(
            iam,
            "create_role",
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(desired_trust),
            Description=f"Registry access for idp workload {target.system}/{target.name}",
            Tags=_tag_list(tags),
        )["Role"]
        _put_inline(iam, name, desired_inline)
        for arn in spec.managed_policy_arns:
            call_aws(iam, "attach_role_policy", RoleName=name, PolicyArn=arn)
        log.info("created IAM role %s", name)
        return PartResult(role["Arn"], name, created=["role"])

    role = found["Role"]
    result = PartResult(role["Arn"], name)
    tags = _tags(role.get("Tags"))
    if why := _foreign_reason(tags, target):
        raise _refuse("IAM role", name, target, why)

    if normalize_policy(role["AssumeRolePolicyDocument"]) != normalize_policy(desired_trust):
        call_aws(
            iam,
            "update_assume_role_policy",
            RoleName=name,
            PolicyDocument=json.dumps(desired_trust),
        )
        result.repaired.append("role.trustPolicy")
    missing = {k: v for k, v in ownership_tags(target).items() if tags.get(k) != v}
    if missing:
        call_aws(iam, "tag_role", RoleName=name, Tags=_tag_list(missing))
        result.repaired.append("role.tags")

    inline = _lookup(
        iam, "get_role_policy", {"NoSuchEntity"}, RoleName=name, PolicyName=INLINE_POLICY_NAME
    )
    if inline is None or normalize_policy(inline["PolicyDocument"]) != normalize_policy(
        desired_inline
    ):
        _put_inline(iam, name, desired_inline)
        result.repaired.append("role.inlinePolicy")

    if _sync_managed(iam, name, tags, spec.managed_policy_arns):
        result.repaired.append("role.managedPolicies")
    return result


def _put_inline(iam: BaseClient, role: str, document: Mapping[str, Any]) -> None:
    call_aws(
        iam,
        "put_role_policy",
        RoleName=role,
        PolicyName=INLINE_POLICY_NAME,
        PolicyDocument=json.dumps(document),
    )


def _sync_managed(iam: BaseClient, role: str, tags: Mapping[str, str], desired: list[str]) -> bool:
    """Attach the desired managed policies; detach only ones we attached and no longer want.

    Why a role tag per policy we attached (``idp.policy.<hash of ARN>``) rather than comparing
    with the spec alone: the spec says what we want now, not what we attached before, so
    "attached but not in the spec" could equally be a policy a person or another tool attached
    to our role (a debugging grant, a security tool's deny policy). Detaching those would undo
    someone else's deliberate change. The record lives on the role itself, so it survives
    workflow resets and is visible in the console.

    - A desired policy already attached without our record stays unrecorded: someone else
      attached it first and keeps it when we stop wanting it.
    - The record is written before the attach and removed after the detach, so a crash in
      between leaves a record without attachment, which the next pass completes or drops.
    """
    recorded = {key for key in tags if key.startswith(POLICY_TAG_PREFIX)}
    if not desired and not recorded:
        # Nothing we could attach or detach, so listing would not change what we do.
        return False
    listing = call_aws(iam, "list_attached_role_policies", RoleName=role, MaxItems=100)
    attached = {policy["PolicyArn"] for policy in listing.get("AttachedPolicies", [])}
    wanted_keys = {_policy_tag(arn)[0] for arn in desired}
    to_attach = [arn for arn in desired if arn not in attached]
    to_detach = sorted(arn for arn in attached - set(desired) if _policy_tag(arn)[0] in recorded)
    new_records = dict(_policy_tag(arn) for arn in to_attach if _policy_tag(arn)[0] not in recorded)
    stale_records = sorted(recorded - wanted_keys)

    if new_records:
        call_aws(iam, "tag_role", RoleName=role, Tags=_tag_list(new_records))
    for arn in to_attach:
        call_aws(iam, "attach_role_policy", RoleName=role, PolicyArn=arn)
    for arn in to_detach:
        _forgiving(iam, "detach_role_policy", RoleName=role, PolicyArn=arn)
    if stale_records:
        call_aws(iam, "untag_role", RoleName=role, TagKeys=stale_records)
    return bool(new_records or to_attach or to_detach or stale_records)


def _forgiving(client: BaseClient, operation: str, **params: Any) -> bool:
    """A delete-like call where 'already gone' is success. True when it removed something."""
    absent = {"NoSuchEntity", "RepositoryNotFoundException"}
    return _lookup(client, operation, absent, **params) is not None


# --------------------------------------------------------------------------------------------
# teardown
# --------------------------------------------------------------------------------------------


def teardown(
    target: RegistryTarget,
    spec: RegistrySpec,
    clients: AwsClients,
    deletion_policy: Literal["Retain", "Delete"] | None = None,
) -> list[str]:
    """Remove the role, and with ``Delete`` the repository too. Returns what it removed.

    Idempotent: what is already gone is skipped. A resource without our tags is never touched
    (it is logged and left), so deleting a workload never blocks on someone else's resource.
    The repository goes first: if it still holds images and ``forceDeleteImages`` is off, the
    refusal leaves everything as it was and the pods keep their access.
    """
    policy = deletion_policy or target.deletion_policy
    removed: list[str] = []
    if policy == "Delete" and _delete_repository(target, spec, clients):
        removed.append("repository")
    if _delete_role(target, clients):
        removed.append("role")
    return removed


def _delete_repository(target: RegistryTarget, spec: RegistrySpec, clients: AwsClients) -> bool:
    ecr = clients.ecr
    name = target.repository_name
    found = _lookup(
        ecr, "describe_repositories", {"RepositoryNotFoundException"}, repositoryNames=[name]
    )
    if found is None:
        return False
    arn = found["repositories"][0]["repositoryArn"]
    tags = _tags(call_aws(ecr, "list_tags_for_resource", resourceArn=arn).get("tags"))
    if why := _foreign_reason(tags, target):
        log.warning("leaving ECR repository %s alone: %s", name, why)
        return False
    try:
        return _forgiving(
            ecr, "delete_repository", repositoryName=name, force=spec.force_delete_images
        )
    except PermanentError as err:
        if err.reason != "RepositoryNotEmptyException":
            raise
        raise PermanentError(
            f"ECR repository {name} still holds images, so it was not deleted; set "
            "registry.forceDeleteImages to true to delete them with it, or use deletionPolicy "
            "Retain.",
            reason=err.reason,
        ) from err


def _delete_role(target: RegistryTarget, clients: AwsClients) -> bool:
    iam = clients.iam
    name = target.role_name
    found = _lookup(iam, "get_role", {"NoSuchEntity"}, RoleName=name)
    if found is None:
        return False
    if why := _foreign_reason(_tags(found["Role"].get("Tags")), target):
        log.warning("leaving IAM role %s alone: %s", name, why)
        return False
    # IAM refuses to delete a role that still has policies, so everything goes, including
    # attachments others made: they were grants to our role, which is going away.
    for policy in _list_iam(iam, "list_attached_role_policies", "AttachedPolicies", RoleName=name):
        _forgiving(iam, "detach_role_policy", RoleName=name, PolicyArn=policy["PolicyArn"])
    for policy_name in _list_iam(iam, "list_role_policies", "PolicyNames", RoleName=name):
        _forgiving(iam, "delete_role_policy", RoleName=name, PolicyName=policy_name)
    return _forgiving(iam, "delete_role", RoleName=name)


def _issuer_host_path(url: str) -> str:
    return re.sub(r"^https?://", "", url).rstrip("/")
