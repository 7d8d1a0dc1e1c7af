"""The Api capability: its plan and report, pure, and its actions against ApiAggregatorWorkflows on
a real Temporal dev server, with their routes written to a real git state store.

The actions run in the SDK's ActivityEnvironment, with the dev server's client: what the
engine's `Api.reconcile` activity does (observe, plan, apply) without a WorkloadWorkflow."""

import asyncio
import dataclasses
import inspect
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support.stack import platform_for
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.apiroutes import ApiRouteActivities, RoutesInput
from activities.platform import PlatformActivities
from activities.statestore import ManifestsResult
from capabilities.api import Api, ApiObservation, ApiOutput, report
from capabilities.api.actions import ApiActions
from idp.capability import Context, Report
from idp.models import ApiAggregator, Workload
from idp.platform import Platform
from idp.routes import Held, RegisterTargets, Registration, TargetResult, TargetState
from starter import operations
from workflows.aggregator import ApiAggregatorWorkflow

API = Api()
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def workload(
    name: str, *targets: tuple[str, str], service: str | None = None, system: str = "shop"
) -> Workload:
    """A workload with one target per (hostname, path)."""
    api = [
        {"aggregator": hostname, "paths": [path], "service": {"name": service or name, "port": 80}}
        for hostname, path in targets
    ]
    return Workload.model_validate(
        {
            "metadata": {"name": name, "system": system},
            "spec": {"owner": "team", "destination": "dev", "namespace": "shop", "api": api},
        }
    )


def context(w: Workload, outputs: dict[str, Any] | None = None) -> Context:
    return Context(workload=w, workflow_id=w.workflow_id, generation=1, now=NOW, outputs=outputs)


def held(w: Workload, hostname: str, *states: TargetState, written: bool = True) -> Held:
    """What an applied aggregator holds for `w` on `hostname`, as `w` last registered it."""
    request = RegisterTargets(
        system="shop",
        workload=w.metadata.name,
        namespace="shop",
        destination="dev",
        targets=[t for t in w.spec.api if t.aggregator == hostname],
    )
    results = [
        TargetResult(paths=t.paths, state=states[i] if states else TargetState.ACCEPTED)
        for i, t in enumerate(request.targets)
    ]
    registration = Registration(
        hostname=hostname, aggregator="public", targets=results, written=written
    )
    return Held(registration=registration, targets=request.route_targets(), destination="dev")


def outputs(*routes: tuple[str, str, str]) -> dict[str, Any]:
    return ApiOutput.model_validate(
        {"routes": [{"hostname": h, "paths": [p], "state": s} for h, p, s in routes]}
    ).model_dump(mode="json", by_alias=True)


# ---- plan, wanted, report, describe: pure ----------------------------------------------------


def test_plan_registers_where_nothing_is_held_yet() -> None:
    w = workload("orders", ("a.example.com", "/orders"), ("b.example.com", "/o"))
    observation = ApiObservation(held={"a.example.com": None, "b.example.com": None})
    plan = API.plan(context(w), observation)
    assert [r.hostname for r in plan.registrations] == ["a.example.com", "b.example.com"]
    assert plan.summary() == (
        "register 1 target(s) with a.example.com (not registered yet); "
        "register 1 target(s) with b.example.com (not registered yet)"
    )


def test_plan_is_empty_when_every_aggregator_holds_exactly_the_targets() -> None:
    w = workload("orders", ("a.example.com", "/orders"), ("b.example.com", "/o"))
    observation = ApiObservation(
        held={
            "a.example.com": held(w, "a.example.com"),
            # Not yet written is the aggregator's to finish: registering again changes nothing.
            "b.example.com": held(w, "b.example.com", written=False),
        }
    )
    known = outputs(("a.example.com", "/orders", "Accepted"), ("b.example.com", "/o", "Accepted"))
    assert not API.plan(context(w, known), observation)


