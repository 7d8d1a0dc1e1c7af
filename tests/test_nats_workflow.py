"""NATS credentials through WorkloadWorkflow: real Temporal, the Synadia emulator with its real
nats-server, git, and sealing with a throwaway controller key whose private half opens what was
delivered, as the cluster's controller would."""

import asyncio
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.secrets import ControllerKeys, assert_nowhere, unsealed
from support.stack import (
    bare_repo,
    commits,
    git,
    platform_for,
    read,
    running_worker,
    start_time_skipping,
    task_queue,
)
from support.synadia import connect_refusal, connect_with_creds, users_named, write_creds
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

from emulators.synadia import DEFAULT_TOKEN, SynadiaEmulator
from idp.models import Workload
from idp.platform import Platform, SynadiaConfig
from idp.sealing import CertificateSource
from idp.synadia import SynadiaClient
from starter.operations import apply_workload
from workflows.messages import RotateRequest, WaitReadyRequest, WorkloadStatus
from workflows.state import Phase
from workflows.workload import WorkloadWorkflow

TOKEN_ENV = "IDP_TEST_SYNADIA_TOKEN"
SEALED = "dev/shop/cart/sealedsecret-nats.yaml"


@pytest.fixture(scope="module")
async def emulator(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SynadiaEmulator]:
    async with SynadiaEmulator.running(tmp_path_factory.mktemp("synadia")) as emu:
        yield emu


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(TOKEN_ENV, DEFAULT_TOKEN)
    caplog.set_level(logging.DEBUG)


def nats_platform(repo: Path, emu: SynadiaEmulator, keys: ControllerKeys, **kw) -> Platform:
    base = platform_for(repo, **kw)
    destination = base.destinations[0].model_copy(
        update={"sealing": CertificateSource(file=keys.cert_file)}
    )
    synadia = SynadiaConfig(
        url=emu.api_url,
        token_env=TOKEN_ENV,
        system=emu.system_name,
        default_account=emu.account_name,
    )
    return base.model_copy(update={"destinations": [destination], "synadia": synadia})


def workload(system: str, **nats: object) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": "cart", "system": system},
            "spec": {
                "owner": "team-shop",
                "destination": "dev",
                "namespace": "shop",
                "nats": {
                    "permissions": {
                        "publish": {"allow": ["orders.>"]},
                        "subscribe": {"allow": ["orders.>"]},
                    },
                    **nats,
                },
            },
        }
    )


def delivered_creds(repo: Path, keys: ControllerKeys) -> str:
    return unsealed(repo, SEALED, keys.key)["nats.creds"]


async def ready(handle: WorkflowHandle, generation: int = 1) -> WorkloadStatus:
    status = await handle.execute_update(
        WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=generation, timeout_seconds=60)
    )
    assert status.phase == Phase.READY, status.conditions
    return status


async def until(handle: WorkflowHandle, predicate, timeout: float = 30) -> WorkloadStatus:
    async with asyncio.timeout(timeout):
        while not predicate(status := await handle.query(WorkloadWorkflow.status)):
            await asyncio.sleep(0.1)
    return status


