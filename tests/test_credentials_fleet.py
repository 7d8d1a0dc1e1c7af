"""The Credentials capability's fleet read against its fingerprint, with real git and a real moto
server: what a pass in sync records, one read of the whole fleet gives back for the same outside;
every drift the pass repairs (a re-issue for DeliveryDrift) changes it or drops the key, exactly
for the workload it concerns; and a sweep costs the same few git processes per state store and
ListSecrets pages for 50 workloads as for three.

The credentials are real .creds minted here and delivered by the same delivery a pass's apply
uses: Synadia plays no part in what a pass in sync observes, nor in what the fleet read sees.
"""

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from support.moto import MOTO_ACCOUNT_ID, reset_moto
from support.secrets import ControllerKeys, assert_nowhere, mint_creds
from support.stack import bare_repo, read
from temporalio.testing import ActivityEnvironment
from test_delivery import InMemorySecrets
from test_manifests_capability import by_hand
from test_manifests_fleet import git_processes, subcommands  # noqa: F401 (a fixture)

from activities.capabilities import capability_activities
from activities.deliveries import Deliveries
from capabilities.credentials import (
    Credentials,
    CredentialsObservation,
    CredentialsOutputs,
    CredentialsPlan,
    FleetKey,
)
from capabilities.credentials.actions import DELIVERY_FIELD, CredentialsActions
from capabilities.nats import NatsOutputs
from idp.aws.tags import WORKLOAD_TAG
from idp.capability import Context, Fingerprint, dump
from idp.credentials import (
    IssueReason,
    delivery_digest,
    next_refresh,
    permissions_digest,
)
from idp.delivery import (
    SECRET_KEY,
    DeliveryState,
    credential_metadata,
    delivery_kind,
    nats_target,
)
from idp.delivery.external import secret_id
from idp.models import Delivery, Workload
from idp.natsusers import nats_spec
from idp.platform import (
    AwsConfig,
    ClusterIdentity,
    Destination,
    Platform,
    SecretStoreConfig,
    StateStoreConfig,
)
from idp.sealing import CertificateSource

REGION = "eu-west-1"
OIDC = f"arn:aws:iam::{MOTO_ACCOUNT_ID}:oidc-provider/oidc.eks.{REGION}.amazonaws.com/id/ABC"
CREDENTIALS = Credentials()
SEALED, EXTERNAL = Delivery.SEALED_SECRET, Delivery.EXTERNAL_SECRET


@pytest.fixture(autouse=True)
def _fresh_aws(aws_url: str) -> None:
    """The module's moto server starts each test empty, so listings hold this test's secrets."""
    reset_moto(aws_url)


@pytest.fixture
def other(tmp_path: Path) -> Path:
    return bare_repo(tmp_path / "other.git")


@pytest.fixture
def platform(repo: Path, other: Path, aws_url: str, keys: ControllerKeys) -> Platform:
    """dev and prod share one state store (prod below a base directory); edge has its own."""

    def on(name: str, url: Path, path: str = "") -> Destination:
        return Destination(
            name=name,
            state_store=StateStoreConfig(url=str(url), path=path),
            cluster=ClusterIdentity(oidc_provider_arn=OIDC),
            sealing=CertificateSource(file=keys.cert_file),
            secret_store=SecretStoreConfig(name="aws-secrets-manager", force_delete=True),
        )

    return Platform(
        destinations=[on("dev", repo), on("prod", repo, "clusters"), on("edge", other)],
        aws=AwsConfig(region=REGION, account_id=MOTO_ACCOUNT_ID, endpoint_url=aws_url),
    )


@pytest.fixture
def actions(platform: Platform, tmp_path: Path) -> CredentialsActions:
    return CredentialsActions(platform, tmp_path / "cache")


@pytest.fixture
def outside(aws_url: str) -> Any:
    """Someone else's Secrets Manager client (a person at the console)."""
    return boto3.client("secretsmanager", region_name=REGION, endpoint_url=aws_url)


def member(system: str, delivery: Delivery = SEALED, destination: str = "dev") -> Workload:
    """Workload `<system>/cart` in namespace `<system>`: one directory per system."""
    return Workload.model_validate(
        {
            "metadata": {"name": "cart", "system": system},
            "spec": {
                "owner": "team-shop",
                "destination": destination,
                "namespace": system,
                "nats": {"credentials": {"delivery": delivery}},
            },
        }
    )


