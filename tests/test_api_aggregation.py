"""API aggregation end to end: workloads register targets with the ApiAggregatorWorkflow of their
hostname on a real Temporal dev server, and the routes land in a real git state store."""

import asyncio
from pathlib import Path

import pytest
import temporalio.api.sdk.v1
import yaml
from support.stack import commits, git, platform_for, read, running_worker
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError

from idp.models import ApiAggregator, Workload
from starter import operations
from workflows.aggregator import ApiAggregatorWorkflow
from workflows.messages import SignalRequest, WaitReadyRequest, WorkloadStatus
from workflows.routetable import AggregatorStatus
from workflows.state import ConditionStatus, Phase
from workflows.workload import WorkloadWorkflow


def aggregator(hostname: str, **spec: object) -> ApiAggregator:
    return ApiAggregator.model_validate(
        {
            "metadata": {"name": "public"},
            "spec": {
                "hostname": hostname,
                "gateway": {"name": "edge", "namespace": "gateways", "sectionName": "https"},
                "destination": "dev",
                "namespace": "platform",
                "maxRequestBodySize": "10Mi",
                **spec,
            },
        }
    )


def workload(system: str, name: str, hostname: str, *paths: str, **extra: object) -> Workload:
    api = [{"aggregator": hostname, "paths": list(paths), "service": {"name": name, "port": 8080}}]
    return Workload.model_validate(
        {
            "metadata": {"name": name, "system": system},
            "spec": {
                "owner": "team",
                "destination": "dev",
                "namespace": system,
                "api": api if paths else [],
                **extra,
            },
        }
    )


async def ready(
    client: Client, queue: str, w: Workload, phase: Phase = Phase.READY
) -> WorkloadStatus:
    """Apply and wait: wait_ready answers on Ready, and at once on a refusal."""
    result = await operations.apply_workload(client, queue, w)
    handle = client.get_workflow_handle(w.workflow_id)
    status = await handle.execute_update(
        WorkloadWorkflow.wait_ready,
        WaitReadyRequest(generation=result.generation, timeout_seconds=60),
    )
    assert status.phase == phase, status.conditions
    return status


async def current_details(handle: WorkflowHandle) -> str:
    """The UI's current details, read the way the UI reads them (the SDK's metadata query)."""
    metadata = await handle.query(
        "__temporal_workflow_metadata", result_type=temporalio.api.sdk.v1.WorkflowMetadata
    )
    return metadata.current_details


def api_condition(status: WorkloadStatus):
    condition = next(c for c in status.conditions if c.type == "Api")
    return condition.status, condition.reason, condition.message


async def table(client: Client, hostname: str) -> AggregatorStatus:
    return await operations.aggregator_status(client, hostname)


def route_files(repo: Path) -> dict[str, dict]:
    listing = git("ls-tree", "-r", "--name-only", "main", "dev/platform/api-public", cwd=repo)
    return {
        path.rsplit("/", 1)[-1]: yaml.safe_load(read(repo, path))
        for path in listing.splitlines()
        if path
    }


async def until(handle: WorkflowHandle, query, predicate, timeout: float = 30):
    """Poll a status query until predicate holds; the workflows have no event we could await."""
    async with asyncio.timeout(timeout):
        while not predicate(status := await handle.query(query)):
            await asyncio.sleep(0.1)
        return status