def test_plan_registers_changed_targets_and_again_where_refused() -> None:
    before = workload("orders", ("a.example.com", "/orders"), ("b.example.com", "/o"))
    after = workload(
        "orders", ("a.example.com", "/orders"), ("b.example.com", "/o"), service="orders-v2"
    )
    observation = ApiObservation(
        held={
            "a.example.com": held(before, "a.example.com", TargetState.PATH_CONFLICT),
            "b.example.com": held(before, "b.example.com"),
        }
    )
    plan = API.plan(context(after), observation)
    assert [(r.hostname, r.request.targets) for r in plan.registrations] == [
        ("a.example.com", after.spec.api[:1]),
        ("b.example.com", after.spec.api[1:]),
    ]
    assert [c.why for c in plan.changes] == [
        "the targets changed",
        "the targets changed",
    ]
    # Only the refusal differs: registering again is how a released path is claimed.
    observation = ApiObservation(
        held={
            "a.example.com": held(after, "a.example.com", TargetState.PATH_CONFLICT),
            "b.example.com": held(after, "b.example.com"),
        }
    )
    assert API.plan(context(after), observation).summary() == (
        "register 1 target(s) with a.example.com (PathConflict is decided anew at each "
        "registration)"
    )


def test_plan_unregisters_hostnames_no_longer_named() -> None:
    before = workload("orders", ("a.example.com", "/orders"), ("b.example.com", "/o"))
    after = workload("orders", ("b.example.com", "/o"))
    known = outputs(("a.example.com", "/orders", "Accepted"), ("b.example.com", "/o", "Accepted"))
    observation = ApiObservation(
        held={
            "a.example.com": held(before, "a.example.com"),
            "b.example.com": held(after, "b.example.com"),
        }
    )
    plan = API.plan(context(after, known), observation)
    assert [(r.hostname, r.request.targets) for r in plan.registrations] == [("a.example.com", [])]
    assert plan.summary() == "unregister from a.example.com (spec.api no longer names it)"
    # Where no aggregator runs any more, nothing is held: nothing to unregister.
    gone = ApiObservation(
        held={"a.example.com": None, "b.example.com": held(after, "b.example.com")}
    )
    assert not API.plan(context(after, known), gone)


def test_wanted_while_named_or_while_routes_are_known() -> None:
    named = workload("orders", ("a.example.com", "/orders"))
    bare = workload("orders")
    assert API.wanted(context(named))
    assert not API.wanted(context(bare))
    assert API.wanted(context(bare, outputs(("a.example.com", "/orders", "Accepted"))))


def registration(hostname: str, *states: TargetState, **fields: Any) -> Registration:
    targets = [TargetResult(paths=[f"/{i}"], state=s, reason=f"r{i}") for i, s in enumerate(states)]
    return Registration(
        **{"hostname": hostname, "aggregator": "public", "written": True, "targets": targets}
        | fields
    )


def test_report_ready_when_routed_and_an_event_only_when_the_routes_change() -> None:
    w = workload("orders", ("a.example.com", "/0"))
    answers = [registration("a.example.com", TargetState.ACCEPTED, commit="c1")]
    first = report(context(w), answers)
    assert (first.status, first.reason, first.message, first.changed) == (
        "Ready",
        "Routed",
        "/0 on a.example.com",
        True,
    )
    assert first.outputs == {
        "routes": [
            {
                "hostname": "a.example.com",
                "paths": ["/0"],
                "state": "Accepted",
                "reason": "r0",
                "commit": "c1",
            }
        ]
    }
    again = report(context(w, first.outputs), answers)
    assert (again.reason, again.changed) == ("Routed", False)


@pytest.mark.parametrize(
    ("answer", "status", "phase", "reason"),
    [
        (
            registration("a", TargetState.ACCEPTED, aggregator=None),
            "Waiting",
            "Pending",
            "AggregatorPending",
        ),
        (
            registration("a", TargetState.ACCEPTED, written=False),
            "Waiting",
            "Provisioning",
            "RoutesNotWritten",
        ),
        (registration("a", TargetState.PATH_CONFLICT), "Blocked", None, "PathConflict"),
        (registration("a", TargetState.WRONG_DESTINATION), "Blocked", None, "WrongDestination"),
    ],
)
def test_report_waits_or_blocks_by_target_state(
    answer: Registration, status: str, phase: str | None, reason: str
) -> None:
    outcome = report(context(workload("orders")), [answer])
    assert (outcome.status, outcome.phase, outcome.reason) == (status, phase, reason)


