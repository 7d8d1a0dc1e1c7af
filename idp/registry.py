"""A workload's container registry: one ECR repository plus the IAM role its pods assume.

``ensure`` observes before it acts: it reads the repository, its tags and lifecycle policy, the
role (whose answer carries its tags), its inline policy and, when managed policies are in play,
its attached policies; then it writes only what differs from the desired state. A steady-state
pass therefore makes 5 read-only calls (6 with managed policies) and no writes.

Ownership lives on the resources themselves as tags (``idp.managed-by``, ``idp.system``,
``idp.workload``, see idp/aws/tags.py): we adopt what carries them for this workload, refuse what
does not, and never delete anything without them. The documents written are built in
idp/aws/iam.py and idp/aws/ecr.py; every call goes through idp/aws/client.py.

Plain boto3, synchronous: the activity layer runs these functions in a thread. Free of Temporal.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from botocore.client import BaseClient
from pydantic import Field, model_validator

from idp.aws.client import AwsClients, call_aws, lookup_aws
from idp.aws.ecr import (
    lifecycle_policy,
    normalize_lifecycle,
    validate_lifecycle_policy,
    validate_repository_name,
)
from idp.aws.iam import (
    INLINE_POLICY_NAME,
    normalize_policy,
    registry_policy,
    role_name_for,
    trust_policy,
    validate_policy_document,
    validate_role_name,
)
from idp.aws.tags import (
    POLICY_TAG_PREFIX,
    foreign_reason,
    ownership_tags,
    policy_tag,
    tag_dict,
    tag_list,
)
from idp.errors import PermanentError
from idp.models import Model, RegistrySpec

log = logging.getLogger(__name__)

_OIDC_PROVIDER_ARN = re.compile(r"arn:aws(?:-cn|-us-gov)?:iam::\d{12}:oidc-provider/(.+)")
# Anchored: pydantic's Field(pattern=...) searches rather than matching the whole string.
_K8S_NAME = re.compile(r"^[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?$")


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

    found = lookup_aws(
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
            tags=tag_list(ownership_tags(target)),
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
    tags = tag_dict(call_aws(ecr, "list_tags_for_resource", resourceArn=arn).get("tags"))
    if why := foreign_reason(tags, target):
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
        call_aws(ecr, "tag_resource", resourceArn=arn, tags=tag_list(missing))
        result.repaired.append("repository.tags")

    current = lookup_aws(
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

    found = lookup_aws(iam, "get_role", {"NoSuchEntity"}, RoleName=name)
    if found is None:
        # The records of the managed policies we are about to attach go in with the create, so a
        # crash between create and attach still leaves them ours to finish (see _sync_managed).
        tags = ownership_tags(target) | dict(map(policy_tag, spec.managed_policy_arns))
        role = call_aws(
            iam,
            "create_role",
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(desired_trust),
            Description=f"Registry access for idp workload {target.system}/{target.name}",
            Tags=tag_list(tags),
        )["Role"]
        _put_inline(iam, name, desired_inline)
        for arn in spec.managed_policy_arns:
            call_aws(iam, "attach_role_policy", RoleName=name, PolicyArn=arn)
        log.info("created IAM role %s", name)
        return PartResult(role["Arn"], name, created=["role"])

    role = found["Role"]
    result = PartResult(role["Arn"], name)
    tags = tag_dict(role.get("Tags"))
    if why := foreign_reason(tags, target):
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
        call_aws(iam, "tag_role", RoleName=name, Tags=tag_list(missing))
        result.repaired.append("role.tags")

    inline = lookup_aws(
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
    wanted_keys = {policy_tag(arn)[0] for arn in desired}
    to_attach = [arn for arn in desired if arn not in attached]
    to_detach = sorted(arn for arn in attached - set(desired) if policy_tag(arn)[0] in recorded)
    new_records = dict(policy_tag(arn) for arn in to_attach if policy_tag(arn)[0] not in recorded)
    stale_records = sorted(recorded - wanted_keys)

    if new_records:
        call_aws(iam, "tag_role", RoleName=role, Tags=tag_list(new_records))
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
    return lookup_aws(client, operation, absent, **params) is not None


def _refuse(kind: str, name: str, target: RegistryTarget, why: str) -> PermanentError:
    return PermanentError(
        f"{kind} {name} already exists but is not managed by idp for workload "
        f"{target.system}/{target.name} ({why}); rename the workload or tag the resource to "
        "adopt it.",
        reason="ForeignResource",
    )


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
    found = lookup_aws(
        ecr, "describe_repositories", {"RepositoryNotFoundException"}, repositoryNames=[name]
    )
    if found is None:
        return False
    arn = found["repositories"][0]["repositoryArn"]
    tags = tag_dict(call_aws(ecr, "list_tags_for_resource", resourceArn=arn).get("tags"))
    if why := foreign_reason(tags, target):
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
    found = lookup_aws(iam, "get_role", {"NoSuchEntity"}, RoleName=name)
    if found is None:
        return False
    if why := foreign_reason(tag_dict(found["Role"].get("Tags")), target):
        log.warning("leaving IAM role %s alone: %s", name, why)
        return False
    # IAM refuses to delete a role that still has policies, so everything goes, including
    # attachments others made: they were grants to our role, which is going away.
    for policy in _list_iam(iam, "list_attached_role_policies", "AttachedPolicies", RoleName=name):
        _forgiving(iam, "detach_role_policy", RoleName=name, PolicyArn=policy["PolicyArn"])
    for policy_name in _list_iam(iam, "list_role_policies", "PolicyNames", RoleName=name):
        _forgiving(iam, "delete_role_policy", RoleName=name, PolicyName=policy_name)
    return _forgiving(iam, "delete_role", RoleName=name)


def _list_iam(iam: BaseClient, operation: str, key: str, **params: Any) -> list[Any]:
    """All pages of an IAM listing (Marker/IsTruncated), each call error-mapped."""
    items: list[Any] = []
    while True:
        page = call_aws(iam, operation, **params)
        items.extend(page.get(key, []))
        if not page.get("IsTruncated"):
            return items
        params["Marker"] = page["Marker"]


def _issuer_host_path(url: str) -> str:
    return re.sub(r"^https?://", "", url).rstrip("/")
