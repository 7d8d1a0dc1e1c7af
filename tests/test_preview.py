"""What `idpctl diff` shows of each capability, against real parts: the `<Name>.preview`
activity (observe, plan, explain, expect, and no apply) run in the SDK's ActivityEnvironment,
then the pass it predicts, run for real by the `<Name>.reconcile` activity. Every preview must
say what that pass then does: the same changes, and the outputs it expected where it claimed to
know them (ASSIGNED_ON_APPLY where only the apply can).

The parts: moto's server for Registry, git for Manifests, the Synadia emulator (with its real
nats-server) for Nats and Credentials, aggregators on the session's Temporal dev server for Api,
and the session's PostgreSQL server for the Postgres plugin.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from support.moto import MOTO_ACCOUNT_ID
from support.postgres import admin_env, postgres_platform, postgres_workload
from support.secrets import ControllerKeys, secret_parts, unsealed
from support.stack import git, platform_for, read, task_queue
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.apiroutes import ApiRouteActivities
from activities.capabilities import capability_activities, settings_of
from activities.platform import PlatformActivities
from capabilities import ASSIGNED_ON_APPLY
from capabilities.api import Api
from capabilities.credentials import Credentials
from capabilities.manifests import Manifests
from capabilities.nats import ROTATE, Nats
from capabilities.registry import Registry
from emulators.synadia import DEFAULT_TOKEN, SynadiaEmulator
from idp.capability import Capability, Change, Context, Preview, Report
from idp.models import ApiAggregator, Workload
from idp.platform import (
    AwsConfig,
    ClusterIdentity,
    Destination,
    Platform,
    StateStoreConfig,
    SynadiaConfig,
)
from idp.sealing import CertificateSource
from idp_postgres.capability import Postgres
from idp_postgres.local import LocalPostgres
from starter import operations
from workflows.aggregator import ApiAggregatorWorkflow

REGION = "eu-west-1"
OIDC = f"arn:aws:iam::{MOTO_ACCOUNT_ID}:oidc-provider/oidc.eks.{REGION}.amazonaws.com/id/ABC"
TOKEN_ENV = "IDP_TEST_SYNADIA_TOKEN"
SERVICE_ACCOUNT = "dev/shop/cart/serviceaccount.yaml"
RECORD = "dev/.idp-owners/shop/ServiceAccount/cart-sa"


@dataclass
class Books:
    """What the engine keeps between passes, as workflows/engine.py records a report."""

    outputs: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    requests: dict[str, Any] = field(default_factory=dict)

    def record(self, name: str, report: Report) -> None:
        for book, value in ((self.outputs, report.outputs), (self.memory, report.memory)):
            if value:
                book[name] = value
            else:
                book.pop(name, None)
        for operation in report.handled:
            self.requests.pop(operation, None)


class Walk:
    """Some capabilities of one workload, given in dependency order: previewed as `idpctl
    diff` walks them (each one planned with the outputs those it requires expect, of those
    taking part), then applied as the engine's next pass applies them."""

    def __init__(
        self,
        capabilities: list[Capability[Any, Any]],
        platform: Platform,
        cache: Path,
        workload: Workload,
        env: ActivityEnvironment | None = None,
    ) -> None:
        self.capabilities = capabilities
        self.activities = {
            c.name: capability_activities(c, c.actions(platform, settings_of(c, platform), cache))
            for c in self.capabilities
        }
        self.workload = workload
        self.env = env or ActivityEnvironment()
        self.books = Books()

    def context(self, capability: Capability[Any, Any], now: datetime) -> Context:
        return Context.of(capability, self.workload, self.workload.workflow_id, 1, now, self.books)

    async def preview(self, now: datetime) -> dict[str, Preview]:
        previews: dict[str, Preview] = {}
        for capability in self.capabilities:
            expected = {n: previews[n].expected for n in capability.requires if n in previews}
            assert None not in expected.values(), f"{capability.name} would wait: {expected}"
            ctx = self.context(capability, now).model_copy(update={"inputs": expected})
            *_, preview = self.activities[capability.name]
            previews[capability.name] = await self.env.run(preview, ctx)
        return previews

    async def apply(self, now: datetime) -> dict[str, Report]:
        reports = {}
        for capability in self.capabilities:
            reconcile, *_ = self.activities[capability.name]
            report = await self.env.run(reconcile, self.context(capability, now))
            self.books.record(capability.name, report)
            reports[capability.name] = report
        return reports

    async def predicted(self, now: datetime) -> tuple[dict[str, Preview], dict[str, Report]]:
        """The previews, then the pass, which must do what they said."""
        previews = await self.preview(now)
        reports = await self.apply(now)
        for name, preview in previews.items():
            assert_predicted(preview, reports[name])
        return previews, reports