def test_report_puts_refusals_first_and_says_unrouted_once_nothing_is_held() -> None:
    w = workload("orders")
    waiting = registration("a", TargetState.ACCEPTED, written=False)
    refused = registration("b", TargetState.PATH_CONFLICT)
    mixed = report(context(w), [waiting, refused])
    assert (mixed.status, mixed.reason) == ("Blocked", "PathConflict")
    assert mixed.message == "r0; accepted; a has not written them yet"

    known = outputs(("a", "/0", "Accepted"))
    unrouted = report(context(w, known), [registration("a")])
    assert (unrouted.status, unrouted.reason, unrouted.message) == (
        "Ready",
        "Unrouted",
        "no API targets",
    )
    # No outputs once no aggregator holds anything: the capability is not wanted any more.
    assert (unrouted.outputs, unrouted.changed) == (None, True)


def test_report_fails_when_an_aggregator_cannot_write_and_keeps_where_it_registered() -> None:
    failing = registration("a", TargetState.ACCEPTED, written=False, problem="PushRefused: no")
    w = workload("orders")
    failed = report(context(w), [registration("b", TargetState.ACCEPTED), failing])
    assert (failed.status, failed.reason) == ("Failed", "AggregatorFailing")
    assert failed.message == "a cannot write its routes: PushRefused: no"
    # Both hostnames stay known, so a later unregistration or teardown finds them.
    assert sorted(r["hostname"] for r in failed.outputs["routes"]) == ["a", "b"]


def test_describe_lines() -> None:
    routes = {
        "routes": [
            {"hostname": "a", "paths": ["/x", "/y"], "state": "Accepted"},
            {"hostname": "b", "paths": ["/z"], "state": "PathConflict", "reason": "taken"},
        ]
    }
    assert API.describe(routes) == [
        "api:         /x, /y on a Accepted",
        "api:         /z on b PathConflict: taken",
    ]


# ---- actions against aggregators on a dev server ---------------------------------------------


def aggregator(hostname: str) -> ApiAggregator:
    return ApiAggregator.model_validate(
        {
            "metadata": {"name": "public"},
            "spec": {
                "hostname": hostname,
                "gateway": {"name": "edge", "namespace": "gateways"},
                "destination": "dev",
                "namespace": "platform",
            },
        }
    )


def aggregator_worker(
    client: Client, platform: Platform, queue: str, write: Callable[..., Any], *workflows: type
) -> Worker:
    """The ApiAggregatorWorkflow and what its writes need; `write` writes its routes."""
    return Worker(
        client,
        task_queue=queue,
        workflows=[ApiAggregatorWorkflow, *workflows],
        activities=[PlatformActivities(platform).runtime_settings, write],
    )


def writes(platform: Platform, tmp_path: Path) -> Callable[..., Any]:
    return ApiRouteActivities(platform, tmp_path / "cache").write_api_routes


class Pass:
    """What the engine does for Api in one pass, and keeps between passes (the outputs)."""

    def __init__(self, client: Client, queue: str) -> None:
        self.env = ActivityEnvironment(client)
        # The aggregators it starts run on the task queue of the activity, as in a worker.
        self.env.info = dataclasses.replace(ActivityEnvironment.default_info(), task_queue=queue)
        self.actions = ApiActions()
        self.outputs: dict[str, Any] | None = None

    def context(self, w: Workload) -> Context:
        return context(w, self.outputs)

    async def observe(self, w: Workload) -> ApiObservation:
        return await self.env.run(self.actions.observe, self.context(w))

    async def run(self, w: Workload) -> tuple[Report, str]:
        ctx = self.context(w)
        observation = await self.env.run(self.actions.observe, ctx)
        plan = API.plan(ctx, observation)
        outcome = await self.env.run(self.actions.apply, ctx, plan, observation)
        self.outputs = outcome.outputs
        return outcome, plan.summary()

    async def teardown(self, w: Workload) -> Report:
        outcome = await self.env.run(self.actions.teardown, self.context(w))
        self.outputs = None
        return outcome


