"""The Nats and Credentials capabilities, observe, plan and apply as the engine runs them, against
real parts: the Synadia emulator with its real nats-server, AWS Secrets Manager through moto's
server, git repositories on disk, and sealing with a throwaway controller key whose private half
opens what was delivered.

`Workflow` below stands in for the engine (workflows/, being written): the few lines of it the
capabilities rely on, as idp/capability.py describes them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import boto3
import pytest
import yaml
from support.moto import MOTO_ACCOUNT_ID
from support.secrets import ControllerKeys, assert_nowhere
from support.stack import bare_repo, commits, git, read
from support.synadia import connect_refusal, connect_with_creds, users_named, write_creds
from temporalio.testing import ActivityEnvironment

from activities.capabilities import capability_activities, settings_of
from capabilities import credentials, nats
from capabilities.credentials import CredentialsOutputs
from capabilities.credentials.actions import CredentialsActions
from capabilities.nats import ROTATE, NatsMemory, NatsOutputs
from emulators.synadia import DEFAULT_TOKEN, SynadiaEmulator
from emulators.synadia.controlplane import AccountSpec
from emulators.synadia.natsjwt import decode
from idp.capability import Actions, Capability, Context, Plan, Preview, Report, order
from idp.credentials import IssueReason
from idp.delivery.external import request_token
from idp.errors import PermanentError
from idp.models import Delivery, Workload
from idp.natsusers import asked_digest, desired_settings
from idp.platform import (
    AwsConfig,
    ClusterIdentity,
    Destination,
    Platform,
    SecretStoreConfig,
    StateStoreConfig,
    SynadiaConfig,
    load_platform,
)
from idp.sealing import CertificateCache, CertificateSource, unseal_sealed_secret
from idp.statestore import StateStore
from idp.synadia import JwtSettings, Permission, SynadiaClient
from starter import dev

REGION = "eu-west-1"
OIDC = f"arn:aws:iam::{MOTO_ACCOUNT_ID}:oidc-provider/oidc.eks.{REGION}.amazonaws.com/id/ABC"
TOKEN_ENV = "IDP_TEST_SYNADIA_TOKEN"
NATS, CREDENTIALS = "Nats", "Credentials"

PERMISSIONS = {
    "publish": {"allow": ["orders.>"], "deny": ["orders.secret"]},
    "subscribe": {"allow": ["orders.*"]},
}


@pytest.fixture(scope="module")
async def emulator(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SynadiaEmulator]:
    async with SynadiaEmulator.running(tmp_path_factory.mktemp("synadia")) as emu:
        yield emu


@pytest.fixture(autouse=True)
def _token_and_logs(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(TOKEN_ENV, DEFAULT_TOKEN)
    # Everything at DEBUG, so the leak scans see every record the code under test writes.
    caplog.set_level(logging.DEBUG)


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return bare_repo(tmp_path / "state.git")


def platform_for(
    remote: Path, emulator: SynadiaEmulator, aws_url: str, keys: ControllerKeys, **extra: Any
) -> Platform:
    destination = {
        "name": "dev",
        "state_store": StateStoreConfig(url=str(remote)),
        "cluster": ClusterIdentity(oidc_provider_arn=OIDC),
        "sealing": CertificateSource(file=keys.cert_file),
        "secret_store": SecretStoreConfig(name="aws-secrets-manager", force_delete=True),
        **extra,
    }
    return Platform(
        destinations=[Destination(**destination)],
        aws=AwsConfig(region=REGION, account_id=MOTO_ACCOUNT_ID, endpoint_url=aws_url),
        synadia=SynadiaConfig(
            url=emulator.api_url,
            token_env=TOKEN_ENV,
            system=emulator.system_name,
            default_account=emulator.account_name,
        ),
    )


@pytest.fixture
def platform(
    remote: Path, emulator: SynadiaEmulator, aws_url: str, keys: ControllerKeys
) -> Platform:
    return platform_for(remote, emulator, aws_url, keys)


def workload(system: str | None = None, *, nats: dict[str, Any] | None = None) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": "cart", "system": system or f"t{uuid.uuid4().hex[:8]}"},
            "spec": {
                "owner": "team-shop",
                "destination": "dev",
                "namespace": "shop",
                "nats": {"permissions": PERMISSIONS} if nats is None else nats,
            },
        }
    )


def respec(w: Workload, **nats: Any) -> Workload:
    """`w` with its spec.nats changed as given (camelCase, as users write it)."""
    spec = w.spec.nats.model_validate({**w.spec.nats.model_dump(by_alias=True), **nats})
    return w.model_copy(update={"spec": w.spec.model_copy(update={"nats": spec})})


class Step(NamedTuple):
    observation: Any
    plan: Plan
    report: Report


@dataclass
class Workflow:
    """What the engine keeps of one workload and does with it: a pass runs observe, plan and
    apply of each capability in dependency order and records the report's outputs, memory and
    handled requests; teardown goes in reverse."""

    workload: Workload
    actions: dict[str, Actions[Any, Any]]
    outputs: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    requests: dict[str, Any] = field(default_factory=dict)
    unsettled: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, w: Workload, platform: Platform, cache: Path) -> Workflow:
        return cls(w, {c.name: c.actions(platform, settings_of(c, platform), cache) for c in CAPS})

    def context(self, capability: Capability[Any, Any], now: datetime) -> Context:
        return Context.of(
            capability,
            self.workload,
            self.workload.workflow_id,
            1,
            now,
            self,
            unsettled=capability.name in self.unsettled,
        )

    async def attempt(self, capability: Capability[Any, Any], now: datetime) -> Step:
        """One try of the capability's activity, its result not recorded (as when it is lost):
        until `step` records one, the capability is unsettled, as the engine keeps it."""
        ctx = self.context(capability, now)
        self.unsettled.add(capability.name)
        actions = self.actions[capability.name]
        observation = await actions.observe(ctx)
        plan = capability.plan(ctx, observation)
        return Step(observation, plan, await actions.apply(ctx, plan, observation))

    async def step(self, capability: Capability[Any, Any], now: datetime) -> Step:
        done = await self.attempt(capability, now)
        self.unsettled.discard(capability.name)
        self.outputs[capability.name] = done.report.outputs
        self.memory[capability.name] = done.report.memory or None
        for operation in done.report.handled:
            self.requests.pop(operation, None)
        return done

    async def reconcile(self, now: datetime | None = None) -> dict[str, Step]:
        now = now or datetime.now(UTC)
        return {c.name: await self.step(c, now) for c in CAPS}

    async def teardown(self) -> dict[str, Report]:
        reports = {}
        for capability in reversed(CAPS):
            ctx = self.context(capability, datetime.now(UTC))
            reports[capability.name] = await self.actions[capability.name].teardown(ctx)
        return reports

    def nats(self) -> NatsOutputs:
        return NatsOutputs.model_validate(self.outputs[NATS])

    def remembered(self) -> NatsMemory:
        return NatsMemory.model_validate(self.memory[NATS])

    def credentials(self) -> CredentialsOutputs:
        return CredentialsOutputs.model_validate(self.outputs[CREDENTIALS])


CAPS: list[Capability[Any, Any]] = order([credentials.capability, nats.capability])


def flow(platform: Platform, tmp_path: Path, w: Workload | None = None) -> Workflow:
    return Workflow.of(w or workload(), platform, tmp_path / "cache")


def total_calls(emulator: SynadiaEmulator) -> dict[str, int]:
    return {k: v for k, v in emulator.counters()["calls"].items() if v}


LIST_USERS = "GET /accounts/{accountId}/nats-users"
CREATE_USER = "POST /accounts/{accountId}/nats-users"


def someone_changes(remote: Path, tmp_path: Path, path: str, text: str | None) -> None:
    """A person edits (or, with None, deletes) a file of the state store and pushes."""
    clone = tmp_path / f"someone-{uuid.uuid4().hex[:6]}"
    git("clone", "--quiet", str(remote), str(clone))
    if text is None:
        (clone / path).unlink()
    else:
        (clone / path).write_text(text)
    git("commit", "--quiet", "-am", "by hand", cwd=clone)
    git("push", "--quiet", "origin", "main", cwd=clone)


def opened(remote: Path, path: str, keys: ControllerKeys) -> str:
    """The creds a SealedSecret in git holds, opened as the controller would."""
    manifest = yaml.safe_load(read(remote, path) or "")
    return unseal_sealed_secret(manifest, keys.key)["nats.creds"].decode()


def repos(remote: Path, tmp_path: Path) -> list[Path]:
    """The state store and the actions' own clones of it (unpushed commits live there)."""
    clones = [head.parent for head in (tmp_path / "cache").glob("*/HEAD")]
    assert clones, "the actions made no clone to scan"
    return [remote, *clones]