def assert_predicted(preview: Preview, report: Report) -> None:
    """The pass did what the preview said, and reported the outputs it expected, field for
    field where it claimed to know them."""
    assert preview.refused is None
    assert report.plan == preview.changes
    if preview.expected is None:
        return
    assert report.outputs is not None and report.outputs.keys() == preview.expected.keys()
    for key, value in preview.expected.items():
        if value == ASSIGNED_ON_APPLY:
            assert report.outputs[key] not in (None, ASSIGNED_ON_APPLY)
        else:
            assert report.outputs[key] == value, key


def shown(previews: dict[str, Preview]) -> str:
    """Everything a preview tells, as one text to scan for secrets."""
    return json.dumps([p.model_dump(mode="json") for p in previews.values()])


def by_hand(repo: Path, tmp_path: Path, path: str, text: str) -> None:
    """Someone edits a file of the state store and pushes."""
    clone = tmp_path / f"hand-{len(list(tmp_path.glob('hand-*')))}"
    git("clone", "--quiet", str(repo), str(clone))
    (clone / path).write_text(text)
    git("commit", "--quiet", "-am", "by hand", cwd=clone)
    git("push", "--quiet", "origin", "main", cwd=clone)


def patched(repo: Path, tmp_path: Path, diff: list[str]) -> dict[str, str | None]:
    """The files `diff` names, in a clone of `repo` with it applied by `git apply`: a unified
    diff that git takes as it is, and that leaves what the apply then committed."""
    clone = tmp_path / f"patched-{len(list(tmp_path.glob('patched-*')))}"
    git("clone", "--quiet", str(repo), str(clone))
    patch = tmp_path / f"{clone.name}.diff"
    patch.write_text("\n".join(diff) + "\n")
    git("apply", str(patch), cwd=clone)
    paths = [line[len("+++ b/") :] for line in diff if line.startswith("+++ b/")]
    paths += [line[len("--- a/") :] for line in diff if line.startswith("--- a/")]
    return {p: (clone / p).read_text() if (clone / p).exists() else None for p in paths}


# ---- Registry and Manifests: moto and git -----------------------------------------------------


@pytest.fixture
def aws_platform(aws_url: str, repo: Path) -> Platform:
    return Platform(
        destinations=[
            Destination(
                name="dev",
                state_store=StateStoreConfig(url=str(repo)),
                cluster=ClusterIdentity(oidc_provider_arn=OIDC),
            )
        ],
        aws=AwsConfig(
            region=REGION,
            account_id=MOTO_ACCOUNT_ID,
            endpoint_url=aws_url,
            repository_prefix="idp/",
        ),
    )


def workload(system: str = "shop", **spec: Any) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": "cart", "system": system},
            "spec": {"owner": "team-shop", "destination": "dev", "namespace": "shop", **spec},
        }
    )


def registry_walk(platform: Platform, tmp_path: Path, w: Workload) -> Walk:
    return Walk([Registry(), Manifests()], platform, tmp_path / "cache", w)


