"""Conflict detection of the route table: element-wise prefixes, as Gateway API matches them."""

import pytest

from idp.models import ApiAggregator, ApiTarget
from idp.routes import RouteTarget, conflicts, covers, overlap


def target(holder: str, *paths: str, index: int = 0) -> RouteTarget:
    system, name = holder.split("/")
    return RouteTarget.of(
        system,
        name,
        "shop",
        index,
        ApiTarget(
            aggregator="api.example.com", paths=list(paths), service={"name": name, "port": 80}
        ),
    )


@pytest.mark.parametrize(
    ("prefix", "path", "covered"),
    [
        ("/abc", "/abc", True),
        ("/abc", "/abc/def", True),
        ("/abc", "/abcd", False),
        ("/abc/", "/abc", True),
        ("/abc", "/abc/", True),
        ("/", "/anything", True),
        ("/abc/def", "/abc", False),
        ("/a/b", "/a/bc", False),
    ],
)
def test_prefix_matching_is_element_wise(prefix: str, path: str, covered: bool) -> None:
    assert covers(prefix, path) is covered


def test_equal_paths_conflict_naming_the_holder() -> None:
    found = conflicts(target("shop/carts", "/orders"), [target("shop/orders", "/orders")])
    assert [f.message("api.example.com") for f in found] == [
        "path /orders on api.example.com is already routed to workload shop/orders"
    ]


def test_a_path_under_anothers_prefix_is_shadowed() -> None:
    found = conflicts(target("shop/admin", "/orders/admin"), [target("shop/orders", "/orders")])
    assert [f.message("h.example.com") for f in found] == [
        "path /orders/admin on h.example.com would be shadowed by /orders to workload shop/orders"
    ]


def test_a_prefix_over_anothers_path_would_shadow_it() -> None:
    found = conflicts(target("shop/web", "/"), [target("shop/orders", "/orders")])
    assert [f.message("h.example.com") for f in found] == [
        "path / on h.example.com would shadow /orders to workload shop/orders"
    ]


def test_siblings_and_longer_names_do_not_conflict() -> None:
    held = [target("shop/orders", "/orders", "/api/v1")]
    assert conflicts(target("shop/other", "/ordersx", "/api/v2", "/order"), held) == []


def test_trailing_slash_is_the_same_prefix() -> None:
    found = conflicts(target("shop/carts", "/orders/"), [target("shop/orders", "/orders")])
    assert [(f.path, f.held_path) for f in found] == [("/orders/", "/orders")]


def test_a_workload_may_split_its_own_prefix() -> None:
    own = [target("shop/orders", "/orders", index=0)]
    assert conflicts(target("shop/orders", "/orders/admin", index=1), own) == []


def test_every_collision_is_reported() -> None:
    held = [target("shop/a", "/a"), target("shop/b", "/b")]
    found = conflicts(target("shop/c", "/a/x", "/b", "/c"), held)
    assert [(f.path, f.held_by) for f in found] == [("/a/x", "shop/a"), ("/b", "shop/b")]


def test_overlap_is_symmetric() -> None:
    assert overlap("/a", "/a/b") and overlap("/a/b", "/a")
    assert not overlap("/a", "/b")


def test_wildcard_and_exact_hostnames_are_separate_route_tables() -> None:
    # Gateway API ranks an exact hostname above a wildcard that also matches it, so a route on
    # api.example.com is never shadowed by one on *.example.com: each hostname has its own
    # aggregator and table, and the same path on both is no conflict.
    def aggregator(hostname: str) -> ApiAggregator:
        return ApiAggregator.model_validate(
            {
                "metadata": {"name": "x"},
                "spec": {
                    "hostname": hostname,
                    "gateway": {"name": "edge", "namespace": "gw"},
                    "destination": "dev",
                    "namespace": "platform",
                },
            }
        )

    wildcard, exact = aggregator("*.example.com"), aggregator("api.example.com")
    assert wildcard.workflow_id == "api-aggregator/*.example.com"
    assert wildcard.workflow_id != exact.workflow_id
    # Within the wildcard's own table the usual rules hold.
    found = conflicts(target("shop/b", "/orders"), [target("shop/a", "/orders")])
    assert [f.held_by for f in found] == ["shop/a"]