def jwt_claims(creds: str) -> dict[str, Any]:
    return decode(next(line for line in creds.splitlines() if line.startswith("eyJ")))


def git_commands(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The git subcommands every state store runs from now on, in order."""
    ran: list[str] = []
    real = StateStore._git

    async def spy(self: StateStore, *args: str, **kwargs: Any) -> Any:
        ran.append(args[0])
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(StateStore, "_git", spy)
    return ran


async def issuances_by_key(emulator: SynadiaEmulator, user_id: str) -> dict[str, list[str]]:
    """Synadia's own record: the statuses of the issuances on each key of the user."""
    async with SynadiaClient(emulator.api_url, DEFAULT_TOKEN) as client:
        found = await client.list_nats_user_issuances(user_id)
    by_key: dict[str, list[str]] = {}
    for issuance in found:
        by_key.setdefault(issuance.sub, []).extend([issuance.status] * issuance.events_count)
    return by_key


# ---- a pass, and the next ----------------------------------------------------------------------


async def test_the_first_pass_creates_the_user_and_issues_v1_and_the_next_does_nothing(
    platform: Platform,
    emulator: SynadiaEmulator,
    remote: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = workload()
    wf = flow(platform, tmp_path, w)
    assert [c.name for c in CAPS] == [NATS, CREDENTIALS]  # Credentials requires Nats
    now = datetime.now(UTC)
    first = await wf.reconcile(now)

    user = wf.nats()
    assert first[NATS].plan.user == "create"
    assert [c.action for c in first[NATS].plan.changes] == ["create"]
    assert first[NATS].report.reason == "Created" and first[NATS].report.changed
    assert first[NATS].report.message == f"user {w.metadata.system}-cart ({user.public_key})"
    assert user.name == f"{w.metadata.system}-cart" and user.account_id == emulator.account_id
    assert user.key_reason is None
    assert wf.remembered() == NatsMemory(asked=asked_digest(w), key_rotated_at=now)
    assert nats.capability.deadline(wf.context(nats.capability, now)) is None

    issued = first[CREDENTIALS]
    assert issued.observation.delivered is None  # nothing delivered yet: nothing read
    assert issued.plan.issue is not None and issued.plan.issue.reason == IssueReason.INITIAL
    assert (issued.report.reason, issued.report.cause) == ("Issued", "Initial")
    location = "dev/shop/cart/sealedsecret-nats.yaml"
    assert issued.report.message == f"version 1 (Initial) delivered to {location}"
    assert issued.report.changed and issued.report.events == []
    v1 = wf.credentials()
    assert (v1.version, v1.public_key, v1.location, v1.delivery) == (
        1,
        user.public_key,
        location,
        Delivery.SEALED_SECRET,
    )
    assert v1.next_refresh_at == now + w.spec.nats.credentials.ttl * 2 / 3
    assert credentials.capability.deadline(wf.context(credentials.capability, now)) == (
        v1.next_refresh_at
    )
    assert emulator.creds_issued(user.user_id) == 1 and len(commits(remote)) == 1

    # Nothing due: the plans are empty, nothing is issued or written, and the pass costs one
    # Synadia GET and one look at the state store's head (its own commit: no fetch) with the
    # reads of the delivered file.
    emulator.reset_counters()
    ran = git_commands(monkeypatch)
    second = await wf.reconcile(now + timedelta(minutes=5))
    assert not second[NATS].plan and not second[CREDENTIALS].plan
    assert second[NATS].report.reason == second[CREDENTIALS].report.reason == "InSync"
    assert not second[NATS].report.changed and not second[CREDENTIALS].report.changed
    assert second[NATS].report.message == f"user {user.name}"
    assert second[CREDENTIALS].report.message == f"version 1 delivered to {location}"
    assert total_calls(emulator) == {"GET /nats-users/{userId}": 1}
    assert ran == ["ls-remote", "ls-tree", "cat-file"]
    assert emulator.creds_issued(user.user_id) == 0 and len(commits(remote)) == 1  # since reset
    assert wf.credentials() == v1 and wf.nats() == user

    # A workflow that lost the user's id (its apply ended without a report, so the engine
    # marks it unsettled) finds the same user by its name.
    emulator.reset_counters()
    lost = Workflow(
        w, wf.actions, outputs={NATS: None, CREDENTIALS: wf.outputs[CREDENTIALS]}, unsettled={NATS}
    )
    found = await lost.step(nats.capability, now)
    assert not found.plan and lost.nats() == user
    assert total_calls(emulator) == {LIST_USERS: 1}


async def test_passes_keep_one_connection_to_synadia(
    platform: Platform, emulator: SynadiaEmulator, tmp_path: Path
) -> None:
    """Every activity of a worker, Nats's and Credentials' alike, calls Synadia on the
    connections it kept: against Synadia Cloud a new one costs a TLS handshake."""
    wf = flow(platform, tmp_path)
    now = datetime.now(UTC)
    emulator.reset_counters()
    await wf.reconcile(now)  # creates the user (Nats), then issues its credentials (Credentials)
    first = emulator.counters()["calls"]
    assert first["POST /nats-users/{userId}/creds"] == 1
    for minutes in (5, 10, 15):
        await wf.reconcile(now + timedelta(minutes=minutes))
    counters = emulator.counters()
    assert Counter(counters["calls"]) - Counter(first) == {"GET /nats-users/{userId}": 3}
    assert counters["connections"] == 1


async def test_a_due_refresh_issues_on_a_key_of_its_own_and_then_all_is_in_sync(
    platform: Platform, emulator: SynadiaEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = flow(platform, tmp_path)
    await wf.reconcile()
    v1, user = wf.credentials(), wf.nats()

    # The refresh is the policy's: what is delivered is not even read.
    ran = git_commands(monkeypatch)
    ctx = wf.context(credentials.capability, v1.next_refresh_at)
    assert (await wf.actions[CREDENTIALS].observe(ctx)).delivered is None
    assert ran == []
    refresh = await wf.reconcile(v1.next_refresh_at)
    assert not refresh[NATS].plan
    plan = refresh[CREDENTIALS].plan
    assert plan.issue is not None and (plan.issue.version, plan.issue.reason) == (2, "Refresh")
    assert refresh[CREDENTIALS].report.cause == "Refresh"
    v2 = wf.credentials()
    # The download rotated the user to a key of its own; v1's key stays valid for the pods on it.
    assert v2.version == 2 and v2.public_key != v1.public_key
    async with SynadiaClient(emulator.api_url, DEFAULT_TOKEN) as client:
        assert await client.get_revocation(user.account_id, v1.public_key) is None

    # The next pass finds the user on that key, which no capability of ours made new: no reason,
    # and nothing for Credentials to do.
    after = await wf.reconcile(v1.next_refresh_at + timedelta(minutes=5))
    assert wf.nats().public_key == v2.public_key and wf.nats().key_reason is None
    assert not after[NATS].plan and not after[CREDENTIALS].plan
    assert emulator.creds_issued(user.user_id) == 2


def test_plans_are_deterministic() -> None:
    w = workload("fixed", nats={"permissions": PERMISSIONS, "credentials": {"keyRotation": "30d"}})
    now = datetime(2026, 1, 1, tzinfo=UTC)
    user = nats.NatsOutputs(user_id="U1", account_id="A1", name="fixed-cart", public_key="UK1")
    ctx = Context(
        workload=w,
        workflow_id=w.workflow_id,
        generation=1,
        now=now,
        outputs=user.model_dump(mode="json"),
        memory=NatsMemory(
            key_rotated_at=now - timedelta(days=30),
            revocations=[nats.Revocation(public_key="UK0", revoke_at=now)],
        ).model_dump(mode="json"),
        requests={ROTATE: {"reason": "leak", "revokeOld": "now"}},
    )
    observation = nats.NatsObservation(user=None, account="apps")
    plans = [nats.Nats().plan(ctx, observation) for _ in range(3)]
    assert plans[0] == plans[1] == plans[2]
    assert plans[0].model_dump(mode="json") == {
        "changes": [
            {"action": "create", "subject": "NATS user fixed-cart", "why": "it vanished"},
            {
                "action": "rotate",
                "subject": "key of NATS user fixed-cart",
                "why": f"requested: leak; old key revoked at {now}",
            },
            {"action": "revoke", "subject": "NATS key UK0", "why": "its grace period is over"},
        ],
        "user": "recreate",
        "repair": [],
        "drifted": False,
        "rotation": {
            "reason": "Requested",
            "why": "requested: leak",
            "revokeAt": "2026-01-01T00:00:00Z",
        },
        "revoke": ["UK0"],
        "keyReason": "Requested",
    }
    assert nats.capability.deadline(ctx) == now

    inputs = {NATS: user.model_dump(mode="json")}
    first = Context(workload=w, workflow_id="x", generation=1, now=now, inputs=inputs)
    empty = credentials.CredentialsObservation()
    issues = [credentials.Credentials().plan(first, empty) for _ in range(3)]
    assert issues[0] == issues[1] == issues[2]
    assert issues[0].issue == credentials.Issue(version=1, reason=IssueReason.INITIAL)


# ---- the user ----------------------------------------------------------------------------------


async def test_permission_and_ttl_changes_are_patched_onto_the_same_user(
    platform: Platform, emulator: SynadiaEmulator, tmp_path: Path
) -> None:
    wf = flow(platform, tmp_path)
    await wf.reconcile()
    user = wf.nats()
    wf.workload = respec(
        wf.workload,
        permissions={
            **PERMISSIONS,
            "subscribe": {"allow": ["orders.*", "_INBOX.>"]},
            "allowResponses": True,
        },
        credentials={"ttl": "2d"},
    )
    emulator.reset_counters()
    patched = await wf.reconcile()
    assert patched[NATS].plan.repair == [
        "permissions.subscribe",
        "permissions.allowResponses",
        "credentials.ttl",
    ]
    # The spec changed them, not someone else: applied, not put back.
    assert patched[NATS].report.reason == "Applied"
    assert patched[NATS].report.message == (
        "applied permissions.subscribe, permissions.allowResponses, credentials.ttl"
    )
    assert (wf.nats().user_id, wf.nats().public_key) == (user.user_id, user.public_key)
    # New permissions need a new JWT; a new ttl waits for the refresh.
    assert patched[CREDENTIALS].report.cause == "PermissionsChanged"
    calls = total_calls(emulator)
    assert calls["GET /nats-users/{userId}"] == 2 and calls["PATCH /nats-users/{userId}"] == 1

    # Someone widens the user in the Synadia console: the next pass puts the spec back.
    async with SynadiaClient(emulator.api_url, DEFAULT_TOKEN) as client:
        await client.update_nats_user(
            user.user_id, jwt_settings=JwtSettings(pub=Permission(allow=[">"], deny=None))
        )
    repaired = await wf.step(nats.capability, datetime.now(UTC))
    assert repaired.plan.repair == ["permissions.publish"]
    assert repaired.report.message == "put back permissions.publish"
    async with SynadiaClient(emulator.api_url, DEFAULT_TOKEN) as client:
        stored = await client.get_nats_user(user.user_id)
    assert stored is not None
    assert stored.jwt_settings.pub == Permission(allow=["orders.>"], deny=["orders.secret"])
    assert stored.jwt_expires_in_secs == 2 * 86400
    steady = await wf.step(nats.capability, datetime.now(UTC))
    assert not steady.plan and steady.report.reason == "InSync"


async def test_a_user_deleted_out_of_band_is_recreated_and_credentials_say_so(
    platform: Platform, emulator: SynadiaEmulator, tmp_path: Path
) -> None:
    wf = flow(platform, tmp_path)
    await wf.reconcile()
    user = wf.nats()
    async with SynadiaClient(emulator.api_url, DEFAULT_TOKEN) as client:
        await client.delete_nats_user(user.user_id)
    emulator.reset_counters()
    again = await wf.reconcile()
    assert again[NATS].plan.user == "recreate"
    # Its id answered 404, so it is gone: made again at once, with no look for it by name.
    calls = total_calls(emulator)
    assert calls[CREATE_USER] == 1 and LIST_USERS not in calls
    assert (again[NATS].report.reason, again[NATS].report.message) == (
        "Recreated",
        f"user {user.name} had vanished and was recreated",
    )
    assert wf.nats().user_id != user.user_id and wf.nats().name == user.name
    assert wf.nats().key_reason == IssueReason.USER_RECREATED
    assert again[CREDENTIALS].report.cause == "UserRecreated"
    assert wf.credentials().version == 2 and wf.credentials().public_key == wf.nats().public_key


async def test_a_user_cannot_move_to_another_account(platform: Platform, tmp_path: Path) -> None:
    wf = flow(platform, tmp_path)
    await wf.reconcile()
    wf.workload = respec(wf.workload, account="elsewhere")
    with pytest.raises(PermanentError, match="a user cannot move between accounts") as raised:
        await wf.step(nats.capability, datetime.now(UTC))
    assert raised.value.reason == "AccountChanged"


def test_the_permissions_mapping() -> None:
    """An empty allow list means nothing passes: in a user JWT it would mean everything."""
    nothing = desired_settings(workload(nats={}).spec.nats.permissions)
    assert nothing.pub == nothing.sub == Permission(allow=None, deny=[">"])
    assert nothing.resp is None
    some = desired_settings(
        workload(
            nats={"permissions": {**PERMISSIONS, "allowResponses": True}}
        ).spec.nats.permissions
    )
    assert some.pub == Permission(allow=["orders.>"], deny=["orders.secret"])
    assert some.sub == Permission(allow=["orders.*"], deny=None)
    assert some.resp is not None and (some.resp.max, some.resp.ttl) == (1, 0)


# ---- what a create costs, and when it looks first ----------------------------------------------


async def crowd(emu: SynadiaEmulator, account: str, count: int) -> None:
    """`count` users of other names made in `account`, as other workloads' would be."""
    record = emu.application_account(account)
    async with SynadiaClient(emu.api_url, DEFAULT_TOKEN) as client:
        for i in range(count):
            group = record.sk_groups[0].id
            await client.create_nats_user(record.id, f"other-{i:03}", sk_group_id=group)


async def test_a_create_costs_the_same_calls_with_0_or_500_users_in_the_account(
    aws_url: str, keys: ControllerKeys, remote: Path, tmp_path: Path
) -> None:
    accounts = (AccountSpec(name="quiet"), AccountSpec(name="crowded"))
    async with SynadiaEmulator.running(tmp_path / "synadia", accounts=accounts) as emu:
        await crowd(emu, "crowded", 500)
        p = platform_for(remote, emu, aws_url, keys)
        cold: dict[str, dict[str, Any]] = {}
        warm: dict[str, dict[str, Any]] = {}
        for account in ("quiet", "crowded"):
            spec = {"permissions": PERMISSIONS, "account": account}
            # A worker of its own: its first create also resolves the system, the account and
            # its signing key group, which it then keeps.
            first = flow(p, tmp_path, workload(nats=spec))
            emu.reset_counters()
            made = await first.step(nats.capability, datetime.now(UTC))
            assert made.plan.user == "create" and made.report.reason == "Created"
            cold[account] = emu.counters()
            second = Workflow(workload(nats=spec), first.actions)
            emu.reset_counters()
            made = await second.step(nats.capability, datetime.now(UTC))
            assert made.plan.user == "create" and made.report.reason == "Created"
            warm[account] = emu.counters()
    for account in cold:
        for name, counted in (("cold", cold), ("warm", warm)):
            calls, answered = counted[account]["calls"], counted[account]["bytes"]
            print(
                f"create in {account} ({name} worker): {sum(calls.values())} calls, "
                f"{sum(answered.values())} bytes answered: {calls}"
            )
    assert cold["quiet"]["calls"] == cold["crowded"]["calls"]
    assert LIST_USERS not in cold["crowded"]["calls"]
    assert warm["quiet"]["calls"] == warm["crowded"]["calls"] == {CREATE_USER: 1}
    # A listing is one call whatever it holds: its size is what would have grown.
    sizes = {account: sum(counted["bytes"].values()) for account, counted in cold.items()}
    assert sizes["crowded"] < sizes["quiet"] * 1.1


async def test_a_pass_after_an_apply_without_report_adopts_the_user_it_made(
    platform: Platform, emulator: SynadiaEmulator, tmp_path: Path
) -> None:
    # As the published API has it: a second user of a name the account holds is made, not
    # refused, so only a look before creating keeps it at one.
    wf = flow(platform, tmp_path)
    now = datetime.now(UTC)
    lost = await wf.attempt(nats.capability, now)
    assert lost.plan.user == "create" and lost.report.outputs is not None
    made = NatsOutputs.model_validate(lost.report.outputs)
    assert wf.unsettled == {NATS}

    emulator.reset_counters()
    adopted = await wf.step(nats.capability, now)
    assert not adopted.plan and adopted.report.reason == "InSync"
    assert wf.nats().user_id == made.user_id and not wf.unsettled
    assert total_calls(emulator) == {LIST_USERS: 1}
    assert users_named(emulator, made.name) == [made.user_id]


async def test_a_delete_after_an_apply_without_report_removes_the_user_it_made(
    platform: Platform, emulator: SynadiaEmulator, tmp_path: Path
) -> None:
    wf = flow(platform, tmp_path)
    now = datetime.now(UTC)
    lost = await wf.attempt(nats.capability, now)
    assert lost.report.outputs is not None
    made = NatsOutputs.model_validate(lost.report.outputs)
    # Nothing recorded, yet the engine must tear it down: the user may exist.
    assert nats.capability.holds(wf.context(nats.capability, now))
    assert not nats.capability.holds(
        Workflow(wf.workload, wf.actions).context(nats.capability, now)
    )
    await wf.teardown()
    assert users_named(emulator, made.name) == []


async def test_a_retried_activity_looks_before_creating_and_a_first_try_or_preview_does_not(
    platform: Platform, emulator: SynadiaEmulator, tmp_path: Path
) -> None:
    wf = flow(platform, tmp_path)
    reconcile, *_, preview = capability_activities(nats.capability, wf.actions[NATS])
    ctx = wf.context(nats.capability, datetime.now(UTC))
    assert not ctx.unsettled

    # idpctl diff's standalone activity: it shows the create, and makes nothing.
    emulator.reset_counters()
    shown: Preview = await ActivityEnvironment().run(preview, ctx)
    assert [(c.action, c.why) for c in shown.changes] == [("create", "it does not exist")]
    assert CREATE_USER not in total_calls(emulator) and LIST_USERS not in total_calls(emulator)

    emulator.reset_counters()
    first: Report = await ActivityEnvironment().run(reconcile, ctx)
    assert first.reason == "Created" and first.outputs is not None
    made = NatsOutputs.model_validate(first.outputs)
    assert total_calls(emulator)[CREATE_USER] == 1 and LIST_USERS not in total_calls(emulator)

    # Its result is lost (the worker died after the POST): Temporal runs it again, with
    # the same input.
    retry = ActivityEnvironment()
    retry.info = dataclasses.replace(retry.info, attempt=2)
    emulator.reset_counters()
    again: Report = await retry.run(reconcile, ctx)
    assert again.outputs is not None
    assert NatsOutputs.model_validate(again.outputs).user_id == made.user_id
    assert total_calls(emulator) == {LIST_USERS: 1}
    assert users_named(emulator, made.name) == [made.user_id]


# ---- keys: rotation and revocation -------------------------------------------------------------


async def test_a_rotate_request_rotates_credentials_say_requested_and_the_old_key_goes_later(
    platform: Platform,
    emulator: SynadiaEmulator,
    remote: Path,
    keys: ControllerKeys,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wf = flow(platform, tmp_path)
    now = datetime.now(UTC)
    await wf.reconcile(now)
    old_user, v1 = wf.nats(), wf.credentials()
    old = opened(remote, v1.location, keys)
    live = await connect_with_creds(emulator.nats_url, write_creds(tmp_path, "old", old))

    wf.requests[ROTATE] = {"reason": "suspected leak", "revokeOld": "after-grace"}
    rotated = await wf.reconcile(now)
    plan = rotated[NATS].plan
    assert plan.rotation is not None and plan.rotation.reason == IssueReason.REQUESTED
    grace_over = now + timedelta(hours=1)
    assert rotated[NATS].report.handled == [ROTATE] and wf.requests == {}
    assert rotated[NATS].report.events == [
        f"rotated key (requested: suspected leak); old key revoked at {grace_over}"
    ]
    assert rotated[NATS].report.reason == "InSync"
    assert wf.nats().public_key != old_user.public_key
    assert wf.nats().key_reason == IssueReason.REQUESTED
    assert wf.remembered().revocations == [
        nats.Revocation(public_key=old_user.public_key, revoke_at=grace_over)
    ]
    assert rotated[CREDENTIALS].report.cause == "Requested"
    v2 = wf.credentials()
    assert v2.public_key == wf.nats().public_key
    assert nats.capability.deadline(wf.context(nats.capability, now)) == grace_over
    assert not live.closed.is_set()  # pods still on v1 keep working through the grace period

    # A pass before the deadline plans nothing; at the deadline, the old key goes, and with it
    # the connection that still used it.
    assert not (await wf.reconcile(grace_over - timedelta(seconds=1)))[NATS].plan
    due = await wf.reconcile(grace_over)
    assert due[NATS].plan.revoke == [old_user.public_key]
    assert due[NATS].report.events == [f"revoked {old_user.public_key}"]
    assert wf.remembered().revocations == []
    assert not due[CREDENTIALS].plan
    await asyncio.wait_for(live.closed.wait(), 5)
    old_file = write_creds(tmp_path, "old", old)
    assert "authorization violation" in (await connect_refusal(emulator.nats_url, old_file)).lower()
    new = opened(remote, v2.location, keys)
    await (await connect_with_creds(emulator.nats_url, write_creds(tmp_path, "new", new))).close()
    assert_nowhere([old, new], repos(remote, tmp_path), caplog)


async def test_revoke_old_now_revokes_in_the_same_pass(
    platform: Platform, emulator: SynadiaEmulator, tmp_path: Path
) -> None:
    wf = flow(platform, tmp_path)
    await wf.reconcile()
    old = wf.nats().public_key
    wf.requests[ROTATE] = {"reason": "leaked", "revokeOld": "now"}
    now = datetime.now(UTC)
    rotated = await wf.reconcile(now)
    assert rotated[NATS].report.events == [
        f"rotated key (requested: leaked); old key revoked at {now}",
        f"revoked {old}",
    ]
    assert wf.remembered().revocations == []
    async with SynadiaClient(emulator.api_url, DEFAULT_TOKEN) as client:
        assert await client.get_revocation(wf.nats().account_id, old) is not None
    assert rotated[CREDENTIALS].report.cause == "Requested"


async def test_a_scheduled_rotation_comes_at_its_deadline(
    platform: Platform, tmp_path: Path
) -> None:
    w = workload(nats={"permissions": PERMISSIONS, "credentials": {"keyRotation": "30d"}})
    wf = flow(platform, tmp_path, w)
    now = datetime.now(UTC)
    await wf.reconcile(now)
    ctx = wf.context(nats.capability, now)
    assert nats.capability.deadline(ctx) == now + timedelta(days=30)
    old = wf.nats().public_key
    later = now + timedelta(days=30)
    rotated = await wf.reconcile(later)
    assert rotated[NATS].report.events == [
        f"rotated key (scheduled key rotation); old key revoked at {later + timedelta(hours=1)}"
    ]
    assert rotated[NATS].report.handled == []
    assert wf.nats().public_key != old and wf.nats().key_reason == IssueReason.KEY_ROTATION
    assert wf.remembered().key_rotated_at == later
    assert rotated[CREDENTIALS].report.cause == "KeyRotation"


async def test_a_rotation_whose_result_was_lost_still_revokes_the_key_it_replaced(
    platform: Platform, tmp_path: Path
) -> None:
    wf = flow(platform, tmp_path)
    await wf.reconcile()
    old = wf.nats().public_key
    wf.requests[ROTATE] = {"reason": "leaked", "revokeOld": "after-grace"}
    now = datetime.now(UTC)
    await wf.attempt(nats.capability, now)  # the worker died before reporting
    retried = await wf.step(nats.capability, now)
    revoked = [r.public_key for r in wf.remembered().revocations]
    assert old in revoked and wf.nats().public_key not in revoked
    assert retried.report.handled == [ROTATE]


# ---- issuing and delivering --------------------------------------------------------------------


async def test_issue_seals_creds_that_connect_with_exactly_the_specs_permissions(
    platform: Platform,
    emulator: SynadiaEmulator,
    remote: Path,
    keys: ControllerKeys,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wf = flow(platform, tmp_path)
    now = datetime.now(UTC)
    await wf.step(nats.capability, now)
    user = wf.nats()
    issued = await wf.step(credentials.capability, now)
    record = wf.credentials()

    assert len(commits(remote)) == 1
    assert emulator.creds_issued(user.user_id) == 1
    assert record.public_key == user.public_key and record.version == 1
    assert record.expires_at - record.issued_at == wf.workload.spec.nats.credentials.ttl
    creds = opened(remote, record.location, keys)
    claims = jwt_claims(creds)
    assert claims["sub"] == user.public_key
    assert claims["nats"]["pub"] == {"allow": ["orders.>"], "deny": ["orders.secret"]}
    assert claims["nats"]["sub"] == {"allow": ["orders.*"]}
    assert "resp" not in claims["nats"]
    assert any(
        "issued NATS credentials v1" in r.getMessage() and "reason Initial" in r.getMessage()
        for r in caplog.records
    )

    probe = await connect_with_creds(emulator.nats_url, write_creds(tmp_path, "v1", creds))
    try:
        got: asyncio.Queue[str] = asyncio.Queue()

        async def on_msg(msg: Any) -> None:
            await got.put(msg.subject)

        await probe.nc.subscribe("orders.*", cb=on_msg)
        await probe.nc.publish("orders.created", b"allowed")
        assert await asyncio.wait_for(got.get(), 3) == "orders.created"
        await probe.nc.publish("orders.secret", b"denied by the deny list")
        await probe.wait_for_error('publish to "orders.secret"')
        await probe.nc.publish("billing.charged", b"not in the allow list")
        await probe.wait_for_error('publish to "billing.charged"')
        await probe.nc.subscribe("billing.>")
        await probe.wait_for_error('subscription to "billing.>"')
        assert got.empty()
    finally:
        await probe.close()

    # The activity is retried after the commit (its result was lost): the same plan, nothing
    # new issued or written, and it reports the credential already delivered. A retry is what
    # looks for an earlier try's delivery (its attempt, or the engine's `unsettled`).
    wf.outputs[CREDENTIALS] = None
    wf.unsettled.add(CREDENTIALS)
    before = len(commits(remote))
    again = await wf.step(credentials.capability, now)
    assert again.plan == issued.plan and again.report == issued.report
    assert len(commits(remote)) == before
    assert emulator.creds_issued(user.user_id) == 1

    steady = await wf.step(credentials.capability, now)
    assert steady.observation.delivered.in_place and steady.observation.delivered.problem is None
    assert_nowhere([creds], repos(remote, tmp_path), caplog)


async def test_a_workload_without_permissions_may_do_nothing(
    platform: Platform,
    emulator: SynadiaEmulator,
    remote: Path,
    keys: ControllerKeys,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wf = flow(platform, tmp_path, workload(nats={}))
    await wf.reconcile()
    creds = opened(remote, wf.credentials().location, keys)
    claims = jwt_claims(creds)
    assert claims["nats"]["pub"] == claims["nats"]["sub"] == {"deny": [">"]}

    probe = await connect_with_creds(emulator.nats_url, write_creds(tmp_path, "none", creds))
    try:
        await probe.nc.publish("anything", b"x")
        await probe.wait_for_error('publish to "anything"')
        await probe.nc.subscribe("anything")
        await probe.wait_for_error('subscription to "anything"')
    finally:
        await probe.close()
    assert_nowhere([creds], repos(remote, tmp_path), caplog)


async def test_an_edited_or_deleted_secret_file_is_delivery_drift(
    platform: Platform, emulator: SynadiaEmulator, remote: Path, tmp_path: Path
) -> None:
    wf = flow(platform, tmp_path)
    await wf.reconcile()
    record = wf.credentials()
    emulator.reset_counters()
    steady = await wf.step(credentials.capability, datetime.now(UTC))
    assert steady.observation.delivered.in_place and not steady.plan
    assert total_calls(emulator) == {}  # a check costs Synadia nothing

    text = read(remote, record.location) or ""
    edited = text.replace("credential-version: '1'", "credential-version: '7'")
    someone_changes(remote, tmp_path, record.location, edited)
    ctx = wf.context(credentials.capability, datetime.now(UTC))
    seen = await wf.actions[CREDENTIALS].observe(ctx)
    problem = f"{record.location} holds credential version 7, expected 1"
    assert seen.delivered is not None and seen.delivered.problem == problem
    plan = credentials.capability.plan(ctx, seen)
    assert plan.issue == credentials.Issue(
        version=2, reason=IssueReason.DELIVERY_DRIFT, problem=problem
    )
    assert plan.summary() == f"issue NATS credentials v2 (DeliveryDrift: {problem})"

    someone_changes(remote, tmp_path, record.location, None)
    drifted = await wf.step(credentials.capability, datetime.now(UTC))
    missing = f"{record.location} is missing from the state store"
    assert drifted.report.events == [f"delivered secret drifted: {missing}"]
    assert (drifted.report.reason, drifted.report.cause) == ("Issued", "DeliveryDrift")
    assert drifted.report.message == f"version 2 (DeliveryDrift) delivered to {record.location}"
    assert read(remote, record.location) is not None


async def test_external_secret_delivery(
    emulator: SynadiaEmulator,
    aws_url: str,
    keys: ControllerKeys,
    remote: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    platform = platform_for(
        remote, emulator, aws_url, keys, default_delivery=Delivery.EXTERNAL_SECRET
    )
    secrets = boto3.client("secretsmanager", region_name=REGION, endpoint_url=aws_url)
    wf = flow(platform, tmp_path)
    name = f"idp/{wf.workload.metadata.system}/cart/nats"
    now = datetime.now(UTC)
    await wf.step(nats.capability, now)
    user = wf.nats()
    issued = await wf.step(credentials.capability, now)
    first = wf.credentials()
    assert first.delivery == Delivery.EXTERNAL_SECRET
    assert first.location == f"{name} (Secrets Manager) via dev/shop/cart/externalsecret-nats.yaml"
    stored = secrets.get_secret_value(SecretId=name)
    assert stored["VersionId"] == request_token(wf.workload.workflow_id, "nats", 1)
    creds_v1 = stored["SecretString"]
    assert jwt_claims(creds_v1)["sub"] == user.public_key

    # A retried activity: no second issuance, no second version, no second commit.
    before = len(commits(remote))
    wf.outputs[CREDENTIALS] = None
    wf.unsettled.add(CREDENTIALS)
    assert (await wf.step(credentials.capability, now)).report == issued.report
    assert emulator.creds_issued(user.user_id) == 1
    assert len(secrets.list_secret_version_ids(SecretId=name)["Versions"]) == 1
    assert len(commits(remote)) == before

    actions = wf.actions[CREDENTIALS]
    assert isinstance(actions, CredentialsActions)
    calls: list[str] = []
    actions.deliveries.secrets_client().meta.events.register(
        "before-call", lambda model, **_: calls.append(model.name)
    )
    steady = await wf.step(credentials.capability, now)
    assert steady.observation.delivered.in_place and calls == ["DescribeSecret"]

    refresh = await wf.step(credentials.capability, first.next_refresh_at)
    assert refresh.report.cause == "Refresh"
    second = wf.credentials()
    listed = secrets.list_secret_version_ids(SecretId=name)["Versions"]
    stages = {v["VersionId"]: v["VersionStages"] for v in listed}
    assert stages == {
        request_token(wf.workload.workflow_id, "nats", 1): ["AWSPREVIOUS"],
        request_token(wf.workload.workflow_id, "nats", 2): ["AWSCURRENT"],
    }
    assert second.version == 2 and second.public_key != first.public_key
    async with SynadiaClient(emulator.api_url, DEFAULT_TOKEN) as client:
        assert await client.get_revocation(user.account_id, first.public_key) is None
    stale = Workflow(wf.workload, wf.actions, outputs={**wf.outputs, CREDENTIALS: dump_of(first)})
    seen = await actions.observe(stale.context(credentials.capability, now))
    assert seen.delivered is not None and not seen.delivered.in_place
    creds_v2 = secrets.get_secret_value(SecretId=name)["SecretString"]

    removed = await wf.teardown()
    assert removed[CREDENTIALS].message == f"removed version 2 from {second.location}"
    with pytest.raises(secrets.exceptions.ResourceNotFoundException):
        secrets.describe_secret(SecretId=name)
    assert read(remote, "dev/shop/cart/externalsecret-nats.yaml") is None
    assert_nowhere([creds_v1, creds_v2], repos(remote, tmp_path), caplog)


def dump_of(outputs: CredentialsOutputs) -> dict[str, Any]:
    return outputs.model_dump(mode="json")


async def test_a_foreign_secret_stops_the_issue_before_anything_is_issued(
    emulator: SynadiaEmulator, aws_url: str, keys: ControllerKeys, remote: Path, tmp_path: Path
) -> None:
    platform = platform_for(
        remote, emulator, aws_url, keys, default_delivery=Delivery.EXTERNAL_SECRET
    )
    wf = flow(platform, tmp_path)
    secrets = boto3.client("secretsmanager", region_name=REGION, endpoint_url=aws_url)
    secrets.create_secret(Name=f"idp/{wf.workload.metadata.system}/cart/nats", SecretString="x")
    now = datetime.now(UTC)
    await wf.step(nats.capability, now)
    with pytest.raises(PermanentError) as raised:
        await wf.step(credentials.capability, now)
    assert raised.value.reason == "ForeignResource"
    assert emulator.creds_issued(wf.nats().user_id) == 0
    assert len(commits(remote)) == 0


# ---- teardown ----------------------------------------------------------------------------------


async def test_teardown_revokes_deletes_the_user_and_the_sealed_secret(
    platform: Platform,
    emulator: SynadiaEmulator,
    remote: Path,
    keys: ControllerKeys,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wf = flow(platform, tmp_path)
    await wf.reconcile()
    user, record = wf.nats(), wf.credentials()
    creds = opened(remote, record.location, keys)
    creds_file = write_creds(tmp_path, "v1", creds)

    # The workflow never learned the user's id (say, its result was lost): found by name.
    wf.outputs[NATS] = None
    reports = await wf.teardown()
    assert list(reports) == [CREDENTIALS, NATS]
    assert (reports[NATS].reason, reports[NATS].message) == (
        "Deleted",
        "keys revoked, user deleted",
    )
    assert reports[CREDENTIALS].message == f"removed version 1 from {record.location}"
    async with SynadiaClient(emulator.api_url, DEFAULT_TOKEN) as client:
        assert await client.get_nats_user(user.user_id) is None
        revocation = await client.get_revocation(user.account_id, user.public_key)
    assert revocation is not None
    assert (
        "authorization violation" in (await connect_refusal(emulator.nats_url, creds_file)).lower()
    )
    assert read(remote, record.location) is None
    # Again (a retry after the work was done): nothing left to do, no failure.
    await wf.teardown()
    assert_nowhere([creds], repos(remote, tmp_path), caplog)


# ---- configuration -----------------------------------------------------------------------------


async def test_a_delivery_without_its_configuration_fails_before_issuing(
    emulator: SynadiaEmulator, aws_url: str, keys: ControllerKeys, remote: Path, tmp_path: Path
) -> None:
    # The platform itself refuses a default delivery it cannot make...
    with pytest.raises(ValueError, match="defaultDelivery sealed-secret needs sealing"):
        platform_for(remote, emulator, aws_url, keys, sealing=None)
    # ...but a workload may still choose one its destination is not set up for.
    platform = platform_for(
        remote, emulator, aws_url, keys, sealing=None, default_delivery=Delivery.EXTERNAL_SECRET
    )
    wf = flow(platform, tmp_path, workload(nats={"credentials": {"delivery": "sealed-secret"}}))
    now = datetime.now(UTC)
    await wf.step(nats.capability, now)
    with pytest.raises(PermanentError, match=r"destinations\[\]\.sealing") as raised:
        await wf.step(credentials.capability, now)
    assert raised.value.reason == "NoSealingCertificate"
    assert emulator.creds_issued(wf.nats().user_id) == 0


async def test_a_missing_token_names_the_variable(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(PermanentError, match=f"\\${TOKEN_ENV}") as raised:
        await flow(platform, tmp_path).reconcile()
    assert raised.value.reason == "NoSynadiaToken"


def test_nats_is_offered_where_the_platform_has_synadia(platform: Platform) -> None:
    assert nats.capability.offered(platform.synadia)
    assert not nats.capability.offered(None)
    w = workload()
    bare = w.model_copy(update={"spec": w.spec.model_copy(update={"nats": None})})
    now = datetime.now(UTC)
    for capability in CAPS:
        assert capability.wanted(Workflow(w, {}).context(capability, now))
        assert not capability.wanted(Workflow(bare, {}).context(capability, now))


def test_the_dev_stack_configures_synadia_and_a_sealing_certificate(tmp_path: Path) -> None:
    stack = dev.Stack(tmp_path / ".idp", "127.0.0.1", 7233, 8233, synadia_port=4299)
    stack.root.mkdir()
    dev.ensure_sealing_key(stack)
    dev.write_platform(stack)
    platform = load_platform(stack.platform_file)
    assert platform.synadia is not None
    assert platform.synadia.url == "http://127.0.0.1:4299"
    assert platform.synadia.token_env == "SYNADIA_TOKEN"
    destination = platform.destinations[0]
    assert destination.sealing is not None
    certificate = CertificateCache().get(destination.sealing)
    assert certificate.fingerprint
    assert oct(stack.sealing_key.stat().st_mode & 0o777) == "0o600"


# ---- what status, describe, Port and search attributes show -----------------------------------


def test_describe_port_and_attributes_show_the_outputs() -> None:
    user = NatsOutputs(user_id="U1", account_id="A1", name="shop-cart", public_key="UK1")
    issued = datetime(2026, 1, 1, tzinfo=UTC)
    record = CredentialsOutputs(
        version=3,
        public_key="UK1",
        issued_at=issued,
        expires_at=issued + timedelta(days=7),
        fingerprint="f" * 64,
        delivery=Delivery.SEALED_SECRET,
        location="dev/shop/cart/sealedsecret-nats.yaml",
        permissions_digest="p",
        delivery_digest="d",
        next_refresh_at=issued + timedelta(days=5),
        reason=IssueReason.REFRESH,
    )
    n, c = user.model_dump(mode="json"), record.model_dump(mode="json")
    assert nats.capability.describe(n) == ["nats user:   shop-cart (U1), key UK1"]
    assert credentials.capability.describe(c) == [
        "credentials: version 3 (Refresh), delivered to dev/shop/cart/sealedsecret-nats.yaml; "
        "expires 2026-01-08T00:00:00+00:00, next refresh 2026-01-06T00:00:00+00:00"
    ]
    assert nats.capability.port_properties(n) == {"natsUser": "shop-cart"}
    assert nats.capability.port_properties(None) == {"natsUser": None}
    assert credentials.capability.port_properties(c) == {
        "credentialsVersion": 3,
        "credentialsExpireAt": "2026-01-08T00:00:00+00:00",
    }
    assert credentials.capability.port_properties(None) == {
        "credentialsVersion": None,
        "credentialsExpireAt": None,
    }
    assert set(credentials.capability.port_schema()) == {
        "credentialsVersion",
        "credentialsExpireAt",
    }
    assert credentials.capability.attributes(c) == {
        "IdpCredentialsExpireAt": issued + timedelta(days=7)
    }
    assert credentials.capability.attributes(None) == {}


# ---- downloads that never reach the workload ---------------------------------------------------


async def lose_a_download(wf: Workflow, emulator: SynadiaEmulator, now: datetime) -> None:
    """Run Credentials until Synadia has issued, then stop it as a SIGKILL would: the creds are
    out, nothing delivered them."""
    user_id = wf.nats().user_id
    issued = emulator.creds_issued(user_id)
    emulator.set_faults(hold_match="POST /nats-users/{userId}/creds", hold_ms=3_000)
    attempt = asyncio.create_task(wf.attempt(credentials.capability, now))
    try:
        async with asyncio.timeout(10):
            while emulator.creds_issued(user_id) == issued:
                await asyncio.sleep(0.01)
    finally:
        attempt.cancel()
        emulator.set_faults()
    with pytest.raises(asyncio.CancelledError):
        await attempt


async def test_a_download_the_worker_dies_holding_is_revoked_and_the_delivered_one_kept(
    platform: Platform,
    emulator: SynadiaEmulator,
    remote: Path,
    keys: ControllerKeys,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wf = flow(platform, tmp_path)
    now = datetime.now(UTC)
    await wf.step(nats.capability, now)
    user = wf.nats()

    # The first issuance is lost; the next try revokes the key it was issued on and delivers on
    # a new one.
    await lose_a_download(wf, emulator, now)
    before = len(commits(remote))
    await wf.step(credentials.capability, now)
    first = wf.credentials()
    assert len(commits(remote)) == before + 1
    assert first.public_key != user.public_key
    assert await issuances_by_key(emulator, user.user_id) == {
        user.public_key: ["Revoked"],
        first.public_key: ["Active"],
    }
    v1 = opened(remote, first.location, keys)
    live_v1 = await connect_with_creds(emulator.nats_url, write_creds(tmp_path, "v1", v1))

    # A refresh is lost too: the running workload's v1 stays valid throughout, the lost key is
    # revoked, v2 lands on a third key.
    await lose_a_download(wf, emulator, first.next_refresh_at)
    await wf.step(credentials.capability, first.next_refresh_at)
    second = wf.credentials()
    by_key = await issuances_by_key(emulator, user.user_id)
    lost = [k for k in by_key if k not in (user.public_key, first.public_key, second.public_key)]
    assert len(lost) == 1
    assert by_key == {
        user.public_key: ["Revoked"],
        first.public_key: ["Active"],
        lost[0]: ["Revoked"],
        second.public_key: ["Active"],
    }
    assert not live_v1.closed.is_set() and not live_v1.errors
    v2 = opened(remote, second.location, keys)
    await (await connect_with_creds(emulator.nats_url, write_creds(tmp_path, "v2", v2))).close()
    # Four downloads: two delivered, two revoked.
    assert emulator.creds_issued(user.user_id) == 4
    assert any("revoked as never delivered: " + lost[0] in r.getMessage() for r in caplog.records)

    # Deletion finds v1's key, which the workflow never learnt, through the issuances.
    await wf.teardown()
    await asyncio.wait_for(live_v1.closed.wait(), 5)
    assert_nowhere([v1, v2], repos(remote, tmp_path), caplog)


async def test_a_download_answered_with_an_error_after_it_issued_is_revoked(
    platform: Platform, emulator: SynadiaEmulator, remote: Path, tmp_path: Path
) -> None:
    wf = flow(platform, tmp_path)
    now = datetime.now(UTC)
    await wf.step(nats.capability, now)
    user = wf.nats()
    # Synadia issues, then answers 503: the client does not download again on that key.
    emulator.set_faults(
        fail_next=[503], fail_match="POST /nats-users/{userId}/creds", fail_after_commit=True
    )
    try:
        await wf.step(credentials.capability, now)
    finally:
        emulator.set_faults()
    assert await issuances_by_key(emulator, user.user_id) == {
        user.public_key: ["Revoked"],
        wf.credentials().public_key: ["Active"],
    }
    assert emulator.creds_issued(user.user_id) == 2 and len(commits(remote)) == 1


async def test_a_lost_download_is_revoked_even_when_the_delivered_secret_is_gone(
    platform: Platform, emulator: SynadiaEmulator, remote: Path, tmp_path: Path
) -> None:
    # The sealed secret was deleted by hand, so apply cannot read which key the workload holds;
    # the outputs' record of what was delivered tells it, and the lost key is revoked.
    wf = flow(platform, tmp_path)
    now = datetime.now(UTC)
    await wf.reconcile(now)
    first = wf.credentials()
    someone_changes(remote, tmp_path, first.location, None)

    await lose_a_download(wf, emulator, now)
    drifted = await wf.step(credentials.capability, now)
    assert drifted.report.cause == "DeliveryDrift"
    second = wf.credentials()
    by_key = await issuances_by_key(emulator, wf.nats().user_id)
    lost = [k for k in by_key if k not in (first.public_key, second.public_key)]
    assert by_key == {
        first.public_key: ["Active"],
        lost[0]: ["Revoked"],
        second.public_key: ["Active"],
    }