async def test_shared_hostname_conflict_refused_then_released(client, repo, queue, tmp_path):
    hostname = f"{queue}.example.com"
    async with running_worker(client, platform_for(repo), queue, tmp_path / "cache"):
        await operations.apply_aggregator(client, queue, aggregator(hostname))
        orders = await ready(client, queue, workload(queue, "orders", hostname, "/orders"))
        carts = await ready(client, queue, workload(queue, "carts", hostname, "/carts", "/cart/"))
        assert api_condition(orders)[:2] == (ConditionStatus.TRUE, "Routed")
        assert api_condition(carts)[:2] == (ConditionStatus.TRUE, "Routed")

        files = route_files(repo)
        assert sorted(files) == [
            f"backendtrafficpolicy-{queue}.yaml",
            f"httproute-{queue}-carts-public.yaml",
            f"httproute-{queue}-orders-public.yaml",
        ]
        route = files[f"httproute-{queue}-carts-public.yaml"]
        assert route["spec"]["hostnames"] == [hostname]
        assert [r["matches"][0]["path"]["value"] for r in route["spec"]["rules"]] == [
            "/carts",
            "/cart/",
        ]
        policy = files[f"backendtrafficpolicy-{queue}.yaml"]
        assert policy["spec"]["requestBuffer"]["limit"] == "10Mi"
        assert len(policy["spec"]["targetRefs"]) == 2

        # /orders/admin lies under orders' /orders: refused, naming the holder; the rest of the
        # third workload (its service account) is still applied, and it is Degraded, not
        # Ready, and so is the aggregator: an unrouted API shows where operators look.
        before = commits(repo)
        admin = await ready(
            client, queue, workload(queue, "admin", hostname, "/orders/admin"), Phase.DEGRADED
        )
        status, reason, message = api_condition(admin)
        assert (status, reason) == (ConditionStatus.FALSE, "PathConflict")
        assert next(c for c in admin.conditions if c.type == "Api").permanent
        # What the UI shows (current details) agrees with the conditions, in words as well.
        admin_handle = client.get_workflow_handle(admin.workload.workflow_id)
        shown = (await current_details(admin_handle)).splitlines()
        assert shown[0] == "**Degraded** · generation 1 · Api: PathConflict", shown
        assert f"- ❌ False · Api: PathConflict: {message}" in shown
        assert any(line.startswith("- ✅ True · Manifests: Applied:") for line in shown)
        aggregator_handle = client.get_workflow_handle(f"api-aggregator/{hostname}")
        refusing = await until(
            aggregator_handle, ApiAggregatorWorkflow.status, lambda s: s.phase == Phase.DEGRADED
        )
        targets = next(c for c in refusing.conditions if c.type == "Targets")
        assert (targets.status, targets.reason) == (ConditionStatus.FALSE, "Refused")
        assert targets.message == f"{queue}/admin: {message}"
        assert message == (
            f"path /orders/admin on {hostname} would be shadowed by /orders to workload "
            f"{queue}/orders"
        )
        assert "Manifests" in admin.outputs
        assert route_files(repo) == files, "a refused target must not change the routes"
        assert len(commits(repo)) == len(before) + 1, "only admin's service account"
        refused = [e for e in (await table(client, hostname)).entries if e.state == "PathConflict"]
        assert [(e.target.holder, e.reason) for e in refused] == [(f"{queue}/admin", message)]

        # Delete the holder: its route goes, and a reconcile of admin claims the path.
        orders_handle = client.get_workflow_handle(orders.workload.workflow_id)
        await orders_handle.signal(WorkloadWorkflow.delete, SignalRequest())
        await orders_handle.result()
        assert f"httproute-{queue}-orders-public.yaml" not in route_files(repo)

        await admin_handle.signal(WorkloadWorkflow.reconcile, SignalRequest())
        admin = await until(
            admin_handle,
            WorkloadWorkflow.status,
            lambda s: api_condition(s)[0] == ConditionStatus.TRUE,
        )
        assert api_condition(admin)[1] == "Routed"
        assert f"httproute-{queue}-admin-public.yaml" in route_files(repo)