async def test_delivered_credentials_work_rotate_and_die_with_the_workload(
    client: Client, emulator: SynadiaEmulator, keys: ControllerKeys, tmp_path: Path, caplog
) -> None:
    queue = task_queue()
    repo = bare_repo(tmp_path / "state.git")
    w = workload(queue)
    platform = nats_platform(repo, emulator, keys)
    async with running_worker(client, platform, queue, tmp_path / "cache"):
        await apply_workload(client, queue, w)
        handle = client.get_workflow_handle(w.workflow_id)
        status = await ready(handle)
        user_id, public_key = status.outputs["Nats"]["userId"], status.outputs["Nats"]["publicKey"]
        assert status.outputs["Credentials"]["version"] == 1
        first = delivered_creds(repo, keys)
        creds_v1 = write_creds(tmp_path, "v1", first)
        probe = await connect_with_creds(emulator.nats_url, creds_v1)
        received = await probe.nc.subscribe("orders.created")
        await probe.nc.publish("orders.created", b"{}")
        assert (await received.next_msg(timeout=3)).data == b"{}"
        # Outside what the spec allows: the server refuses it.
        await probe.nc.publish("payments.completed", b"{}")
        assert "permissions violation" in (await probe.wait_for_error("permissions violation"))
        await probe.nc.close()

        # Reconcile passes observe (one delivery check each); they never issue.
        for checks in (1, 2, 3):
            await handle.signal(WorkloadWorkflow.reconcile)
            await _passes(handle, checks)
        assert emulator.creds_issued(user_id) == 1

        # The SealedSecret deleted by hand: re-issued and delivered once, reported as drift.
        clone = tmp_path / "someone"
        git("clone", "--quiet", str(repo), str(clone))
        git("rm", "--quiet", SEALED, cwd=clone)
        git("commit", "--quiet", "-m", "hand delete", cwd=clone)
        git("push", "--quiet", "origin", "main", cwd=clone)
        before = len(commits(repo))
        await handle.signal(WorkloadWorkflow.reconcile)
        status = await until(handle, lambda s: s.outputs["Credentials"]["version"] == 2)
        assert status.outputs["Credentials"]["reason"] == "DeliveryDrift"
        assert len(commits(repo)) == before + 1
        first = delivered_creds(repo, keys)
        creds_v1 = write_creds(tmp_path, "v1b", first)
        assert emulator.creds_issued(user_id) == 2

        # A leak: rotate now and revoke the old key at once.
        await handle.signal(
            WorkloadWorkflow.rotate_credentials,
            RotateRequest(reason="leaked in a ticket", revoke_old="now"),
        )
        status = await until(handle, lambda s: s.outputs["Credentials"]["version"] == 3)
        assert status.outputs["Credentials"]["reason"] == "Requested"
        assert any(e.message.startswith("revoked") for e in status.events)
        assert emulator.creds_issued(user_id) == 3
        second = delivered_creds(repo, keys)
        assert second != first
        creds_v2 = write_creds(tmp_path, "v2", second)
        probe = await connect_with_creds(emulator.nats_url, creds_v2)
        await probe.nc.close()
        assert await connect_refusal(emulator.nats_url, creds_v1)

        await handle.signal(WorkloadWorkflow.delete)
        await handle.result()
        history = await handle.fetch_history()
    assert await connect_refusal(emulator.nats_url, creds_v2)
    assert read(repo, SEALED) is None
    # This server's client is plain, so the history's payloads are readable here; the user's
    # public key travels in them beside the creds, so finding it shows they were read.
    assert_nowhere([first, second], [repo], caplog, histories=[history], seen=[public_key])


async def test_an_unknown_account_is_answered_at_once_not_after_the_wait(
    client: Client, emulator: SynadiaEmulator, keys: ControllerKeys, tmp_path: Path
) -> None:
    # Retrying cannot create the account: wait_ready answers with the reason as soon as the
    # pass ends, well inside its 300 s timeout, and issues nothing.
    queue = task_queue()
    repo = bare_repo(tmp_path / "state.git")
    w = workload(queue, account="quoting")
    async with running_worker(client, nats_platform(repo, emulator, keys), queue, tmp_path / "c"):
        await apply_workload(client, queue, w)
        handle = client.get_workflow_handle(w.workflow_id)
        async with asyncio.timeout(30):
            status = await handle.execute_update(
                WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=1, timeout_seconds=300)
            )
    assert status.phase == Phase.DEGRADED
    [blocked] = [c for c in status.conditions if c.permanent]
    assert (blocked.type, blocked.reason) == ("Nats", "UnknownAccount")
    assert "quoting" in blocked.message
    assert status.outputs.get("Credentials") is None


async def _passes(handle: WorkflowHandle, count: int) -> None:
    """Wait until the workflow ran Credentials (a delivery check or an issuance) `count` times."""
    async with asyncio.timeout(30):
        while True:
            history = await handle.fetch_history()
            checks = sum(
                1
                for e in history.events
                if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
                and e.activity_task_scheduled_event_attributes.activity_type.name
                == "Credentials.reconcile"
            )
            if checks >= count:
                return
            await asyncio.sleep(0.1)


