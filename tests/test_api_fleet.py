"""The Api capability's fleet read against ApiAggregatorWorkflows on a real Temporal dev server: the
digest it gives a workload is the one the workload's own pass fingerprinted for the same route
tables, every change a pass would act on changes it (or drops the key), another workload's
change on the same hostname leaves it alone, and a whole fleet costs one query per aggregator.

The actions run in the SDK's ActivityEnvironment, with the dev server's client, as in
tests/test_api_capability.py; the fleet read's client counts what it asks."""

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from support.cli import eventually
from support.stack import platform_for
from temporalio import workflow
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType, ResetReapplyExcludeType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import (
    Client,
    Interceptor,
    ListWorkflowsInput,
    OutboundInterceptor,
    QueryWorkflowInput,
    WorkflowExecutionAsyncIterator,
    WorkflowHandle,
)
from test_api_capability import (
    API,
    Pass,
    aggregator_worker,
    context,
    until_routed,
    workload,
    writes,
)
from test_ownership import aggregator

from activities.capabilities import capability_activities
from capabilities.api import KEY_LIMIT, ApiObservation, FleetKey, api_digest
from capabilities.api import actions as api_actions
from idp.capability import Fingerprint
from idp.models import ApiTarget, Workload
from idp.routes import Held, RegisterTargets, Registration, TargetResult, TargetState
from starter import operations

HELD_BY = "held_by"


def aggregator_handle(client: Client, hostname: str) -> WorkflowHandle[Any, Any]:
    return client.get_workflow_handle(f"api-aggregator/{hostname}")


class Asked(Interceptor):
    """What a client asks the server: queries by (workflow id, name), and visibility listings."""

    def __init__(self) -> None:
        self.queries: Counter[tuple[str, str]] = Counter()
        self.listings = 0

    def reset(self) -> None:
        self.queries.clear()
        self.listings = 0

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        asked = self

        class Counting(OutboundInterceptor):
            async def query_workflow(self, input: QueryWorkflowInput) -> Any:
                asked.queries[(input.id, input.query)] += 1
                return await super().query_workflow(input)

            def list_workflows(self, input: ListWorkflowsInput) -> WorkflowExecutionAsyncIterator:
                asked.listings += 1
                return super().list_workflows(input)

        return Counting(next)


class FleetRead:
    """The fleet observer's side: `ApiActions.fleet_observe`, in an activity of the task queue,
    through a client that counts what each read asks."""

    def __init__(self, client: Client, queue: str) -> None:
        self.asked = Asked()
        config = client.config()
        config["interceptors"] = [*config["interceptors"], self.asked]
        self.pass_ = Pass(Client(**config), queue)

    async def __call__(self, *keys: str) -> dict[str, str]:
        self.asked.reset()  # counted per read
        return await self.pass_.env.run(self.pass_.actions.fleet_observe, list(keys))


async def record(p: Pass, w: Workload) -> Fingerprint:
    """A pass through the engine's own activity (observe, plan, apply) that finds `w` in sync,
    and the fingerprint it reports for the workload to record."""
    reconcile = capability_activities(API, p.actions)[0]
    outcome = await p.env.run(reconcile, p.context(w))
    assert (outcome.status, outcome.plan) == ("Ready", []), outcome
    assert outcome.fingerprint is not None
    p.outputs = outcome.outputs
    return outcome.fingerprint


async def routed(p: Pass, w: Workload) -> Fingerprint:
    """Registered and written, then what the next pass records."""
    assert (await until_routed(p, w)).reason == "Routed"
    return await record(p, w)


async def plan_now(p: Pass, w: Workload) -> str:
    """The plan a real pass would carry out now, as `idpctl diff` summarises it."""
    return API.plan(p.context(w), await p.observe(w)).summary()


async def fingerprint_now(p: Pass, w: Workload) -> Fingerprint:
    """What observe finds now, fingerprinted (whether or not a pass would record it)."""
    return API.fingerprint(p.context(w), await p.observe(w))


