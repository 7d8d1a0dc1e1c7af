"""IAM's decision on a request, for the parts of identity policies idp generates, and a recorder
of the requests real clients make, each with the resource and the tags IAM would decide on.

moto's own enforcement (support/moto.py moto_auth) matches every request against resource "*"
and cannot evaluate tag conditions, so it cannot check a policy scoped to resources: tests
evaluate what the recorder saw with `allowed` instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.client import BaseClient
from botocore.exceptions import ClientError
from support.moto import MOTO_ACCOUNT_ID


@dataclass(frozen=True)
class Request:
    """What IAM authorizes: an action on a resource, with the condition keys it knows."""

    action: str
    resource: str
    context: Mapping[str, str] = field(default_factory=dict)


def _wildcard(pattern: str, value: str, *, case_sensitive: bool) -> bool:
    """IAM's wildcards: * any run of characters (slashes included), ? any one."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, 0 if case_sensitive else re.IGNORECASE) is not None


def _listed(value: str | list[str]) -> list[str]:
    return value if isinstance(value, list) else [value]


def _conditions_hold(
    condition: Mapping[str, Mapping[str, Any]], context: Mapping[str, str]
) -> bool:
    for operator, keys in condition.items():
        for key, wanted in keys.items():
            value = context.get(key)
            if value is None:
                return False  # IAM: a key missing from the request fails the condition
            if operator == "StringEquals":
                holds = value in _listed(wanted)
            elif operator in ("StringLike", "ArnLike"):
                # ArnLike matches each of an ARN's colon-separated parts on its own; the
                # patterns idp writes have a * only in a part that holds no colon.
                holds = any(_wildcard(w, value, case_sensitive=True) for w in _listed(wanted))
            else:
                raise ValueError(f"condition operator {operator} is not evaluated here")
            if not holds:
                return False
    return True


def allowed(policy: Mapping[str, Any], request: Request) -> bool:
    """Whether the identity policy allows the request: an Allow statement matches its action
    (case-insensitively), its resource and its conditions, and no Deny statement does."""
    allow = False
    for statement in policy["Statement"]:
        if not any(
            _wildcard(a, request.action, case_sensitive=False) for a in _listed(statement["Action"])
        ):
            continue
        if not any(
            _wildcard(r, request.resource, case_sensitive=True)
            for r in _listed(statement["Resource"])
        ):
            continue
        if not _conditions_hold(statement.get("Condition", {}), request.context):
            continue
        if statement["Effect"] == "Deny":
            return False
        allow = True
    return allow


def ungranted(policy: Mapping[str, Any], requests: Iterable[Request]) -> list[Request]:
    """The requests the policy does not allow."""
    return [request for request in requests if not allowed(policy, request)]


def tag_context(kind: str, tags: Mapping[str, str]) -> dict[str, str]:
    """Tags as IAM's condition keys: kind "Request" (given with the call) or "Resource"."""
    return {f"aws:{kind}Tag/{key}": value for key, value in tags.items()}


@dataclass(frozen=True)
class Recorded:
    method: str  # the client method, e.g. create_repository
    request: Request


class AwsCallRecorder:
    """Records every API call made through `clients`, with the resource IAM authorizes it on
    and the tags its conditions see: those given with the call and those the resource has at
    that moment, read through separate clients (never recorded) of the same endpoint.

    Hooks botocore's ``before-parameter-build`` event, which fires once per call (SDK retries
    are not counted again) with the parameters as the caller gave them; support/awscalls.py's
    CallCounter hooks ``before-call``, whose parameters are already serialized.
    """

    def __init__(self, *clients: BaseClient, account: str = MOTO_ACCOUNT_ID) -> None:
        self._clients = clients
        self._account = account
        self._hook = f"idp-call-recorder-{id(self)}"
        self._readers: dict[str, BaseClient] = {}
        self.calls: list[Recorded] = []
        for client in clients:
            service = client.meta.service_model.service_name
            self._readers[service] = boto3.client(
                service, region_name=client.meta.region_name, endpoint_url=client.meta.endpoint_url
            )
            client.meta.events.register("before-parameter-build", self._record, self._hook)

    @property
    def requests(self) -> list[Request]:
        return [call.request for call in self.calls]

    def _record(self, params: Mapping[str, Any], model: Any, **_: Any) -> None:
        service = model.service_model
        region = self._readers[service.service_name].meta.region_name
        resource, tags = self._resource(service.service_name, region, params)
        given = {t["Key"]: t.get("Value", "") for t in params.get("tags", params.get("Tags", []))}
        context = tag_context("Request", given) | tag_context("Resource", tags)
        if "PolicyArn" in params:
            context["iam:PolicyARN"] = params["PolicyArn"]
        action = f"{service.signing_name}:{model.name}"
        self.calls.append(Recorded(model.name, Request(action, resource, context)))

    def _resource(
        self, service: str, region: str, params: Mapping[str, Any]
    ) -> tuple[str, dict[str, str]]:
        reader = self._readers[service]
        if service == "ecr":
            name = params.get("repositoryName") or next(iter(params.get("repositoryNames", [])), "")
            name = name or str(params.get("resourceArn", "")).partition(":repository/")[2]
            arn = f"arn:aws:ecr:{region}:{self._account}:repository/{name}"
            listing = _or_none(reader.list_tags_for_resource, resourceArn=arn)
            return arn, {t["Key"]: t["Value"] for t in (listing or {}).get("tags", [])}
        if service == "iam" and "RoleName" in params:
            name = params["RoleName"]
            listing = _or_none(reader.list_role_tags, RoleName=name)
            tags = {t["Key"]: t["Value"] for t in (listing or {}).get("Tags", [])}
            return f"arn:aws:iam::{self._account}:role/{name}", tags
        if service == "secretsmanager":
            name = params.get("SecretId") or params["Name"]
            described = _or_none(reader.describe_secret, SecretId=name)
            if described is None:
                return f"arn:aws:secretsmanager:{region}:{self._account}:secret:{name}", {}
            return described["ARN"], {t["Key"]: t["Value"] for t in described.get("Tags", [])}
        raise AssertionError(f"no resource known for a {service} call with {sorted(params)}")

    def close(self) -> None:
        for client in self._clients:
            client.meta.events.unregister("before-parameter-build", unique_id=self._hook)

    def __enter__(self) -> AwsCallRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _or_none(read: Any, **params: Any) -> dict[str, Any] | None:
    try:
        return read(**params)
    except ClientError as error:
        if error.response["Error"]["Code"] in (
            "RepositoryNotFoundException",
            "NoSuchEntity",
            "ResourceNotFoundException",
        ):
            return None
        raise
