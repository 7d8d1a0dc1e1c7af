"""The Registry capability's pure half: a workload's ECR repository and the IAM role its pods
assume, planned from what observe found (the worker's half, which calls AWS, is in aws.py).

Ownership lives on the resources themselves as tags (``idp.managed-by``, ``idp.system``,
``idp.workload``, see idp/aws/tags.py): the plan adopts what carries them for this workload,
refuses what does not, and teardown never deletes anything without them. The documents written
are built in idp/aws/iam.py and idp/aws/ecr.py.

A plan is the list of AWS writes a pass makes, each under the change a person reads in
`idpctl diff`; apply sends exactly those. What ECR cannot change (a repository's encryption) and
what is not ours are refused by the plan, before anything is written.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from capabilities.registry.grants import registry_grants
from capabilities.registry.target import RegistryTarget
from idp.aws.ecr import lifecycle_policy, normalize_lifecycle, validate_lifecycle_policy
from idp.aws.grants import AwsGrant
from idp.aws.iam import (
    INLINE_POLICY_NAME,
    normalize_policy,
    registry_policy,
    trust_policy,
    validate_policy_document,
    validate_role_name,
)
from idp.aws.tags import POLICY_TAG_PREFIX, foreign_reason, ownership_tags, policy_tag, tag_list
from idp.capability import Capability, Change, Context, Fingerprint, Plan, digest, dump
from idp.errors import PermanentError
from idp.models import Model, RegistrySpec
from idp.platform import AwsConfig, Platform

if TYPE_CHECKING:
    from capabilities.registry.actions import RegistryActions


class RegistryOutput(Model):
    repository_uri: str
    role_arn: str


class RepositoryState(Model):
    """The repository as DescribeRepositories, ListTagsForResource and GetLifecyclePolicy
    answer."""

    uri: str
    arn: str
    image_tag_mutability: str | None = None
    scan_on_push: bool | None = None
    encryption_type: str = "AES256"
    kms_key: str | None = None
    tags: dict[str, str] = {}
    lifecycle_policy: str | None = Field(None, description="Its text; None when it has none.")


class RoleState(Model):
    """The role as GetRole (tags included), GetRolePolicy and ListAttachedRolePolicies answer,
    or as GetAccountAuthorizationDetails details it for the fleet read."""

    arn: str
    trust_policy: dict[str, Any] | str
    tags: dict[str, str] = {}
    inline_policy: dict[str, Any] | str | None = Field(None, description="None when absent.")
    attached_policies: list[str] | None = Field(
        None, description="Not listed when no managed policy is wanted or recorded."
    )


class RegistryObservation(Model):
    target: RegistryTarget = Field(description="Where and for whom, from the platform file.")
    repository: RepositoryState | None = Field(description="None when it does not exist.")
    role: RoleState | None = Field(description="None when it does not exist.")


class AwsCall(Model):
    """One AWS write, exactly as apply sends it."""

    service: Literal["ecr", "iam"]
    operation: str = Field(description="The boto3 method, e.g. put_lifecycle_policy.")
    params: dict[str, Any]
    absent: list[str] = Field([], description="Error codes meaning it is done already.")


class RegistryPlan(Plan):
    calls: list[AwsCall] = []
    created: list[str] = Field([], description="What is created: repository, role.")
    repaired: list[str] = Field([], description="What is put back, e.g. role.trustPolicy.")


def lists_attached_policies(desired: list[str], tags: Mapping[str, str]) -> bool:
    """Whether a pass needs the role's attached policies: only when it could attach or detach
    one, that is when the spec names managed policies or the role records some we attached."""
    return bool(desired) or any(key.startswith(POLICY_TAG_PREFIX) for key in tags)


@dataclass(frozen=True)
class FleetKey:
    """What a workload's fingerprint is keyed by: its repository and role, as the fleet read
    finds them in the registry's and the account's listings, and whether the digest covers
    the role's attached policies.

    That last part is in the key because only the spec says whether a pass looks at attached
    policies (`lists_attached_policies`), and the fleet read never sees a spec: the key tells
    it what the workload's own observe read. Tags alone could not: a managed policy someone
    attached before the spec named it carries no record of ours, yet a pass re-attaches it
    when it goes.
    """

    repository: str
    role: str
    attached: bool

    # Neither a repository name nor a role name can hold a '|'.
    SEPARATOR: ClassVar[str] = "|"
    ATTACHED: ClassVar[str] = "attached"

    @property
    def text(self) -> str:
        parts = [self.repository, self.role, *([self.ATTACHED] if self.attached else [])]
        return self.SEPARATOR.join(parts)

    @classmethod
    def parse(cls, key: str) -> FleetKey | None:
        """None for a key of another form (a newer worker's, say)."""
        match key.split(cls.SEPARATOR):
            case [repository, role] if repository and role:
                return cls(repository, role, attached=False)
            case [repository, role, cls.ATTACHED] if repository and role:
                return cls(repository, role, attached=True)
        return None


def registry_digest(repository: RepositoryState, role: RoleState) -> str:
    """The digest of a fingerprint, which the workload's observe and the fleet read both
    compute from the states they read, so that the same outside gives the same digest.

    It covers every field of both states, so each one the plan reads is in: what differs from
    a state found in sync is drift a pass repairs, or refuses (another encryption). Documents
    are taken in the canonical forms the plan compares: GetRole, GetRolePolicy and
    GetAccountAuthorizationDetails may give a policy as a dict or as URL-encoded text, and ECR
    may give the lifecycle policy reformatted.
    """
    repo = repository.model_dump(mode="json", by_alias=False)
    if repository.lifecycle_policy is not None:
        repo["lifecycle_policy"] = normalize_lifecycle(repository.lifecycle_policy)
    iam = role.model_dump(mode="json", by_alias=False)
    iam["trust_policy"] = normalize_policy(role.trust_policy)
    if role.inline_policy is not None:
        iam["inline_policy"] = normalize_policy(role.inline_policy)
    if role.attached_policies is not None:
        iam["attached_policies"] = sorted(role.attached_policies)
    return digest({"repository": repo, "role": iam})


def registry_fingerprint(observation: RegistryObservation) -> Fingerprint | None:
    """Only when both exist: a workload missing one is not in sync, and the fleet read leaves
    out a key whose repository or role it does not find."""
    repository, role = observation.repository, observation.role
    if repository is None or role is None:
        return None
    target = observation.target
    key = FleetKey(target.repository_name, target.role_name, role.attached_policies is not None)
    return Fingerprint(key=key.text, digest=registry_digest(repository, role))


@dataclass
class _Steps:
    changes: list[Change] = field(default_factory=list)
    calls: list[AwsCall] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    def add(
        self, changes: list[Change], calls: list[AwsCall], *, created: str = "", repaired: str = ""
    ) -> None:
        self.changes += changes
        self.calls += calls
        self.created += filter(None, [created])
        self.repaired += filter(None, [repaired])

    def repair(self, what: str, change: Change, *calls: AwsCall) -> None:
        self.add([change], list(calls), repaired=what)


def plan_registry(spec: RegistrySpec, observed: RegistryObservation) -> RegistryPlan:
    """The writes that make the repository and the role match `spec`; none in steady state.
    PermanentError for what must not or cannot be written (a foreign resource, say)."""
    target = observed.target
    if not spec.enabled:
        raise PermanentError(
            f"The registry of workload {target.system}/{target.name} is disabled; tear it down "
            "instead of ensuring it.",
            reason="RegistryDisabled",
        )
    steps = _Steps()
    _plan_repository(steps, target, spec, observed.repository)
    _plan_role(steps, target, spec, observed.role)
    return RegistryPlan(
        changes=steps.changes, calls=steps.calls, created=steps.created, repaired=steps.repaired
    )


def _ecr(operation: str, **params: Any) -> AwsCall:
    return AwsCall(service="ecr", operation=operation, params=params)


def _iam(operation: str, **params: Any) -> AwsCall:
    return AwsCall(service="iam", operation=operation, params=params)


def _missing_tags(tags: Mapping[str, str], target: RegistryTarget) -> dict[str, str]:
    return {k: v for k, v in ownership_tags(target).items() if tags.get(k) != v}


def _plan_repository(
    steps: _Steps, target: RegistryTarget, spec: RegistrySpec, repo: RepositoryState | None
) -> None:
    name = target.repository_name
    subject = f"ECR repository {name}"
    lifecycle = lifecycle_policy(spec)
    validate_lifecycle_policy(lifecycle)
    put_lifecycle = _ecr(
        "put_lifecycle_policy",
        repositoryName=name,
        lifecyclePolicyText=json.dumps(lifecycle, sort_keys=True),
    )
    if repo is None:
        encryption = {"encryptionType": spec.encryption}
        if spec.kms_key:
            encryption["kmsKey"] = spec.kms_key
        create = _ecr(
            "create_repository",
            repositoryName=name,
            imageTagMutability=spec.image_tag_mutability,
            imageScanningConfiguration={"scanOnPush": spec.scan_on_push},
            encryptionConfiguration=encryption,
            # Tags go in with the create so the repository is never without its owner.
            tags=tag_list(ownership_tags(target)),
        )
        change = Change(action="create", subject=subject, why="it does not exist")
        steps.add([change], [create, put_lifecycle], created="repository")
        return

    if why := foreign_reason(repo.tags, target):
        raise _refuse("ECR repository", name, target, why)
    _check_encryption(repo, spec, name)
    if repo.image_tag_mutability != spec.image_tag_mutability:
        steps.repair(
            "repository.imageTagMutability",
            _differs(
                f"image tag mutability of {subject}",
                repo.image_tag_mutability,
                spec.image_tag_mutability,
            ),
            _ecr(
                "put_image_tag_mutability",
                repositoryName=name,
                imageTagMutability=spec.image_tag_mutability,
            ),
        )
    if repo.scan_on_push != spec.scan_on_push:
        steps.repair(
            "repository.scanOnPush",
            _differs(f"scan on push of {subject}", repo.scan_on_push, spec.scan_on_push),
            _ecr(
                "put_image_scanning_configuration",
                repositoryName=name,
                imageScanningConfiguration={"scanOnPush": spec.scan_on_push},
            ),
        )
    if missing := _missing_tags(repo.tags, target):
        steps.repair(
            "repository.tags",
            _tags_change(subject, missing),
            _ecr("tag_resource", resourceArn=repo.arn, tags=tag_list(missing)),
        )
    if repo.lifecycle_policy is None or normalize_lifecycle(
        repo.lifecycle_policy
    ) != normalize_lifecycle(lifecycle):
        why = "it has none" if repo.lifecycle_policy is None else "it differs from the spec's"
        change = Change(action="update", subject=f"lifecycle policy of {subject}", why=why)
        steps.repair("repository.lifecyclePolicy", change, put_lifecycle)


def _differs(subject: str, observed: object, wanted: object) -> Change:
    return Change(action="update", subject=subject, why=f"it is {observed}, the spec says {wanted}")


def _tags_change(subject: str, missing: Mapping[str, str]) -> Change:
    why = f"ownership tags missing or changed: {', '.join(sorted(missing))}"
    return Change(action="update", subject=f"tags of {subject}", why=why)


def _check_encryption(repo: RepositoryState, spec: RegistrySpec, name: str) -> None:
    """ECR cannot change a repository's encryption after creation, so a difference is final.

    The key is compared only when the spec names a key ARN: ECR reports the key as an ARN, and
    an alias or bare key id cannot be matched to it without asking KMS.
    """
    current = repo.encryption_type
    differs = current != spec.encryption
    if spec.kms_key and spec.kms_key.startswith("arn:"):
        differs = differs or repo.kms_key != spec.kms_key
    if differs:
        if repo.kms_key:
            current += f" with key {repo.kms_key}"
        raise PermanentError(
            f"ECR repository {name} is encrypted with {current} and ECR cannot change a "
            "repository's encryption; put that encryption back in the spec, or delete the "
            "repository so that it is recreated.",
            reason="EncryptionImmutable",
        )


def _plan_role(
    steps: _Steps, target: RegistryTarget, spec: RegistrySpec, role: RoleState | None
) -> None:
    name = validate_role_name(target.role_name)
    subject = f"IAM role {name}"
    trust = trust_policy(target)
    inline = registry_policy(target)
    validate_policy_document(trust, trust=True)
    validate_policy_document(inline, trust=False)
    put_inline = _iam(
        "put_role_policy",
        RoleName=name,
        PolicyName=INLINE_POLICY_NAME,
        PolicyDocument=json.dumps(inline),
    )
    if role is None:
        # The records of the managed policies about to be attached go in with the create, so a
        # crash between create and attach still leaves them ours to finish (see _plan_managed).
        tags = ownership_tags(target) | dict(map(policy_tag, spec.managed_policy_arns))
        create = _iam(
            "create_role",
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(trust),
            Description=f"Registry access for idp workload {target.system}/{target.name}",
            Tags=tag_list(tags),
        )
        attach = [
            _iam("attach_role_policy", RoleName=name, PolicyArn=arn)
            for arn in spec.managed_policy_arns
        ]
        change = Change(action="create", subject=subject, why="it does not exist")
        steps.add([change], [create, put_inline, *attach], created="role")
        return

    if why := foreign_reason(role.tags, target):
        raise _refuse("IAM role", name, target, why)
    if normalize_policy(role.trust_policy) != normalize_policy(trust):
        account = f"{target.namespace}/{target.service_account}"
        steps.repair(
            "role.trustPolicy",
            Change(
                action="update",
                subject=f"trust policy of {subject}",
                why=f"it differs from the one letting service account {account} assume it",
            ),
            _iam("update_assume_role_policy", RoleName=name, PolicyDocument=json.dumps(trust)),
        )
    if missing := _missing_tags(role.tags, target):
        steps.repair(
            "role.tags",
            _tags_change(subject, missing),
            _iam("tag_role", RoleName=name, Tags=tag_list(missing)),
        )
    if role.inline_policy is None or normalize_policy(role.inline_policy) != normalize_policy(
        inline
    ):
        why = "it is missing" if role.inline_policy is None else "it differs from the one granted"
        change = Change(
            action="update", subject=f"inline policy {INLINE_POLICY_NAME} of {subject}", why=why
        )
        steps.repair("role.inlinePolicy", change, put_inline)
    _plan_managed(steps, name, subject, role, spec.managed_policy_arns)


def _plan_managed(
    steps: _Steps, name: str, subject: str, role: RoleState, desired: list[str]
) -> None:
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
    if role.attached_policies is None:
        return  # not listed: nothing to attach and no record of anything to detach
    recorded = {key for key in role.tags if key.startswith(POLICY_TAG_PREFIX)}
    attached = set(role.attached_policies)
    to_attach = [arn for arn in desired if arn not in attached]
    to_detach = sorted(arn for arn in attached - set(desired) if policy_tag(arn)[0] in recorded)
    new_records = dict(policy_tag(arn) for arn in to_attach if policy_tag(arn)[0] not in recorded)
    stale_records = sorted(recorded - {policy_tag(arn)[0] for arn in desired})

    changes = [
        Change(
            action="attach",
            subject=f"managed policy {arn} to {subject}",
            why="spec.registry.managedPolicyArns names it",
        )
        for arn in to_attach
    ] + [
        Change(
            action="detach",
            subject=f"managed policy {arn} from {subject}",
            why="idp attached it and the spec no longer names it",
        )
        for arn in to_detach
    ]
    if set(stale_records) - {policy_tag(arn)[0] for arn in to_detach}:
        changes.append(
            Change(
                action="update",
                subject=f"managed-policy records on {subject}",
                why="they name policies idp no longer has attached",
            )
        )
    calls = [
        *([_iam("tag_role", RoleName=name, Tags=tag_list(new_records))] if new_records else []),
        *(_iam("attach_role_policy", RoleName=name, PolicyArn=arn) for arn in to_attach),
        *(
            AwsCall(
                service="iam",
                operation="detach_role_policy",
                params={"RoleName": name, "PolicyArn": arn},
                # Someone detaching it first does what we wanted.
                absent=["NoSuchEntity"],
            )
            for arn in to_detach
        ),
        *([_iam("untag_role", RoleName=name, TagKeys=stale_records)] if stale_records else []),
    ]
    if calls:
        steps.add(changes, calls, repaired="role.managedPolicies")


def explain_registry(
    spec: RegistrySpec, plan: RegistryPlan, observed: RegistryObservation
) -> list[str]:
    """What `idpctl diff` shows beneath the plan: each part it puts back, as it is and as it
    will be (a create and the managed policies are named in full by the plan's changes)."""
    target, repo, role = observed.target, observed.repository, observed.role
    lines: list[str] = []
    if repo is not None:
        repository = f"ECR repository {target.repository_name}"
        if "repository.imageTagMutability" in plan.repaired:
            lines.append(
                f"image tag mutability of {repository}: {repo.image_tag_mutability} → "
                f"{spec.image_tag_mutability}"
            )
        if "repository.scanOnPush" in plan.repaired:
            # As the spec writes it (true, false), and null when ECR gave none.
            before, after = json.dumps(repo.scan_on_push), json.dumps(spec.scan_on_push)
            lines.append(f"scan on push of {repository}: {before} → {after}")
        if "repository.tags" in plan.repaired:
            lines += _tag_lines(repository, repo.tags, target)
        if "repository.lifecyclePolicy" in plan.repaired:
            lines += _lifecycle_lines(repository, repo.lifecycle_policy, lifecycle_policy(spec))
    if role is not None:
        subject = f"IAM role {target.role_name}"
        if "role.trustPolicy" in plan.repaired:
            lines += _policy_diff(
                f"trust policy of {subject}", role.trust_policy, trust_policy(target)
            )
        if "role.tags" in plan.repaired:
            lines += _tag_lines(subject, role.tags, target)
        if "role.inlinePolicy" in plan.repaired:
            lines += _policy_diff(
                f"inline policy {INLINE_POLICY_NAME} of {subject}",
                role.inline_policy,
                registry_policy(target),
            )
    return lines


def _tag_lines(subject: str, tags: Mapping[str, str], target: RegistryTarget) -> list[str]:
    return [
        f"tag {key} of {subject}: {tags.get(key, '(none)')} → {value}"
        for key, value in sorted(_missing_tags(tags, target).items())
    ]


def _lifecycle_lines(subject: str, observed: str | None, wanted: dict[str, Any]) -> list[str]:
    """Rule by rule, by priority: what a rule's fields were and will be (its description is
    shown, not compared: it follows the fields)."""
    after = {rule["rulePriority"]: rule for rule in normalize_lifecycle(wanted)["rules"]}
    if observed is None:
        rules = "; ".join(f"rule {p}: {rule['description']}" for p, rule in after.items())
        return [f"lifecycle policy of {subject}: none → {rules}"]
    before = {rule.get("rulePriority"): rule for rule in normalize_lifecycle(observed)["rules"]}
    lines = []
    for priority in sorted(before.keys() | after.keys()):
        old, new = _flat(before.get(priority, {})), _flat(after.get(priority, {}))
        where = f"lifecycle policy of {subject}, rule {priority}"
        if not old:
            lines.append(f"{where}: added ({new['description']})")
        elif not new:
            lines.append(f"{where}: removed ({old.get('description', 'no description')})")
        else:
            lines += [
                f"{where} ({new['description']}): {key} {old.get(key, '(none)')} → "
                f"{new.get(key, '(none)')}"
                for key in sorted(old.keys() | new.keys())
                if key != "description" and old.get(key) != new.get(key)
            ]
    return lines


def _flat(document: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"selection": {"countNumber": 30}} -> {"selection.countNumber": 30}."""
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, Mapping):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _policy_diff(
    subject: str, observed: Mapping[str, Any] | str | None, wanted: Mapping[str, Any]
) -> list[str]:
    """A unified diff of the policy as IAM has it and as it will be, both in the canonical
    form the plan compares, so only real differences show."""

    def text(document: Mapping[str, Any] | str | None) -> list[str]:
        if document is None:
            return []
        return json.dumps(normalize_policy(document), indent=2, sort_keys=True).splitlines()

    diff = difflib.unified_diff(
        text(observed), text(wanted), "as it is", "as it will be", lineterm=""
    )
    return [f"{subject}:", *diff]


def registry_problems(spec: RegistrySpec, settings: AwsConfig | None) -> list[str]:
    """What only the platform file can tell is wrong with `spec.registry`: a managed policy it
    does not let workloads attach (a workload naming AdministratorAccess would otherwise get
    it from the worker's own rights)."""
    if settings is None or not spec.enabled:
        return []
    allowed = ", ".join(settings.attachable_policies) or "none (aws.attachablePolicies is empty)"
    return [
        f"spec.registry.managedPolicyArns[{i}]: {arn} is not a policy the platform lets "
        f"workloads attach; allowed: {allowed}"
        for i, arn in enumerate(spec.managed_policy_arns)
        if not settings.attachable(arn)
    ]


def _refuse(kind: str, name: str, target: RegistryTarget, why: str) -> PermanentError:
    return PermanentError(
        f"{kind} {name} already exists but is not managed by idp for workload "
        f"{target.system}/{target.name} ({why}); rename the workload or tag the resource to "
        "adopt it.",
        reason="ForeignResource",
    )


class Registry(Capability[RegistryObservation, RegistryPlan]):
    name = "Registry"
    spec_field = "registry"
    spec_model = RegistrySpec
    settings_field = "aws"
    settings_model = AwsConfig
    observation_model = RegistryObservation
    plan_model = RegistryPlan
    outputs_model = RegistryOutput
    summary = "ECR repository and IAM role"

    def wanted(self, ctx: Context) -> bool:
        return ctx.workload.spec.registry.enabled

    def check(self, section: RegistrySpec, settings: AwsConfig | None) -> list[str]:
        return registry_problems(section, settings)

    def plan(self, ctx: Context, observation: RegistryObservation) -> RegistryPlan:
        return plan_registry(ctx.workload.spec.registry, observation)

    def expect(
        self, ctx: Context, plan: RegistryPlan, observation: RegistryObservation
    ) -> dict[str, Any]:
        """Known even before a create: ECR and IAM name what they make after the account,
        region and names the platform file gives, as the role's policy already relies on."""
        target, repo, role = observation.target, observation.repository, observation.role
        return dump(
            RegistryOutput(
                repository_uri=repo.uri if repo else target.repository_uri,
                role_arn=role.arn if role else target.role_arn,
            )
        )

    def fingerprint(self, ctx: Context, observation: RegistryObservation) -> Fingerprint | None:
        return registry_fingerprint(observation)

    def describe(self, outputs: Mapping[str, Any]) -> list[str]:
        output = RegistryOutput.model_validate(outputs)
        return [f"repository:  {output.repository_uri}", f"role:        {output.role_arn}"]

    def port_properties(self, outputs: Mapping[str, Any] | None) -> dict[str, Any]:
        output = None if outputs is None else RegistryOutput.model_validate(outputs)
        return {
            "registryUri": output and output.repository_uri,
            "roleArn": output and output.role_arn,
        }

    def port_schema(self) -> dict[str, dict[str, Any]]:
        return {
            "registryUri": {"type": "string", "title": "Registry repository"},
            "roleArn": {"type": "string", "title": "IAM role"},
        }

    def aws_grants(self, platform: Platform, settings: AwsConfig | None) -> list[AwsGrant]:
        return [] if settings is None else registry_grants(settings)

    def actions(
        self, platform: Platform, settings: AwsConfig | None, cache_dir: Path
    ) -> RegistryActions:
        # Imported here: boto3 and the AWS calls belong to the worker, never to the workflow.
        from capabilities.registry.actions import RegistryActions

        return RegistryActions(platform, settings)
