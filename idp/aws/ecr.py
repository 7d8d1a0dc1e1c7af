"""The ECR side of a workload's registry: its repository's name and lifecycle policy.

Pure: builds, normalizes and validates, and calls nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from idp.errors import PermanentError
from idp.models import RegistrySpec

# ECR's documented repository-name pattern (moto checks it too; we check before calling).
_REPOSITORY_NAME = re.compile(r"^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*$")


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


def normalize_lifecycle(document: str | Mapping[str, Any]) -> dict[str, Any]:
    """ECR returns the lifecycle policy as text, possibly reformatted: compare parsed rules."""
    doc = json.loads(document) if isinstance(document, str) else dict(document)
    return {"rules": sorted(doc.get("rules", []), key=lambda r: r.get("rulePriority", 0))}


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
