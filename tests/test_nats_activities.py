"""The NATS activities, called directly (inside temporalio's ActivityEnvironment, which gives them
an activity context for heartbeats) against real parts: the Synadia emulator with its real
nats-server, AWS Secrets Manager through moto's server, git repositories on disk, and sealing
with a throwaway controller key whose private half opens what was delivered.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pytest
import yaml
from support.moto import MOTO_ACCOUNT_ID, moto_server
from support.secrets import ControllerKeys, assert_nowhere, controller_keys
from support.stack import bare_repo, git
from support.synadia import connect_refusal, connect_with_creds, write_creds
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.nats import (
    CredentialRecord,
    DeliveryCheckInput,
    IssueInput,
    NatsActivities,
    NatsUser,
    NatsUserInput,
    RemoveInput,
    RevokeInput,
)
from activities.platform import PlatformActivities
from emulators.synadia import DEFAULT_TOKEN, SynadiaEmulator
from emulators.synadia.natsjwt import decode
from idp.delivery.external import request_token
from idp.models import Delivery, Workload
from idp.natsusers import desired_settings
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
from idp.synadia import JwtSettings, Permission, SynadiaClient
from starter import dev

REGION = "eu-west-1"
OIDC = f"arn:aws:iam::{MOTO_ACCOUNT_ID}:oidc-provider/oidc.eks.{REGION}.amazonaws.com/id/ABC"
TOKEN_ENV = "IDP_TEST_SYNADIA_TOKEN"
T = TypeVar("T")

PERMISSIONS = {
    "publish": {"allow": ["orders.>"], "deny": ["orders.secret"]},
    "subscribe": {"allow": ["orders.*"]},
}


@pytest.fixture(scope="module")
async def emulator(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SynadiaEmulator]:
    async with SynadiaEmulator.running(tmp_path_factory.mktemp("synadia")) as emu:
        yield emu


@pytest.fixture(scope="module")
def aws_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> ControllerKeys:
    return controller_keys(tmp_path_factory.mktemp("sealing"))


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


@pytest.fixture
def acts(platform: Platform, tmp_path: Path) -> NatsActivities:
    return NatsActivities(platform, tmp_path / "cache")


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


async def run(activity: Callable[[T], Awaitable[Any]], request: T) -> Any:
    return await ActivityEnvironment().run(activity, request)


def total_calls(emulator: SynadiaEmulator) -> dict[str, int]:
    return {k: v for k, v in emulator.counters()["calls"].items() if v}


def commit_count(remote: Path) -> int:
    try:
        return int(git("--git-dir", str(remote), "rev-list", "--count", "main").strip())
    except subprocess.CalledProcessError:
        return 0


def show(remote: Path, path: str) -> str | None:
    try:
        return git("--git-dir", str(remote), "show", f"main:{path}")
    except subprocess.CalledProcessError:
        return None


def opened(remote: Path, path: str, keys: ControllerKeys) -> str:
    """The creds a SealedSecret in git holds, opened as the controller would."""
    manifest = yaml.safe_load(show(remote, path) or "")
    return unseal_sealed_secret(manifest, keys.key)["nats.creds"].decode()


def repos(remote: Path, tmp_path: Path) -> list[Path]:
    """The state store and the activities' own clones of it (unpushed commits live there)."""
    clones = [head.parent for head in (tmp_path / "cache").glob("*/HEAD")]
    assert clones, "the activities made no clone to scan"
    return [remote, *clones]


def jwt_claims(creds: str) -> dict[str, Any]:
    return decode(next(line for line in creds.splitlines() if line.startswith("eyJ")))


def issue_input(
    w: Workload, user: NatsUser, version: int, reason: str = "Initial", **extra: Any
) -> IssueInput:
    return IssueInput(
        workload=w,
        workflow_id=w.workflow_id,
        user_id=user.user_id,
        version=version,
        reason=reason,
        **extra,
    )


