"""Workflow ids keep their shape: running workflows, owner records and idempotency tokens are
keyed by them."""

from idp import ids


def test_workload_ids_are_built_and_read_back() -> None:
    assert ids.workload_id("shop", "cart") == "workload/shop/cart"
    assert ids.parse_workload_id("workload/shop/cart") == ("shop", "cart")
    assert ids.parse_workload_id("shop/cart") == ("shop", "cart")
    assert ids.parse_workload_id("shop") == ("shop", "")
    assert ids.workload_reference("workload/shop/cart") == "shop/cart"


def test_aggregator_and_port_run_ids() -> None:
    assert ids.aggregator_id("api.example.com") == "api-aggregator/api.example.com"
    assert ids.aggregator_hostname("api-aggregator/api.example.com") == "api.example.com"
    assert ids.aggregator_hostname("api.example.com") == "api.example.com"
    assert ids.port_run_id("r_1") == "port-run/r_1"