@pytest.mark.parametrize(
    ("ttl", "days", "issued"),
    [
        # ttl 1d, refreshBefore a third of it: issued at 0h, then every 16h up to 112h.
        ("1d", 5, 8),
        # ttl 7d: issued at day 0, then every 4d16h up to day 28. bench/churn.py prints the
        # same month beside the old pipeline; here it runs with the slow suite.
        pytest.param("7d", 30, 7, marks=pytest.mark.faults),
    ],
)
async def test_simulated_days_issue_exactly_the_scheduled_refreshes(
    emulator: SynadiaEmulator,
    keys: ControllerKeys,
    tmp_path: Path,
    ttl: str,
    days: int,
    issued: int,
) -> None:
    repo = bare_repo(tmp_path / "state.git")
    # A drift check every few simulated hours, not every ten minutes: five days stay a few dozen
    # passes, and each refresh wakes the workflow on its own deadline anyway.
    platform = nats_platform(
        repo, emulator, keys, drift_interval=timedelta(hours=4), search_attributes=False
    )
    w = workload(f"sim{uuid.uuid4().hex[:6]}", credentials={"ttl": ttl})
    async with await start_time_skipping() as env:
        async with running_worker(env.client, platform, "idp", tmp_path / "cache"):
            await apply_workload(env.client, "idp", w)
            handle = env.client.get_workflow_handle(w.workflow_id)
            status = await ready(handle)
            # Six hours at a time: one long skip holds a single RPC open while every pass in it
            # runs, and on a loaded machine a day of passes outlasts the RPC's timeout.
            for _ in range(days * 4):
                await env.sleep(timedelta(hours=6))
            status = await handle.query(WorkloadWorkflow.status)
    user_id = status.outputs["Nats"]["userId"]
    deliveries = git("log", "--format=%H", "main", "--", SEALED, cwd=repo).split()
    assert emulator.creds_issued(user_id) == issued
    assert len(deliveries) == issued
    assert status.outputs["Credentials"]["version"] == issued
    assert len(commits(repo)) == issued + 1  # the deliveries and the ServiceAccount


async def test_onboarding_through_synadia_faults_converges_without_duplicates(
    client: Client, emulator: SynadiaEmulator, keys: ControllerKeys, tmp_path: Path
) -> None:
    queue = task_queue()
    repo = bare_repo(tmp_path / "state.git")
    platform = nats_platform(repo, emulator, keys)
    items = [
        workload(queue).model_copy(
            update={"metadata": workload(queue).metadata.model_copy(update={"name": f"w{i:02}"})}
        )
        for i in range(50)
    ]
    emulator.set_faults(error_rate=0.2, throttle_rate=0.1, seed=7)
    try:
        async with running_worker(client, platform, queue, tmp_path / "cache"):
            await asyncio.gather(*(apply_workload(client, queue, w) for w in items))
            statuses = await asyncio.gather(
                *(ready(client.get_workflow_handle(w.workflow_id)) for w in items)
            )
    finally:
        emulator.set_faults()
    async with SynadiaClient(emulator.api_url, DEFAULT_TOKEN) as synadia:
        users = await synadia.list_nats_users(emulator.account_id)
    names = [u.name for u in users if u.name.startswith(f"{queue}-")]
    assert sorted(names) == sorted(f"{queue}-w{i:02}" for i in range(50))
    assert all(emulator.creds_issued(s.outputs["Nats"]["userId"]) == 1 for s in statuses)
    injected = emulator.counters()["injected"]
    assert sum(injected.values()) > 0, "the faults were never injected"


async def test_after_a_rotation_the_old_key_works_until_the_grace_period_ends(
    client: Client, emulator: SynadiaEmulator, keys: ControllerKeys, tmp_path: Path
) -> None:
    queue = task_queue()
    repo = bare_repo(tmp_path / "state.git")
    w = workload(queue, credentials={"rotationGrace": "6s"})
    async with running_worker(client, nats_platform(repo, emulator, keys), queue, tmp_path / "c"):
        await apply_workload(client, queue, w)
        handle = client.get_workflow_handle(w.workflow_id)
        await ready(handle)
        old = write_creds(tmp_path, "old", delivered_creds(repo, keys))
        await handle.signal(WorkloadWorkflow.rotate_credentials, RotateRequest(reason="yearly"))
        status = await until(handle, lambda s: s.outputs["Credentials"]["version"] == 2)
        new = write_creds(tmp_path, "new", delivered_creds(repo, keys))
        # Within the grace period both keys connect, so the workload can roll over.
        assert any(e.message.startswith("rotated key") for e in status.events)
        assert not any(e.message.startswith("revoked") for e in status.events)
        probe = await connect_with_creds(emulator.nats_url, old)
        await probe.nc.close()
        # The credential deadline wakes the workflow; no signal is needed to revoke.
        await until(handle, lambda s: any(e.message.startswith("revoked") for e in s.events))
        assert await connect_refusal(emulator.nats_url, old)
        probe = await connect_with_creds(emulator.nats_url, new)
        await probe.nc.close()


