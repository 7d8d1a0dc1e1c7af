"""The fleet observer on a real dev server and a real git state store: workloads found in sync
sleep with no timer, one sweep per drift interval reads the fleet, and only a workload whose
outside changed is woken, repaired within one interval.

Workloads here hold manifests only (the state store is the one outside part that needs no
emulator); the registry's fleet read has its own tests against moto (test_registry_fleet.py).
"""

import dataclasses
import itertools
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.cli import Cli, eventually, write_platform
from support.stack import (
    git,
    platform_for,
    read,
    running_worker,
    start_dev_server,
    start_listed,
    temporal_cli,
)
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.fleet import FleetActivities, SweepResult
from idp.capability import Actions, Context, Fingerprint, Report
from idp.fleet import entry, fits
from idp.models import Workload
from idp.platform import Platform
from starter.operations import apply_workload
from worker import FleetObserverError, start_fleet_observer, with_fleet_observer
from workflows import search_attributes as sa
from workflows.messages import WaitReadyRequest
from workflows.observer import observer_id, sweep_period
from workflows.state import Phase
from workflows.workload import WorkloadWorkflow

DRIFT = timedelta(seconds=4)
# A watched workload's own check is a week away (workflows/steps.py, WATCHED_BACKSTOP).
WEEKISH = timedelta(days=6)


def workload(name: str) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": name, "system": "fleet"},
            "spec": {"owner": "team-demo", "destination": "dev", "namespace": "shop"},
        }
    )


async def entries(handle: WorkflowHandle) -> list[str]:
    """What the workload published for the observer; [] when it is not watched."""
    description = await handle.describe()
    return description.typed_search_attributes.get(sa.FLEET) or []


async def watched(handle: WorkflowHandle) -> bool:
    return bool(await entries(handle))


async def swept(client: Client, queue: str) -> list[SweepResult]:
    """What each sweep the observer has finished reported, oldest first."""
    history = await client.get_workflow_handle(observer_id(queue)).fetch_history()
    results = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            payloads = event.activity_task_completed_event_attributes.result.payloads
            results += await client.data_converter.decode(payloads, [SweepResult])
    return results


async def sweeps(client: Client, queue: str) -> int:
    return len(await swept(client, queue))


async def sweep_times(client: Client, queue: str) -> list[tuple[datetime, timedelta]]:
    """When each finished sweep began (after waiting for its time) and how long it took."""
    times = []
    for result in await swept(client, queue):
        assert result.began is not None, "this code's sweeps say when they began"
        times.append((result.began, timedelta(seconds=result.took_seconds)))
    return times


async def length(handle: WorkflowHandle) -> int:
    return len((await handle.fetch_history()).events)


@pytest.fixture
def platform(repo: Path) -> Platform:
    return platform_for(repo, DRIFT, fleet_observer=True)


@asynccontextmanager
async def watching(
    client: Client, platform: Platform, queue: str, cache: Path
) -> AsyncIterator[dict[str, WorkflowHandle]]:
    """A worker and its fleet observer, and three workloads it watches, by name; named after
    the task queue, since workflow ids and state-store directories outlive a test on the
    session's server. Applying again what runs already changes nothing."""
    async with running_worker(client, platform, queue, cache):
        await start_fleet_observer(client, platform, queue)
        handles = {}
        for name in (f"{n}-{queue}" for n in ("cart", "till", "shelf")):
            await apply_workload(client, queue, workload(name))
            handles[name] = client.get_workflow_handle(workload(name).workflow_id)
        for handle in handles.values():
            status = await handle.execute_update(
                WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=1, timeout_seconds=60)
            )
            assert status.phase == Phase.READY
        for handle in handles.values():
            await eventually(lambda h=handle: watched(h), bool, timeout=30)
        yield handles
        await client.get_workflow_handle(observer_id(queue)).terminate()


@pytest.fixture
async def fleet(
    client: Client, platform: Platform, queue: str, tmp_path: Path
) -> AsyncIterator[dict[str, WorkflowHandle]]:
    async with watching(client, platform, queue, tmp_path / "cache") as handles:
        yield handles


