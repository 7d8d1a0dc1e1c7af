"""Rendering the Gateway API objects of one API hostname (an `ApiAggregator`), and checking them.

Every workload target on the hostname becomes its own HTTPRoute in the workload's namespace, so a
team can read, and the Gateway reports status on, exactly what it owns. A backend Service in
another namespace needs a ReferenceGrant there, or the Gateway refuses the reference. The request
body limit is not part of Gateway API, so it is rendered as the implementation's own policy.

The HTTPRoute CRD enforces part of its rules with CEL (`x-kubernetes-validations`), which only an
API server evaluates; the state store is read by GitOps long after we wrote it, so
`httproute_problems` checks those rules here and nothing invalid is ever committed.
"""

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from idp.errors import PermanentError
from idp.manifests import (
    DIRECTORY,
    MANAGED_BY,
    SERVICE_ACCOUNT_FILE,
    SYSTEM_LABEL,
    WORKLOAD_LABEL,
    labelled_owner,
    object_subject,
    owner_record,
    resource_directory,
)
from idp.models import ApiAggregator
from idp.routes import RouteTarget
from idp.statechange import Claim
from idp.yamltext import dump, load

ENVOY_GATEWAY = "envoy-gateway"
NGINX_GATEWAY_FABRIC = "nginx-gateway-fabric"
IMPLEMENTATIONS = (ENVOY_GATEWAY, NGINX_GATEWAY_FABRIC)

GATEWAY_GROUP = "gateway.networking.k8s.io"
HTTPROUTE_API_VERSION = f"{GATEWAY_GROUP}/v1"
# The v1.6.1 CRD serves v1 too, but stores v1beta1: that version is written back unconverted.
REFERENCEGRANT_API_VERSION = f"{GATEWAY_GROUP}/v1beta1"
BACKENDTRAFFICPOLICY_API_VERSION = "gateway.envoyproxy.io/v1alpha1"
CLIENTSETTINGSPOLICY_API_VERSION = "gateway.nginx.org/v1alpha1"

AGGREGATOR_LABEL = "idp.dev/aggregator"
AGGREGATOR_REMEDY = "rename this ApiAggregator"

MAX_NAME = 63
MAX_RULES = 16
MAX_MATCHES = 128
MAX_PATH = 1024

_QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi)?$")
_QUANTITY_SUFFIXES = ("", "Ki", "Mi", "Gi")
_NGINX_SUFFIXES = ("", "k", "m", "g")
_NGINX_MAX_DIGITS = 9999

_HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_PATH_CHARACTERS = re.compile(r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+$")


def aggregator_directory(base: str, aggregator: ApiAggregator) -> str:
    spec = aggregator.spec
    return resource_directory(base, spec.destination, spec.namespace, _directory_name(aggregator))


def _directory_name(aggregator: ApiAggregator) -> str:
    return f"api-{aggregator.metadata.name}"


def aggregator_claims(
    base: str, aggregator: ApiAggregator, files: Mapping[str, str]
) -> tuple[Claim, ...]:
    """The names a write of the rendered `files` holds: the aggregator's directory and every
    object in them.

    Objects are named from the aggregator's and the workloads' names (`<workload>-<aggregator>
    [-<index>]`, `api-<aggregator>-...`), so two aggregators can render one name (`web-api-1`
    is target 1 of web on `api` and target 0 of web on `api-1`) in one namespace, where the
    second would silently replace the first. The one written second is refused; renaming
    objects instead would rewrite the routes of every running aggregator.
    """
    spec = aggregator.spec
    directory = _directory_name(aggregator)
    here = object_subject(spec.destination, spec.namespace, directory)
    claims = [
        Claim(
            owner_record(base, spec.destination, spec.namespace, DIRECTORY, directory),
            here,
            AGGREGATOR_REMEDY,
            record=True,
        ),
        # A workload whose name is the directory's.
        Claim(
            f"{aggregator_directory(base, aggregator)}/{SERVICE_ACCOUNT_FILE}",
            here,
            AGGREGATOR_REMEDY,
            labelled_owner,
        ),
    ]
    for text in files.values():
        manifest = load(text)
        kind, namespace, name = (
            manifest["kind"],
            manifest["metadata"]["namespace"],
            manifest["metadata"]["name"],
        )
        claims.append(
            Claim(
                owner_record(base, spec.destination, namespace, kind, name),
                object_subject(spec.destination, namespace, name, kind),
                AGGREGATOR_REMEDY,
                record=True,
            )
        )
    return tuple(claims)


def bounded_name(name: str, limit: int = MAX_NAME) -> str:
    """`name` if it fits, else a prefix of it plus a hash of all of it, so it stays unique."""
    if len(name) <= limit:
        return name
    suffix = hashlib.sha256(name.encode()).hexdigest()[:8]
    # A prefix cut in the middle of "a-b" may end with "-", which a DNS-1123 label must not.
    return f"{name[: limit - len(suffix) - 1].rstrip('-')}-{suffix}"


def route_name(workload: str, aggregator: str, index: int) -> str:
    name = f"{workload}-{aggregator}" + (f"-{index}" if index > 0 else "")
    return bounded_name(name)


def _route_labels(aggregator: ApiAggregator, target: RouteTarget) -> dict[str, str]:
    return {
        **MANAGED_BY,
        SYSTEM_LABEL: target.system,
        WORKLOAD_LABEL: target.workload,
        AGGREGATOR_LABEL: aggregator.metadata.name,
    }


def _shared_labels(aggregator: ApiAggregator) -> dict[str, str]:
    return {**MANAGED_BY, AGGREGATOR_LABEL: aggregator.metadata.name}


def _httproute(aggregator: ApiAggregator, target: RouteTarget) -> dict[str, Any]:
    parent: dict[str, Any] = {
        "group": GATEWAY_GROUP,
        "kind": "Gateway",
        "name": aggregator.spec.gateway.name,
        "namespace": aggregator.spec.gateway.namespace,
    }
    if aggregator.spec.gateway.section_name:
        parent["sectionName"] = aggregator.spec.gateway.section_name
    backend: dict[str, Any] = {
        "group": "",
        "kind": "Service",
        "name": target.service.name,
        "port": target.service.port,
    }
    if target.service_namespace != target.namespace:
        backend["namespace"] = target.service_namespace
    prefix = target.rewrite_prefix or aggregator.spec.rewrite_prefix
    rules = []
    # One rule per path: CEL allows ReplacePrefixMatch only in a rule with exactly one
    # PathPrefix match, and the rule index then names the path in status and in our messages.
    for path in target.paths:
        rule: dict[str, Any] = {
            "matches": [{"path": {"type": "PathPrefix", "value": path}}],
            "backendRefs": [dict(backend)],
        }
        if prefix:
            rule["filters"] = [
                {
                    "type": "URLRewrite",
                    "urlRewrite": {
                        "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": prefix}
                    },
                }
            ]
        rules.append(rule)
    return {
        "apiVersion": HTTPROUTE_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": {
            "name": route_name(target.workload, aggregator.metadata.name, target.index),
            "namespace": target.namespace,
            "labels": _route_labels(aggregator, target),
        },
        "spec": {
            "hostnames": [aggregator.spec.hostname],
            "parentRefs": [parent],
            "rules": rules,
        },
    }


def _reference_grant(
    aggregator: ApiAggregator, route_namespace: str, service_namespace: str, service: str
) -> dict[str, Any]:
    # The aggregator's name is part of the grant's so that two hostnames routing to one Service
    # each own their grant, and removing one hostname never breaks the other.
    name = bounded_name(f"api-{aggregator.metadata.name}-{route_namespace}-{service}")
    return {
        "apiVersion": REFERENCEGRANT_API_VERSION,
        "kind": "ReferenceGrant",
        "metadata": {
            "name": name,
            "namespace": service_namespace,
            "labels": _shared_labels(aggregator),
        },
        "spec": {
            "from": [{"group": GATEWAY_GROUP, "kind": "HTTPRoute", "namespace": route_namespace}],
            "to": [{"group": "", "kind": "Service", "name": service}],
        },
    }