async def test_a_new_workload_previews_as_created_with_the_outputs_the_apply_reports(
    aws_platform: Platform, repo: Path, tmp_path: Path, aws_url: str
) -> None:
    # Its own system: moto's server is shared by this module's tests.
    w = workload(system="fresh")
    walk = registry_walk(aws_platform, tmp_path, w)
    now = datetime.now(UTC)

    previews, reports = await walk.predicted(now)

    registry = previews["Registry"]
    assert registry.changes == [
        Change(action="create", subject="ECR repository idp/fresh/cart", why="it does not exist"),
        Change(action="create", subject="IAM role idp-fresh-cart", why="it does not exist"),
    ]
    # Known before anything exists, and what AWS then answered.
    assert (
        registry.expected
        == reports["Registry"].outputs
        == {
            "repositoryUri": f"{MOTO_ACCOUNT_ID}.dkr.ecr.{REGION}.amazonaws.com/idp/fresh/cart",
            "roleArn": f"arn:aws:iam::{MOTO_ACCOUNT_ID}:role/idp-fresh-cart",
        }
    )
    assert registry.details == []

    # Planned on the role the Registry expects, the ServiceAccount is what was then written.
    manifests = previews["Manifests"]
    path = "dev/shop/cart/serviceaccount.yaml"
    assert manifests.changes == [Change(action="write", subject=path, why="it is missing")]
    assert manifests.expected is not None and manifests.expected["commit"] == ASSIGNED_ON_APPLY
    written = read(repo, path)
    assert written is not None
    assert manifests.details == [
        "--- /dev/null",
        f"+++ b/{path}",
        f"@@ -0,0 +1,{len(written.splitlines())} @@",
        *(f"+{line}" for line in written.splitlines()),
    ]
    assert f"+    eks.amazonaws.com/role-arn: {reports['Registry'].outputs['roleArn']}" in (
        manifests.details
    )


async def test_an_applied_workload_previews_in_sync_with_its_outputs(
    aws_platform: Platform, tmp_path: Path
) -> None:
    walk = registry_walk(aws_platform, tmp_path, workload(system="steady"))
    await walk.apply(datetime.now(UTC))

    previews, reports = await walk.predicted(datetime.now(UTC))

    for name, preview in previews.items():
        assert (preview.changes, preview.details) == ([], [])
        assert preview.expected == reports[name].outputs == walk.books.outputs[name]


async def test_registry_drift_and_a_spec_change_preview_before_and_after(
    aws_platform: Platform, tmp_path: Path, aws_url: str
) -> None:
    walk = registry_walk(aws_platform, tmp_path, workload(system="drift"))
    await walk.apply(datetime.now(UTC))
    ecr = boto3.client("ecr", region_name=REGION, endpoint_url=aws_url)
    iam = boto3.client("iam", region_name=REGION, endpoint_url=aws_url)
    name, role = "idp/drift/cart", "idp-drift-cart"
    ecr.put_image_tag_mutability(repositoryName=name, imageTagMutability="MUTABLE")
    ecr.put_image_scanning_configuration(
        repositoryName=name, imageScanningConfiguration={"scanOnPush": False}
    )
    iam.untag_role(RoleName=role, TagKeys=["idp.workload"])
    trust = iam.get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"]
    trust["Statement"][0]["Condition"]["StringEquals"] = {"example.com:sub": "someone"}
    iam.update_assume_role_policy(RoleName=role, PolicyDocument=json.dumps(trust))
    walk.workload = workload(system="drift", registry={"lifecycle": {"keepLast": 10}})

    previews, _ = await walk.predicted(datetime.now(UTC))

    repository, subject = f"ECR repository {name}", f"IAM role {role}"
    details = previews["Registry"].details
    assert details[:5] == [
        f"image tag mutability of {repository}: MUTABLE → IMMUTABLE",
        f"scan on push of {repository}: false → true",
        f"lifecycle policy of {repository}, rule 2 (Keep the last 10 images): "
        "selection.countNumber 30 → 10",
        f"trust policy of {subject}:",
        "--- as it is",
    ]
    # In the canonical form the plan compares (one-item lists and all): only what differs.
    issuer = f"oidc.eks.{REGION}.amazonaws.com/id/ABC"
    trust_diff = details[details.index(f"trust policy of {subject}:") + 1 : -1]
    assert [line for line in trust_diff[2:] if line.startswith(("-", "+"))] == [
        '-          "example.com:sub": [',
        '-            "someone"',
        f'+          "{issuer}:aud": [',
        '+            "sts.amazonaws.com"',
        "+          ],",
        f'+          "{issuer}:sub": [',
        '+            "system:serviceaccount:shop:cart"',
    ]
    assert details[-1] == f"tag idp.workload of {subject}: (none) → cart"
    # The role and the repository stayed, and so do the outputs.
    assert previews["Registry"].expected == walk.books.outputs["Registry"]
    assert previews["Manifests"].changes == []