async def test_a_watched_workload_sleeps_without_a_timer_while_the_observer_sweeps(
    client: Client, repo: Path, queue: str, tmp_path: Path, fleet: dict[str, WorkflowHandle]
) -> None:
    before = {name: await length(h) for name, h in fleet.items()}
    first = await sweeps(client, queue)
    await eventually(lambda: _more(client, queue, first + 2), bool, timeout=4 * 4 + 30)
    after = {name: await length(h) for name, h in fleet.items()}
    # Not one event: no drift timer fired, no activity ran.
    assert after == before
    # Only this task queue's workloads: the session's server holds other tests' watched ones,
    # whose capabilities this worker's platform file may not even offer.
    last = (await swept(client, queue))[-1]
    assert (last.members, last.woken, last.failed) == (len(fleet), 0, [])
    for handle in fleet.values():
        status = await handle.query(WorkloadWorkflow.status)
        # Its own check, only should the observer be gone, is a week away.
        assert status.watched and status.next_check_at is not None
        assert status.next_check_at - datetime.now(UTC) > WEEKISH
    # idpctl describe says who checks it, and when it would check on its own.
    address = client.service_client.config.target_host
    cli = Cli(address, queue, write_platform(tmp_path / "platform.yaml", repo, address))
    name = next(iter(fleet))
    text = (await cli.idpctl("describe", "workload", f"fleet/{name}")).stdout
    line = r"^Next check:   each fleet observer sweep \(its own: \S+\)$"
    assert re.search(line, text, re.M), text


async def test_a_hand_edit_wakes_only_its_workload_and_is_repaired_within_one_interval(
    client: Client, queue: str, repo: Path, tmp_path: Path, fleet: dict[str, WorkflowHandle]
) -> None:
    edited_name, *other_names = fleet
    path = f"dev/shop/{edited_name}/serviceaccount.yaml"
    original = read(repo, path)
    assert original is not None
    others = {name: await length(fleet[name]) for name in other_names}
    recorded = await entries(fleet[edited_name])

    clone = tmp_path / "person"
    git("clone", "-q", str(repo), str(clone))
    (clone / path).write_text(original + "# edited by hand\n")
    git("commit", "-qam", "a person edits a manifest", cwd=clone)
    git("push", "-q", "origin", "HEAD:main", cwd=clone)
    edited = time.monotonic()

    async def repaired() -> bool:
        return read(repo, path) == original

    await eventually(repaired, bool, timeout=30)
    took = time.monotonic() - edited
    print(f"repaired {took:.2f} s after the edit")
    # The next sweep finds it and the pass it wakes repairs it: within the interval when the
    # repair takes no longer than the sweeps' lead (1 s at this 4 s interval; the margin is for
    # a loaded machine). The cadence that makes it so is checked below.
    assert took < DRIFT.total_seconds() + 5, took

    async def conditions() -> list[tuple[str, str]]:
        status = await fleet[edited_name].query(WorkloadWorkflow.status)
        return [(c.type, c.reason) for c in status.conditions]

    # The push lands before the workflow hears that the activity which made it has completed.
    await eventually(conditions, lambda found: found == [("Manifests", "DriftRepaired")])
    assert {name: await length(fleet[name]) for name in others} == others
    # The pass that repaired it cannot tell what its commit left (no fingerprint), so the
    # workload checks on its own one interval later, finds it in sync, and sleeps watched again
    # on the same content as before the edit.

    async def watched_again() -> bool:
        status = await fleet[edited_name].query(WorkloadWorkflow.status)
        asleep = status.next_check_at and status.next_check_at - datetime.now(UTC) > WEEKISH
        return bool(asleep) and await entries(fleet[edited_name]) == recorded

    await eventually(watched_again, bool, timeout=30)
    assert {name: await length(fleet[name]) for name in others} == others

    # So that a drift made just after a sweep read it is repaired, not only found, within one
    # interval, each sweep starts the last one's duration and a repair's lead early.
    await eventually(lambda: sweeps(client, queue), lambda done: done >= 3, timeout=30)
    times = await sweep_times(client, queue)
    for (began, took), (following, _) in itertools.pairwise(times):
        lag = following - began - sweep_period(DRIFT, took)
        assert abs(lag) < timedelta(milliseconds=500), (began, took, following)