@dataclass
class Issued:
    """What the fleet knows of its credentials: each workload's context as its next pass gets
    it, and every credential delivered (for the leak scan)."""

    contexts: dict[str, Context] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)


async def issue(
    actions: CredentialsActions, platform: Platform, w: Workload, issued: Issued, version: int = 1
) -> Context:
    """What a pass's apply does when it issues `version`, with the credential minted here: the
    delivery the spec names delivers it, and the context records it as the outputs would."""
    destination = platform.require_destination(w.spec.destination)
    kind = delivery_kind(w, destination)
    creds = mint_creds()
    credential = credential_metadata(creds, version, nats_spec(w).credentials.ttl)
    delivered = await actions.deliveries.of(destination, kind, DELIVERY_FIELD).deliver(
        nats_target(w, destination), {SECRET_KEY: creds.text}, credential, f"deliver v{version}"
    )
    spec, now = nats_spec(w), datetime.now(UTC)
    outputs = CredentialsOutputs(
        **delivered.credential.model_dump(),
        delivery=delivered.delivery,
        location=delivered.location,
        permissions_digest=permissions_digest(spec),
        delivery_digest=delivery_digest(spec),
        next_refresh_at=next_refresh(spec.credentials, now),
        reason=IssueReason.INITIAL if version == 1 else IssueReason.DELIVERY_DRIFT,
    )
    user = NatsOutputs(
        user_id="UID",
        account_id="AID",
        name=f"{w.metadata.system}-cart",
        public_key=credential.public_key,
    )
    ctx = Context(
        workload=w,
        workflow_id=w.workflow_id,
        generation=1,
        now=now,
        outputs=dump(outputs),
        inputs={"Nats": dump(user)},
    )
    issued.contexts[w.metadata.system] = ctx
    issued.texts.append(creds.reveal())
    return ctx


async def issue_all(
    actions: CredentialsActions, platform: Platform, fleet: list[Workload]
) -> Issued:
    issued = Issued()
    await asyncio.gather(*(issue(actions, platform, w, issued) for w in fleet))
    return issued


async def observed(
    actions: CredentialsActions, ctx: Context
) -> tuple[CredentialsObservation, CredentialsPlan]:
    """What the workload's own pass observes and plans now."""
    observation = await actions.observe(ctx)
    return observation, CREDENTIALS.plan(ctx, observation)


async def in_sync(actions: CredentialsActions, issued: Issued) -> dict[str, Fingerprint]:
    """What each workload's pass records when it finds itself in sync."""
    found = {}
    for system, ctx in issued.contexts.items():
        observation, plan = await observed(actions, ctx)
        assert not plan
        fingerprint = CREDENTIALS.fingerprint(ctx, observation)
        assert fingerprint is not None
        found[system] = fingerprint
    return found


def seen(found: dict[str, str], fingerprint: Fingerprint) -> str:
    """How the fleet observer reads a workload: asleep ("same") or woken."""
    if fingerprint.key not in found:
        return "gone"
    return "same" if found[fingerprint.key] == fingerprint.digest else "differs"


# ---- the two halves agree --------------------------------------------------------------------