async def issue(
    acts: NatsActivities, w: Workload, user: NatsUser, version: int, reason: str = "Initial"
) -> CredentialRecord:
    return await run(acts.issue_credentials, issue_input(w, user, version, reason))


# ---- the user ----------------------------------------------------------------------------------


async def test_ensure_creates_finds_by_name_and_costs_one_call_when_steady(
    acts: NatsActivities, emulator: SynadiaEmulator
) -> None:
    w = workload()
    created = await run(acts.ensure_nats_user, NatsUserInput(workload=w))
    assert created.created and created.repaired == []
    assert created.name == f"{w.metadata.system}-cart"
    assert created.account_id == emulator.account_id

    # A workflow that lost the id (a lost activity result) finds the same user by its name.
    emulator.reset_counters()
    found = await run(acts.ensure_nats_user, NatsUserInput(workload=w))
    assert (found.user_id, found.public_key, found.created) == (
        created.user_id,
        created.public_key,
        False,
    )
    assert total_calls(emulator) == {"GET /accounts/{accountId}/nats-users": 1}

    # Steady state, id known: one GET and nothing else.
    emulator.reset_counters()
    steady = await run(acts.ensure_nats_user, NatsUserInput(workload=w, user_id=created.user_id))
    assert steady == found
    assert total_calls(emulator) == {"GET /nats-users/{userId}": 1}
    assert emulator.creds_issued(created.user_id) == 0


async def test_permission_and_ttl_changes_are_patched_onto_the_same_user(
    acts: NatsActivities, emulator: SynadiaEmulator
) -> None:
    w = workload()
    user = await run(acts.ensure_nats_user, NatsUserInput(workload=w))
    changed = w.model_copy(
        update={
            "spec": w.spec.model_copy(
                update={
                    "nats": w.spec.nats.model_validate(
                        {
                            "permissions": {
                                **PERMISSIONS,
                                "subscribe": {"allow": ["orders.*", "_INBOX.>"]},
                                "allowResponses": True,
                            },
                            "credentials": {"ttl": "2d"},
                        }
                    )
                }
            )
        }
    )
    emulator.reset_counters()
    patched = await run(
        acts.ensure_nats_user, NatsUserInput(workload=changed, user_id=user.user_id)
    )
    assert (patched.user_id, patched.public_key, patched.created) == (
        user.user_id,
        user.public_key,
        False,
    )
    assert patched.repaired == [
        "permissions.subscribe",
        "permissions.allowResponses",
        "credentials.ttl",
    ]
    assert total_calls(emulator) == {"GET /nats-users/{userId}": 1, "PATCH /nats-users/{userId}": 1}

    # Someone widens the user in the Synadia console: the next pass puts the spec back.
    async with SynadiaClient(emulator.api_url, DEFAULT_TOKEN) as client:
        await client.update_nats_user(
            user.user_id, jwt_settings=JwtSettings(pub=Permission(allow=[">"], deny=None))
        )
    repaired = await run(
        acts.ensure_nats_user, NatsUserInput(workload=changed, user_id=user.user_id)
    )
    assert repaired.repaired == ["permissions.publish"]
    async with SynadiaClient(emulator.api_url, DEFAULT_TOKEN) as client:
        stored = await client.get_nats_user(user.user_id)
    assert stored is not None
    assert stored.jwt_settings.pub == Permission(allow=["orders.>"], deny=["orders.secret"])
    assert stored.jwt_expires_in_secs == 2 * 86400
    steady = await run(acts.ensure_nats_user, NatsUserInput(workload=changed, user_id=user.user_id))
    assert steady.repaired == [] and not steady.created


async def test_a_user_deleted_out_of_band_is_created_again(
    acts: NatsActivities, emulator: SynadiaEmulator
) -> None:
    w = workload()
    user = await run(acts.ensure_nats_user, NatsUserInput(workload=w))
    async with SynadiaClient(emulator.api_url, DEFAULT_TOKEN) as client:
        await client.delete_nats_user(user.user_id)
    again = await run(acts.ensure_nats_user, NatsUserInput(workload=w, user_id=user.user_id))
    assert again.created and again.user_id != user.user_id and again.name == user.name


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