async def test_a_sweep_waiting_for_its_time_moves_to_another_worker_when_its_own_stops(
    client: Client, repo: Path, queue: str, tmp_path: Path
) -> None:
    """A sweep waits for its time in its activity, with no timer and no heartbeat (both are
    billed): a worker that shuts down meanwhile gives it up at once, rather than holding its
    shutdown until then, and the next worker sweeps at the planned time, not earlier."""
    interval = timedelta(seconds=20)
    platform = platform_for(repo, interval, fleet_observer=True)
    observer = client.get_workflow_handle(observer_id(queue))

    async def waiting() -> bool:
        pending = (await observer.describe()).raw_description.pending_activities
        return (
            len(pending) == 1
            and pending[0].state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
        )

    async with running_worker(client, platform, queue, tmp_path / "first"):
        await start_fleet_observer(client, platform, queue)
        await eventually(lambda: sweeps(client, queue), lambda done: done >= 1, timeout=30)
        await eventually(waiting, bool, timeout=30)
        stopping = time.monotonic()
    stopped_in = time.monotonic() - stopping
    # The wait would have held the shutdown for most of the interval.
    assert stopped_in < 5, stopped_in
    async with running_worker(client, platform, queue, tmp_path / "second"):
        await eventually(lambda: sweeps(client, queue), lambda done: done >= 2, timeout=40)
    await observer.terminate()
    (first, took), (second, _) = (await sweep_times(client, queue))[:2]
    lag = second - first - sweep_period(interval, took)
    assert abs(lag) < timedelta(milliseconds=500), (first, took, second)


async def _more(client: Client, queue: str, count: int) -> bool:
    return await sweeps(client, queue) >= count


async def test_a_failing_fleet_read_makes_every_workload_on_it_check_on_its_own(
    client: Client, queue: str, repo: Path, fleet: dict[str, WorkflowHandle]
) -> None:
    # The state store goes away: the sweep cannot fetch, so it cannot tell who drifted.
    moved = repo.with_name("elsewhere.git")
    repo.rename(moved)
    try:

        async def all_checked() -> bool:
            for handle in fleet.values():
                status = await handle.query(WorkloadWorkflow.status)
                if status.phase != Phase.DEGRADED:
                    return False
            return True

        # Each woken workload's own pass finds the store unreachable and says so.
        await eventually(all_checked, bool, timeout=30)
    finally:
        moved.rename(repo)
    # An unreachable store is a permanent failure (wait_ready answers at once), yet the loop
    # still retries after its backoff and recovers by itself once the store is back.
    for handle in fleet.values():

        async def ready(h: WorkflowHandle = handle) -> bool:
            return (await h.query(WorkloadWorkflow.status)).phase == Phase.READY

        await eventually(ready, bool, timeout=30)


async def test_a_changed_platform_file_wakes_every_watched_workload(
    client: Client, platform: Platform, queue: str, tmp_path: Path
) -> None:
    async with watching(client, platform, queue, tmp_path / "cache") as handles:
        before = {name: await entries(h) for name, h in handles.items()}
    # The workers restart with another platform file (a longer backoff, say): every plan may
    # differ now, so every workload runs a pass and is watched again under the new file.
    changed = platform.model_copy(
        update={"reconcile": platform.reconcile.model_copy(update={"max_backoff": DRIFT})}
    )
    async with watching(client, changed, queue, tmp_path / "cache") as handles:
        for name, handle in handles.items():

            async def rewatched(h: WorkflowHandle = handle, old: list[str] = before[name]) -> bool:
                now = await entries(h)
                return bool(now) and now != old

            await eventually(rewatched, bool, timeout=30)
            changed_entries = [e for e in await entries(handle) if e not in before[name]]
            assert [e.split(" ")[0] for e in changed_entries] == ["@platform"]


async def test_without_its_search_attribute_the_observer_is_refused_when_asked_and_off_when_unset(
    platform: Platform, caplog: pytest.LogCaptureFixture
) -> None:
    # A namespace set up before IdpFleet existed: watched workloads' tasks would fail on it.
    flags = sa.dev_server_args()
    older = [
        part
        for flag, value in zip(flags[::2], flags[1::2], strict=True)
        if not value.startswith(f"{sa.FLEET.name}=")
        for part in (flag, value)
    ]
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        dev_server_extra_args=[*older, "--log-level", "error"],
    )
    unset = platform.model_copy(
        update={"reconcile": platform.reconcile.model_copy(update={"fleet_observer": None})}
    )
    async with env:
        with pytest.raises(FleetObserverError) as refused:
            await with_fleet_observer(env.client, platform, env.client.namespace)
        with caplog.at_level(logging.WARNING, logger="idp.worker"):
            decided = await with_fleet_observer(env.client, unset, env.client.namespace)
    assert str(refused.value) == (
        "reconcile.fleetObserver is true, but namespace 'default' lacks the search attribute "
        "IdpFleet (KeywordList): run `idpctl platform init`, or add it to the Temporal Cloud "
        "namespace"
    )
    # Unset, the worker runs without it, tells the workflows so, and says why.
    assert decided.reconcile.fleet_observer is False
    assert [r.getMessage() for r in caplog.records] == [
        "the fleet observer is off, so every workload checks itself each drift interval: "
        "namespace 'default' lacks the search attribute IdpFleet (KeywordList); run `idpctl "
        "platform init`, or add it to the Temporal Cloud namespace, or set "
        "reconcile.fleetObserver: false to silence this"
    ]