async def test_one_changed_target_is_one_commit_and_no_change_is_none(
    client, repo, queue, tmp_path
):
    hostname = f"{queue}.example.com"
    async with running_worker(client, platform_for(repo), queue, tmp_path / "cache"):
        await operations.apply_aggregator(client, queue, aggregator(hostname))
        for name in ("a", "b", "c"):
            await ready(client, queue, workload(queue, name, hostname, f"/{name}"))
        before = commits(repo)

        # Re-applying the same specs and a reconcile pass of everyone: nothing to commit.
        for name in ("a", "b", "c"):
            await ready(client, queue, workload(queue, name, hostname, f"/{name}"))
        handle = client.get_workflow_handle(f"api-aggregator/{hostname}")
        await handle.signal(ApiAggregatorWorkflow.reconcile)
        await until(
            handle, ApiAggregatorWorkflow.status, lambda s: s.written_generation == s.generation
        )
        assert commits(repo) == before

        await ready(client, queue, workload(queue, "b", hostname, "/b", "/b2"))
        after = commits(repo)
        assert len(after) == len(before) + 1
        assert "ApiAggregator public" in git("log", "-1", "--format=%B", "main", cwd=repo)


async def test_targets_wait_for_their_aggregator_and_move_with_the_spec(
    client, repo, queue, tmp_path
):
    hostname = f"{queue}.example.com"
    async with running_worker(client, platform_for(repo), queue, tmp_path / "cache"):
        # Until its ApiAggregator is applied, the workload is Pending, not Ready: its API is
        # not routed yet, and waiting will change that (so wait_ready keeps waiting).
        pending = workload(queue, "shop", hostname, "/shop")
        await operations.apply_workload(client, queue, pending)
        shop_handle = client.get_workflow_handle(pending.workflow_id)
        shop = await until(
            shop_handle, WorkloadWorkflow.status, lambda s: s.observed_generation == 1
        )
        assert shop.phase == Phase.PENDING
        status, reason, message = api_condition(shop)
        assert (status, reason) == (ConditionStatus.FALSE, "AggregatorPending")
        assert f"no ApiAggregator for {hostname} has been applied yet" in message
        assert (await table(client, hostname)).phase == Phase.PENDING

        await operations.apply_aggregator(client, queue, aggregator(hostname))
        aggregator_handle = client.get_workflow_handle(f"api-aggregator/{hostname}")
        # Once the routes are written, the waiting workload is told to look again.
        shop = await shop_handle.execute_update(
            WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=1, timeout_seconds=60)
        )
        assert shop.phase == Phase.READY
        assert [(r["hostname"], r["paths"], r["state"]) for r in shop.outputs["Api"]["routes"]] == [
            (hostname, ["/shop"], "Accepted")
        ]
        assert f"httproute-{queue}-shop-public.yaml" in route_files(repo)

        # The workload drops its API: its route is unregistered and removed.
        shop = await ready(client, queue, workload(queue, "shop", hostname))
        assert "Api" not in shop.outputs
        await until(
            aggregator_handle,
            ApiAggregatorWorkflow.status,
            lambda s: s.written_generation == s.generation,
        )
        assert route_files(repo) == {}

        # An aggregator with no routes can be deleted; its directory is gone.
        await operations.delete_aggregator(client, hostname)
        result = await client.get_workflow_handle_for(
            ApiAggregatorWorkflow.run, aggregator_handle.id
        ).result()
        assert result.phase == Phase.DELETED
        assert "dev/platform/api-public" not in git("ls-tree", "-r", "main", cwd=repo)


async def test_aggregator_refuses_a_move_and_a_delete_with_live_routes(
    client, repo, queue, tmp_path
):
    hostname = f"{queue}.example.com"
    async with running_worker(client, platform_for(repo), queue, tmp_path / "cache"):
        await operations.apply_aggregator(client, queue, aggregator(hostname))
        await ready(client, queue, workload(queue, "web", hostname, "/"))
        with pytest.raises(WorkflowUpdateFailedError) as raised:
            await operations.apply_aggregator(
                client, queue, aggregator(hostname, destination="prod")
            )
        assert "spec.destination cannot change on a live ApiAggregator" in str(raised.value.cause)
        with pytest.raises(WorkflowUpdateFailedError) as raised:
            await operations.delete_aggregator(client, hostname)
        assert f"{hostname} still routes to {queue}/web" in str(raised.value.cause)
