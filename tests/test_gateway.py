"""idp/gateway.py: the Gateway API objects of one API hostname, and the CEL rules checked offline.

Every rendered HTTPRoute, ReferenceGrant and BackendTrafficPolicy is validated against the
upstream CRD schema from the shared conformance folder (those tests skip, naming the file, when it
is absent). jsonschema ignores the `x-kubernetes-*` keys and, without a format checker, the
`int32`/`int64`/`date-time` formats; int-or-string fields carry an explicit `anyOf`, so they are
still checked. CEL rules are not evaluated by jsonschema: `httproute_problems` covers them and is
tested on hand-made bad routes. NGINX Gateway Fabric's ClientSettingsPolicy CRD is not in the
conformance folder, so its objects are checked against the documented `maxSize` pattern only.
No servers: everything here is pure.
"""

import copy
import itertools
import re
from functools import cache
from typing import Any

import jsonschema
import pytest
import yaml
from support.conformance import load_crd_schema

from idp.errors import PermanentError
from idp.gateway import (
    aggregator_claims,
    aggregator_directory,
    envoy_limit,
    httproute_problems,
    nginx_size,
    render_aggregator,
)
from idp.models import ApiAggregator, ServiceRef
from idp.names import dns1123_label
from idp.routes import RouteTarget

CRDS = {
    "HTTPRoute": ("gateway-api/httproutes.yaml", "v1"),
    # v1beta1 is the served and stored version of ReferenceGrant in Gateway API v1.6.1.
    "ReferenceGrant": ("gateway-api/referencegrants.yaml", "v1beta1"),
    "BackendTrafficPolicy": ("envoy-gateway/backendtrafficpolicies.yaml", "v1alpha1"),
}
# From NGINX Gateway Fabric's API reference (Size); its CRD is not in the conformance folder.
NGINX_SIZE = re.compile(r"^\d{1,4}(k|m|g)?$")


