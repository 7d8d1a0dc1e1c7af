"""Two resources never write one directory or one Kubernetes object: the one that writes second is
refused, naming the holder. Real git on disk; workloads write through the Manifests capability's
activities as a worker runs them (support/manifests.py); the apply-time check runs against the
real dev server and worker."""

import asyncio
from pathlib import Path

import pytest
import yaml
from support.manifests import ManifestsWorker, context
from support.stack import commits, git, platform_for, read, running_worker, task_queue
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.apiroutes import ApiRouteActivities, RoutesInput
from capabilities.manifests.capability import write
from idp.manifests import render_workload
from idp.models import ApiAggregator, Workload
from idp.routes import RouteTarget
from idp.statechange import Change, ChangeResult, OwnedByAnother
from idp.statestore import StateStore
from starter.operations import apply_workload, check_apply
from workflows.messages import WaitReadyRequest
from workflows.state import Phase
from workflows.workload import WorkloadWorkflow

REFUSED_WEB = (
    "shop/web on destination dev is already written by workload a/web; rename this workload "
    "or choose another namespace"
)


def workload(system: str, name: str = "web", **spec: object) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": name, "system": system},
            "spec": {"owner": "team", "destination": "dev", "namespace": "shop", **spec},
        }
    )


def aggregator(name: str, hostname: str) -> ApiAggregator:
    return ApiAggregator.model_validate(
        {
            "metadata": {"name": name},
            "spec": {
                "hostname": hostname,
                "gateway": {"name": "edge", "namespace": "gateways"},
                "destination": "dev",
                "namespace": "platform",
                "maxRequestBodySize": "1Mi",
            },
        }
    )


def target(index: int, path: str) -> RouteTarget:
    return RouteTarget.model_validate(
        {
            "system": "a",
            "workload": "web",
            "namespace": "shop",
            "index": index,
            "paths": [path],
            "service": {"name": "web", "port": 8080},
        }
    )


def snapshot(repo: Path) -> tuple[list[str], dict[str, bytes]]:
    """Every commit and the bytes of every file at the head."""
    names = git("ls-tree", "-r", "--name-only", "main", cwd=repo).split()
    files = {n: git("show", f"main:{n}", cwd=repo).encode() for n in names}
    return commits(repo), files


@pytest.fixture
def manifests(repo: Path, tmp_path: Path) -> ManifestsWorker:
    return ManifestsWorker(platform_for(repo), tmp_path / "cache")


@pytest.fixture
def routes(repo: Path, tmp_path: Path) -> ApiRouteActivities:
    return ApiRouteActivities(platform_for(repo), tmp_path / "cache")


async def refusal(call) -> ApplicationError:
    with pytest.raises(ApplicationError) as refused:
        await call
    assert refused.value.type == "OwnedByAnother"
    assert refused.value.non_retryable
    return refused.value


async def test_a_second_workload_of_the_same_name_and_namespace_is_refused(manifests, repo) -> None:
    await manifests.reconcile(workload("a"))
    before = snapshot(repo)

    refused = await refusal(manifests.reconcile(workload("b")))

    assert refused.message == REFUSED_WEB
    assert snapshot(repo) == before


async def test_a_service_account_name_is_held_like_a_directory(manifests, repo) -> None:
    await manifests.reconcile(workload("a"))
    before = snapshot(repo)

    # Another directory, the same ServiceAccount object.
    refused = await refusal(manifests.reconcile(workload("c", "api", serviceAccount="web")))

    assert refused.message == (
        "ServiceAccount shop/web on destination dev is already written by workload a/web; "
        "set another spec.serviceAccount"
    )
    assert snapshot(repo) == before


async def test_a_named_service_account_is_recorded_and_holds_the_default_one(
    manifests, repo
) -> None:
    named = workload("c", "api", serviceAccount="web")
    await manifests.reconcile(named)
    assert read(repo, "dev/.idp-owners/shop/ServiceAccount/web") == "workload/c/api\n"
    before = snapshot(repo)

    # The record is stable: writing the same manifests again makes no commit.
    await manifests.reconcile(named)
    refused = await refusal(manifests.reconcile(workload("a")))

    assert "ServiceAccount shop/web on destination dev is already written by workload c/api" in (
        refused.message
    )
    assert snapshot(repo) == before