async def test_a_foreign_repository_is_refused_in_the_preview(
    aws_platform: Platform, tmp_path: Path, aws_url: str
) -> None:
    boto3.client("ecr", region_name=REGION, endpoint_url=aws_url).create_repository(
        repositoryName="idp/foreign/cart"
    )
    walk = registry_walk(aws_platform, tmp_path, workload(system="foreign"))
    *_, preview = walk.activities["Registry"]
    ctx = walk.context(walk.capabilities[0], datetime.now(UTC))

    refused = await walk.env.run(preview, ctx)

    assert refused == Preview(
        refused="ECR repository idp/foreign/cart already exists but is not managed by idp for "
        "workload foreign/cart (it has no idp.managed-by=idp tag); rename the workload or tag "
        "the resource to adopt it."
    )


async def test_the_manifests_diff_is_a_unified_diff_git_applies_to_what_is_then_written(
    repo: Path, tmp_path: Path
) -> None:
    """Without a Registry: the ServiceAccount has no role to name."""
    walk = Walk([Manifests()], platform_for(repo), tmp_path / "cache", workload())
    await walk.apply(datetime.now(UTC))
    by_hand(repo, tmp_path, SERVICE_ACCOUNT, "edited: by hand\n")
    # A ServiceAccount of its own name: an ownership record is written with the manifest.
    walk.workload = workload(serviceAccount="cart-sa")

    previews = await walk.preview(datetime.now(UTC))
    diff = previews["Manifests"].details
    result = patched(repo, tmp_path, diff)
    await walk.apply(datetime.now(UTC))

    assert diff[:3] == ["--- /dev/null", f"+++ b/{RECORD}", "@@ -0,0 +1 @@"]
    assert diff[3:7] == [
        "+workload/shop/cart",
        f"--- a/{SERVICE_ACCOUNT}",
        f"+++ b/{SERVICE_ACCOUNT}",
        "@@ -1 +1,9 @@",
    ]
    assert "-edited: by hand" in diff
    assert result == {RECORD: read(repo, RECORD), SERVICE_ACCOUNT: read(repo, SERVICE_ACCOUNT)}

    # Back to the default ServiceAccount: the record goes, and the diff says so.
    walk.workload = workload()
    diff = (await walk.preview(datetime.now(UTC)))["Manifests"].details
    result = patched(repo, tmp_path, diff)
    await walk.apply(datetime.now(UTC))
    assert [line for line in diff if line.startswith(("---", "+++"))] == [
        f"--- a/{RECORD}",
        "+++ /dev/null",
        f"--- a/{SERVICE_ACCOUNT}",
        f"+++ b/{SERVICE_ACCOUNT}",
    ]
    assert result == {RECORD: None, SERVICE_ACCOUNT: read(repo, SERVICE_ACCOUNT)}
    assert read(repo, RECORD) is None


# ---- Nats and Credentials: the Synadia emulator, git and sealing ------------------------------


@pytest.fixture(scope="module")
async def emulator(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SynadiaEmulator]:
    async with SynadiaEmulator.running(tmp_path_factory.mktemp("synadia")) as emu:
        yield emu