@cache
def _validator(kind: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(load_crd_schema(*CRDS[kind]))


def fits_crd(obj: dict[str, Any]) -> None:
    """Raise if the whole object (apiVersion, kind, metadata, spec) breaks its CRD's schema."""
    _validator(obj["kind"]).validate(obj)


def aggregator(
    name: str = "public",
    hostname: str = "api.example.com",
    section_name: str | None = None,
    **spec: Any,
) -> ApiAggregator:
    gateway: dict[str, Any] = {"name": "edge", "namespace": "gateways"}
    if section_name:
        gateway["sectionName"] = section_name
    return ApiAggregator.model_validate(
        {
            "metadata": {"name": name},
            "spec": {
                "hostname": hostname,
                "gateway": gateway,
                "destination": "dev",
                "namespace": "platform",
                **spec,
            },
        }
    )


def target(
    workload: str = "orders",
    namespace: str = "shop",
    index: int = 0,
    paths: tuple[str, ...] = ("/orders",),
    service: str = "orders",
    service_namespace: str | None = None,
    port: int = 8080,
    rewrite_prefix: str | None = None,
    system: str = "shop",
) -> RouteTarget:
    return RouteTarget(
        system=system,
        workload=workload,
        namespace=namespace,
        index=index,
        paths=list(paths),
        service=ServiceRef(name=service, namespace=service_namespace, port=port),
        rewrite_prefix=rewrite_prefix,
    )


def objects(files: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {name: yaml.safe_load(content) for name, content in files.items()}


def of_kind(files: dict[str, str], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects(files).values() if obj["kind"] == kind]


def a_route(rules: list[dict[str, Any]], hostnames: list[str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "orders-public", "namespace": "shop"},
        "spec": {
            "hostnames": hostnames if hostnames is not None else ["api.example.com"],
            "parentRefs": [{"name": "edge", "namespace": "gateways"}],
            "rules": rules,
        },
    }


def a_rule(*paths: str, **extra: Any) -> dict[str, Any]:
    return {
        "matches": [{"path": {"type": "PathPrefix", "value": p}} for p in paths],
        "backendRefs": [{"group": "", "kind": "Service", "name": "orders", "port": 8080}],
        **extra,
    }


REWRITE = {
    "type": "URLRewrite",
    "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}},
}

MIXED = [
    target("orders", "shop", 0, ("/orders", "/v1/orders"), service_namespace="backend"),
    target("orders", "shop", 1, ("/returns",), service="returns"),
    target("cart", "shop", 0, ("/cart",), service="cart", service_namespace="backend"),
    target("search", "catalog", 0, ("/search",), service="search", rewrite_prefix="/api"),
]


# --- where it goes --------------------------------------------------------------------------


def test_directory_sits_beside_the_workloads_of_its_destination_and_namespace() -> None:
    assert aggregator_directory("clusters", aggregator()) == "clusters/dev/platform/api-public"
    assert aggregator_directory("", aggregator()) == "dev/platform/api-public"


# --- what is rendered -----------------------------------------------------------------------


def test_every_rendered_object_fits_its_crd() -> None:
    files = render_aggregator(
        aggregator(section_name="https", maxRequestBodySize="10Mi", rewritePrefix="/"), MIXED
    )
    assert sorted(files) == [
        "backendtrafficpolicy-catalog.yaml",
        "backendtrafficpolicy-shop.yaml",
        "httproute-catalog-search-public.yaml",
        "httproute-shop-cart-public.yaml",
        "httproute-shop-orders-public-1.yaml",
        "httproute-shop-orders-public.yaml",
        "referencegrant-backend-api-public-shop-cart.yaml",
        "referencegrant-backend-api-public-shop-orders.yaml",
    ]
    for obj in objects(files).values():
        fits_crd(obj)
        dns1123_label(obj["metadata"]["namespace"])
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "idp"
        assert obj["metadata"]["labels"]["idp.dev/aggregator"] == "public"


def test_the_crd_check_has_teeth() -> None:
    # Guards the test above: a schema that ignored everything would also "pass" every object.
    files = render_aggregator(aggregator(maxRequestBodySize="10Mi"), [target()])
    route = objects(files)["httproute-shop-orders-public.yaml"]
    route["spec"]["hostnames"] = ["API.example.com"]
    with pytest.raises(jsonschema.ValidationError):
        fits_crd(route)
    policy = objects(files)["backendtrafficpolicy-shop.yaml"]
    policy["spec"]["requestBuffer"]["limit"] = "0"
    with pytest.raises(jsonschema.ValidationError):
        fits_crd(policy)


def test_httproute_carries_hostname_gateway_backend_and_ownership() -> None:
    files = render_aggregator(aggregator(), [target(paths=("/orders", "/v1/orders"))])
    assert list(files) == ["httproute-shop-orders-public.yaml"]
    route = yaml.safe_load(files["httproute-shop-orders-public.yaml"])
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["metadata"] == {
        "name": "orders-public",
        "namespace": "shop",
        "labels": {
            "app.kubernetes.io/managed-by": "idp",
            "idp.dev/system": "shop",
            "idp.dev/workload": "orders",
            "idp.dev/aggregator": "public",
        },
    }
    backend = {"group": "", "kind": "Service", "name": "orders", "port": 8080}
    assert route["spec"] == {
        "hostnames": ["api.example.com"],
        "parentRefs": [
            {
                "group": "gateway.networking.k8s.io",
                "kind": "Gateway",
                "name": "edge",
                "namespace": "gateways",
            }
        ],
        "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": p}}], "backendRefs": [backend]}
            for p in ("/orders", "/v1/orders")
        ],
    }
    assert httproute_problems(route) == []


def test_output_is_byte_identical_whatever_order_the_targets_arrive_in() -> None:
    spec = aggregator(maxRequestBodySize="1Gi", rewritePrefix="/")
    expected = render_aggregator(spec, MIXED)
    for order in itertools.permutations(MIXED):
        assert render_aggregator(spec, list(order)) == expected
    nginx = render_aggregator(spec, MIXED, "nginx-gateway-fabric")
    assert render_aggregator(spec, MIXED[::-1], "nginx-gateway-fabric") == nginx


def test_cross_namespace_backend_gets_exactly_one_grant_in_the_service_namespace() -> None:
    # Two workloads of one namespace reaching one Service elsewhere share one grant.
    targets = [
        target("orders", "shop", paths=("/orders",), service="ledger", service_namespace="money"),
        target("refunds", "shop", paths=("/refunds",), service="ledger", service_namespace="money"),
    ]
    grants = of_kind(render_aggregator(aggregator(), targets), "ReferenceGrant")
    assert len(grants) == 1
    grant = grants[0]
    assert grant["apiVersion"] == "gateway.networking.k8s.io/v1beta1"
    assert grant["metadata"]["namespace"] == "money"
    assert grant["spec"] == {
        "from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "shop"}],
        "to": [{"group": "", "kind": "Service", "name": "ledger"}],
    }
    for route in of_kind(render_aggregator(aggregator(), targets), "HTTPRoute"):
        assert route["spec"]["rules"][0]["backendRefs"][0]["namespace"] == "money"
    fits_crd(grant)