async def killed_once(
    client: Client,
    emulator: SynadiaEmulator,
    keys: ControllerKeys,
    tmp_path: Path,
    w: Workload,
    queue: str,
    reached: Callable[[], Awaitable[bool]],
) -> WorkloadStatus:
    """Apply `w` on a worker process, SIGKILL it once `reached` (the emulator's faults, set by
    the caller, hold it there), and let a second worker finish the job; the status it ends at."""
    repo = bare_repo(tmp_path / "state.git")
    platform_file = tmp_path / "platform.yaml"
    platform_file.write_text(
        yaml.safe_dump(nats_platform(repo, emulator, keys).model_dump(mode="json"))
    )
    log = tmp_path / "worker.log"

    async def start_worker(cache: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker",
            "--platform", str(platform_file), "--cache-dir", str(tmp_path / cache),
            "--address", client.service_client.config.target_host,
            "--task-queue", queue, "--insecure-no-encryption",
            stdout=log.open("ab"), stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip

    worker = await start_worker("cache1")
    try:
        await apply_workload(client, queue, w)
        async with asyncio.timeout(60):
            while not await reached():
                assert worker.returncode is None, log.read_text()
                await asyncio.sleep(0.05)
        worker.kill()
        await worker.wait()
        emulator.set_faults()
        worker = await start_worker("cache2")
        return await ready(client.get_workflow_handle(w.workflow_id))
    finally:
        emulator.set_faults()
        if worker.returncode is None:
            worker.terminate()
            await worker.wait()


@pytest.mark.parametrize(
    "faults",
    [
        # Creds downloads fail for a while: the kill lands after the user exists and before
        # any creds were downloaded.
        pytest.param({"fail_next": [503] * 50, "fail_match": "/creds"}, id="before-download"),
        # The create's answer is held back after the user exists: the kill lands before the
        # worker heard of it. Names need not be unique (the published API documents no 409),
        # so only the retried activity's look by name keeps a second create from making a
        # second user.
        pytest.param(
            {"hold_match": "POST /accounts", "hold_ms": 60_000}, id="before-the-create-answered"
        ),
    ],
)
async def test_a_worker_killed_after_creating_the_user_makes_one_user(
    client: Client,
    emulator: SynadiaEmulator,
    keys: ControllerKeys,
    tmp_path: Path,
    faults: dict[str, Any],
) -> None:
    queue = task_queue()
    name = f"{queue}-cart"

    async def user_made() -> bool:
        return bool(users_named(emulator, name))

    emulator.set_faults(**faults)
    status = await killed_once(client, emulator, keys, tmp_path, workload(queue), queue, user_made)
    assert users_named(emulator, name) == [status.outputs["Nats"]["userId"]]
    assert emulator.creds_issued(status.outputs["Nats"]["userId"]) == 1
    assert status.outputs["Credentials"]["version"] == 1


async def test_spec_nats_removed_releases_the_user_and_the_delivered_secret(
    client: Client, emulator: SynadiaEmulator, keys: ControllerKeys, tmp_path: Path
) -> None:
    # Dropping spec.nats on a live workload: the next pass tears Credentials then Nats down
    # (the sealed secret goes, the keys are revoked and the user deleted), and the workload
    # stays Ready with what it still asks for.
    queue = task_queue()
    repo = bare_repo(tmp_path / "state.git")
    w = workload(queue)
    async with running_worker(client, nats_platform(repo, emulator, keys), queue, tmp_path / "c"):
        await apply_workload(client, queue, w)
        handle = client.get_workflow_handle(w.workflow_id)
        status = await ready(handle)
        user_id = status.outputs["Nats"]["userId"]
        creds = write_creds(tmp_path, "v1", delivered_creds(repo, keys))
        without = w.model_copy(update={"spec": w.spec.model_copy(update={"nats": None})})
        await apply_workload(client, queue, without)
        status = await ready(handle, 2)

    assert not {"Nats", "Credentials"} & set(status.outputs)
    assert [c.type for c in status.conditions] == ["Manifests"]
    released = [e.step for e in status.events if e.message.startswith("released: ")]
    assert released == ["Credentials", "Nats"]
    assert read(repo, SEALED) is None
    assert await connect_refusal(emulator.nats_url, creds)
    assert user_id not in emulator.plane.state.users