@pytest.mark.parametrize("attempt", range(5))
async def test_two_workers_racing_for_one_directory_one_wins(repo, tmp_path, attempt) -> None:
    contenders = [workload("a"), workload("b")]
    # What each worker's Manifests pass commits.
    changes = [write(context(w), "") for w in contenders]
    stores = [StateStore(str(repo), "main", tmp_path / f"worker-{i}") for i in range(2)]

    outcomes = await asyncio.gather(
        *(store.apply(change) for store, change in zip(stores, changes, strict=True)),
        return_exceptions=True,
    )

    won = [i for i, o in enumerate(outcomes) if isinstance(o, ChangeResult)]
    lost = [o for o in outcomes if isinstance(o, OwnedByAnother)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    winner = contenders[won[0]]
    assert lost[0].holder == winner.workflow_id
    assert str(lost[0]).startswith(
        f"shop/web on destination dev is already written by workload {winner.metadata.system}/web"
    )
    manifest = yaml.safe_load(read(repo, "dev/shop/web/serviceaccount.yaml"))
    assert manifest["metadata"]["labels"]["idp.dev/system"] == winner.metadata.system
    assert len(commits(repo)) == 1


async def test_removing_a_workload_frees_its_names(manifests, repo) -> None:
    holder = workload("a", serviceAccount="worker")
    await manifests.reconcile(holder)
    await refusal(manifests.reconcile(workload("b", "other", serviceAccount="worker")))

    await manifests.teardown(holder)

    assert snapshot(repo)[1] == {}
    await manifests.reconcile(workload("b"))
    await manifests.reconcile(workload("b", "other", serviceAccount="worker"))


async def test_removing_a_refused_workload_leaves_the_holders_files(manifests, repo) -> None:
    await manifests.reconcile(workload("a"))
    before = snapshot(repo)

    await manifests.teardown(workload("b"))

    assert snapshot(repo) == before


async def test_a_directory_written_before_ownership_is_adopted_by_its_own_workload(
    manifests, repo, tmp_path
) -> None:
    # What the Manifests step wrote before it held names: the files alone, no claims.
    a = workload("a")
    legacy = StateStore(str(repo), "main", tmp_path / "legacy")
    await legacy.apply(Change("dev/shop/web", render_workload(a), "apply a/web"))
    before = snapshot(repo)

    await manifests.reconcile(a)
    assert snapshot(repo) == before

    refused = await refusal(manifests.reconcile(workload("b")))
    assert refused.message == REFUSED_WEB
    assert snapshot(repo) == before


async def test_a_hand_edit_that_drops_the_owner_labels_is_restored(
    manifests, repo, tmp_path
) -> None:
    a = workload("a")
    await manifests.reconcile(a)
    written = read(repo, "dev/shop/web/serviceaccount.yaml")
    someone = StateStore(str(repo), "main", tmp_path / "someone")
    edited = {"serviceaccount.yaml": "kind: ServiceAccount\nmetadata:\n  name: web\n"}
    await someone.apply(Change("dev/shop/web", edited, "by hand"))

    await manifests.reconcile(a)

    assert read(repo, "dev/shop/web/serviceaccount.yaml") == written
    # Restored, it names its holder again.
    assert (await refusal(manifests.reconcile(workload("b")))).message == REFUSED_WEB


# ---- ApiAggregators -------------------------------------------------------------------------


def routes_request(agg: ApiAggregator, *targets: RouteTarget) -> RoutesInput:
    return RoutesInput(
        aggregator=agg, targets=list(targets), generation=1, workflow_id=agg.workflow_id
    )


async def write_routes(routes: ApiRouteActivities, agg: ApiAggregator, *targets) -> None:
    await ActivityEnvironment().run(routes.write_api_routes, routes_request(agg, *targets))


async def test_a_route_name_another_aggregator_holds_is_refused(routes, repo) -> None:
    first = aggregator("api", "api.example.com")
    # Target 1 of web on `api` is named web-api-1, as target 0 of web on `api-1` is.
    await write_routes(routes, first, target(0, "/web"), target(1, "/admin"))
    before = snapshot(repo)

    refused = await refusal(
        write_routes(routes, aggregator("api-1", "api1.example.com"), target(0, "/web"))
    )

    assert refused.message == (
        "HTTPRoute shop/web-api-1 on destination dev is already written by api-aggregator "
        "api.example.com; rename this ApiAggregator"
    )
    assert snapshot(repo) == before


async def test_removing_an_aggregator_frees_its_route_names(routes, repo) -> None:
    first, second = aggregator("api", "api.example.com"), aggregator("api-1", "api1.example.com")
    await write_routes(routes, first, target(0, "/web"), target(1, "/admin"))
    await refusal(write_routes(routes, second, target(0, "/web")))

    await ActivityEnvironment().run(routes.remove_api_routes, routes_request(first))

    assert snapshot(repo)[1] == {}
    await write_routes(routes, second, target(0, "/web"))


async def test_an_aggregator_and_a_workload_of_one_directory_exclude_each_other(
    manifests, routes, repo
) -> None:
    await manifests.reconcile(workload("a", "api-public", namespace="platform"))

    refused = await refusal(
        write_routes(routes, aggregator("public", "api.example.com"), target(0, "/web"))
    )

    assert refused.message.startswith(
        "platform/api-public on destination dev is already written by workload a/api-public"
    )


async def test_a_workload_cannot_take_an_aggregators_directory(manifests, routes, repo) -> None:
    await write_routes(routes, aggregator("public", "api.example.com"), target(0, "/web"))
    before = snapshot(repo)

    refused = await refusal(manifests.reconcile(workload("a", "api-public", namespace="platform")))

    assert "already written by api-aggregator api.example.com" in refused.message
    assert snapshot(repo) == before


# ---- at apply time ---------------------------------------------------------------------------


async def test_apply_refuses_a_workload_whose_name_a_running_one_holds(
    client: Client, repo, tmp_path
) -> None:
    queue = task_queue()
    # The session's server holds other tests' workflows, some without a worker left to answer
    # a query: a name unique to this test keeps them out of the candidates.
    name = f"web-{queue}"
    holder, other = workload(f"{queue}-a", name), workload(f"{queue}-b", name)
    async with running_worker(client, platform_for(repo), queue, tmp_path / "cache"):
        await apply_workload(client, queue, holder)
        status = await client.get_workflow_handle(holder.workflow_id).execute_update(
            WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=1, timeout_seconds=30)
        )
        assert status.phase == Phase.READY, status.conditions

        # Visibility lags the workflow a little; the holder shows up by destination.
        async with asyncio.timeout(10):
            while not (problems := (await check_apply(client, [other]))[0]):
                await asyncio.sleep(0.1)

        assert problems == [
            f"{other.workflow_id}: shop/{name} on destination dev is already written by "
            f"workload {holder.metadata.system}/{name}; rename this workload or choose another "
            "namespace"
        ]
        assert (await check_apply(client, [holder]))[0] == []