def test_grants_are_per_route_namespace_and_service() -> None:
    targets = [
        target("orders", "shop", service="ledger", service_namespace="money"),
        target(
            "billing", "finance", paths=("/billing",), service="ledger", service_namespace="money"
        ),
        target("refunds", "shop", paths=("/refunds",), service="audit", service_namespace="money"),
    ]
    grants = of_kind(render_aggregator(aggregator(), targets), "ReferenceGrant")
    pairs = sorted((g["spec"]["from"][0]["namespace"], g["spec"]["to"][0]["name"]) for g in grants)
    assert pairs == [("finance", "ledger"), ("shop", "audit"), ("shop", "ledger")]
    assert len({g["metadata"]["name"] for g in grants}) == 3


def test_same_namespace_backend_needs_no_grant_and_names_no_namespace() -> None:
    for explicit in (None, "shop"):
        files = render_aggregator(aggregator(), [target(service_namespace=explicit)])
        assert of_kind(files, "ReferenceGrant") == []
        (route,) = of_kind(files, "HTTPRoute")
        assert "namespace" not in route["spec"]["rules"][0]["backendRefs"][0]


def test_rewrite_puts_each_path_in_its_own_rule_with_one_pathprefix_match() -> None:
    targets = [
        target("orders", paths=("/orders", "/v1/orders", "/v2/orders"), rewrite_prefix="/api"),
        target("cart", paths=("/cart",), service="cart"),
    ]
    files = render_aggregator(aggregator(rewritePrefix="/"), targets)
    routes = {r["metadata"]["name"]: r for r in of_kind(files, "HTTPRoute")}
    orders, cart = routes["orders-public"], routes["cart-public"]
    assert [rule["matches"] for rule in orders["spec"]["rules"]] == [
        [{"path": {"type": "PathPrefix", "value": p}}]
        for p in ("/orders", "/v1/orders", "/v2/orders")
    ]
    # The target's own prefix wins over the aggregator's default.
    for rule in orders["spec"]["rules"]:
        assert rule["filters"] == [
            {
                "type": "URLRewrite",
                "urlRewrite": {
                    "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/api"}
                },
            }
        ]
    assert cart["spec"]["rules"][0]["filters"][0]["urlRewrite"]["path"]["replacePrefixMatch"] == "/"
    for route in (orders, cart):
        fits_crd(route)
        assert httproute_problems(route) == []


def test_no_rewrite_prefix_means_no_filter() -> None:
    (route,) = of_kind(render_aggregator(aggregator(), [target()]), "HTTPRoute")
    assert "filters" not in route["spec"]["rules"][0]


def test_section_name_is_set_only_when_the_aggregator_names_a_listener() -> None:
    (with_section,) = of_kind(
        render_aggregator(aggregator(section_name="https"), [target()]), "HTTPRoute"
    )
    assert with_section["spec"]["parentRefs"][0]["sectionName"] == "https"
    (without,) = of_kind(render_aggregator(aggregator(), [target()]), "HTTPRoute")
    assert "sectionName" not in without["spec"]["parentRefs"][0]
    fits_crd(with_section)


def test_wildcard_hostname_is_rendered_and_accepted() -> None:
    (route,) = of_kind(
        render_aggregator(aggregator(hostname="*.example.com"), [target()]), "HTTPRoute"
    )
    assert route["spec"]["hostnames"] == ["*.example.com"]
    assert httproute_problems(route) == []
    fits_crd(route)


def test_long_names_are_cut_to_a_valid_label_with_a_stable_hash() -> None:
    long_workload, long_aggregator = "w" * 30 + "-" + "x" * 32, "a" * 63
    spec = aggregator(name=long_aggregator, maxRequestBodySize="10Mi")
    targets = [
        target(long_workload, index=i, paths=(f"/p{i}",), service_namespace="backend")
        for i in range(3)
    ]
    files = render_aggregator(spec, targets)
    names = [r["metadata"]["name"] for r in of_kind(files, "HTTPRoute")]
    assert len(set(names)) == 3
    for name in names:
        assert len(name) <= 63 and dns1123_label(name) == name
        assert re.fullmatch(r".+-[0-9a-f]{8}", name)
    assert f"httproute-shop-{names[0]}.yaml" in files
    # The policy points at the routes by the names they really have.
    (policy,) = of_kind(files, "BackendTrafficPolicy")
    assert sorted(ref["name"] for ref in policy["spec"]["targetRefs"]) == sorted(names)
    (grant,) = of_kind(files, "ReferenceGrant")
    assert dns1123_label(grant["metadata"]["name"])
    assert render_aggregator(spec, targets[::-1]) == files
    for obj in objects(files).values():
        fits_crd(obj)


