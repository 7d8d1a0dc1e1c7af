"""The Registry capability's AWS calls: observe (reads only), apply (the plan's writes, in
order) and teardown. Every call goes through idp/aws/client.py, which maps AWS's failures onto
TransientError and PermanentError.

A steady-state pass makes 5 reads (6 when managed policies are in play) and no write: observe's
DescribeRepositories, ListTagsForResource, GetLifecyclePolicy, GetRole (tags included),
GetRolePolicy and ListAttachedRolePolicies, then an empty plan. The fleet read
(`fleet_observe`) reads the same for a whole fleet at 1 call a workload plus listing pages.

Plain boto3, synchronous: actions.py runs these functions in a thread.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.client import BaseClient

from capabilities.registry.capability import (
    FleetKey,
    RegistryObservation,
    RegistryOutput,
    RegistryPlan,
    RepositoryState,
    RoleState,
    lists_attached_policies,
    registry_digest,
)
from capabilities.registry.target import RegistryTarget
from idp.aws.client import AwsClients, call_aws, lookup_aws
from idp.aws.iam import INLINE_POLICY_NAME
from idp.aws.tags import foreign_reason, tag_dict
from idp.errors import PermanentError
from idp.models import RegistrySpec

log = logging.getLogger(__name__)

# The most DescribeRepositories and GetAccountAuthorizationDetails give in one page, and the most
# repositories the Tagging API's GetResources does.
_PAGE = 1000
_TAGGED_PAGE = 100
# Repositories the fleet read reads at once: below botocore's 10 connections per client.
_READS_AT_ONCE = 8


def observe(target: RegistryTarget, spec: RegistrySpec, clients: AwsClients) -> RegistryObservation:
    """The repository and the role as they are; changes nothing."""
    return RegistryObservation(
        target=target,
        repository=_observe_repository(target, clients.ecr),
        role=_observe_role(target, spec, clients.iam),
    )


def _observe_repository(target: RegistryTarget, ecr: BaseClient) -> RepositoryState | None:
    found = lookup_aws(
        ecr,
        "describe_repositories",
        {"RepositoryNotFoundException"},
        repositoryNames=[target.repository_name],
    )
    return None if found is None else _repository_state(ecr, found["repositories"][0])


def _repository_state(
    ecr: BaseClient, repo: Mapping[str, Any], tags: list[dict[str, str]] | None = None
) -> RepositoryState | None:
    """The repository as DescribeRepositories described it, with its tags (`tags`, as the
    Tagging API listed them, or read here) and its lifecycle policy, which only a read of its
    own gives; None when it was deleted since."""
    if tags is None:
        listed = lookup_aws(
            ecr,
            "list_tags_for_resource",
            {"RepositoryNotFoundException"},
            resourceArn=repo["repositoryArn"],
        )
        if listed is None:
            return None
        tags = listed.get("tags", [])
    try:
        lifecycle = lookup_aws(
            ecr,
            "get_lifecycle_policy",
            {"LifecyclePolicyNotFoundException"},
            repositoryName=repo["repositoryName"],
        )
    except PermanentError as err:
        if err.reason == "RepositoryNotFoundException":
            return None
        raise
    return _repository(repo, tags, lifecycle and lifecycle["lifecyclePolicyText"])


def _repository(
    repo: Mapping[str, Any], tags: list[dict[str, str]] | None, lifecycle: str | None
) -> RepositoryState:
    """`repo` as DescribeRepositories or CreateRepository describes it (the same fields), with
    its tags and lifecycle policy text."""
    encryption = repo.get("encryptionConfiguration", {})
    return RepositoryState(
        uri=repo["repositoryUri"],
        arn=repo["repositoryArn"],
        image_tag_mutability=repo.get("imageTagMutability"),
        scan_on_push=repo.get("imageScanningConfiguration", {}).get("scanOnPush"),
        encryption_type=encryption.get("encryptionType", "AES256"),
        kms_key=encryption.get("kmsKey"),
        tags=tag_dict(tags),
        lifecycle_policy=lifecycle,
    )


def _observe_role(target: RegistryTarget, spec: RegistrySpec, iam: BaseClient) -> RoleState | None:
    name = target.role_name
    found = lookup_aws(iam, "get_role", {"NoSuchEntity"}, RoleName=name)
    if found is None:
        return None
    role = found["Role"]
    inline = lookup_aws(
        iam, "get_role_policy", {"NoSuchEntity"}, RoleName=name, PolicyName=INLINE_POLICY_NAME
    )
    attached = None
    if lists_attached_policies(spec.managed_policy_arns, tag_dict(role.get("Tags"))):
        listing = call_aws(iam, "list_attached_role_policies", RoleName=name, MaxItems=100)
        attached = [policy["PolicyArn"] for policy in listing.get("AttachedPolicies", [])]
    return _role_state(role, inline and inline["PolicyDocument"], attached)


def _role_state(
    role: Mapping[str, Any], inline: dict[str, Any] | str | None, attached: list[str] | None
) -> RoleState:
    """`role` as GetRole or GetAccountAuthorizationDetails describes it, which agree on these
    fields; `attached` is None when not listed."""
    return RoleState(
        arn=role["Arn"],
        trust_policy=role["AssumeRolePolicyDocument"],
        tags=tag_dict(role.get("Tags")),
        inline_policy=inline,
        attached_policies=None if attached is None else sorted(attached),
    )


def fleet_observe(keys: list[str], clients: AwsClients) -> dict[str, str]:
    """The digest (`registry_digest`) of each of `keys` whose repository and role both exist,
    from the same fields observe reads, so that it equals what the workload's own fingerprint
    gives for the same outside. A key of another form is left out, which wakes its workload.

    What a sweep costs, however many keys: for the R repositories of the registry,
    ceil(R/1000) DescribeRepositories, and for the N roles of the account, ceil(N/1000)
    GetAccountAuthorizationDetails (the two run side by side); then one GetLifecyclePolicy per
    key found, which ECR has no bulk form of, and the repositories' tags in the fewer calls:
    ceil(R/100) GetResources of the Resource Groups Tagging API (more if they carry more than 5
    tags each), or one ListTagsForResource per key found. So 3 + K calls for K workloads in a
    registry of theirs, where their own passes make 5K to 6K.

    The Tagging API is eventually consistent: tags changed by hand a moment before a sweep may
    be read as they were, and found changed by the next sweep; a repository made a moment
    before may be read as untagged, which wakes its workload for a pass that finds it in sync.
    """
    wanted = {key: parsed for key in keys if (parsed := FleetKey.parse(key)) is not None}
    if not wanted:
        return {}
    with ThreadPoolExecutor(_READS_AT_ONCE) as pool:
        listing = pool.submit(_repositories, clients.ecr)
        details = pool.submit(_roles, clients.iam, {k.role for k in wanted.values()})
        repositories, roles = listing.result(), details.result()
        found = {
            key: k for key, k in wanted.items() if k.repository in repositories and k.role in roles
        }
        names = {k.repository for k in found.values()}
        tagged = (
            _repository_tags(clients.tagging)
            if math.ceil(len(repositories) / _TAGGED_PAGE) < len(names)
            else None
        )
        reads = {}
        for name in names:
            repo = repositories[name]
            # A repository the Tagging API did not list has no tags.
            tags = None if tagged is None else tagged.get(repo["repositoryArn"], [])
            reads[name] = pool.submit(_repository_state, clients.ecr, repo, tags)
        states = {name: read.result() for name, read in reads.items()}
    return {
        key: registry_digest(repository, _detailed_role(roles[k.role], k.attached))
        for key, k in found.items()
        if (repository := states[k.repository]) is not None
    }


def _detailed_role(role: Mapping[str, Any], attached: bool) -> RoleState:
    """A role as GetAccountAuthorizationDetails details it, read as observe reads it: its
    attached policies only when observe listed them (`attached`)."""
    inline = next(
        (
            policy["PolicyDocument"]
            for policy in role.get("RolePolicyList", [])
            if policy["PolicyName"] == INLINE_POLICY_NAME
        ),
        None,
    )
    listed = [policy["PolicyArn"] for policy in role.get("AttachedManagedPolicies", [])]
    return _role_state(role, inline, listed if attached else None)


def _repositories(ecr: BaseClient) -> dict[str, dict[str, Any]]:
    """The registry's repositories by name, as DescribeRepositories describes them: listed
    whole, since naming them would fail the call for the first one deleted."""
    found: dict[str, dict[str, Any]] = {}
    params: dict[str, Any] = {"maxResults": _PAGE}
    while True:
        page = call_aws(ecr, "describe_repositories", **params)
        found |= {r["repositoryName"]: r for r in page["repositories"]}
        if not page.get("nextToken"):
            return found
        params["nextToken"] = page["nextToken"]


def _repository_tags(tagging: BaseClient) -> dict[str, list[dict[str, str]]]:
    """The tags of the region's repositories by ARN. A repository missing from it has no tags:
    the Tagging API lists every resource that has or ever had one."""
    tags: dict[str, list[dict[str, str]]] = {}
    # Both limits at their most: a page ends at 100 repositories or 500 tags, whichever is first.
    params: dict[str, Any] = {
        "ResourceTypeFilters": ["ecr:repository"],
        "ResourcesPerPage": _TAGGED_PAGE,
        "TagsPerPage": 500,
    }
    while True:
        page = call_aws(tagging, "get_resources", **params)
        tags |= {r["ResourceARN"]: r.get("Tags", []) for r in page["ResourceTagMappingList"]}
        if not page.get("PaginationToken"):
            return tags
        params["PaginationToken"] = page["PaginationToken"]


def _roles(iam: BaseClient, names: set[str]) -> dict[str, dict[str, Any]]:
    """Those of `names` the account holds, with their trust, inline and attached policies and
    tags, as GetAccountAuthorizationDetails describes them."""
    roles = _list_iam(
        iam, "get_account_authorization_details", "RoleDetailList", Filter=["Role"], MaxItems=_PAGE
    )
    return {role["RoleName"]: role for role in roles if role["RoleName"] in names}


def apply(
    plan: RegistryPlan, observed: RegistryObservation, clients: AwsClients
) -> tuple[RegistryOutput, RegistryObservation | None]:
    """Send the plan's calls in order and name what exists now; with it, when the plan made
    both the repository and the role from nothing, what a fresh observe would find (`_made`).

    A create that AWS answers with "already exists" (something made it since observe, or a
    crash after the create) is a TransientError (idp/aws/client.py): the retry observes again,
    then adopts or refuses what it finds like any other existing resource.
    """
    answers: dict[str, dict[str, Any]] = {}
    for call in plan.calls:
        client = getattr(clients, call.service)
        answer = lookup_aws(client, call.operation, call.absent, **call.params)
        answers[call.operation] = answer or {}
    if plan:
        target = observed.target
        log.info("registry of %s/%s: %s", target.system, target.name, plan.summary())
    repository = observed.repository
    role = observed.role
    output = RegistryOutput(
        repository_uri=repository.uri
        if repository
        else answers["create_repository"]["repository"]["repositoryUri"],
        role_arn=role.arn if role else answers["create_role"]["Role"]["Arn"],
    )
    return output, _made(plan, observed, answers)


def _made(
    plan: RegistryPlan, observed: RegistryObservation, answers: Mapping[str, dict[str, Any]]
) -> RegistryObservation | None:
    """When `plan` made both from nothing: each as its create answered, with the tags, the
    lifecycle policy, the inline policy and the attachments the plan sent, which is all a new
    resource holds. This spares the read-back of a new workload (5 calls, 6 with managed
    policies), which IAM's eventual consistency can also answer with a role not found yet. None
    for any other plan."""
    if sorted(plan.created) != ["repository", "role"] or plan.repaired:
        return None
    sent = {call.operation: call.params for call in plan.calls}
    attached = [c.params["PolicyArn"] for c in plan.calls if c.operation == "attach_role_policy"]
    tags = sent["create_role"]["Tags"]
    listed = lists_attached_policies(attached, tag_dict(tags))
    return observed.model_copy(
        update={
            "repository": _repository(
                answers["create_repository"]["repository"],
                sent["create_repository"]["tags"],
                sent["put_lifecycle_policy"]["lifecyclePolicyText"],
            ),
            "role": _role_state(
                {**answers["create_role"]["Role"], "Tags": tags},
                sent["put_role_policy"]["PolicyDocument"],
                attached if listed else None,
            ),
        }
    )


def teardown(target: RegistryTarget, spec: RegistrySpec, clients: AwsClients) -> list[str]:
    """Remove the role, and with deletionPolicy ``Delete`` the repository too. Returns what it
    removed.

    Idempotent: what is already gone is skipped. A resource without our tags is never touched
    (it is logged and left), so deleting a workload never blocks on someone else's resource.
    The repository goes first: if it still holds images and ``forceDeleteImages`` is off, the
    refusal leaves everything as it was and the pods keep their access.
    """
    removed: list[str] = []
    if target.deletion_policy == "Delete" and _delete_repository(target, spec, clients):
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


def _forgiving(client: BaseClient, operation: str, **params: Any) -> bool:
    """A delete-like call where 'already gone' is success. True when it removed something."""
    absent = {"NoSuchEntity", "RepositoryNotFoundException"}
    return lookup_aws(client, operation, absent, **params) is not None


def _list_iam(iam: BaseClient, operation: str, key: str, **params: Any) -> list[Any]:
    """All pages of an IAM listing (Marker/IsTruncated), each call error-mapped."""
    items: list[Any] = []
    while True:
        page = call_aws(iam, operation, **params)
        items.extend(page.get(key, []))
        if not page.get("IsTruncated"):
            return items
        params["Marker"] = page["Marker"]
