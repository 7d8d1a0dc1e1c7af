"""Rendering the Kubernetes objects a workload owns in the state store.

Output is stable YAML (sorted keys, no timestamps) so an unchanged resource renders byte-identical
and the state store never sees a commit that changes nothing.
"""

import hashlib
from collections.abc import Mapping
from typing import Any

import yaml

from idp.models import Workload

MANAGED_BY = {"app.kubernetes.io/managed-by": "idp"}
ROLE_ARN_ANNOTATION = "eks.amazonaws.com/role-arn"


def dump(obj: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(obj), sort_keys=True, default_flow_style=False, allow_unicode=True)


def digest(files: Mapping[str, str]) -> str:
    """A fingerprint of a rendered set of files, to tell drift repairs from spec changes."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return h.hexdigest()


def workload_labels(workload: Workload) -> dict[str, str]:
    return {
        **workload.metadata.labels,
        **MANAGED_BY,
        "idp.dev/system": workload.metadata.system,
        "idp.dev/workload": workload.metadata.name,
    }


def workload_directory(base: str, workload: Workload) -> str:
    parts = [base, workload.spec.destination, workload.spec.namespace, workload.metadata.name]
    return "/".join(p for p in parts if p)


def service_account(workload: Workload, role_arn: str | None) -> dict[str, Any]:
    annotations = {ROLE_ARN_ANNOTATION: role_arn} if role_arn else {}
    metadata: dict[str, Any] = {
        "name": workload.service_account,
        "namespace": workload.spec.namespace,
        "labels": workload_labels(workload),
    }
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata}


def render_workload(workload: Workload, *, role_arn: str | None = None) -> dict[str, str]:
    """File name → content for everything the workload keeps in its state-store directory."""
    return {"serviceaccount.yaml": dump(service_account(workload, role_arn))}