async def until_routed(p: Pass, w: Workload, timeout: float = 30) -> Report:
    """Passes until the routes are written; the aggregator would nudge a workflow instead."""
    async with asyncio.timeout(timeout):
        while (outcome := (await p.run(w))[0]).status == "Waiting":
            await asyncio.sleep(0.2)
    return outcome


async def history_length(client: Client, hostname: str) -> int:
    handle = client.get_workflow_handle(f"api-aggregator/{hostname}")
    return len((await handle.fetch_history()).events)


async def test_observe_reads_and_apply_registers_only_what_differs(client, repo, queue, tmp_path):
    first, second = f"a-{queue}.example.com", f"b-{queue}.example.com"
    platform = platform_for(repo)
    async with aggregator_worker(client, platform, queue, writes(platform, tmp_path)):
        p = Pass(client, queue)
        w = workload("orders", (first, "/orders"))

        # No aggregator workflow yet: nothing held, so register (update-with-start).
        assert await p.observe(w) == ApiObservation(held={first: None})
        outcome, plan = await p.run(w)
        assert plan == f"register 1 target(s) with {first} (not registered yet)"
        assert (outcome.status, outcome.phase, outcome.reason, outcome.changed) == (
            "Waiting",
            "Pending",
            "AggregatorPending",
            True,
        )

        # An idle pass reads: nothing reaches the aggregator's history.
        events = await history_length(client, first)
        outcome, plan = await p.run(w)
        assert (plan, outcome.reason, outcome.changed) == ("", "AggregatorPending", False)
        assert await history_length(client, first) == events

        # Applied and written, the aggregator's answer turns Routed with no registration.
        await operations.apply_aggregator(client, queue, aggregator(first))
        outcome = await until_routed(p, w)
        assert (outcome.status, outcome.reason, outcome.message, outcome.changed) == (
            "Ready",
            "Routed",
            f"/orders on {first}",
            True,
        )
        assert outcome.outputs["routes"][0]["commit"]

        # A second hostname: both read at once, only the new one registered.
        w = workload("orders", (first, "/orders"), (second, "/o"))
        outcome, plan = await p.run(w)
        assert plan == f"register 1 target(s) with {second} (not registered yet)"
        assert (outcome.status, outcome.reason) == ("Waiting", "AggregatorPending")
        assert [r["hostname"] for r in outcome.outputs["routes"]] == [first, second]

        # The first dropped from the spec: unregistered, as it is known from the outputs.
        w = workload("orders", (second, "/o"))
        outcome, plan = await p.run(w)
        assert plan == f"unregister from {first} (spec.api no longer names it)"
        assert [r["hostname"] for r in outcome.outputs["routes"]] == [second]
        status = await operations.aggregator_status(client, first)
        assert status.entries == []

        # Deleted: unregistered from the second, whose aggregator, never applied, then ends
        # and reads as holding nothing.
        gone = await p.teardown(w)
        assert (gone.reason, gone.message) == ("Deleted", f"unregistered from {second}")
        handle = client.get_workflow_handle(f"api-aggregator/{second}")
        await handle.result()
        assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
        assert await p.observe(w) == ApiObservation(held={second: None})