def register_by_hand(w: Workload, *targets: ApiTarget) -> RegisterTargets:
    """`register` as a person would send it for `w` with the temporal CLI."""
    return RegisterTargets(
        system=w.metadata.system,
        workload=w.metadata.name,
        namespace=w.spec.namespace,
        destination=w.spec.destination,
        targets=list(targets),
    )


# ---- key and digest: pure ------------------------------------------------------------------


def test_the_key_names_the_workload_and_its_hostnames_while_they_fit() -> None:
    w = workload("orders", ("b.example.com", "/b"), ("a.example.com", "/a"))
    key = FleetKey.of(w, ["b.example.com", "a.example.com"])
    assert key.text == "workload/shop/orders@a.example.com,b.example.com"
    assert FleetKey.parse(key.text) == key
    assert key.holder == "shop/orders"
    assert FleetKey.parse("workload/shop/orders@") == FleetKey("shop", "orders")

    # The longest names and hostnames there are: up to the limit, named; beyond it, no key,
    # and the workload keeps its own drift checks.
    long = workload("n" * 63, system="s" * 63)
    hostnames = [f"{'h' * 63}.{'x' * 63}.{'y' * 63}.{i}{'z' * 56}.com" for i in range(2)]
    assert all(len(h) == 253 for h in hostnames)
    fits = FleetKey.of(long, hostnames[:1])
    assert fits is not None and len(fits.text) <= KEY_LIMIT
    # Fingerprint's own pattern takes it: at most 400 characters, no whitespace.
    Fingerprint(key=fits.text, digest=api_digest({}))
    assert FleetKey.of(long, hostnames) is None
    observation = ApiObservation(held=dict.fromkeys(hostnames))
    assert API.fingerprint(context(long), observation) is None


@pytest.mark.parametrize(
    "key",
    [
        "",
        "ecr-repo|role",  # the Registry's
        "dev/shop/orders:workload/shop/orders",  # the Manifests'
        "shop/orders@a.example.com",  # not a workflow id
        "workload/shop@a.example.com",
        "workload/shop/orders/x@a.example.com",
        "workload/shop/orders@a.example.com,,b.example.com",
        "workload/shop/orders@A.example.com",
        "workload/shop/orders",  # no hostnames part
    ],
)
def test_a_key_of_another_form_is_not_ours(key: str) -> None:
    assert FleetKey.parse(key) is None


def held(hostname: str, commit: str, state: TargetState = TargetState.ACCEPTED) -> Held:
    registration = Registration(
        hostname=hostname,
        aggregator="public",
        targets=[TargetResult(paths=["/orders"], state=state)],
        written=True,
        directory=f"dev/platform/api-{commit}",
        commit=commit,
    )
    return Held(registration=registration, destination="dev")


def test_the_digest_leaves_out_only_the_aggregators_own_write() -> None:
    recorded = api_digest({"a.example.com": held("a.example.com", "c1")})
    # Another workload's routes made the aggregator commit again: nothing of this one's moved.
    assert api_digest({"a.example.com": held("a.example.com", "c2")}) == recorded
    # What the plan reads does move it.
    refused = held("a.example.com", "c1", TargetState.PATH_CONFLICT)
    assert api_digest({"a.example.com": refused}) != recorded
    assert api_digest({"a.example.com": None}) != recorded
    written = held("a.example.com", "c1")
    unwritten = written.model_copy(
        update={"registration": written.registration.model_copy(update={"written": False})}
    )
    assert api_digest({"a.example.com": unwritten}) != recorded
    assert api_digest({"b.example.com": held("a.example.com", "c1")}) != recorded


# ---- against aggregators on a dev server --------------------------------------------------------