def test_two_workloads_that_would_share_a_file_are_refused_not_silently_merged() -> None:
    targets = [target(system="shop"), target(system="legacy")]
    with pytest.raises(PermanentError) as caught:
        render_aggregator(aggregator(), targets)
    assert caught.value.reason == "NameConflict"
    assert "httproute-shop-orders-public.yaml" in str(caught.value)
    assert "legacy/orders" in str(caught.value) and "shop/orders" in str(caught.value)


# --- request body size ----------------------------------------------------------------------


def test_envoy_gateway_gets_one_backend_traffic_policy_per_route_namespace() -> None:
    files = render_aggregator(aggregator(maxRequestBodySize="512Ki"), MIXED)
    policies = {p["metadata"]["namespace"]: p for p in of_kind(files, "BackendTrafficPolicy")}
    assert set(policies) == {"shop", "catalog"}
    shop = policies["shop"]
    assert shop["apiVersion"] == "gateway.envoyproxy.io/v1alpha1"
    assert shop["metadata"]["name"] == "api-public"
    assert shop["spec"] == {
        "targetRefs": [
            {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": name}
            for name in ("cart-public", "orders-public", "orders-public-1")
        ],
        "requestBuffer": {"limit": "512Ki"},
    }
    assert of_kind(files, "ClientSettingsPolicy") == []
    fits_crd(shop)


@pytest.mark.parametrize(
    ("quantity", "limit"),
    [("10Mi", "10Mi"), ("1Gi", "1Gi"), ("1000", "1000"), ("0010Mi", "10Mi")],
)
def test_envoy_limit_keeps_the_quantity_in_a_form_the_crd_accepts(
    quantity: str, limit: str
) -> None:
    assert envoy_limit(quantity) == limit
    files = render_aggregator(aggregator(maxRequestBodySize=quantity), [target()])
    (policy,) = of_kind(files, "BackendTrafficPolicy")
    assert policy["spec"]["requestBuffer"]["limit"] == limit
    fits_crd(policy)


def test_no_body_size_means_no_policy() -> None:
    for implementation in ("envoy-gateway", "nginx-gateway-fabric"):
        files = render_aggregator(aggregator(), MIXED, implementation)
        assert {obj["kind"] for obj in objects(files).values()} == {"HTTPRoute", "ReferenceGrant"}


@pytest.mark.parametrize(
    ("quantity", "size"),
    [
        ("10Mi", "10m"),
        ("512Ki", "512k"),
        ("1Gi", "1g"),
        ("1000", "1000"),
        ("9999", "9999"),
        ("10000", "10k"),  # rounded up to the next unit: 10240 bytes
        ("10240Ki", "10m"),
        ("10241Ki", "11m"),  # rounded up, never below what was asked for
        ("20000Mi", "20g"),
        ("99999999", "96m"),  # two units up
        ("0512Ki", "512k"),
    ],
)
def test_nginx_size_conversion(quantity: str, size: str) -> None:
    assert nginx_size(quantity) == size
    assert NGINX_SIZE.match(size)


@pytest.mark.parametrize("quantity", ["0", "0Mi", "10000Gi", "10MB"])
def test_body_sizes_neither_implementation_can_express_are_refused(quantity: str) -> None:
    with pytest.raises(PermanentError) as caught:
        nginx_size(quantity)
    assert caught.value.reason == "InvalidMaxRequestBodySize"
    assert quantity in str(caught.value)
    if quantity != "10000Gi":
        with pytest.raises(PermanentError):
            envoy_limit(quantity)


def test_nginx_gateway_fabric_gets_one_client_settings_policy_per_route() -> None:
    files = render_aggregator(aggregator(maxRequestBodySize="10Mi"), MIXED, "nginx-gateway-fabric")
    assert of_kind(files, "BackendTrafficPolicy") == []
    routes = of_kind(files, "HTTPRoute")
    policies = {
        (p["metadata"]["namespace"], p["metadata"]["name"]): p
        for p in of_kind(files, "ClientSettingsPolicy")
    }
    assert set(policies) == {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in routes}
    policy = policies[("shop", "orders-public")]
    assert "clientsettingspolicy-shop-orders-public.yaml" in files
    # No CRD for NGINX Gateway Fabric in the conformance folder: shape and documented pattern only.
    assert policy["apiVersion"] == "gateway.nginx.org/v1alpha1"
    assert policy["spec"] == {
        "targetRef": {
            "group": "gateway.networking.k8s.io",
            "kind": "HTTPRoute",
            "name": "orders-public",
        },
        "body": {"maxSize": "10m"},
    }
    assert policy["metadata"]["labels"]["idp.dev/workload"] == "orders"
    assert NGINX_SIZE.match(policy["spec"]["body"]["maxSize"])


# --- inputs it refuses ----------------------------------------------------------------------


def test_unknown_implementation_names_the_allowed_ones() -> None:
    for targets in (MIXED, []):
        with pytest.raises(ValueError, match="envoy-gateway, nginx-gateway-fabric") as caught:
            render_aggregator(aggregator(), targets, "istio")
        assert "'istio'" in str(caught.value)


def test_no_targets_render_nothing() -> None:
    assert render_aggregator(aggregator(maxRequestBodySize="10Mi"), []) == {}


def test_render_refuses_a_route_the_api_server_would_refuse() -> None:
    # model_construct skips the HttpPath validator, as a target from older state might.
    bad = RouteTarget.model_construct(
        system="shop",
        workload="orders",
        namespace="shop",
        index=0,
        paths=["/orders", "/a//b"],
        service=ServiceRef(name="orders", port=8080),
        rewrite_prefix=None,
    )
    with pytest.raises(PermanentError) as caught:
        render_aggregator(aggregator(), [target("cart", service="cart"), bad])
    assert caught.value.reason == "InvalidRoute"
    assert (
        "HTTPRoute shop/orders-public: spec.rules[1].matches[0].path.value: '/a//b' must not "
        "contain '//'." in str(caught.value)
    )


# --- httproute_problems ---------------------------------------------------------------------


def test_a_valid_route_has_no_problems() -> None:
    route = a_route([a_rule("/orders", filters=[REWRITE]), a_rule("/a", "/b")])
    assert httproute_problems(route) == []


def test_more_than_16_rules() -> None:
    route = a_route([a_rule(f"/p{i}") for i in range(17)])
    assert httproute_problems(route) == [
        "HTTPRoute shop/orders-public: spec.rules: has 17 rules; Gateway API allows at most 16."
    ]
    assert httproute_problems(a_route([a_rule(f"/p{i}") for i in range(16)])) == []


def test_more_than_128_matches_across_rules() -> None:
    def paths(rule: int, count: int) -> list[str]:
        return [f"/r{rule}/m{i}" for i in range(count)]

    route = a_route([a_rule(*paths(0, 43)), a_rule(*paths(1, 43)), a_rule(*paths(2, 43))])
    assert httproute_problems(route) == [
        "HTTPRoute shop/orders-public: spec.rules: has 129 matches in total; Gateway API allows "
        "at most 128 across all rules."
    ]
    at_limit = a_route([a_rule(*paths(0, 64)), a_rule(*paths(1, 64))])
    assert httproute_problems(at_limit) == []


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("orders", "must start with '/'"),
        ("/a//b", "must not contain '//'"),
        ("/a/./b", "must not contain '/./'"),
        ("/a/../b", "must not contain '/../'"),
        ("/a%2fb", "must not contain '%2f' or '%2F' (an encoded '/')"),
        ("/a%2Fb", "must not contain '%2f' or '%2F' (an encoded '/')"),
        ("/a#b", "must not contain '#'"),
        ("/a/.", "must not end with '/.' or '/..'"),
        ("/a/..", "must not end with '/.' or '/..'"),
        ("/" + "a" * 1024, "must be at most 1024 characters (it has 1025)"),
        ("/a b", "must only contain letters, digits, -/._~!$&'()*+,;=:@ and %-escapes (%XX)"),
    ],
)
def test_bad_paths(path: str, problem: str) -> None:
    route = a_route([a_rule("/fine"), a_rule("/ok", path)])
    assert httproute_problems(route) == [
        f"HTTPRoute shop/orders-public: spec.rules[1].matches[1].path.value: {path!r} {problem}."
    ]