async def test_a_refused_target_claims_the_path_once_released(client, repo, queue, tmp_path):
    hostname = f"{queue}.example.com"
    platform = platform_for(repo)
    async with aggregator_worker(client, platform, queue, writes(platform, tmp_path)):
        await operations.apply_aggregator(client, queue, aggregator(hostname))
        orders, admin = Pass(client, queue), Pass(client, queue)
        holder = workload("orders", (hostname, "/orders"))
        await until_routed(orders, holder)

        claimant = workload("admin", (hostname, "/orders/admin"))
        outcome, _ = await admin.run(claimant)
        assert (outcome.status, outcome.reason) == ("Blocked", "PathConflict")
        assert outcome.message == (
            f"path /orders/admin on {hostname} would be shadowed by /orders to workload shop/orders"
        )
        # Still refused: registering again decides the same, and nothing changed.
        outcome, plan = await admin.run(claimant)
        assert plan.startswith(f"register 1 target(s) with {hostname} (PathConflict")
        assert (outcome.reason, outcome.changed) == ("PathConflict", False)

        await orders.teardown(holder)
        outcome = await until_routed(admin, claimant)
        assert (outcome.reason, outcome.message) == ("Routed", f"/orders/admin on {hostname}")


async def test_an_aggregator_that_cannot_write_fails_the_pass(client, tmp_path, queue):
    hostname = f"{queue}.example.com"
    # A state store that does not exist: every write of the aggregator fails.
    platform = platform_for(tmp_path / "missing.git")
    async with aggregator_worker(client, platform, queue, writes(platform, tmp_path)):
        await operations.apply_aggregator(client, queue, aggregator(hostname))
        p = Pass(client, queue)
        w = workload("orders", (hostname, "/orders"))
        async with asyncio.timeout(60):
            while (outcome := (await p.run(w))[0]).status != "Failed":
                await asyncio.sleep(0.5)
        assert outcome.reason == "AggregatorFailing"
        assert outcome.message.startswith(f"{hostname} cannot write its routes: ")


# ---- the aggregator tells a workload to look again only once its routes are written ----------


# Unsandboxed: the sandbox would re-import this test module and all it imports.
@workflow.defn(name="WorkloadWorkflow", sandboxed=False)
class Listener:
    """Stands in for the workload the nudges go to (no WorkloadWorkflow runs here)."""

    def __init__(self) -> None:
        self.nudges = 0

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.signal
    def reconcile(self) -> None:
        self.nudges += 1

    @workflow.query
    def count(self) -> int:
        return self.nudges


class GatedWrites:
    """The real write, each one held until the test lets it through."""

    def __init__(self, write: Callable[..., Any]) -> None:
        self.real = write
        self.started = 0
        self.allowed = asyncio.Semaphore(0)

    @activity.defn(name="write_api_routes")
    async def write(self, request: RoutesInput) -> ManifestsResult:
        self.started += 1
        await self.allowed.acquire()
        return await self.real(request)


async def until(predicate: Callable[[], Any], timeout: float = 30) -> None:
    """Poll `predicate` (plain or async) until it holds."""
    async with asyncio.timeout(timeout):
        while not ((await r) if inspect.isawaitable(r := predicate()) else r):
            await asyncio.sleep(0.1)


async def test_a_target_registered_during_a_write_is_nudged_after_the_next(
    client, repo, queue, tmp_path
):
    hostname = f"{queue}.example.com"
    platform = platform_for(repo)
    gated = GatedWrites(writes(platform, tmp_path))
    async with aggregator_worker(client, platform, queue, gated.write, Listener):
        w = workload("orders", (hostname, "/orders"), system=queue)
        listener = await client.start_workflow(Listener.run, id=w.workflow_id, task_queue=queue)
        await operations.apply_aggregator(client, queue, aggregator(hostname))
        await until(lambda: gated.started == 1)

        # Registered while the first write is under way: that write does not cover it.
        p = Pass(client, queue)
        outcome, _ = await p.run(w)
        assert outcome.reason == "RoutesNotWritten"
        gated.allowed.release()
        await until(lambda: gated.started == 2)
        assert await listener.query(Listener.count) == 0
        gated.allowed.release()
        await until(lambda: nudges(listener, 1))
        assert (await p.run(w))[0].reason == "Routed"
        await listener.terminate()


async def nudges(listener: Any, count: int) -> bool:
    return await listener.query(Listener.count) == count