@pytest.fixture
def nats_platform(
    repo: Path, emulator: SynadiaEmulator, keys: ControllerKeys, monkeypatch: pytest.MonkeyPatch
) -> Platform:
    monkeypatch.setenv(TOKEN_ENV, DEFAULT_TOKEN)
    return Platform(
        destinations=[
            Destination(
                name="dev",
                state_store=StateStoreConfig(url=str(repo)),
                sealing=CertificateSource(file=keys.cert_file),
            )
        ],
        synadia=SynadiaConfig(
            url=emulator.api_url,
            token_env=TOKEN_ENV,
            system=emulator.system_name,
            default_account=emulator.account_name,
        ),
    )


def nats_workload(publish: list[str]) -> Workload:
    return workload(
        system="natsy",
        nats={"permissions": {"publish": {"allow": publish}, "subscribe": {"allow": ["orders.*"]}}},
    )


async def test_nats_and_credentials_preview_every_issuance_and_say_when_there_is_none(
    nats_platform: Platform, repo: Path, tmp_path: Path, keys: ControllerKeys
) -> None:
    walk = Walk(
        [Nats(), Credentials()], nats_platform, tmp_path / "cache", nats_workload(["orders.>"])
    )
    now = datetime.now(UTC)

    def delivered() -> str:
        location = walk.books.outputs["Credentials"]["location"]
        return unsealed(repo, location, keys.key)["nats.creds"]

    # New: the user is created, with what the spec says, and v1 issued on its new key.
    created, _ = await walk.predicted(now)
    issued = [delivered()]
    user = walk.books.outputs["Nats"]
    assert created["Nats"].expected == {
        "userId": ASSIGNED_ON_APPLY,
        "accountId": ASSIGNED_ON_APPLY,
        "name": "natsy-cart",
        "publicKey": ASSIGNED_ON_APPLY,
        "keyReason": None,
    }
    assert created["Nats"].details == [
        "publish: orders.>",
        "subscribe: orders.*",
        "allow responses: false",
        "JWT lifetime: 7d",
    ]
    assert created["Credentials"].changes == [
        Change(action="issue", subject="NATS credentials v1", why="Initial")
    ]
    assert created["Credentials"].details == ["credentials: would issue v1 (Initial)"]

    # Nothing due: nothing planned, and said so of the credentials.
    steady, _ = await walk.predicted(now + timedelta(minutes=5))
    v1 = walk.books.outputs["Credentials"]
    assert steady["Nats"].changes == steady["Credentials"].changes == []
    assert steady["Nats"].expected == user
    expires = datetime.fromisoformat(v1["expiresAt"]).isoformat()
    assert steady["Credentials"].details == [
        f"credentials: no issuance (version 1 stays, expires {expires}, next refresh "
        f"{datetime.fromisoformat(v1['nextRefreshAt']).isoformat()})"
    ]

    # Permissions narrowed: the user PATCHed, before → after, and v2 issued for it.
    walk.workload = nats_workload(["orders.*"])
    changed, _ = await walk.predicted(now + timedelta(minutes=10))
    issued.append(delivered())
    assert changed["Nats"].changes == [
        Change(
            action="update",
            subject="NATS user natsy-cart",
            why="the spec changed permissions.publish",
        )
    ]
    assert changed["Nats"].details == ["permissions.publish: orders.> → orders.*"]
    assert changed["Nats"].expected == user
    assert changed["Credentials"].details == [
        f"credentials: would issue v2 (PermissionsChanged), replacing v1 (fingerprint "
        f"{v1['fingerprint'][:16]}, expires {expires})"
    ]

    # v2 went out on a key of its own (a key carries one download): the user's key moved on
    # since the Nats outputs were recorded. Nothing is planned, and the outputs expected are
    # what Synadia has, not what was recorded.
    v2 = walk.books.outputs["Credentials"]
    assert v2["publicKey"] != user["publicKey"]
    settled, _ = await walk.predicted(now + timedelta(minutes=12))
    assert settled["Nats"].changes == settled["Credentials"].changes == []
    assert settled["Nats"].expected == {**user, "publicKey": v2["publicKey"]}
    assert settled["Credentials"].details[0].startswith("credentials: no issuance (version 2 ")

    # A rotation asked for: a new key, unknown until drawn, and v3 issued on it for the request.
    walk.books.requests[ROTATE] = {"reason": "leaked", "revokeOld": "now"}
    rotated, _ = await walk.predicted(now + timedelta(minutes=15))
    issued.append(delivered())
    assert rotated["Nats"].expected == {
        **user,
        "publicKey": ASSIGNED_ON_APPLY,
        "keyReason": "Requested",
    }
    assert rotated["Nats"].details == [f"key: {v2['publicKey']} → a new key, drawn by Synadia"]
    assert [c.why for c in rotated["Credentials"].changes] == ["Requested"]

    # No credential, no seed, no JWT of any version anywhere in what the previews told.
    told = "".join(shown(p) for p in (created, steady, changed, settled, rotated))
    for part in (part for creds in issued for part in secret_parts(creds)):
        assert part not in told