async def test_the_fleet_read_gives_back_what_each_pass_in_sync_recorded(
    actions: CredentialsActions, platform: Platform
) -> None:
    fleet = [
        member("shop"),
        member("blog", EXTERNAL),
        member("mail", destination="prod"),
        member("news", EXTERNAL, "prod"),
        member("chat", destination="edge"),
        member("ads", EXTERNAL, "edge"),
    ]
    issued = await issue_all(actions, platform, fleet)

    recorded = await in_sync(actions, issued)

    assert recorded["shop"].key == "sealed-secret:dev/shop/cart/nats:workload/shop/cart"
    assert recorded["news"].key == "external-secret:prod/news/cart/nats:workload/news/cart"
    assert FleetKey.parse(recorded["news"].key) == FleetKey.of(fleet[3], EXTERNAL)
    assert len({f.key for f in recorded.values()}) == len({f.digest for f in recorded.values()})
    assert await actions.fleet_observe([f.key for f in recorded.values()]) == {
        f.key: f.digest for f in recorded.values()
    }
    # The activity a pass runs reports the same fingerprint.
    reconcile = capability_activities(CREDENTIALS, actions)[0]
    report = await ActivityEnvironment().run(reconcile, issued.contexts["blog"])
    assert report.reason == "InSync" and report.fingerprint == recorded["blog"]
    # Nothing to find: keys of another form, naming what is not a label, or another owner; a
    # destination the platform lacks; a workload that never delivered.
    strangers = [
        "x",
        "sealed-secret:dev/shop/cart/nats",
        "kubernetes:dev/shop/cart/nats:workload/shop/cart",
        "sealed-secret:dev/../cart/nats:workload/shop/cart",
        "sealed-secret:dev/shop/cart/nats:workload/shop/other",
        "sealed-secret:gone/shop/cart/nats:workload/shop/cart",
        "sealed-secret:dev/none/cart/nats:workload/none/cart",
        "external-secret:dev/none/cart/nats:workload/none/cart",
    ]
    assert await actions.fleet_observe(strangers) == {}
    # A key is what the pass records, and what the read reads, not a place to point it at.
    assert [FleetKey.parse(key) for key in strangers[:5]] == [None] * 5