def test_exact_paths_follow_the_same_rules_and_regular_expressions_are_not_checked() -> None:
    rule = a_rule("/ok")
    rule["matches"] = [
        {"path": {"type": "Exact", "value": "/a//b"}},
        {"path": {"type": "RegularExpression", "value": "/a//b.*"}},
    ]
    assert httproute_problems(a_route([rule])) == [
        "HTTPRoute shop/orders-public: spec.rules[0].matches[0].path.value: '/a//b' must not "
        "contain '//'."
    ]


def test_prefix_rewrite_needs_exactly_one_pathprefix_match() -> None:
    two = a_rule("/a", "/b", filters=[REWRITE])
    exact = a_rule("/a", filters=[REWRITE])
    exact["matches"][0]["path"]["type"] = "Exact"
    assert httproute_problems(a_route([a_rule("/ok"), two, exact])) == [
        "HTTPRoute shop/orders-public: spec.rules[1].matches: a URLRewrite filter with "
        "ReplacePrefixMatch needs exactly one PathPrefix match in its rule; found 2 "
        "(PathPrefix, PathPrefix).",
        "HTTPRoute shop/orders-public: spec.rules[2].matches: a URLRewrite filter with "
        "ReplacePrefixMatch needs exactly one PathPrefix match in its rule; found 1 (Exact).",
    ]
    # Without matches the API server defaults one PathPrefix "/" match, which is allowed.
    defaulted = {"filters": [REWRITE], "backendRefs": [{"name": "orders", "port": 80}]}
    assert httproute_problems(a_route([defaulted])) == []