# ---- Api: aggregators on the dev server -------------------------------------------------------


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


def api_workload(name: str, hostname: str, path: str) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": name, "system": "shop"},
            "spec": {
                "owner": "team",
                "destination": "dev",
                "namespace": "shop",
                "api": [
                    {"aggregator": hostname, "paths": [path], "service": {"name": name, "port": 80}}
                ],
            },
        }
    )


async def history_length(client: Client, hostname: str) -> int:
    handle = client.get_workflow_handle(f"api-aggregator/{hostname}")
    return len((await handle.fetch_history()).events)


async def test_api_routes_preview_as_the_aggregator_would_answer_naming_the_holder(
    client: Client, repo: Path, tmp_path: Path
) -> None:
    queue, platform = task_queue(), platform_for(repo)
    hostname = f"{queue}.example.com"
    env = ActivityEnvironment(client)
    # The aggregators a registration starts run on the activity's task queue, as on a worker.
    env.info = dataclasses.replace(ActivityEnvironment.default_info(), task_queue=queue)
    writes = ApiRouteActivities(platform, tmp_path / "routes").write_api_routes
    async with Worker(
        client,
        task_queue=queue,
        workflows=[ApiAggregatorWorkflow],
        activities=[PlatformActivities(platform).runtime_settings, writes],
    ):
        cart = Walk(
            [Api()], platform, tmp_path / "cache", api_workload("cart", hostname, "/shop"), env
        )

        # No aggregator runs yet: the registration starts one, which holds the routes.
        previews, reports = await cart.predicted(datetime.now(UTC))
        pending = (
            f"no ApiAggregator for {hostname} has been applied yet; the targets are held until "
            "it is"
        )
        assert previews["Api"].changes == [
            Change(
                action="register", subject=f"1 target(s) with {hostname}", why="not registered yet"
            )
        ]
        assert previews["Api"].details == [f"/shop on {hostname}: AggregatorPending ({pending})"]
        assert reports["Api"].message == pending

        # Registered: in sync, and the outputs expected are those the pass reports.
        await operations.apply_aggregator(client, queue, aggregator(hostname))
        steady, reports = await cart.predicted(datetime.now(UTC))
        assert steady["Api"].changes == [] and steady["Api"].expected == reports["Api"].outputs

        # Another workload wants a path under it: refused, naming the workload that holds it,
        # and asking changed nothing in the aggregator's history.
        orders = Walk(
            [Api()], platform, tmp_path / "cache", api_workload("orders", hostname, "/shop/o"), env
        )
        events = await history_length(client, hostname)
        refused = (await orders.preview(datetime.now(UTC)))["Api"]
        conflict = f"path /shop/o on {hostname} would be shadowed by /shop to workload shop/cart"
        assert refused.details == [f"/shop/o on {hostname}: PathConflict ({conflict})"]
        assert await history_length(client, hostname) == events
        report = (await orders.apply(datetime.now(UTC)))["Api"]
        assert (report.status, report.reason, report.message) == (
            "Blocked",
            "PathConflict",
            conflict,
        )
        assert report.plan == refused.changes

        # Dropped from the spec: what it releases.
        cart.workload = cart.workload.model_copy(
            update={"spec": cart.workload.spec.model_copy(update={"api": []})}
        )
        released, _ = await cart.predicted(datetime.now(UTC))
        assert released["Api"].details == [f"/shop on {hostname}: released"]