async def test_the_fleet_read_reads_no_secret_and_reveals_none(
    actions: CredentialsActions,
    platform: Platform,
    repo: Path,
    other: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Everything at DEBUG, so the leak scan sees every record the code under test writes.
    caplog.set_level(logging.DEBUG)
    fleet = [member("shop"), member("blog", EXTERNAL), member("ads", EXTERNAL, "edge")]
    issued = await issue_all(actions, platform, fleet)
    recorded = await in_sync(actions, issued)
    calls: list[str] = []
    actions.deliveries.secrets_client().meta.events.register(
        "before-call", lambda model, **_: calls.append(model.name)
    )

    found = await actions.fleet_observe([f.key for f in recorded.values()])

    assert len(found) == 3 and calls == ["ListSecrets"]
    clones = [head.parent for head in (tmp_path / "cache").glob("*/HEAD")]
    assert_nowhere(issued.texts, [repo, other, *clones], caplog)


async def test_kubernetes_delivery_keeps_its_own_checks(platform: Platform, tmp_path: Path) -> None:
    """The Secret is in place, yet no fingerprint: no fleet read covers the API server."""
    actions = CredentialsActions(platform, tmp_path / "cache")
    api = InMemorySecrets()
    actions.deliveries = Deliveries(platform, tmp_path / "cache", kubernetes=lambda _: api)
    ctx = await issue(actions, platform, member("shop", Delivery.KUBERNETES), Issued())

    observation, plan = await observed(actions, ctx)

    assert observation.delivered is not None and observation.delivered.in_place and not plan
    assert CREDENTIALS.fingerprint(ctx, observation) is None


async def test_a_file_whose_text_cannot_tell_its_id_gives_no_fingerprint(
    actions: CredentialsActions, platform: Platform, repo: Path, tmp_path: Path
) -> None:
    """A byte that is not UTF-8 (here in a comment) leaves the secret in place, but the text
    the check reads no longer has the file's id: no fingerprint, rather than one that would
    never match and wake the workload every sweep."""
    issued = await issue_all(actions, platform, [member("shop")])
    ctx = issued.contexts["shop"]
    path = "dev/shop/cart/sealedsecret-nats.yaml"
    by_hand(repo, tmp_path, lambda clone: _append(clone / path, b"# caf\xe9\n"))

    observation, plan = await observed(actions, ctx)

    assert observation.delivered is not None and observation.delivered.in_place and not plan
    assert observation.delivered.file_id is None
    assert CREDENTIALS.fingerprint(ctx, observation) is None
    # And what the pass records only when it found the recorded version in place.
    drifted = CredentialsObservation(delivered=DeliveryState(in_place=False, file_id="0" * 40))
    assert CREDENTIALS.fingerprint(ctx, drifted) is None
    assert CREDENTIALS.fingerprint(ctx, CredentialsObservation()) is None


def _append(path: Path, data: bytes) -> None:
    path.write_bytes(path.read_bytes() + data)


# ---- drift ---------------------------------------------------------------------------------------

# shop and blog deliver sealed secrets, mail and news external ones, all on destination dev.
FLEET = [member("shop"), member("blog"), member("mail", EXTERNAL), member("news", EXTERNAL)]


@dataclass(frozen=True)
class Outside:
    repo: Path
    tmp_path: Path
    secrets: Any

    def edit(self, path: str, change: Callable[[str], str]) -> None:
        by_hand(self.repo, self.tmp_path, lambda clone: _rewrite(clone / path, change))

    def git(self, change: Callable[[Path], None]) -> None:
        by_hand(self.repo, self.tmp_path, change)


def _rewrite(path: Path, change: Callable[[str], str]) -> None:
    before = path.read_text()
    after = change(before)
    assert after != before, "the edit changed nothing"
    path.write_text(after)


def sealed_file(system: str) -> str:
    return f"dev/{system}/cart/sealedsecret-nats.yaml"


def external_file(system: str) -> str:
    return f"dev/{system}/cart/externalsecret-nats.yaml"


def secret(system: str) -> str:
    return f"idp/{system}/cart/nats"


def annotate(path: str, name: str, value: str) -> Callable[[Outside], None]:
    def change(outside: Outside) -> None:
        def edited(text: str) -> str:
            manifest = yaml.safe_load(text)
            manifest["metadata"]["annotations"][name] = value
            return yaml.safe_dump(manifest)

        outside.edit(path, edited)

    return change


def ciphertext(system: str) -> Callable[[Outside], None]:
    def edited(text: str) -> str:
        manifest = yaml.safe_load(text)
        data = manifest["spec"]["encryptedData"]
        data[SECRET_KEY] = data[SECRET_KEY][::-1]
        return yaml.safe_dump(manifest)

    return lambda outside: outside.edit(sealed_file(system), edited)


def labelled(path: str) -> Callable[[Outside], None]:
    def edited(text: str) -> str:
        manifest = yaml.safe_load(text)
        manifest["metadata"]["labels"]["team"] = "someone"
        return yaml.safe_dump(manifest)

    return lambda outside: outside.edit(path, edited)


def replaced(path: str, old: str, new: str) -> Callable[[Outside], None]:
    return lambda outside: outside.edit(path, lambda text: text.replace(old, new))


def deleted(path: str) -> Callable[[Outside], None]:
    return lambda outside: outside.git(lambda clone: (clone / path).unlink())


def symlinked(path: str) -> Callable[[Outside], None]:
    """The file's place taken by a symlink to a file of the same text."""

    def change(clone: Path) -> None:
        target = clone / path
        (target.parent / "original.yaml").write_bytes(target.read_bytes())
        target.unlink()
        target.symlink_to("original.yaml")

    return lambda outside: outside.git(change)


def executable(path: str) -> Callable[[Outside], None]:
    return lambda outside: outside.git(lambda clone: (clone / path).chmod(0o755))


def stray(system: str) -> Callable[[Outside], None]:
    def change(clone: Path) -> None:
        (clone / f"dev/{system}/cart/configmap.yaml").write_text("kind: ConfigMap\n")

    return lambda outside: outside.git(change)


def force_deleted(system: str) -> Callable[[Outside], None]:
    return lambda outside: outside.secrets.delete_secret(
        SecretId=secret(system), ForceDeleteWithoutRecovery=True
    )


def scheduled_for_deletion(system: str) -> Callable[[Outside], None]:
    return lambda outside: outside.secrets.delete_secret(
        SecretId=secret(system), RecoveryWindowInDays=7
    )


def new_value(system: str) -> Callable[[Outside], None]:
    return lambda outside: outside.secrets.put_secret_value(
        SecretId=secret(system), SecretString="someone else's"
    )


def pending(system: str) -> Callable[[Outside], None]:
    """A version staged AWSPENDING, as a rotation prepares one: the current one stays ours."""
    return lambda outside: outside.secrets.put_secret_value(
        SecretId=secret(system), SecretString="next", VersionStages=["AWSPENDING"]
    )


def tagged(system: str) -> Callable[[Outside], None]:
    def change(outside: Outside) -> None:
        outside.secrets.tag_resource(
            SecretId=secret(system), Tags=[{"Key": "team", "Value": "someone"}]
        )
        outside.secrets.untag_resource(SecretId=secret(system), TagKeys=[WORKLOAD_TAG])

    return change


def described(system: str) -> Callable[[Outside], None]:
    return lambda outside: outside.secrets.update_secret(
        SecretId=secret(system), Description="edited at the console"
    )


@dataclass(frozen=True)
class Case:
    change: Callable[[Outside], None]
    # How the fleet read sees each of FLEET after it (unnamed: "same").
    expected: dict[str, str]
    # Woken though its pass finds the secret in place: an edit its check does not look at,
    # which changes the file's id. It costs one pass, which records the new id.
    harmless: bool = False


CASES = {
    # Sealed secrets: the check reads the file, and so does the digest, by its id.
    "edit the sealed secret's version": Case(
        annotate(sealed_file("shop"), "idp.dev/credential-version", "7"), {"shop": "differs"}
    ),
    "edit the sealed ciphertext": Case(ciphertext("shop"), {"shop": "differs"}),
    "delete the sealed secret": Case(deleted(sealed_file("shop")), {"shop": "gone"}),
    "put a symlink in the sealed secret's place": Case(
        symlinked(sealed_file("shop")), {"shop": "gone"}
    ),
    "edit another workload's sealed secret": Case(
        annotate(sealed_file("blog"), "idp.dev/credential-version", "7"), {"blog": "differs"}
    ),
    "make the sealed secret executable": Case(executable(sealed_file("shop")), {}),
    "add a stray file beside it": Case(stray("shop"), {}),
    "edit a label of the sealed secret": Case(
        labelled(sealed_file("shop")), {"shop": "differs"}, harmless=True
    ),
    # External secrets: which Secrets Manager version is current, and the ExternalSecret.
    "delete the secret in Secrets Manager": Case(force_deleted("mail"), {"mail": "gone"}),
    "schedule the secret's deletion": Case(scheduled_for_deletion("mail"), {"mail": "gone"}),
    "put a new value in the secret": Case(new_value("mail"), {"mail": "differs"}),
    "put a new value in another workload's secret": Case(new_value("news"), {"news": "differs"}),
    # The check never looks at tags or the description, nor does the digest.
    "change the secret's tags": Case(tagged("mail"), {}),
    "change the secret's description": Case(described("mail"), {}),
    "stage a pending version of the secret": Case(pending("mail"), {}),
    "point the ExternalSecret at another secret": Case(
        replaced(external_file("mail"), secret("mail"), secret("news")), {"mail": "differs"}
    ),
    "delete the ExternalSecret": Case(deleted(external_file("mail")), {"mail": "gone"}),
    "edit the ExternalSecret's refresh interval": Case(
        replaced(external_file("mail"), "1h0m0s", "5m0s"), {"mail": "differs"}, harmless=True
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_a_change_outside_wakes_exactly_the_workloads_whose_pass_would_reissue(
    actions: CredentialsActions,
    platform: Platform,
    repo: Path,
    tmp_path: Path,
    outside: Any,
    case: Case,
) -> None:
    issued = await issue_all(actions, platform, FLEET)
    recorded = await in_sync(actions, issued)

    case.change(Outside(repo, tmp_path, outside))

    keys = [f.key for f in recorded.values()]
    found = await actions.fleet_observe(keys)
    outcomes = {system: seen(found, f) for system, f in recorded.items()}
    assert outcomes == {w.metadata.system: "same" for w in FLEET} | case.expected
    for system, ctx in issued.contexts.items():
        observation, plan = await observed(actions, ctx)
        # Woken exactly where the workload's own pass re-issues, for the drift it found.
        reissues = outcomes[system] != "same" and not case.harmless
        assert bool(plan) == reissues, system
        if reissues:
            assert plan.issue is not None and plan.issue.reason == IssueReason.DELIVERY_DRIFT
        # And the two halves still agree on the outside as it is now.
        now = CREDENTIALS.fingerprint(ctx, observation)
        if now is None:
            assert reissues and outcomes[system] in ("gone", "differs")
        else:
            assert found.get(now.key) == now.digest


@pytest.mark.parametrize("delivery", [SEALED, EXTERNAL])
async def test_after_a_reissue_the_fleet_read_finds_the_new_version(
    actions: CredentialsActions,
    platform: Platform,
    repo: Path,
    tmp_path: Path,
    outside: Any,
    delivery: Delivery,
) -> None:
    """The repair a woken pass makes (version 2, delivered where version 1 was) is what the
    next pass in sync records and the fleet read finds; the neighbour sleeps throughout."""
    fleet = [member("shop", delivery), member("blog", delivery)]
    issued = await issue_all(actions, platform, fleet)
    before = await in_sync(actions, issued)
    path = (sealed_file if delivery == SEALED else external_file)("shop")
    Outside(repo, tmp_path, outside).git(lambda clone: (clone / path).unlink())
    _, plan = await observed(actions, issued.contexts["shop"])
    assert plan.issue is not None and plan.issue.version == 2

    await issue(actions, platform, fleet[0], issued, version=2)
    after = await in_sync(actions, issued)

    assert after["shop"].key == before["shop"].key
    assert after["shop"].digest != before["shop"].digest
    assert after["blog"] == before["blog"]
    found = await actions.fleet_observe([f.key for f in before.values()])
    assert found == {f.key: f.digest for f in after.values()}
    assert read(repo, path) is not None


# ---- cost ----------------------------------------------------------------------------------------


@pytest.fixture
def secrets_calls(actions: CredentialsActions) -> Iterator[list[str]]:
    """The Secrets Manager API calls the actions make from now on, by name."""
    calls: list[str] = []
    client = actions.deliveries.secrets_client()
    hook = f"count-{uuid.uuid4().hex}"
    client.meta.events.register(
        "before-call", lambda model, **_: calls.append(model.name), unique_id=hook
    )
    yield calls
    client.meta.events.unregister("before-call", unique_id=hook)


async def test_a_sweep_costs_two_git_processes_per_store_and_listsecrets_pages(
    actions: CredentialsActions,
    platform: Platform,
    outside: Any,
    git_processes: Path,  # noqa: F811 (the fixture imported above)
    secrets_calls: list[str],
) -> None:
    # 50 workloads, half of each delivery, over dev and prod (one store) and edge (another).
    places = ["dev", "prod", "edge"]
    fleet = [member(f"s{i:02d}", SEALED if i % 2 else EXTERNAL, places[i % 3]) for i in range(50)]
    issued = await issue_all(actions, platform, fleet)
    recorded = await in_sync(actions, issued)
    keys = [f.key for f in recorded.values()]
    # Two of each delivery, over both stores: s00 external on dev, s01 sealed on prod, s02
    # external on edge, s03 sealed on dev.
    some = [recorded[f"s{i:02d}"].key for i in range(4)]
    # Others' secrets: idp's, of workloads that sleep elsewhere, which the filter matches and
    # the pages hold, and a team's own, which it does not.
    for i in range(120):
        outside.create_secret(Name=f"idp/zz{i:03d}/cart/nats", SecretString="x")
    for i in range(5):
        outside.create_secret(Name=f"team/secret-{i}", SecretString="x")

    git_processes.write_text("")
    secrets_calls.clear()
    few = await actions.fleet_observe(some)
    few_git, few_secrets = subcommands(git_processes), list(secrets_calls)
    git_processes.write_text("")
    secrets_calls.clear()
    found = await actions.fleet_observe(keys)

    assert len(few) == 4 and found == {f.key: f.digest for f in recorded.values()}
    # Per store: ls-remote, which finds the head the clone holds (the deliveries' own commit),
    # and one ls-tree of its destinations.
    per_store = ["ls-remote", "ls-tree"]
    assert subcommands(git_processes) == few_git == sorted(per_store * 2)
    # Few keys: their own names as the filter, one page. All 25 external ones: more than ten
    # systems, so every idp secret, 25 + 120 of them: two pages of 100. Nothing else.
    assert few_secrets == ["ListSecrets"]
    assert Counter(secrets_calls) == {"ListSecrets": 2}


def test_the_key_names_the_place_and_survives_a_round_trip() -> None:
    w = member("shop", EXTERNAL, "prod")
    key = FleetKey.of(w, EXTERNAL)
    assert FleetKey.parse(key.text) == key
    target = key.target("clusters")
    assert target.path(target.external_file) == "clusters/prod/shop/cart/externalsecret-nats.yaml"
    assert secret_id(target) == secret("shop")
    # Whatever labels it holds, it fits a Fingerprint's key.
    longest = "a" * 63
    long = FleetKey(SEALED, longest, longest, longest, "nats", f"workload/{longest}/{longest}")
    assert Fingerprint(key=long.text, digest="x").key == long.text
