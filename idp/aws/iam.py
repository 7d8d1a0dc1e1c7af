"""The IAM side of a workload's registry access: its role's name and policy documents.

Pure: builds, normalizes and validates documents and names, and calls nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from idp.errors import PermanentError

if TYPE_CHECKING:
    from capabilities.registry.target import RegistryTarget


INLINE_POLICY_NAME = "idp-registry"
ROLE_NAME_MAX = 64
_ROLE_NAME = re.compile(r"[\w+=,.@-]+")

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