async def test_what_a_pass_records_is_what_the_fleet_read_finds(client, repo, queue, tmp_path):
    first, second = f"a-{queue}.example.com", f"b-{queue}.example.com"
    platform = platform_for(repo)
    async with aggregator_worker(client, platform, queue, writes(platform, tmp_path)):
        await operations.apply_aggregator(client, queue, aggregator("first", first))
        await operations.apply_aggregator(client, queue, aggregator("second", second))
        p, read = Pass(client, queue), FleetRead(client, queue)
        w = workload("orders", (first, "/orders"), (second, "/o"))
        recorded = await routed(p, w)

        assert recorded.key == f"workload/shop/orders@{first},{second}"
        assert await read(recorded.key) == {recorded.key: recorded.digest}
        # Another key for the same workload, or one not ours, is left out.
        assert await read(f"workload/shop/orders@{first}", "no-bar") == {
            f"workload/shop/orders@{first}": api_digest({first: (await p.observe(w)).held[first]})
        }

        # `held_by` answers as `held` does, for workflow ids and `system/name` alike, and for
        # every workload holding targets when asked for none in particular.
        handle = aggregator_handle(client, first)
        one = await handle.query("held", "shop/orders", result_type=Held)
        many = await handle.query(
            HELD_BY, [w.workflow_id, "shop/orders", "shop/nobody"], result_type=dict[str, Held]
        )
        assert many[w.workflow_id] == many["shop/orders"] == one
        assert many["shop/nobody"].targets == []
        assert await handle.query(HELD_BY, result_type=dict[str, Held]) == {"shop/orders": one}


# Each of these changes what an aggregator holds for the workload "orders", which a pass acts on.
Drift = Callable[[Client, str, str, Workload], Awaitable[None]]


async def _withdrawn_by_hand(client: Client, hostname: str, queue: str, w: Workload) -> None:
    await aggregator_handle(client, hostname).execute_update(
        "register", register_by_hand(w), result_type=Registration
    )


async def _taken_by_another(client: Client, hostname: str, queue: str, w: Workload) -> None:
    """Withdrawn, and the path claimed by another workload meanwhile."""
    await _withdrawn_by_hand(client, hostname, queue, w)
    thief = Pass(client, queue)
    await until_routed(thief, workload("thief", (hostname, "/orders")))


async def _retargeted_by_hand(client: Client, hostname: str, queue: str, w: Workload) -> None:
    target = ApiTarget(aggregator=hostname, paths=["/orders"], service={"name": "x", "port": 81})
    handle = aggregator_handle(client, hostname)
    await handle.execute_update("register", register_by_hand(w, target), result_type=Registration)
    # The aggregator writes the new target a moment later, and what it holds says so (`written`,
    # in the digest): the reads that follow must all find it written, not one before and one
    # after (seen in CI).
    holder = f"{w.metadata.system}/{w.metadata.name}"
    await eventually(
        lambda: handle.query("held", holder, result_type=Held),
        lambda held: held.registration.written,
    )


async def _reset(client: Client, hostname: str, queue: str, w: Workload) -> None:
    """Reset, as `temporal workflow reset` does, to the workflow task after its ApiAggregator
    was applied, dropping the registrations since: applied, and holding nothing."""
    handle = aggregator_handle(client, hostname)
    events = (await handle.fetch_history()).events
    applied = next(
        e.event_id
        for e in events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED
    )
    after = next(
        e.event_id
        for e in events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED and e.event_id > applied
    )
    await client.workflow_service.reset_workflow_execution(
        ResetWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_execution=WorkflowExecution(
                workflow_id=handle.id, run_id=(await handle.describe()).run_id
            ),
            reason="the aggregator reset by hand",
            workflow_task_finish_event_id=after,
            request_id=str(uuid.uuid4()),
            reset_reapply_exclude_types=[
                ResetReapplyExcludeType.RESET_REAPPLY_EXCLUDE_TYPE_SIGNAL,
                ResetReapplyExcludeType.RESET_REAPPLY_EXCLUDE_TYPE_UPDATE,
            ],
        )
    )
    status = await operations.aggregator_status(client, hostname)
    assert status.aggregator is not None and status.entries == []


async def _gone(client: Client, hostname: str, queue: str, w: Workload) -> None:
    await aggregator_handle(client, hostname).terminate(reason="gone by hand")