def _parse_size(quantity: str) -> tuple[int, int]:
    """(number, power of 1024) of a maxRequestBodySize; the model's pattern already holds."""
    match = _QUANTITY.match(quantity)
    if not match or int(match.group(1)) == 0:
        # Zero means "no limit" to NGINX and is refused by Envoy Gateway's CRD: whatever the
        # author meant, one of the two would do something else.
        raise PermanentError(
            f"maxRequestBodySize must be a positive number of bytes, optionally with Ki, Mi or "
            f"Gi (such as 10Mi); got {quantity!r}",
            reason="InvalidMaxRequestBodySize",
        )
    return int(match.group(1)), _QUANTITY_SUFFIXES.index(match.group(2) or "")


def envoy_limit(quantity: str) -> str:
    """The quantity for `requestBuffer.limit`; leading zeros dropped, which its pattern forbids."""
    number, power = _parse_size(quantity)
    return f"{number}{_QUANTITY_SUFFIXES[power]}"


def nginx_size(quantity: str) -> str:
    """A Kubernetes quantity in NGINX size syntax (`^\\d{1,4}(k|m|g)?$`), never smaller.

    NGINX allows at most four digits, so a larger number moves to the next unit up, rounded up:
    the limit may grow by less than one unit of the new size, but a body the author allowed is
    never refused (`10000` bytes becomes `10k`, `10241Ki` becomes `11m`).
    """
    number, power = _parse_size(quantity)
    while number > _NGINX_MAX_DIGITS:
        if power == len(_NGINX_SUFFIXES) - 1:
            raise PermanentError(
                f"maxRequestBodySize {quantity} is larger than NGINX can express "
                f"({_NGINX_MAX_DIGITS}g)",
                reason="InvalidMaxRequestBodySize",
            )
        number, power = -(-number // 1024), power + 1
    return f"{number}{_NGINX_SUFFIXES[power]}"


def _backend_traffic_policy(
    aggregator: ApiAggregator, namespace: str, routes: Iterable[str], limit: str
) -> dict[str, Any]:
    return {
        "apiVersion": BACKENDTRAFFICPOLICY_API_VERSION,
        "kind": "BackendTrafficPolicy",
        "metadata": {
            "name": f"api-{aggregator.metadata.name}",
            "namespace": namespace,
            "labels": _shared_labels(aggregator),
        },
        "spec": {
            # A policy may only target objects in its own namespace, hence one per namespace.
            "targetRefs": [
                {"group": GATEWAY_GROUP, "kind": "HTTPRoute", "name": name}
                for name in sorted(routes)
            ],
            "requestBuffer": {"limit": limit},
        },
    }


def _client_settings_policy(route: Mapping[str, Any], size: str) -> dict[str, Any]:
    metadata = route["metadata"]
    return {
        "apiVersion": CLIENTSETTINGSPOLICY_API_VERSION,
        "kind": "ClientSettingsPolicy",
        "metadata": {
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "labels": dict(metadata["labels"]),
        },
        "spec": {
            # NGF's policy has a single targetRef, so it takes one policy per HTTPRoute.
            "targetRef": {"group": GATEWAY_GROUP, "kind": "HTTPRoute", "name": metadata["name"]},
            "body": {"maxSize": size},
        },
    }


def render_aggregator(
    aggregator: ApiAggregator,
    targets: Sequence[RouteTarget],
    implementation: str = ENVOY_GATEWAY,
) -> dict[str, str]:
    """File name → content for everything the aggregator keeps in its state-store directory.

    The result depends only on the set of targets, not their order, so a worker that learns of
    the targets in another order commits nothing.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown gateway implementation {implementation!r}; allowed: "
            + ", ".join(IMPLEMENTATIONS)
        )
    if not targets:
        return {}
    ordered = sorted(targets, key=lambda t: (t.namespace, t.workload, t.index, t.system))
    objects: dict[str, dict[str, Any]] = {}
    owners: dict[str, str] = {}

    def add(file: str, obj: dict[str, Any], owner: str) -> None:
        # Two objects in one file would silently drop one of them from the cluster.
        if file in objects:
            raise PermanentError(
                f"ApiAggregator {aggregator.metadata.name}: {owner} and {owners[file]} would "
                f"both be written to {file}; rename one of them",
                reason="NameConflict",
            )
        objects[file] = obj
        owners[file] = owner

    routes = []
    problems = []
    for target in ordered:
        route = _httproute(aggregator, target)
        problems.extend(httproute_problems(route))
        routes.append(route)
        metadata = route["metadata"]
        add(
            f"httproute-{metadata['namespace']}-{metadata['name']}.yaml",
            route,
            f"workload {target.holder} (target {target.index})",
        )
    if problems:
        raise PermanentError(
            f"ApiAggregator {aggregator.metadata.name} would render routes an API server "
            "would refuse: " + " ".join(problems),
            reason="InvalidRoute",
        )

    grants = sorted(
        {
            (t.namespace, t.service_namespace, t.service.name)
            for t in ordered
            if t.service_namespace != t.namespace
        }
    )
    for route_namespace, service_namespace, service in grants:
        grant = _reference_grant(aggregator, route_namespace, service_namespace, service)
        add(
            f"referencegrant-{service_namespace}-{grant['metadata']['name']}.yaml",
            grant,
            f"the grant for {route_namespace} to Service {service_namespace}/{service}",
        )

    size = aggregator.spec.max_request_body_size
    if size and implementation == ENVOY_GATEWAY:
        limit = envoy_limit(size)
        by_namespace: dict[str, list[str]] = {}
        for route in routes:
            by_namespace.setdefault(route["metadata"]["namespace"], []).append(
                route["metadata"]["name"]
            )
        for namespace, names in sorted(by_namespace.items()):
            add(
                f"backendtrafficpolicy-{namespace}.yaml",
                _backend_traffic_policy(aggregator, namespace, names, limit),
                f"the BackendTrafficPolicy of {namespace}",
            )
    elif size and implementation == NGINX_GATEWAY_FABRIC:
        max_size = nginx_size(size)
        for route in routes:
            metadata = route["metadata"]
            add(
                f"clientsettingspolicy-{metadata['namespace']}-{metadata['name']}.yaml",
                _client_settings_policy(route, max_size),
                f"the ClientSettingsPolicy of {metadata['namespace']}/{metadata['name']}",
            )

    return {file: dump(obj) for file, obj in sorted(objects.items())}


def _path_problems(value: Any) -> list[str]:
    """What is wrong with an Exact or PathPrefix value, one phrase per CEL rule it breaks."""
    if not isinstance(value, str):
        return [f"must be a string; got {value!r}"]
    found = []
    if not value.startswith("/"):
        found.append("must start with '/'")
    for bad in ("//", "/./", "/../", "#"):
        if bad in value:
            found.append(f"must not contain {bad!r}")
    if "%2f" in value.lower():
        found.append("must not contain '%2f' or '%2F' (an encoded '/')")
    if value.endswith("/.") or value.endswith("/.."):
        found.append("must not end with '/.' or '/..'")
    if len(value) > MAX_PATH:
        found.append(f"must be at most {MAX_PATH} characters (it has {len(value)})")
    # '#' breaks the character rule too; it has been named already, once is enough.
    unnamed = value.replace("#", "")
    if unnamed and not _PATH_CHARACTERS.match(unnamed):
        found.append("must only contain letters, digits, -/._~!$&'()*+,;=:@ and %-escapes (%XX)")
    return found


def _hostname_problem(hostname: Any) -> str | None:
    if not isinstance(hostname, str):
        return f"must be a string; got {hostname!r}"
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        pass
    else:
        return f"{hostname!r} is an IP address; Gateway API allows only DNS hostnames"
    if len(hostname) > 253 or not _HOSTNAME.match(hostname):
        return (
            f"{hostname!r} is not a hostname: lowercase DNS labels of letters, digits and '-', "
            "at most 253 characters, '*' only as the whole first label"
        )
    return None


def _matches(rule: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    # The API server fills in defaults before it evaluates CEL: no matches means "PathPrefix /".
    if "matches" not in rule:
        return [{"path": {"type": "PathPrefix", "value": "/"}}]
    return list(rule["matches"] or [])


def _path_of(match: Mapping[str, Any]) -> tuple[str, Any]:
    path = match.get("path") or {"type": "PathPrefix", "value": "/"}
    return path.get("type", "PathPrefix"), path.get("value", "/")


def _prefix_rewrite(rule: Mapping[str, Any]) -> bool:
    for entry in rule.get("filters") or []:
        path = (entry.get("urlRewrite") or {}).get("path") or {}
        if path.get("type") == "ReplacePrefixMatch" and "replacePrefixMatch" in path:
            return True
    return False


def httproute_problems(route: Mapping[str, Any]) -> list[str]:
    """The HTTPRoute CRD's CEL rules (and the hostname rules) that `route` breaks, one sentence
    each, naming the route and the field; empty when an API server would accept it.

    Only the rules our renderer could break are checked; jsonschema covers the rest of the schema.
    """
    metadata = route.get("metadata") or {}
    who = f"HTTPRoute {metadata.get('namespace', '?')}/{metadata.get('name', '?')}"
    spec = route.get("spec") or {}
    problems = []

    for i, hostname in enumerate(spec.get("hostnames") or []):
        problem = _hostname_problem(hostname)
        if problem:
            problems.append(f"{who}: spec.hostnames[{i}]: {problem}.")

    rules = list(spec.get("rules") or [])
    if len(rules) > MAX_RULES:
        problems.append(
            f"{who}: spec.rules: has {len(rules)} rules; Gateway API allows at most {MAX_RULES}."
        )
    total = sum(len(_matches(rule)) for rule in rules)
    if total > MAX_MATCHES:
        problems.append(
            f"{who}: spec.rules: has {total} matches in total; Gateway API allows at most "
            f"{MAX_MATCHES} across all rules."
        )

    for r, rule in enumerate(rules):
        matches = _matches(rule)
        for m, match in enumerate(matches):
            kind, value = _path_of(match)
            if kind not in ("Exact", "PathPrefix"):
                continue
            for problem in _path_problems(value):
                problems.append(
                    f"{who}: spec.rules[{r}].matches[{m}].path.value: {value!r} {problem}."
                )
        if _prefix_rewrite(rule):
            kinds = [_path_of(match)[0] for match in matches]
            if kinds != ["PathPrefix"]:
                found = ", ".join(kinds) if kinds else "none"
                problems.append(
                    f"{who}: spec.rules[{r}].matches: a URLRewrite filter with "
                    "ReplacePrefixMatch needs exactly one PathPrefix match in its rule; "
                    f"found {len(kinds)} ({found})."
                )
        for b, backend in enumerate(rule.get("backendRefs") or []):
            group, kind = backend.get("group", ""), backend.get("kind", "Service")
            if group == "" and kind == "Service" and "port" not in backend:
                problems.append(
                    f"{who}: spec.rules[{r}].backendRefs[{b}].port: a Service backend needs a "
                    f"port; {backend.get('name', '?')} has none."
                )
    return problems
