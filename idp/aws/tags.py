"""Ownership of AWS resources, kept on the resources themselves as tags.

``idp.managed-by=idp``, ``idp.system`` and ``idp.workload`` say which workload a resource belongs
to, so that it survives workflow resets and shows in the console: idp adopts what carries them
for the workload at hand, refuses what does not, and never deletes anything without them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from capabilities.registry.target import RegistryTarget


MANAGED_BY = "idp.managed-by"
SYSTEM_TAG = "idp.system"
WORKLOAD_TAG = "idp.workload"
# One role tag per managed policy *we* attached, keyed by a hash of its ARN (see _plan_managed
# in capabilities/registry/capability.py).
POLICY_TAG_PREFIX = "idp.policy."
# IAM tag values allow only these characters; ARNs may hold others (a comma, say).
_TAG_VALUE_UNSAFE = re.compile(r"[^\w.:/=+\-@ ]")


def ownership_tags(target: RegistryTarget) -> dict[str, str]:
    return {MANAGED_BY: "idp", SYSTEM_TAG: target.system, WORKLOAD_TAG: target.name}


def policy_tag(arn: str) -> tuple[str, str]:
    """The role tag recording that we attached ``arn``: key by hash, value readable."""
    key = POLICY_TAG_PREFIX + hashlib.sha256(arn.encode()).hexdigest()[:16]
    return key, _TAG_VALUE_UNSAFE.sub("_", arn)[:256]


def tag_dict(items: list[Mapping[str, str]] | None) -> dict[str, str]:
    return {item["Key"]: item["Value"] for item in items or []}


def tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def foreign_reason(tags: Mapping[str, str], target: RegistryTarget) -> str | None:
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