@pytest.mark.parametrize(
    ("drift", "plan"),
    [
        (_withdrawn_by_hand, "register 1 target(s) with {h} (not registered yet)"),
        (_taken_by_another, "register 1 target(s) with {h} (not registered yet)"),
        (_retargeted_by_hand, "register 1 target(s) with {h} (the targets changed)"),
        (_reset, "register 1 target(s) with {h} (not registered yet)"),
        (_gone, "register 1 target(s) with {h} (not registered yet)"),
    ],
    ids=["withdrawn", "taken", "retargeted", "reset", "gone"],
)
async def test_every_change_a_pass_acts_on_changes_the_digest(
    client, repo, queue, tmp_path, drift: Drift, plan: str
):
    hostname, other = f"{queue}.example.com", f"other-{queue}.example.com"
    platform = platform_for(repo)
    async with aggregator_worker(client, platform, queue, writes(platform, tmp_path)):
        await operations.apply_aggregator(client, queue, aggregator("public", hostname))
        await operations.apply_aggregator(client, queue, aggregator("other", other))
        p, read = Pass(client, queue), FleetRead(client, queue)
        w = workload("orders", (hostname, "/orders"), (other, "/o"))
        recorded = await routed(p, w)
        # A neighbour on the same hostname, whose key the change must not move.
        neighbour_pass = Pass(client, queue)
        neighbour = workload("carts", (hostname, "/carts"))
        kept = await routed(neighbour_pass, neighbour)

        await drift(client, hostname, queue, w)

        found = await read(recorded.key, kept.key)
        assert found.get(recorded.key) != recorded.digest
        # What a real pass sees: the same change, acted on.
        assert await plan_now(p, w) == plan.format(h=hostname)
        # Both halves agree on the changed tables too.
        now = await fingerprint_now(p, w)
        assert (now.key, now.digest) == (recorded.key, found[recorded.key])
        if drift is not _reset and drift is not _gone:
            # Its own Held did not change: the neighbour stays asleep.
            assert found[kept.key] == kept.digest
            assert not await plan_now(neighbour_pass, neighbour)


async def test_another_workloads_change_leaves_this_digest_alone(client, repo, queue, tmp_path):
    hostname = f"{queue}.example.com"
    platform = platform_for(repo)
    async with aggregator_worker(client, platform, queue, writes(platform, tmp_path)):
        await operations.apply_aggregator(client, queue, aggregator("public", hostname))
        read = FleetRead(client, queue)
        p, w = Pass(client, queue), workload("orders", (hostname, "/orders"))
        recorded = await routed(p, w)
        before = await aggregator_handle(client, hostname).query(
            "held", "shop/orders", result_type=Held
        )

        # Others register, change and leave: the aggregator commits each time.
        carts = Pass(client, queue)
        await routed(carts, workload("carts", (hostname, "/carts")))
        await routed(carts, workload("carts", (hostname, "/carts"), (hostname, "/basket")))
        users = Pass(client, queue)
        await routed(users, workload("users", (hostname, "/users")))
        await users.teardown(workload("users", (hostname, "/users")))
        # A refused one too: it shadows nothing of this workload's.
        refused, _ = await Pass(client, queue).run(workload("admin", (hostname, "/carts/admin")))
        assert refused.reason == "PathConflict"

        after = await aggregator_handle(client, hostname).query(
            "held", "shop/orders", result_type=Held
        )
        assert after.registration.commit != before.registration.commit
        assert await read(recorded.key) == {recorded.key: recorded.digest}
        assert not await plan_now(p, w)
        assert await record(p, w) == recorded


