"""The least IAM policy the worker needs, and a scan that shows it covers the code.

- `policy_document(platform)` assembles the statements the parts of the worker declare for the
  platform file: every installed capability's `aws_grants` and the external-secret delivery's
  (core: any capability may deliver that way). It names no capability; each knows its own
  resources and conditions.
- `worker_calls()` lists the AWS actions the worker's code may call, statically and
  generously: any string literal or attribute name in its modules that is a method of a service
  the code makes a client for counts as a call of that method. tests/test_iam_policy.py checks
  that the policy grants every one, and runs the real code paths against moto to check that the
  scan misses nothing they call.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import botocore.session

from idp.aws.grants import AwsGrant
from idp.capability import ENTRY_POINT_GROUP, installed
from idp.delivery.external import aws_grants as external_secret_grants
from idp.errors import IdpError
from idp.platform import Platform

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The project's packages the worker loads, built-in capabilities among them; plugin packages
# are found through their entry points.
_PROJECT_PACKAGES = ("idp", "activities", "capabilities", "workflows", "starter")
# Client methods that call no API but need an action of their own: an RDS IAM authentication
# token is signed locally, and IAM checks rds-db:connect when the database is connected to.
_LOCAL_ACTIONS = {"rds": {"generate_db_auth_token": "rds-db:connect"}}
# Services whose prefix in IAM actions is neither their client name nor their signing name.
_ACTION_PREFIXES = {"resourcegroupstaggingapi": "tag"}


class PolicyError(IdpError):
    """The platform file needs no policy, or the statements declared for it clash."""


def grants(platform: Platform) -> list[AwsGrant]:
    """What every part of the worker declares it needs for `platform`."""
    found = external_secret_grants(platform)
    for capability in installed():
        field = capability.settings_field
        found += capability.aws_grants(platform, platform.section(field) if field else None)
    return found


def policy_document(platform: Platform) -> dict[str, Any]:
    """The least IAM policy for a worker running with `platform`: statements sorted by Sid."""
    statements = sorted((grant.statement() for grant in grants(platform)), key=lambda s: s["Sid"])
    sids = [statement["Sid"] for statement in statements]
    if twice := sorted({sid for sid in sids if sids.count(sid) > 1}):
        raise PolicyError(
            f"Two IAM statements are named {', '.join(twice)}; IAM needs each Sid once, so "
            "rename one where it is declared."
        )
    if not statements:
        raise PolicyError(
            "With this platform file no part of the worker calls AWS (none of the installed "
            "capabilities, no external-secret delivery), so it needs no IAM policy."
        )
    return {"Version": "2012-10-17", "Statement": statements}


def render_policy(platform: Platform) -> str:
    """The policy as `idpctl platform iam-policy` prints it: JSON, indented, one newline."""
    return json.dumps(policy_document(platform), indent=2) + "\n"


# ---- the scan ------------------------------------------------------------------------------------


def _worker_files() -> list[list[Path]]:
    """The worker's modules: the project's first, then each installed plugin package's."""
    project = {PROJECT_ROOT / "worker.py"}
    project.update(p for d in _PROJECT_PACKAGES for p in (PROJECT_ROOT / d).rglob("*.py"))
    # Not this module: it makes clients only to read botocore's models.
    groups = [sorted(project - {Path(__file__).resolve()})]
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        spec = importlib.util.find_spec(entry.module.split(".")[0])
        for location in (spec.submodule_search_locations or []) if spec else []:
            files = sorted(Path(location).resolve().rglob("*.py"))
            if files and not project.issuperset(files) and files not in groups:
                groups.append(files)
    return groups


def _shown(path: Path) -> Path:
    return path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path


@functools.cache
def _actions(service: str) -> dict[str, str]:
    """`service`'s client methods -> IAM actions, from botocore's bundled model: the client is
    made offline (a dummy region and key) and sends nothing. Paginator names are method names,
    so ``get_paginator("list_roles")`` counts through its literal."""
    client = botocore.session.get_session().create_client(
        service, region_name="us-east-1", aws_access_key_id="scan", aws_secret_access_key="scan"
    )
    # The signing name is the service's prefix in IAM actions (CloudWatch's is "monitoring"),
    # but for a few.
    prefix = _ACTION_PREFIXES.get(service, client.meta.service_model.signing_name)
    mapping = client.meta.method_to_api_mapping.items()
    return {method: f"{prefix}:{api}" for method, api in mapping} | _LOCAL_ACTIONS.get(service, {})


def worker_calls(extra_modules: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Every IAM action the worker's code may call -> where it is named (``path:line``).

    A literal counts for every service it names a method of, among the clients made in its own
    part: the project's, or its plugin's and the project's (a plugin may use the core's clients,
    never the core a plugin's). `extra_modules` (name -> source) count as part of the project.
    """
    found: dict[str, set[str]] = {}
    names: dict[str, set[str]]
    core: set[str] = set()
    for index, files in enumerate(_worker_files()):
        sources = [(str(_shown(file)), file.read_text()) for file in files]
        if index == 0:
            sources += [(f"<{name}>", source) for name, source in (extra_modules or {}).items()]
        services, names = set(core), {}
        for path, source in sources:
            for node in ast.walk(ast.parse(source, filename=path)):
                match node:
                    case ast.Call(
                        func=ast.Attribute(attr="client" | "create_client"),
                        args=[ast.Constant(value=str(service)), *_],
                    ):
                        services.add(service)
                    case ast.Constant(value=str(name)) | ast.Attribute(attr=name):
                        names.setdefault(name, set()).add(f"{path}:{node.lineno}")
        if "get_waiter" in names:
            raise PolicyError(f"{min(names['get_waiter'])}: waiters are not scanned; add them.")
        if index == 0:
            core = services
        for service in sorted(services):
            for method, action in _actions(service).items():
                found.setdefault(action, set()).update(names.get(method, ()))
    return {action: sorted(where) for action, where in sorted(found.items()) if where}