# ---- Postgres: the session's PostgreSQL server, git and sealing -------------------------------


@pytest.fixture
def postgres_env(
    postgres_server: LocalPostgres,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name, value in admin_env(postgres_server).items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.DEBUG)


async def test_postgres_previews_settings_before_and_after_and_every_issuance(
    postgres_env: None,
    postgres_server: LocalPostgres,
    repo: Path,
    tmp_path: Path,
    keys: ControllerKeys,
) -> None:
    system = task_queue().replace("-", "")
    platform = postgres_platform(
        repo, postgres_server, keys.cert_file, extensions=["citext", "pg_trgm"]
    )
    w = postgres_workload(system, extensions=["citext"])
    walk = Walk([Postgres()], platform, tmp_path / "cache", w)
    database = f"{system}_orders"
    now = datetime.now(UTC)

    created, _ = await walk.predicted(now)
    assert [(c.action, c.subject) for c in created["Postgres"].changes] == [
        ("create", f"role {database}_owner"),
        ("create", f"role {database}_login1"),
        ("create", f"role {database}_login2"),
        ("create", f"database {database}"),
        ("create", f"extension citext in {database}"),
        ("issue", f"password v1 of {database}_login1"),
    ]
    assert created["Postgres"].details == [
        f"extensions of database {database}: none → citext",
        f"database password: would issue v1 (Initial) on login {database}_login1",
    ]
    v1 = walk.books.outputs["Postgres"]

    steady, _ = await walk.predicted(now + timedelta(minutes=1))
    assert steady["Postgres"].changes == []
    assert steady["Postgres"].expected == v1
    no_issuance = (
        f"database password: no issuance (version 1 of login {database}_login1 stays, expires "
        f"{datetime.fromisoformat(v1['expiresAt']).isoformat()}, next refresh "
        f"{datetime.fromisoformat(v1['nextRefreshAt']).isoformat()})"
    )
    assert steady["Postgres"].details == [no_issuance]

    walk.workload = postgres_workload(system, extensions=["citext", "pg_trgm"], connectionLimit=50)
    changed, _ = await walk.predicted(now + timedelta(minutes=2))
    assert changed["Postgres"].details == [
        f"connection limit of database {database}: 20 → 50",
        f"extensions of database {database}: citext → citext, pg_trgm",
        no_issuance,
    ]
    assert changed["Postgres"].expected == v1

    walk.books.requests["rotate_credentials"] = {"reason": "leaked"}
    rotated, _ = await walk.predicted(now + timedelta(minutes=3))
    retire_at = (now + timedelta(minutes=3, hours=1)).isoformat()
    assert rotated["Postgres"].details == [
        f"database password: would issue v2 (Requested) on login {database}_login2, replacing "
        f"v1 on {database}_login1 (fingerprint {v1['fingerprint'][:16]}, expires "
        f"{datetime.fromisoformat(v1['expiresAt']).isoformat()}); {database}_login1 stops "
        f"working at {retire_at}"
    ]

    told = shown(created | steady) + shown(changed) + shown(rotated)
    password = unsealed(repo, walk.books.outputs["Postgres"]["location"], keys.key)["password"]
    for part in secret_parts(password):
        assert part not in told
