"""What a part of the worker needs from IAM: statements of the worker's policy, each declared by
the code that makes the calls (a capability's `aws_grants`, the external-secret delivery), so
that idp/aws/policy.py assembles the policy without knowing any capability."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from idp.aws.tags import MANAGED_BY

# IAM's condition block: operator -> condition key -> value.
Condition = Mapping[str, Mapping[str, str | list[str]]]


@dataclass(frozen=True)
class AwsGrant:
    """One Allow statement: its Sid names what uses it (unique across the whole policy)."""

    sid: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    condition: Condition | None = None

    def statement(self) -> dict[str, Any]:
        """As IAM reads it, sorted, so that the rendered policy is the same on every run."""
        statement: dict[str, Any] = {
            "Sid": self.sid,
            "Effect": "Allow",
            "Action": sorted(self.actions),
            "Resource": sorted(self.resources),
        }
        if self.condition is not None:
            statement["Condition"] = {op: dict(keys) for op, keys in self.condition.items()}
        return statement


def ownership_condition(kind: Literal["Request", "Resource"], tags: Mapping[str, str]) -> Condition:
    """Requires the ownership tag the code writes (`tags`, made by the code's own tagging
    function): on the request for a create ("Request"), on the resource for a change."""
    return {"StringEquals": {f"aws:{kind}Tag/{MANAGED_BY}": tags[MANAGED_BY]}}


def partition(region: str) -> str:
    """The ARN partition of `region`."""
    if region.startswith("cn-"):
        return "aws-cn"
    return "aws-us-gov" if region.startswith("us-gov-") else "aws"
