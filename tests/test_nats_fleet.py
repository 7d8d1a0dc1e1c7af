"""The Nats capability's fleet read against the Synadia emulator, over real HTTP: the digest it
gives a workload is the one the workload's own pass fingerprinted for the same user; every change
by hand that a pass repairs or reacts to changes it (or drops the key), and what no pass acts on
does not; and a sweep costs one listing per account, whether it watches one workload or fifty."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support.secrets import ControllerKeys
from temporalio.testing import ActivityEnvironment
from test_manifests_fleet import git_processes, subcommands  # noqa: F401 (a fixture)
from test_nats_capabilities import (  # noqa: F401 (fixtures)
    CREATE_USER,
    CREDENTIALS,
    LIST_USERS,
    NATS,
    PERMISSIONS,
    TOKEN_ENV,
    Workflow,
    crowd,
    emulator,
    flow,
    platform,
    platform_for,
    remote,
    someone_changes,
    total_calls,
    workload,
)

from activities.capabilities import capability_activities
from capabilities import credentials, nats
from capabilities.credentials import CredentialsOutputs
from capabilities.nats import NatsOutputs
from capabilities.nats.actions import NatsActions
from emulators.synadia import DEFAULT_TOKEN, SynadiaEmulator
from emulators.synadia.controlplane import AccountSpec
from idp.capability import Fingerprint
from idp.credentials import IssueReason
from idp.models import Delivery
from idp.platform import Platform
from idp.synadia import JwtSettings, Permission, ResponsePermission, SynadiaClient

NATS_CAPABILITY = nats.capability


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, DEFAULT_TOKEN)


def fleet_read(wf: Workflow) -> NatsActions:
    actions = wf.actions[NATS]
    assert isinstance(actions, NatsActions)
    return actions


async def in_sync(wf: Workflow) -> Fingerprint:
    """The fingerprint a workload records when its pass finds the user in sync."""
    ctx = wf.context(NATS_CAPABILITY, datetime.now(UTC))
    observation = await wf.actions[NATS].observe(ctx)
    assert not NATS_CAPABILITY.plan(ctx, observation)
    fingerprint = NATS_CAPABILITY.fingerprint(ctx, observation)
    assert fingerprint is not None
    return fingerprint


async def test_what_a_pass_records_is_what_the_fleet_read_finds(
    platform: Platform,  # noqa: F811 (the fixture imported above)
    emulator: SynadiaEmulator,  # noqa: F811
    tmp_path: Path,
) -> None:
    wf = flow(platform, tmp_path)
    reconcile = capability_activities(NATS_CAPABILITY, wf.actions[NATS])[0]

    # As the engine runs it: the pass that creates the user records what it left, so that the
    # workload is watched at once, from the create's answer rather than a read-back (one call
    # where onboarding made two); the next pass, in sync, records the same.
    ctx = wf.context(NATS_CAPABILITY, datetime.now(UTC))
    emulator.reset_counters()
    created = await ActivityEnvironment().run(reconcile, ctx)
    assert created.reason == "Created" and created.fingerprint is not None
    calls = total_calls(emulator)
    assert calls[CREATE_USER] == 1 and "GET /nats-users/{userId}" not in calls, calls
    wf.outputs[NATS], wf.memory[NATS] = created.outputs, created.memory
    ctx = wf.context(NATS_CAPABILITY, datetime.now(UTC))
    recorded = (await ActivityEnvironment().run(reconcile, ctx)).fingerprint
    assert recorded == created.fingerprint

    user = wf.nats()
    assert recorded is not None and recorded.key == f"{user.account_id}/{user.user_id}"
    emulator.reset_counters()
    assert await fleet_read(wf).fleet_observe([recorded.key]) == {recorded.key: recorded.digest}
    assert total_calls(emulator) == {LIST_USERS: 1}

    # Keys of another form, and users or accounts Synadia does not have, are left out.
    unknown = "X" * 27
    others = [
        user.user_id,
        f"{recorded.key}/more",
        f"{user.account_id}/",
        f"{user.account_id}/{unknown}",
        f"{unknown}/{user.user_id}",
    ]
    emulator.reset_counters()
    assert await fleet_read(wf).fleet_observe(others) == {}
    assert await fleet_read(wf).fleet_observe([]) == {}
    # One listing per account named, the one that 404s included.
    assert total_calls(emulator) == {LIST_USERS: 2}


async def test_what_no_pass_acts_on_leaves_the_digest_alone(
    platform: Platform,  # noqa: F811 (the fixture imported above)
    emulator: SynadiaEmulator,  # noqa: F811
    tmp_path: Path,
) -> None:
    wf = flow(platform, tmp_path)
    await wf.reconcile()
    recorded = await in_sync(wf)

    # Limits and tags are the account's or an operator's: no pass repairs them.
    async with SynadiaClient(emulator.api_url, DEFAULT_TOKEN) as someone:
        await someone.update_nats_user(
            wf.nats().user_id, jwt_settings=JwtSettings(subs=10, payload=1024, tags=["ops"])
        )

    assert await in_sync(wf) == recorded
    found = await fleet_read(wf).fleet_observe([recorded.key])
    assert found == {recorded.key: recorded.digest}


# ---- drift ---------------------------------------------------------------------------------------


Drift = Callable[[SynadiaClient, NatsOutputs], Awaitable[Any]]


async def _publish_widened(someone: SynadiaClient, user: NatsOutputs) -> None:
    await someone.update_nats_user(
        user.user_id, jwt_settings=JwtSettings(pub=Permission(allow=[">"]))
    )


async def _subscribe_widened(someone: SynadiaClient, user: NatsOutputs) -> None:
    await someone.update_nats_user(
        user.user_id, jwt_settings=JwtSettings(sub=Permission(allow=["orders.*", "payments.>"]))
    )


async def _responses_allowed(someone: SynadiaClient, user: NatsOutputs) -> None:
    await someone.update_nats_user(
        user.user_id, jwt_settings=JwtSettings(resp=ResponsePermission(max=1, ttl=0))
    )


async def _ttl_changed(someone: SynadiaClient, user: NatsOutputs) -> None:
    await someone.update_nats_user(user.user_id, jwt_expires_in_secs=3600)


async def _renamed(someone: SynadiaClient, user: NatsOutputs) -> None:
    await someone.update_nats_user(user.user_id, name=f"{user.name}-renamed")


async def _key_rotated(someone: SynadiaClient, user: NatsOutputs) -> None:
    await someone.rotate_nats_user(user.user_id)


async def _deleted(someone: SynadiaClient, user: NatsOutputs) -> None:
    await someone.delete_nats_user(user.user_id)


async def _deleted_and_made_again(someone: SynadiaClient, user: NatsOutputs) -> None:
    """Deleted, and another user made by hand under its name: another id, so another key."""
    stored = await someone.get_nats_user(user.user_id)
    assert stored is not None and stored.sk_group_id is not None
    await someone.delete_nats_user(user.user_id)
    await someone.create_nats_user(
        user.account_id,
        user.name,
        sk_group_id=stored.sk_group_id,
        jwt_expires_in_secs=stored.jwt_expires_in_secs,
        jwt_settings=stored.jwt_settings,
    )


@dataclass(frozen=True)
class Case:
    drift: Drift
    # What the Nats plan puts back, or that it makes the user again.
    repair: tuple[str, ...] = ()
    recreate: bool = False
    # Synadia's key changed under the workload: the Nats plan has nothing to put back, but the
    # pass reports the new key, and Credentials issues on it.
    key_changed: bool = False


DRIFTS = {
    "publish-widened": Case(_publish_widened, repair=("permissions.publish",)),
    "subscribe-widened": Case(_subscribe_widened, repair=("permissions.subscribe",)),
    "responses-allowed": Case(_responses_allowed, repair=("permissions.allowResponses",)),
    "jwt-lifetime": Case(_ttl_changed, repair=("credentials.ttl",)),
    "renamed": Case(_renamed, repair=("name",)),
    "key-rotated-out-of-band": Case(_key_rotated, key_changed=True),
    "deleted": Case(_deleted, recreate=True),
    "deleted-and-made-again-by-hand": Case(_deleted_and_made_again, recreate=True),
}


@pytest.mark.parametrize("case", DRIFTS.values(), ids=DRIFTS.keys())
async def test_every_drift_a_pass_acts_on_changes_what_the_fleet_read_finds(
    platform: Platform,  # noqa: F811 (the fixture imported above)
    emulator: SynadiaEmulator,  # noqa: F811
    tmp_path: Path,
    case: Case,
) -> None:
    wf = flow(platform, tmp_path)
    await wf.reconcile()
    recorded = await in_sync(wf)

    async with SynadiaClient(emulator.api_url, DEFAULT_TOKEN) as someone:
        await case.drift(someone, wf.nats())

    # A real pass sees it.
    ctx = wf.context(NATS_CAPABILITY, datetime.now(UTC))
    observation = await wf.actions[NATS].observe(ctx)
    plan = NATS_CAPABILITY.plan(ctx, observation)
    if case.key_changed:
        assert not plan and plan.key_reason is None
        known = wf.nats()
        reported = await wf.step(NATS_CAPABILITY, datetime.now(UTC))
        assert not reported.plan and wf.nats().public_key != known.public_key
        issuer = wf.context(credentials.capability, datetime.now(UTC))
        issue = credentials.capability.plan(issuer, await wf.actions[CREDENTIALS].observe(issuer))
        assert issue.issue is not None and issue.issue.reason == IssueReason.KEY_CHANGED
    else:
        assert plan
        assert tuple(plan.repair) == case.repair
        assert (plan.user == "recreate") == case.recreate

    # And so does the fleet read: the digest differs, or the key is gone.
    now = NATS_CAPABILITY.fingerprint(ctx, observation)
    found = await fleet_read(wf).fleet_observe([recorded.key, *([now.key] if now else [])])
    assert found.get(recorded.key) != recorded.digest
    # The two halves still agree on the drifted user.
    if now is None:
        assert found == {}
    else:
        assert found == {now.key: now.digest}

    # Once a pass has acted, the workload records what the fleet read finds again.
    await wf.reconcile()
    again = await in_sync(wf)
    assert await fleet_read(wf).fleet_observe([again.key]) == {again.key: again.digest}


@pytest.mark.parametrize("delivery", [Delivery.SEALED_SECRET, Delivery.EXTERNAL_SECRET])
async def test_a_first_issuance_reads_nothing_and_records_what_the_fleet_read_finds(
    emulator: SynadiaEmulator,  # noqa: F811 (the fixture imported above)
    aws_url: str,
    keys: ControllerKeys,
    remote: Path,  # noqa: F811
    tmp_path: Path,
    git_processes: Path,  # noqa: F811
    delivery: Delivery,
) -> None:
    """Onboarding: the first try of a settled pass cannot follow one that delivered unrecorded,
    so it reads no earlier delivery from the state store (external-secret still describes its
    secret first, a look that also refuses another's), and it knows what it wrote, so it reads
    nothing back: the store sees its write alone. What it records is what the fleet read
    finds."""
    delivering = platform_for(remote, emulator, aws_url, keys, default_delivery=delivery)
    wf = flow(delivering, tmp_path)
    await wf.step(NATS_CAPABILITY, datetime.now(UTC))
    reconcile = capability_activities(credentials.capability, wf.actions[CREDENTIALS])[0]
    ctx = wf.context(credentials.capability, datetime.now(UTC))
    git_processes.write_text("")
    report = await ActivityEnvironment().run(reconcile, ctx)
    assert report.reason == "Issued" and report.fingerprint is not None
    ran = subcommands(git_processes)
    # One look at the remote, the write's own; no tree or file read.
    assert ran.count("ls-remote") == 1 and not {"ls-tree", "cat-file"} & set(ran), ran
    found = await wf.actions[CREDENTIALS].fleet_observe([report.fingerprint.key])
    assert found == {report.fingerprint.key: report.fingerprint.digest}


@pytest.mark.parametrize("why", ["refresh", "secret-deleted"])
async def test_an_issuance_that_rotates_the_key_records_what_it_left_in_sync(
    platform: Platform,  # noqa: F811 (the fixture imported above)
    emulator: SynadiaEmulator,  # noqa: F811
    remote: Path,  # noqa: F811
    tmp_path: Path,
    why: str,
) -> None:
    """A refresh, or a re-issue after the delivered secret went, downloads on a new key of the
    user, which the Nats outputs of the same pass do not know yet. The issuance still records
    what it delivered: the workload sleeps on it from this pass on, rather than after a pass of
    its own one drift interval later."""
    wf = flow(platform, tmp_path)
    await wf.reconcile()
    v1, user = wf.credentials(), wf.nats()
    now = datetime.now(UTC)
    if why == "refresh":
        now = v1.next_refresh_at
    else:
        someone_changes(remote, tmp_path, v1.location, None)
    reconcile = capability_activities(credentials.capability, wf.actions[CREDENTIALS])[0]
    ctx = wf.context(credentials.capability, now)
    report = await ActivityEnvironment().run(reconcile, ctx)
    assert report.reason == "Issued"
    v2 = CredentialsOutputs.model_validate(report.outputs)
    assert v2.public_key != user.public_key and v2.replaced_keys == [user.public_key]
    fingerprint = report.fingerprint
    assert fingerprint is not None
    found = await wf.actions[CREDENTIALS].fleet_observe([fingerprint.key])
    assert found == {fingerprint.key: fingerprint.digest}

    # The next pass's Nats records the new key as no capability's doing, and nothing is issued.
    wf.outputs[CREDENTIALS] = report.outputs
    after = await wf.reconcile(now)
    assert wf.nats().public_key == v2.public_key and wf.nats().key_reason is None
    assert not after[NATS].plan and not after[CREDENTIALS].plan
    assert emulator.creds_issued(user.user_id) == 2


# ---- cost ----------------------------------------------------------------------------------------


async def test_a_sweep_costs_one_listing_per_account_whatever_the_number_of_workloads(
    aws_url: str,
    keys: ControllerKeys,
    remote: Path,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    accounts = (AccountSpec(name="apps"), AccountSpec(name="ads"))
    async with SynadiaEmulator.running(tmp_path / "synadia", accounts=accounts) as emu:
        p = platform_for(remote, emu, aws_url, keys)
        actions = NATS_CAPABILITY.actions(p, p.synadia, tmp_path / "cache")
        assert isinstance(actions, NatsActions)
        # One worker's actions for the fleet, as the observer has them.
        members = {
            account: [
                Workflow(
                    workload(nats={"permissions": PERMISSIONS, "account": account}), {NATS: actions}
                )
                for _ in range(count)
            ]
            for account, count in (("apps", 50), ("ads", 3))
        }
        recorded: dict[str, list[Fingerprint]] = {}
        for account, flows in members.items():
            recorded[account] = []
            for wf in flows:
                await wf.step(NATS_CAPABILITY, datetime.now(UTC))
                recorded[account].append(await in_sync(wf))
            # Others' users, which the listing holds too.
            await crowd(emu, account, 20)

        apps = {f.key: f.digest for f in recorded["apps"]}
        emu.reset_counters()
        assert await actions.fleet_observe(sorted(apps)) == apps
        assert total_calls(emu) == {LIST_USERS: 1}

        everyone = apps | {f.key: f.digest for f in recorded["ads"]}
        emu.reset_counters()
        assert await actions.fleet_observe(sorted(everyone)) == everyone
        counted = emu.counters()
        assert total_calls(emu) == {LIST_USERS: 2}
        print(
            f"one sweep of {len(everyone)} workloads in 2 accounts: {counted['calls']}, "
            f"{sum(counted['bytes'].values())} bytes answered"
        )

        # Where each workload's own passes would make one GET of its user.
        emu.reset_counters()
        for wf in members["apps"]:
            await in_sync(wf)
        assert total_calls(emu) == {"GET /nats-users/{userId}": 50}