async def test_a_whole_fleet_costs_one_query_per_aggregator(
    client, repo, queue, tmp_path, monkeypatch
):
    first, second = f"a-{queue}.example.com", f"b-{queue}.example.com"
    platform = platform_for(repo)
    async with aggregator_worker(client, platform, queue, writes(platform, tmp_path)):
        await operations.apply_aggregator(client, queue, aggregator("first", first))
        await operations.apply_aggregator(client, queue, aggregator("second", second))
        fleet = [
            workload(f"w{i}", (first, f"/w{i}"), *([(second, f"/w{i}")] if i % 3 == 0 else []))
            for i in range(12)
        ]
        recorded = await asyncio.gather(*(routed(Pass(client, queue), w) for w in fleet))
        read = FleetRead(client, queue)

        found = await read(*(f.key for f in recorded))

        assert found == {f.key: f.digest for f in recorded}
        assert read.asked.queries == {
            (f"api-aggregator/{first}", HELD_BY): 1,
            (f"api-aggregator/{second}", HELD_BY): 1,
        }
        assert read.asked.listings == 0
        # Where the workloads' own passes ask once per workload and hostname.
        observe = FleetRead(client, queue)
        for w in fleet:
            await observe.pass_.observe(w)
        assert observe.asked.queries.total() == len(fleet) + len(fleet[::3])

        # A hostname with more workloads than one answer may carry is asked in parts.
        monkeypatch.setattr(api_actions, "HOLDERS_PER_QUERY", 5)
        assert await read(*(f.key for f in recorded)) == found
        assert read.asked.queries == {
            (f"api-aggregator/{first}", HELD_BY): 3,
            (f"api-aggregator/{second}", HELD_BY): 1,
        }


# Unsandboxed: the sandbox would re-import this test module and all it imports.
@workflow.defn(name="OldApiAggregator", sandboxed=False)
class OldAggregator:
    """An aggregator run still on a build from before `held_by`: it answers only `held`."""

    def __init__(self) -> None:
        self.hostname = ""

    @workflow.run
    async def run(self, hostname: str) -> None:
        self.hostname = hostname
        await workflow.wait_condition(lambda: False)

    @workflow.query
    def held(self, holder: str) -> Held:
        registration = Registration(
            hostname=self.hostname, aggregator="old", targets=[], written=True
        )
        return Held(registration=registration)


@workflow.defn(name="BrokenApiAggregator", sandboxed=False)
class BrokenAggregator:
    """Something under an aggregator's id that answers no query of ours."""

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)


async def test_a_failing_aggregator_leaves_out_only_the_keys_naming_it(
    client, repo, queue, tmp_path
):
    hostname = f"{queue}.example.com"
    old, broken = f"old-{queue}.example.com", f"broken-{queue}.example.com"
    platform = platform_for(repo)
    write = writes(platform, tmp_path)
    async with aggregator_worker(client, platform, queue, write, OldAggregator, BrokenAggregator):
        await operations.apply_aggregator(client, queue, aggregator("public", hostname))
        await client.start_workflow(
            OldAggregator.run, old, id=f"api-aggregator/{old}", task_queue=queue
        )
        await client.start_workflow(
            BrokenAggregator.run, id=f"api-aggregator/{broken}", task_queue=queue
        )
        p, read = Pass(client, queue), FleetRead(client, queue)
        w = workload("orders", (hostname, "/orders"))
        recorded = await routed(p, w)
        # Keys as workloads routing through the other two would have recorded them.
        through_old = FleetKey("shop", "legacy", (old,)).text
        through_broken = FleetKey("shop", "stuck", (broken, hostname)).text
        gone = FleetKey("shop", "moved", (f"gone-{queue}.example.com",)).text

        found = await read(recorded.key, through_old, through_broken, gone, "not-ours")

        # The old run is asked workload by workload; the broken one wakes only its own.
        old_held = Held(
            registration=Registration(hostname=old, aggregator="old", targets=[], written=True)
        )
        assert found == {
            recorded.key: recorded.digest,
            through_old: api_digest({old: old_held}),
            gone: api_digest({f"gone-{queue}.example.com": None}),
        }
        assert read.asked.queries[(f"api-aggregator/{old}", HELD_BY)] == 1
        assert read.asked.queries[(f"api-aggregator/{old}", "held")] == 1
        await aggregator_handle(client, old).terminate()
        await aggregator_handle(client, broken).terminate()