async def test_unset_the_observer_is_on_where_the_namespace_has_its_search_attribute(
    client: Client, platform: Platform
) -> None:
    unset = platform.model_copy(
        update={"reconcile": platform.reconcile.model_copy(update={"fleet_observer": None})}
    )
    decided = await with_fleet_observer(client, unset, client.namespace)
    assert decided.reconcile.fleet_observer is True
    off = platform.model_copy(
        update={"reconcile": platform.reconcile.model_copy(update={"fleet_observer": False})}
    )
    decided = await with_fleet_observer(client, off, client.namespace)
    assert decided.reconcile.fleet_observer is False


def test_entries_too_long_for_one_search_attribute_value_leave_the_workload_unwatched() -> None:
    # The server refuses a value over 2,048 bytes (its JSON, compact), failing the task that
    # sets it: measured against the dev server, 20 entries of 100 bytes (2,061) are refused.
    long = entry("Api", Fingerprint(key="k" * 400, digest="d" * 16))
    assert not fits([long] * 5)
    assert fits([long] * 4)
    assert len(json.dumps([long] * 4, separators=(",", ":")).encode()) <= 2048


class Flaky(Actions[Any, Any]):
    """A capability's worker half whose fleet read fails the first `failures` times."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    async def observe(self, ctx: Context) -> Any:
        raise NotImplementedError

    async def apply(self, ctx: Context, plan: Any, observation: Any) -> Report:
        raise NotImplementedError

    async def teardown(self, ctx: Context) -> Report:
        raise NotImplementedError

    async def fleet_observe(self, keys: list[str]) -> dict[str, str]:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("a blip")
        return dict.fromkeys(keys, "same")


@pytest.mark.parametrize(("failures", "found"), [(1, {"k": "same"}), (3, None)])
async def test_a_fleet_read_is_retried_before_it_counts_as_failed(
    client: Client, platform: Platform, failures: int, found: dict[str, str] | None
) -> None:
    # Failed, it wakes every workload on the capability: a blip must not.
    flaky = Flaky(failures)
    sweep = FleetActivities(client, platform, {"Flaky": flaky})
    assert await sweep._read("Flaky", ["k"]) == found
    assert flaky.calls == min(failures + 1, 3)


async def test_the_sweep_lists_its_members_over_every_page_of_the_listing(
    platform: Platform, queue: str
) -> None:
    # Two to a page, so five workloads take three pages. No worker: they stay as started.
    async with await start_dev_server(
        "--dynamic-config-value", "frontend.visibilityMaxPageSize=2"
    ) as env:
        client = env.client
        watched = {f"w{n}": Fingerprint(key=f"dev/shop/w{n}", digest="d1") for n in range(4)}
        await start_listed(client, "workload/fleet/unwatched", queue)
        for name, fingerprint in watched.items():
            published = SearchAttributePair(sa.FLEET, [entry("Manifests", fingerprint)])
            await start_listed(client, f"workload/fleet/{name}", queue, published)
        # Another task queue's, which has a fleet observer of its own.
        elsewhere = SearchAttributePair(sa.FLEET, ["x y z"])
        await start_listed(client, "workload/fleet/elsewhere", f"{queue}-other", elsewhere)
        kind = "IdpKind = 'Workload'"
        await eventually(lambda: client.count_workflows(kind), lambda c: c.count == 6, timeout=30)
        activities = ActivityEnvironment(client)
        activities.info = dataclasses.replace(activities.info, task_queue=queue)
        members = await activities.run(FleetActivities(client, platform, {})._members)
    assert {m.workflow_id: m.entries for m in members} == {
        f"workload/fleet/{name}": {"Manifests": fingerprint}
        for name, fingerprint in watched.items()
    }
