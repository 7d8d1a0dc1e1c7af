"""The IAM statements the Registry's worker half needs: on the repositories and roles the
platform's naming allows, given by the same `RegistryTarget` the code names them with, with
``*`` for the workload's system and name.

Reads carry no tag condition: they must see foreign and missing resources to refuse or create
them. Writes that follow a create in the same pass carry none either: authorization may not see
a new resource's tags at once (IAM is eventually consistent), and the AccessDenied would read as
a permanent failure. The rest only ever touch what the code has just read and found tagged
idp.managed-by=idp, so the tag is required; creates require it on the tags they are made with.

The fleet read (`fleet_observe` in aws.py) reads wider, and only reads: it lists the registry's
repositories, their tags and the account's roles, since AWS reads none of them in bulk by name.
"""

from __future__ import annotations

from capabilities.registry.target import RegistryTarget
from idp.aws.grants import AwsGrant, ownership_condition
from idp.aws.tags import ownership_tags
from idp.platform import AwsConfig


def registry_grants(aws: AwsConfig) -> list[AwsGrant]:
    names = RegistryTarget.model_construct(
        system="*",
        name="*",
        account_id=aws.account_id,
        region=aws.region,
        repository_prefix=aws.repository_prefix,
    )
    repository, role = (names.repository_arn,), (names.role_arn,)
    owner = ownership_tags(names)
    owned, created = ownership_condition("Resource", owner), ownership_condition("Request", owner)
    domain = "amazonaws.com.cn" if names.partition == "aws-cn" else "amazonaws.com"
    # Only the managed policies the platform lets workloads attach: without the condition, a
    # workload naming AdministratorAccess would get it through the worker's own rights.
    patterns = sorted(aws.attachable_policies)
    attach = (
        [
            AwsGrant(
                "RegistryAttachManagedPolicies",
                ("iam:AttachRolePolicy",),
                role,
                {"ArnLike": {"iam:PolicyARN": patterns}},
            )
        ]
        if patterns
        else []
    )
    return [
        # ECR authorizes a DescribeRepositories that names no repository, the fleet read's
        # listing, on ".../repository/*", which as a pattern also grants describing every
        # repository of the registry by name: no more than the listing shows anyway.
        AwsGrant(
            "RegistryDescribeRepositories",
            ("ecr:DescribeRepositories",),
            (f"arn:{names.partition}:ecr:{aws.region}:{aws.account_id}:repository/*",),
        ),
        AwsGrant(
            "RegistryObserveRepositories",
            ("ecr:GetLifecyclePolicy", "ecr:ListTagsForResource"),
            repository,
        ),
        AwsGrant("RegistryCreateRepositories", ("ecr:CreateRepository",), repository, created),
        # TagResource is also how AWS authorizes the tags given to CreateRepository.
        AwsGrant(
            "RegistryConfigureRepositories",
            ("ecr:PutLifecyclePolicy", "ecr:TagResource"),
            repository,
        ),
        AwsGrant(
            "RegistryChangeOwnedRepositories",
            (
                "ecr:DeleteRepository",
                "ecr:PutImageScanningConfiguration",
                "ecr:PutImageTagMutability",
            ),
            repository,
            owned,
        ),
        # ECR asks KMS on the caller's behalf for a repository encrypted with a KMS key
        # (registry.encryption: KMS): DescribeKey and two grants on create, retired on delete.
        AwsGrant(
            "RegistryKmsEncryptedRepositories",
            ("kms:CreateGrant", "kms:DescribeKey", "kms:RetireGrant"),
            (f"arn:{names.partition}:kms:{aws.region}:{aws.account_id}:key/*",),
            {"StringEquals": {"kms:ViaService": f"ecr.{aws.region}.{domain}"}},
        ),
        AwsGrant(
            "RegistryObserveRoles",
            (
                "iam:GetRole",
                "iam:GetRolePolicy",
                "iam:ListAttachedRolePolicies",
                "iam:ListRolePolicies",
            ),
            role,
        ),
        # The fleet read's one look at every role; IAM has no resource-level permission for
        # GetAccountAuthorizationDetails, nor a condition on its Filter, so this also lets the
        # worker read the account's users, groups and managed policies. Read-only.
        AwsGrant("RegistryFleetReadRoles", ("iam:GetAccountAuthorizationDetails",), ("*",)),
        # And its one look at the repositories' tags: the Tagging API has no resource-level
        # permission either, so this lets the worker read the tags of every resource of the
        # account, in every service. Read-only.
        AwsGrant("RegistryFleetReadTags", ("tag:GetResources",), ("*",)),
        AwsGrant("RegistryCreateRoles", ("iam:CreateRole",), role, created),
        # TagRole is also how IAM authorizes the tags given to CreateRole.
        AwsGrant("RegistryConfigureRoles", ("iam:PutRolePolicy", "iam:TagRole"), role),
        *attach,
        AwsGrant(
            "RegistryChangeOwnedRoles",
            (
                "iam:DeleteRole",
                "iam:DeleteRolePolicy",
                "iam:DetachRolePolicy",
                "iam:UntagRole",
                "iam:UpdateAssumeRolePolicy",
            ),
            role,
            owned,
        ),
    ]