# ---- issuing and delivering --------------------------------------------------------------------


async def test_issue_seals_creds_that_connect_with_exactly_the_specs_permissions(
    acts: NatsActivities,
    emulator: SynadiaEmulator,
    remote: Path,
    keys: ControllerKeys,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = workload()
    user = await run(acts.ensure_nats_user, NatsUserInput(workload=w))
    record = await issue(acts, w, user, 1)

    assert commit_count(remote) == 1
    assert emulator.creds_issued(user.user_id) == 1
    assert record.delivery == Delivery.SEALED_SECRET
    assert record.location == "dev/shop/cart/sealedsecret-nats.yaml"
    assert record.public_key == user.public_key and record.version == 1
    assert record.expires_at - record.issued_at == w.spec.nats.credentials.ttl
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

    # The activity is retried after the commit (its result was lost): nothing new is issued or
    # written, and it reports the credential already delivered.
    commits = commit_count(remote)
    again = await issue(acts, w, user, 1)
    assert again == record
    assert commit_count(remote) == commits
    assert emulator.creds_issued(user.user_id) == 1

    check = await run(acts.check_delivery, DeliveryCheckInput(workload=w, record=record))
    assert check.in_place and check.problem is None
    assert_nowhere([creds], repos(remote, tmp_path), caplog)


async def test_a_workload_without_permissions_may_do_nothing(
    acts: NatsActivities,
    emulator: SynadiaEmulator,
    remote: Path,
    keys: ControllerKeys,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = workload(nats={})
    user = await run(acts.ensure_nats_user, NatsUserInput(workload=w))
    record = await issue(acts, w, user, 1)
    creds = opened(remote, record.location, keys)
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


async def test_check_delivery_sees_a_deleted_or_edited_secret_file(
    acts: NatsActivities, emulator: SynadiaEmulator, remote: Path, tmp_path: Path
) -> None:
    w = workload()
    user = await run(acts.ensure_nats_user, NatsUserInput(workload=w))
    record = await issue(acts, w, user, 1)
    check = DeliveryCheckInput(workload=w, record=record)
    emulator.reset_counters()
    assert (await run(acts.check_delivery, check)).in_place
    assert total_calls(emulator) == {}  # a check costs Synadia nothing

    clone = tmp_path / "someone"
    git("clone", "--quiet", str(remote), str(clone))
    path = clone / record.location
    path.write_text(path.read_text().replace("credential-version: '1'", "credential-version: '7'"))
    git("commit", "--quiet", "-am", "edit", cwd=clone)
    git("push", "--quiet", "origin", "main", cwd=clone)
    edited = await run(acts.check_delivery, check)
    assert not edited.in_place
    assert edited.problem == f"{record.location} holds credential version 7, expected 1"

    path.unlink()
    git("commit", "--quiet", "-am", "delete", cwd=clone)
    git("push", "--quiet", "origin", "main", cwd=clone)
    deleted = await run(acts.check_delivery, check)
    assert deleted.problem == f"{record.location} is missing from the state store"


async def test_external_secret_delivery_through_the_activities(
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
    acts = NatsActivities(platform, tmp_path / "cache")
    secrets = boto3.client("secretsmanager", region_name=REGION, endpoint_url=aws_url)
    w = workload()
    name = f"idp/{w.metadata.system}/cart/nats"
    user = await run(acts.ensure_nats_user, NatsUserInput(workload=w))

    first = await issue(acts, w, user, 1)
    assert first.delivery == Delivery.EXTERNAL_SECRET
    assert first.location == f"{name} (Secrets Manager) via dev/shop/cart/externalsecret-nats.yaml"
    stored = secrets.get_secret_value(SecretId=name)
    assert stored["VersionId"] == request_token(w.workflow_id, 1)
    creds_v1 = stored["SecretString"]
    assert jwt_claims(creds_v1)["sub"] == user.public_key

    # A retried activity: no second issuance, no second version, no second commit.
    commits = commit_count(remote)
    assert await issue(acts, w, user, 1) == first
    assert emulator.creds_issued(user.user_id) == 1
    assert len(secrets.list_secret_version_ids(SecretId=name)["Versions"]) == 1
    assert commit_count(remote) == commits

    calls: list[str] = []
    acts._secrets_client().meta.events.register(
        "before-call", lambda model, **_: calls.append(model.name)
    )
    check = await run(acts.check_delivery, DeliveryCheckInput(workload=w, record=first))
    assert check.in_place and calls == ["DescribeSecret"]

    second = await issue(acts, w, user, 2, "Refresh")
    listed = secrets.list_secret_version_ids(SecretId=name)["Versions"]
    stages = {v["VersionId"]: v["VersionStages"] for v in listed}
    assert stages == {
        request_token(w.workflow_id, 1): ["AWSPREVIOUS"],
        request_token(w.workflow_id, 2): ["AWSCURRENT"],
    }
    # A refresh downloads on a key of its own; v1's key is left valid for the pods still on it.
    assert second.version == 2 and second.public_key != first.public_key
    async with SynadiaClient(emulator.api_url, DEFAULT_TOKEN) as client:
        assert await client.get_revocation(user.account_id, first.public_key) is None
    stale = await run(acts.check_delivery, DeliveryCheckInput(workload=w, record=first))
    assert not stale.in_place
    creds_v2 = secrets.get_secret_value(SecretId=name)["SecretString"]

    await run(
        acts.remove_nats,
        RemoveInput(
            workload=w,
            user_id=user.user_id,
            account_id=user.account_id,
            public_keys=[user.public_key],
            record=second,
        ),
    )
    with pytest.raises(secrets.exceptions.ResourceNotFoundException):
        secrets.describe_secret(SecretId=name)
    assert show(remote, "dev/shop/cart/externalsecret-nats.yaml") is None
    assert_nowhere([creds_v1, creds_v2], repos(remote, tmp_path), caplog)


async def test_a_foreign_secret_stops_the_issue_before_anything_is_issued(
    emulator: SynadiaEmulator, aws_url: str, keys: ControllerKeys, remote: Path, tmp_path: Path
) -> None:
    platform = platform_for(
        remote, emulator, aws_url, keys, default_delivery=Delivery.EXTERNAL_SECRET
    )
    acts = NatsActivities(platform, tmp_path / "cache")
    w = workload()
    secrets = boto3.client("secretsmanager", region_name=REGION, endpoint_url=aws_url)
    secrets.create_secret(Name=f"idp/{w.metadata.system}/cart/nats", SecretString="theirs")
    user = await run(acts.ensure_nats_user, NatsUserInput(workload=w))
    with pytest.raises(ApplicationError) as raised:
        await issue(acts, w, user, 1)
    assert raised.value.type == "ForeignResource" and raised.value.non_retryable
    assert emulator.creds_issued(user.user_id) == 0
    assert commit_count(remote) == 0


async def test_rotate_then_revoke_refuses_the_old_key_only(
    acts: NatsActivities,
    emulator: SynadiaEmulator,
    remote: Path,
    keys: ControllerKeys,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = workload()
    user = await run(acts.ensure_nats_user, NatsUserInput(workload=w))
    old = opened(remote, (await issue(acts, w, user, 1)).location, keys)
    old_file = write_creds(tmp_path, "old", old)

    rotated = await run(acts.rotate_nats_key, NatsUserInput(workload=w, user_id=user.user_id))
    assert rotated.user_id == user.user_id and rotated.public_key != user.public_key
    record = await issue(acts, w, rotated, 2, "KeyRotation")
    assert record.public_key == rotated.public_key
    new = opened(remote, record.location, keys)
    new_file = write_creds(tmp_path, "new", new)
    live = await connect_with_creds(emulator.nats_url, old_file)

    await run(
        acts.revoke_nats_keys,
        RevokeInput(workload=w, account_id=user.account_id, public_keys=[user.public_key]),
    )
    await asyncio.wait_for(live.closed.wait(), 5)  # nats-server drops the revoked connection
    assert "authorization violation" in (await connect_refusal(emulator.nats_url, old_file)).lower()
    fresh = await connect_with_creds(emulator.nats_url, new_file)
    await fresh.close()
    assert_nowhere([old, new], repos(remote, tmp_path), caplog)


async def test_remove_revokes_deletes_the_user_and_the_sealed_secret(
    acts: NatsActivities,
    emulator: SynadiaEmulator,
    remote: Path,
    keys: ControllerKeys,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = workload()
    user = await run(acts.ensure_nats_user, NatsUserInput(workload=w))
    record = await issue(acts, w, user, 1)
    creds = opened(remote, record.location, keys)
    creds_file = write_creds(tmp_path, "v1", creds)

    # The workflow never learned the user's id (say, the ensure result was lost): found by name.
    request = RemoveInput(workload=w, user_id=None, account_id=None, public_keys=[], record=record)
    await run(acts.remove_nats, request)
    async with SynadiaClient(emulator.api_url, DEFAULT_TOKEN) as client:
        assert await client.get_nats_user(user.user_id) is None
        revocation = await client.get_revocation(user.account_id, user.public_key)
    assert revocation is not None
    assert (
        "authorization violation" in (await connect_refusal(emulator.nats_url, creds_file)).lower()
    )
    assert show(remote, record.location) is None
    # Again (a retry after the work was done): nothing left to do, no failure.
    await run(acts.remove_nats, request)
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
    acts = NatsActivities(platform, tmp_path / "cache")
    w = workload(nats={"credentials": {"delivery": "sealed-secret"}})
    user = await run(acts.ensure_nats_user, NatsUserInput(workload=w))
    with pytest.raises(ApplicationError) as raised:
        await issue(acts, w, user, 1)
    assert raised.value.type == "NoSealingCertificate" and raised.value.non_retryable
    assert "destinations[].sealing" in str(raised.value)
    assert emulator.creds_issued(user.user_id) == 0


async def test_a_missing_token_names_the_variable(
    acts: NatsActivities, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(ApplicationError, match=f"\\${TOKEN_ENV}") as raised:
        await run(acts.ensure_nats_user, NatsUserInput(workload=workload()))
    assert raised.value.type == "NoSynadiaToken" and raised.value.non_retryable


async def test_runtime_settings_say_whether_nats_is_offered(platform: Platform) -> None:
    assert (await PlatformActivities(platform).runtime_settings()).nats
    without = platform.model_copy(update={"synadia": None})
    assert not (await PlatformActivities(without).runtime_settings()).nats


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


# ---- downloads that never reach the workload ---------------------------------------------------


async def issuances_by_key(emulator: SynadiaEmulator, user_id: str) -> dict[str, list[str]]:
    """Synadia's own record: the statuses of the issuances on each key of the user."""
    async with SynadiaClient(emulator.api_url, DEFAULT_TOKEN) as client:
        found = await client.list_nats_user_issuances(user_id)
    by_key: dict[str, list[str]] = {}
    for issuance in found:
        by_key.setdefault(issuance.sub, []).extend([issuance.status] * issuance.events_count)
    return by_key


async def lose_a_download(
    acts: NatsActivities, emulator: SynadiaEmulator, user: NatsUser, request: IssueInput
) -> None:
    """Run the activity until Synadia has issued, then stop it as a SIGKILL would: the creds
    are out, nothing delivered them."""
    issued = emulator.creds_issued(user.user_id)
    emulator.set_faults(hold_match="POST /nats-users/{userId}/creds", hold_ms=3_000)
    attempt = asyncio.create_task(run(acts.issue_credentials, request))
    try:
        async with asyncio.timeout(10):
            while emulator.creds_issued(user.user_id) == issued:
                await asyncio.sleep(0.01)
    finally:
        attempt.cancel()
        emulator.set_faults()
    with pytest.raises(asyncio.CancelledError):
        await attempt


async def test_a_download_the_worker_dies_holding_is_revoked_and_the_delivered_one_kept(
    acts: NatsActivities,
    emulator: SynadiaEmulator,
    remote: Path,
    keys: ControllerKeys,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = workload()
    user = await run(acts.ensure_nats_user, NatsUserInput(workload=w))

    def request(version: int, reason: str) -> IssueInput:
        return issue_input(w, user, version, reason)

    # The first issuance is lost; the next try (an attempt 1 again, as after a workflow retry)
    # revokes the key it was issued on and delivers on a new one.
    await lose_a_download(acts, emulator, user, request(1, "Initial"))
    commits = commit_count(remote)
    first = await run(acts.issue_credentials, request(1, "Initial"))
    assert commit_count(remote) == commits + 1
    assert first.public_key != user.public_key
    assert await issuances_by_key(emulator, user.user_id) == {
        user.public_key: ["Revoked"],
        first.public_key: ["Active"],
    }
    v1 = opened(remote, first.location, keys)
    live_v1 = await connect_with_creds(emulator.nats_url, write_creds(tmp_path, "v1", v1))

    # A refresh is lost too: the running workload's v1 stays valid throughout, the lost key is
    # revoked, v2 lands on a third key.
    await lose_a_download(acts, emulator, user, request(2, "Refresh"))
    second = await run(acts.issue_credentials, request(2, "Refresh"))
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
    await run(
        acts.remove_nats,
        RemoveInput(
            workload=w,
            user_id=user.user_id,
            account_id=user.account_id,
            public_keys=[],
            record=second,
        ),
    )
    await asyncio.wait_for(live_v1.closed.wait(), 5)
    assert_nowhere([v1, v2], repos(remote, tmp_path), caplog)


async def test_a_download_answered_with_an_error_after_it_issued_is_revoked(
    acts: NatsActivities, emulator: SynadiaEmulator, remote: Path
) -> None:
    w = workload()
    user = await run(acts.ensure_nats_user, NatsUserInput(workload=w))
    # Synadia issues, then answers 503: the client does not download again on that key.
    emulator.set_faults(
        fail_next=[503], fail_match="POST /nats-users/{userId}/creds", fail_after_commit=True
    )
    try:
        record = await issue(acts, w, user, 1)
    finally:
        emulator.set_faults()
    assert await issuances_by_key(emulator, user.user_id) == {
        user.public_key: ["Revoked"],
        record.public_key: ["Active"],
    }
    assert emulator.creds_issued(user.user_id) == 2 and commit_count(remote) == 1


async def test_a_lost_download_is_revoked_even_when_the_delivered_secret_is_gone(
    acts: NatsActivities, emulator: SynadiaEmulator, remote: Path, tmp_path: Path
) -> None:
    # The sealed secret was deleted by hand, so the activity cannot read which key the workload
    # holds; the workflow's record of what it delivered tells it, and the lost key is revoked.
    w = workload()
    user = await run(acts.ensure_nats_user, NatsUserInput(workload=w))
    first = await issue(acts, w, user, 1)
    clone = tmp_path / "someone"
    git("clone", "--quiet", str(remote), str(clone))
    (clone / first.location).unlink()
    git("commit", "--quiet", "-am", "delete", cwd=clone)
    git("push", "--quiet", "origin", "main", cwd=clone)

    drifted = issue_input(w, user, 2, "DeliveryDrift", delivered_public_key=first.public_key)
    await lose_a_download(acts, emulator, user, drifted)
    second = await run(acts.issue_credentials, drifted)
    by_key = await issuances_by_key(emulator, user.user_id)
    lost = [k for k in by_key if k not in (first.public_key, second.public_key)]
    assert by_key == {
        first.public_key: ["Active"],
        lost[0]: ["Revoked"],
        second.public_key: ["Active"],
    }