def test_service_backend_without_a_port() -> None:
    rule = a_rule("/orders")
    rule["backendRefs"] = [
        {"group": "", "kind": "Service", "name": "orders", "port": 80},
        {"name": "ledger"},  # group and kind default to a core Service
        {"group": "example.com", "kind": "Bucket", "name": "files"},  # not a Service: no port
    ]
    assert httproute_problems(a_route([rule])) == [
        "HTTPRoute shop/orders-public: spec.rules[0].backendRefs[1].port: a Service backend "
        "needs a port; ledger has none."
    ]


@pytest.mark.parametrize(
    ("hostname", "problem"),
    [
        (
            "API.example.com",
            "'API.example.com' is not a hostname: lowercase DNS labels of letters, digits and "
            "'-', at most 253 characters, '*' only as the whole first label.",
        ),
        (
            "api.*.example.com",
            "'api.*.example.com' is not a hostname: lowercase DNS labels of letters, digits and "
            "'-', at most 253 characters, '*' only as the whole first label.",
        ),
        (
            "*api.example.com",
            "'*api.example.com' is not a hostname: lowercase DNS labels of letters, digits and "
            "'-', at most 253 characters, '*' only as the whole first label.",
        ),
        ("10.0.0.1", "'10.0.0.1' is an IP address; Gateway API allows only DNS hostnames."),
    ],
)
def test_bad_hostnames(hostname: str, problem: str) -> None:
    route = a_route([a_rule("/orders")], hostnames=["ok.example.com", hostname])
    assert httproute_problems(route) == [
        f"HTTPRoute shop/orders-public: spec.hostnames[1]: {problem}"
    ]


def test_every_problem_is_reported_not_just_the_first() -> None:
    rule = a_rule("/a", "no-slash", filters=[REWRITE])
    rule["backendRefs"] = [{"name": "orders"}]
    route = copy.deepcopy(a_route([rule], hostnames=["Bad"]))
    problems = httproute_problems(route)
    assert len(problems) == 4
    assert all(p.startswith("HTTPRoute shop/orders-public: spec.") for p in problems)


def test_every_object_an_aggregator_writes_is_claimed_so_two_aggregators_collide_on_names() -> None:
    api, api_1 = aggregator("api", "api.example.com"), aggregator("api-1", "api1.example.com")
    one = render_aggregator(api, [target("web", index=0), target("web", index=1, paths=("/a",))])
    other = render_aggregator(api_1, [target("web", index=0)])

    claimed = {c.path: c for c in aggregator_claims("base", api, one)}
    shared = [c for c in aggregator_claims("base", api_1, other) if c.path in claimed]

    assert {c.path for c in aggregator_claims("base", api, one) if c.record} == {
        "base/dev/.idp-owners/platform/Directory/api-api",
        "base/dev/.idp-owners/shop/HTTPRoute/web-api",
        "base/dev/.idp-owners/shop/HTTPRoute/web-api-1",
    }
    assert [c.subject for c in shared] == ["HTTPRoute shop/web-api-1 on destination dev"]
