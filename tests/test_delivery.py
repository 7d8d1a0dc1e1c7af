"""idp/delivery/ with real parts: git repositories on disk, real sealing and unsealing with a
throwaway controller key, AWS Secrets Manager through moto's server, and real NATS .creds.

The manifests are validated against the upstream CRDs from the shared conformance folder (those
tests skip, naming the file, when it is absent). The kubernetes delivery is the one exception:
no API server runs here, see the tests at the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from secrets import token_urlsafe
from typing import Any

import boto3
import jsonschema
import pytest
import yaml
from pydantic import SecretStr
from support.conformance import load_crd_schema
from support.manifests import ManifestsWorker
from support.secrets import ControllerKeys, assert_nowhere, controller_keys, mint_creds
from support.stack import bare_repo, git

from idp.delivery import (
    SECRET_KEY,
    VERSION_ANNOTATION,
    CredentialDelivery,
    CredentialMetadata,
    Delivered,
    DeliveryTarget,
    credential_metadata,
    nats_target,
)
from idp.delivery.external import ExternalSecretDelivery, go_duration, request_token, secret_id
from idp.delivery.kubernetes import KubernetesDelivery, render_kubernetes_secret
from idp.delivery.sealed import SealedSecretDelivery
from idp.errors import PermanentError
from idp.manifests import EXTERNAL_FILE, SEALED_FILE
from idp.models import Delivery, Workload
from idp.platform import (
    Destination,
    Platform,
    PlatformError,
    SecretStoreConfig,
    StateStoreConfig,
    load_platform,
)
from idp.sealing import CertificateCache, CertificateSource, unseal_sealed_secret
from idp.statechange import Change, OwnedByAnother
from idp.statestore import StateStore
from idp.synadia import NatsCreds

REGION = "eu-west-1"
TTL = timedelta(hours=1)


@pytest.fixture(scope="module")
def secrets(aws_url: str) -> Any:
    return boto3.client("secretsmanager", region_name=REGION, endpoint_url=aws_url)


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return bare_repo(tmp_path / "state.git")


@pytest.fixture
def store(remote: Path, tmp_path: Path) -> StateStore:
    return StateStore(str(remote), "main", tmp_path / "clone")


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    # Everything at DEBUG, so the leak scan sees every record the code under test writes.
    caplog.set_level(logging.DEBUG)


def workload(name: str = "cart", system: str = "shop", **credentials: object) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": name, "system": system, "labels": {"team": "shop"}},
            "spec": {
                "owner": "team-shop",
                "destination": "dev",
                "namespace": "shop",
                "nats": {"credentials": credentials},
            },
        }
    )


def target_for(remote: Path, w: Workload | None = None) -> DeliveryTarget:
    destination = Destination(name="dev", state_store=StateStoreConfig(url=str(remote)))
    return nats_target(w or workload(), destination)


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


def head(remote: Path) -> str:
    return git("--git-dir", str(remote), "rev-parse", "main").strip()


def last_commit(remote: Path) -> list[tuple[str, str]]:
    """What the last commit on main did, file by file: (A, M or D, path), by path."""
    changed = git("--git-dir", str(remote), "show", "--name-status", "--format=", "main")
    rows = (line.split("\t") for line in changed.splitlines())
    return sorted((status, path) for status, path in rows)


def push_edit(remote: Path, tmp_path: Path, path: str, text: str | None) -> None:
    """Someone else changes (or with None deletes) a file and pushes."""
    clone = tmp_path / "someone-else"
    if not clone.exists():
        git("clone", "--quiet", "--branch", "main", str(remote), str(clone))
    else:
        git("pull", "--quiet", cwd=clone)
    if text is None:
        (clone / path).unlink()
    else:
        (clone / path).write_text(text)
    git("commit", "--quiet", "-am", "edit by hand", cwd=clone)
    git("push", "--quiet", "origin", "main", cwd=clone)


def metadata(creds: NatsCreds, version: int = 1) -> CredentialMetadata:
    return credential_metadata(creds, version, TTL)


# ---- sealed-secret -----------------------------------------------------------------------------


def sealed(store: StateStore, keys: ControllerKeys) -> SealedSecretDelivery:
    return SealedSecretDelivery(store, CertificateSource(file=keys.cert_file), CertificateCache())


async def test_sealed_delivery_is_one_commit_that_unseals_and_fits_the_crd(
    store: StateStore, remote: Path, keys: ControllerKeys, caplog: pytest.LogCaptureFixture
) -> None:
    creds = mint_creds()
    target = target_for(remote)
    credential = metadata(creds, 3)
    delivered = await sealed(store, keys).deliver(
        target, {SECRET_KEY: creds.text}, credential, "deliver v3"
    )

    assert commit_count(remote) == 1
    assert delivered.location == "dev/shop/cart/sealedsecret-nats.yaml"
    assert delivered.delivery == Delivery.SEALED_SECRET and delivered.commit is not None
    assert delivered.credential == credential
    manifest = yaml.safe_load(show(remote, delivered.location) or "")
    jsonschema.Draft7Validator(
        load_crd_schema("sealed-secrets/sealedsecrets-crd.yaml", "v1alpha1")
    ).validate(manifest)
    assert unseal_sealed_secret(manifest, keys.key) == {"nats.creds": creds.reveal().encode()}
    assert manifest["metadata"]["name"] == "cart-nats"
    annotations = manifest["metadata"]["annotations"]
    assert annotations[VERSION_ANNOTATION] == "3"
    assert annotations["idp.dev/credential-fingerprint"] == credential.fingerprint
    assert annotations["idp.dev/credential-public-key"] == creds.user_public_key
    assert annotations["idp.dev/sealing-certificate"] == delivered.detail
    template = manifest["spec"]["template"]["metadata"]
    assert template["annotations"][VERSION_ANNOTATION] == "3"
    assert template["labels"]["idp.dev/workload"] == "cart"
    assert_nowhere([creds.reveal()], [remote], caplog)


async def test_a_workload_of_another_system_cannot_overwrite_a_delivered_secret(
    store: StateStore, remote: Path, keys: ControllerKeys
) -> None:
    # The Credentials step writes before the Manifests step, so it holds the directory too.
    delivery = sealed(store, keys)
    held = target_for(remote, workload(system="a"))
    await delivery.deliver(
        held, {SECRET_KEY: SecretStr(mint_creds().reveal())}, metadata(mint_creds()), "a"
    )
    before = (commit_count(remote), show(remote, held.path(SEALED_FILE)))

    other = target_for(remote, workload(system="b"))
    with pytest.raises(OwnedByAnother) as refused:
        await delivery.deliver(
            other, {SECRET_KEY: SecretStr(mint_creds().reveal())}, metadata(mint_creds()), "b"
        )
    assert str(refused.value).startswith(
        "shop/cart on destination dev is already written by workload a/cart"
    )
    # Removing the refused one leaves the holder's secret alone.
    assert await delivery.remove(other, "remove b") == []
    assert (commit_count(remote), show(remote, held.path(SEALED_FILE))) == before


async def test_sealed_check_sees_a_missing_an_edited_an_unsafe_and_an_older_secret(
    store: StateStore, remote: Path, tmp_path: Path, keys: ControllerKeys
) -> None:
    delivery = sealed(store, keys)
    target = target_for(remote)
    first = metadata(mint_creds(), 1)
    await delivery.deliver(target, {SECRET_KEY: SecretStr(mint_creds().reveal())}, first, "v1")
    assert (await delivery.check(target, first)).in_place

    path = target.path(SEALED_FILE)
    text = show(remote, path) or ""
    manifest = yaml.safe_load(text)
    value = manifest["spec"]["encryptedData"]["nats.creds"]
    manifest["spec"]["encryptedData"]["nats.creds"] = value[:-8] + "AAAAAAA="
    push_edit(remote, tmp_path, path, yaml.safe_dump(manifest))
    state = await delivery.check(target, first)
    assert not state.in_place and "edited after sealing" in (state.problem or "")

    push_edit(remote, tmp_path, path, text.replace("credential-version: '1'", "version: '1'"))
    state = await delivery.check(target, first)
    assert state.problem == f"{path} has no {VERSION_ANNOTATION} annotation"

    # Read without building Python objects: a tag that would run a command is refused, not run.
    ran = tmp_path / "ran"
    push_edit(remote, tmp_path, path, f"!!python/object/apply:os.system ['touch {ran}']\n")
    state = await delivery.check(target, first)
    assert state.problem == f"{path} is not valid YAML" and not ran.exists()

    push_edit(remote, tmp_path, path, None)
    state = await delivery.check(target, first)
    assert state.problem == "dev/shop/cart/sealedsecret-nats.yaml is missing from the state store"

    second = metadata(mint_creds(), 2)
    await delivery.deliver(target, {SECRET_KEY: SecretStr(mint_creds().reveal())}, second, "v2")
    assert (await delivery.check(target, second)).in_place
    state = await delivery.check(target, first)
    assert (
        state.problem
        == "dev/shop/cart/sealedsecret-nats.yaml holds credential version 2, expected 1"
    )


async def test_a_rotated_controller_certificate_keeps_old_secrets_and_seals_new_ones(
    store: StateStore, remote: Path, tmp_path: Path
) -> None:
    # The controller renews its key every 30 days and keeps the old ones: what was sealed for
    # the old certificate still decrypts, so a rotation alone must not cause a new delivery.
    old = controller_keys(tmp_path / "old")
    cache = CertificateCache()
    source = CertificateSource(file=old.cert_file)
    delivery = SealedSecretDelivery(store, source, cache)
    target = target_for(remote)
    first = metadata(mint_creds(), 1)
    await delivery.deliver(target, {SECRET_KEY: SecretStr(mint_creds().reveal())}, first, "v1")
    old_fingerprint = yaml.safe_load(show(remote, target.path(SEALED_FILE)) or "")["metadata"][
        "annotations"
    ]["idp.dev/sealing-certificate"]

    new = controller_keys(tmp_path / "new")
    old.cert_file.write_bytes(new.cert_file.read_bytes())
    cache.invalidate(source)
    assert (await delivery.check(target, first)).in_place
    assert commit_count(remote) == 1

    secret = mint_creds()
    second = metadata(secret, 2)
    await delivery.deliver(target, {SECRET_KEY: SecretStr(secret.reveal())}, second, "v2")
    manifest = yaml.safe_load(show(remote, target.path(SEALED_FILE)) or "")
    assert manifest["metadata"]["annotations"]["idp.dev/sealing-certificate"] != old_fingerprint
    assert unseal_sealed_secret(manifest, new.key) == {"nats.creds": secret.reveal().encode()}


async def test_sealed_resume_returns_what_an_earlier_attempt_delivered(
    store: StateStore, remote: Path, keys: ControllerKeys
) -> None:
    delivery = sealed(store, keys)
    target = target_for(remote)
    creds = mint_creds()
    credential = metadata(creds, 4)
    assert await delivery.resume(target, 4, creds.user_public_key, "retry") is None
    await delivery.deliver(target, {SECRET_KEY: creds.text}, credential, "v4")
    commits = commit_count(remote)

    resumed = await delivery.resume(target, 4, creds.user_public_key, "retry")
    assert resumed is not None and resumed.resumed
    assert resumed.credential == credential
    assert commit_count(remote) == commits
    # Another version, or the same version of another key (rotated since), must be issued.
    assert await delivery.resume(target, 5, creds.user_public_key, "retry") is None
    assert await delivery.resume(target, 4, mint_creds().user_public_key, "retry") is None


async def test_remove_deletes_only_the_delivery_files(
    store: StateStore, remote: Path, keys: ControllerKeys
) -> None:
    target = target_for(remote)
    await store.apply(Change(target.directory, {"serviceaccount.yaml": "sa\n"}, "manifests"))
    delivery = sealed(store, keys)
    creds = mint_creds()
    await delivery.deliver(target, {SECRET_KEY: creds.text}, metadata(creds), "v1")
    assert await delivery.remove(target, "remove") == [target.path(SEALED_FILE)]
    assert await store.read(target.directory) == {"serviceaccount.yaml": "sa\n"}
    assert await delivery.remove(target, "remove again") == []


async def test_a_missing_certificate_fails_before_anything_is_written(
    store: StateStore, remote: Path, tmp_path: Path
) -> None:
    source = CertificateSource(file=tmp_path / "nope.pem")
    delivery = SealedSecretDelivery(store, source, CertificateCache())
    creds = mint_creds()
    with pytest.raises(PermanentError, match=r"nope\.pem does not exist"):
        await delivery.deliver(target_for(remote), {SECRET_KEY: creds.text}, metadata(creds), "v1")
    assert commit_count(remote) == 0


# ---- external-secret ---------------------------------------------------------------------------


def external(store: StateStore, secrets: Any, **config: Any) -> ExternalSecretDelivery:
    settings = SecretStoreConfig(name="aws-secrets-manager", **config)
    return ExternalSecretDelivery(store, secrets, settings)


def versions(secrets: Any, name: str) -> dict[str, list[str]]:
    listed = secrets.list_secret_version_ids(SecretId=name)["Versions"]
    return {v["VersionId"]: v.get("VersionStages", []) for v in listed}


async def test_external_secret_versions_are_keyed_by_workflow_and_version(
    store: StateStore,
    remote: Path,
    secrets: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = workload(system="ext-a")
    target = target_for(remote, w)
    delivery = external(store, secrets, force_delete=True)
    name = secret_id(target)
    assert name == "idp/ext-a/cart/nats"
    first_creds = mint_creds()
    first = metadata(first_creds, 1)

    delivered = await delivery.deliver(target, {SECRET_KEY: first_creds.text}, first, "v1")
    token = request_token(w.workflow_id, "nats", 1)
    assert delivered.detail == token
    assert versions(secrets, name) == {token: ["AWSCURRENT"]}
    stored = secrets.get_secret_value(SecretId=name)
    assert stored["VersionId"] == token and stored["SecretString"] == first_creds.reveal()
    tags = {t["Key"]: t["Value"] for t in secrets.describe_secret(SecretId=name)["Tags"]}
    assert tags == {"idp.managed-by": "idp", "idp.system": "ext-a", "idp.workload": "cart"}
    commits = commit_count(remote)
    assert commits == 1
    manifest = yaml.safe_load(show(remote, target.path(EXTERNAL_FILE)) or "")
    jsonschema.Draft7Validator(
        load_crd_schema("external-secrets/externalsecrets.yaml", "v1")
    ).validate(manifest)
    assert manifest["spec"] == {
        "data": [{"remoteRef": {"key": name}, "secretKey": "nats.creds"}],
        "refreshInterval": "1h0m0s",
        "secretStoreRef": {"kind": "ClusterSecretStore", "name": "aws-secrets-manager"},
        "target": {"creationPolicy": "Owner", "name": "cart-nats"},
    }
    assert manifest["metadata"]["annotations"][VERSION_ANNOTATION] == "1"
    assert (await delivery.check(target, first)).in_place

    # The same token with the same value again (a retried put): no new version, no commit.
    again = await delivery.deliver(target, {SECRET_KEY: first_creds.text}, first, "v1 again")
    assert again.commit is None
    assert versions(secrets, name) == {token: ["AWSCURRENT"]}
    assert commit_count(remote) == commits

    # A retry that got as far as Secrets Manager: resume reads it back, nothing is written.
    resumed = await delivery.resume(target, 1, first_creds.user_public_key, "retry")
    assert resumed is not None and resumed.credential == first
    assert commit_count(remote) == commits

    second_creds = mint_creds()
    second = metadata(second_creds, 2)
    await delivery.deliver(target, {SECRET_KEY: second_creds.text}, second, "v2")
    new_token = request_token(w.workflow_id, "nats", 2)
    assert versions(secrets, name) == {token: ["AWSPREVIOUS"], new_token: ["AWSCURRENT"]}
    assert (await delivery.check(target, second)).in_place
    state = await delivery.check(target, first)
    assert state.problem == (
        f"the current version of Secrets Manager secret {name} is not credential version 1"
    )
    assert_nowhere([first_creds.reveal(), second_creds.reveal()], [remote], caplog)


async def test_external_check_sees_manifest_and_secret_drift(
    store: StateStore, remote: Path, tmp_path: Path, secrets: Any
) -> None:
    target = target_for(remote, workload(system="ext-b"))
    delivery = external(store, secrets, force_delete=True)
    creds = mint_creds()
    credential = metadata(creds)
    await delivery.deliver(target, {SECRET_KEY: creds.text}, credential, "v1")
    path = target.path(EXTERNAL_FILE)
    text = show(remote, path) or ""

    push_edit(remote, tmp_path, path, text.replace(secret_id(target), "someone/else"))
    state = await delivery.check(target, credential)
    assert state.problem == f"{path} has another spec.data than the one written"
    # A different refresh interval still delivers the same secret: not a reason to re-issue.
    push_edit(remote, tmp_path, path, text.replace("1h0m0s", "5m0s"))
    assert (await delivery.check(target, credential)).in_place
    push_edit(remote, tmp_path, path, None)
    assert (await delivery.check(target, credential)).problem == (
        f"{path} is missing from the state store"
    )

    # Someone moves AWSCURRENT to a version of their own.
    secrets.put_secret_value(SecretId=secret_id(target), SecretString="not creds")
    state = await delivery.check(target, credential)
    assert "is not credential version 1" in (state.problem or "")
    # Resume puts our version back as AWSCURRENT (and the manifest back in git).
    resumed = await delivery.resume(target, 1, creds.user_public_key, "retry")
    assert resumed is not None
    assert (await delivery.check(target, credential)).in_place

    secrets.delete_secret(SecretId=secret_id(target), ForceDeleteWithoutRecovery=True)
    assert (await delivery.check(target, credential)).problem == (
        f"Secrets Manager secret {secret_id(target)} does not exist"
    )


async def test_external_remove_with_a_recovery_window_and_a_workload_made_again(
    store: StateStore, remote: Path, secrets: Any
) -> None:
    w = workload(system="ext-c")
    target = target_for(remote, w)
    delivery = external(store, secrets, recovery_window_days=7)
    creds = mint_creds()
    await delivery.deliver(target, {SECRET_KEY: creds.text}, metadata(creds), "v1")

    removed = await delivery.remove(target, "remove")
    assert removed == [secret_id(target), target.path(EXTERNAL_FILE)]
    described = secrets.describe_secret(SecretId=secret_id(target))
    assert "DeletedDate" in described  # scheduled, restorable for 7 days
    assert (await delivery.check(target, metadata(creds))).problem == (
        f"Secrets Manager secret {secret_id(target)} is scheduled for deletion"
    )
    assert await delivery.remove(target, "remove again") == []

    # The workload is applied again: a new workflow of the same id starts at version 1, whose
    # request token the old secret already used; the old secret goes and a new one is made.
    fresh = mint_creds()
    assert await delivery.resume(target, 1, fresh.user_public_key, "v1") is None
    await delivery.deliver(target, {SECRET_KEY: fresh.text}, metadata(fresh), "v1")
    assert secrets.get_secret_value(SecretId=secret_id(target))["SecretString"] == fresh.reveal()
    assert list(versions(secrets, secret_id(target))) == [request_token(w.workflow_id, "nats", 1)]


async def test_a_stale_version_under_our_token_is_replaced(
    store: StateStore, remote: Path, secrets: Any
) -> None:
    """An earlier workload of this name was never torn down: its version 1 holds another key."""
    target = target_for(remote, workload(system="ext-d"))
    delivery = external(store, secrets, force_delete=True)
    old = mint_creds()
    await delivery.deliver(target, {SECRET_KEY: old.text}, metadata(old), "v1 of the old workload")

    new = mint_creds()
    assert await delivery.resume(target, 1, new.user_public_key, "v1") is None
    await delivery.deliver(target, {SECRET_KEY: new.text}, metadata(new), "v1")
    assert secrets.get_secret_value(SecretId=secret_id(target))["SecretString"] == new.reveal()


async def test_a_foreign_secret_is_refused_and_left_alone(
    store: StateStore, remote: Path, secrets: Any
) -> None:
    target = target_for(remote, workload(system="ext-e"))
    secrets.create_secret(Name=secret_id(target), SecretString="theirs")
    delivery = external(store, secrets, force_delete=True)
    creds = mint_creds()
    with pytest.raises(PermanentError, match="not managed by idp") as raised:
        await delivery.deliver(target, {SECRET_KEY: creds.text}, metadata(creds), "v1")
    assert raised.value.reason == "ForeignResource"
    assert await delivery.remove(target, "remove") == []
    assert secrets.get_secret_value(SecretId=secret_id(target))["SecretString"] == "theirs"


async def test_switching_delivery_replaces_the_file_in_one_commit(
    store: StateStore, remote: Path, secrets: Any, keys: ControllerKeys
) -> None:
    target = target_for(remote, workload(system="ext-f"))
    creds = mint_creds()
    await sealed(store, keys).deliver(
        target, {SECRET_KEY: creds.text}, metadata(creds, 1), "v1 sealed"
    )
    second = mint_creds()
    delivered = await external(store, secrets, force_delete=True).deliver(
        target, {SECRET_KEY: second.text}, metadata(second, 2), "v2 external"
    )
    changed = git(
        "--git-dir", str(remote), "diff-tree", "--name-status", "-r", "--no-commit-id",
        delivered.commit or "",
    )  # fmt: skip
    assert sorted(changed.split("\n")[:-1]) == [
        f"A\t{target.path(EXTERNAL_FILE)}",
        f"D\t{target.path(SEALED_FILE)}",
    ]


def test_secrets_manager_request_tokens_are_stable_and_distinct() -> None:
    token = request_token("workload/shop/cart", "nats", 1)
    assert token == request_token("workload/shop/cart", "nats", 1)
    assert (
        len(
            {
                token,
                request_token("workload/shop/cart", "nats", 2),
                request_token("workload/x/y", "nats", 1),
            }
        )
        == 3
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(hours=1), "1h0m0s"),
        (timedelta(days=1), "24h0m0s"),
        (timedelta(minutes=90), "1h30m0s"),
        (timedelta(minutes=5), "5m0s"),
        (timedelta(seconds=30), "30s"),
    ],
)
def test_refresh_intervals_are_go_durations(value: timedelta, expected: str) -> None:
    assert go_duration(value) == expected


# ---- kubernetes --------------------------------------------------------------------------------
# No Kubernetes API server can run here, so the one call that reaches it
# (idp.delivery.kubernetes.KubeApi) is not exercised. What is tested: the Secret body it sends,
# and the delivery's logic around the call, against the in-memory stand-in below (a test double,
# for that reason only).


class InMemorySecrets:
    """Stands in for the API server: keeps applied Secrets by namespace and name."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}

    def apply(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        self.secrets[(meta["namespace"], meta["name"])] = body

    def annotations(self, namespace: str, name: str) -> dict[str, str] | None:
        found = self.secrets.get((namespace, name))
        return None if found is None else dict(found["metadata"]["annotations"])

    def delete(self, namespace: str, name: str) -> bool:
        return self.secrets.pop((namespace, name), None) is not None


def test_kubernetes_secret_body(remote: Path) -> None:
    creds = mint_creds()
    credential = metadata(creds, 2)
    body = render_kubernetes_secret(target_for(remote), {SECRET_KEY: creds.text}, credential)
    assert body == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "cart-nats",
            "namespace": "shop",
            "labels": {
                "app.kubernetes.io/managed-by": "idp",
                "idp.dev/system": "shop",
                "idp.dev/workload": "cart",
                "team": "shop",
            },
            "annotations": {
                "idp.dev/credential-expires-at": credential.expires_at.strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                ),
                "idp.dev/credential-fingerprint": credential.fingerprint,
                "idp.dev/credential-issued-at": credential.issued_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "idp.dev/credential-public-key": creds.user_public_key,
                "idp.dev/credential-version": "2",
            },
        },
        "type": "Opaque",
        "stringData": {"nats.creds": creds.reveal()},
    }


async def test_kubernetes_delivery_logic_around_the_api_call(remote: Path) -> None:
    api = InMemorySecrets()
    delivery = KubernetesDelivery(api, "kind-dev")
    target = target_for(remote, workload(secret_name="nats-creds"))
    creds = mint_creds()
    credential = metadata(creds, 1)
    delivered = await delivery.deliver(target, {SECRET_KEY: creds.text}, credential, "v1")
    assert delivered.location == "Secret shop/nats-creds (kubernetes kind-dev)"
    assert (await delivery.check(target, credential)).in_place
    resumed = await delivery.resume(target, 1, creds.user_public_key, "retry")
    assert resumed is not None and resumed.credential == credential
    assert (await delivery.check(target, metadata(mint_creds(), 2))).problem == (
        "Secret shop/nats-creds (kubernetes kind-dev) holds credential version 1, expected 2"
    )
    assert await delivery.remove(target, "remove") == [delivered.location]
    assert (await delivery.check(target, credential)).problem == (
        "Secret shop/nats-creds (kubernetes kind-dev) does not exist"
    )


# ---- credentials of another purpose: a database login, several keys ---------------------------
# What NATS renders is pinned by the tests above; these show a target of seven keys beside it.

POSTGRES_KEYS = ("host", "port", "dbname", "user", "password", "sslmode", "uri")


def postgres_target(remote: Path, w: Workload | None = None) -> DeliveryTarget:
    destination = Destination(name="dev", state_store=StateStoreConfig(url=str(remote)))
    return DeliveryTarget.of(
        w or workload(), destination, purpose="postgres", secret_name=None, keys=POSTGRES_KEYS
    )


def login() -> dict[str, str]:
    password = token_urlsafe(24)
    return {
        "host": "db.internal",
        "port": "5432",
        "dbname": "shop_cart",
        "user": "shop_cart",
        "password": password,
        "sslmode": "require",
        "uri": f"postgresql://shop_cart:{password}@db.internal:5432/shop_cart?sslmode=require",
    }


def secret_data(values: dict[str, str]) -> dict[str, SecretStr]:
    return {key: SecretStr(value) for key, value in values.items()}


def login_metadata(values: dict[str, str], version: int = 1) -> CredentialMetadata:
    # Whole seconds: the annotations keep no more, and resume returns what they say.
    now = datetime.now(UTC).replace(microsecond=0)
    return CredentialMetadata(
        version=version,
        public_key=values["user"],
        issued_at=now,
        expires_at=now + timedelta(days=30),
        fingerprint=hashlib.sha256(values["password"].encode()).hexdigest(),
    )


async def round_trip(
    delivery: CredentialDelivery, target: DeliveryTarget, values: dict[str, str]
) -> Delivered:
    """Deliver version 1 and see it in place, as current, resumed; what deliver returned."""
    credential = login_metadata(values)
    assert await delivery.resume(target, 1, values["user"], "retry") is None
    delivered = await delivery.deliver(target, secret_data(values), credential, "v1")
    assert (await delivery.check(target, credential)).in_place
    assert await delivery.current(target) == credential
    resumed = await delivery.resume(target, 1, values["user"], "retry")
    assert resumed is not None and resumed.resumed and resumed.credential == credential
    return delivered


def test_a_postgres_target_names_its_own_files_secret_and_claims(remote: Path) -> None:
    target = postgres_target(remote)
    assert (target.secret_name, target.keys) == ("cart-postgres", POSTGRES_KEYS)
    assert target.files == {"sealedsecret-postgres.yaml", "externalsecret-postgres.yaml"}
    assert target.files.isdisjoint(target_for(remote).files)
    claimed = {claim.path for claim in target.claims}
    assert {target.path(file) for file in target.files} <= claimed
    assert claimed >= {claim.path for claim in target_for(remote).claims}


@pytest.mark.parametrize("kind", ["sealed", "external", "kubernetes"])
async def test_data_must_hold_exactly_the_targets_keys(
    kind: str, store: StateStore, remote: Path, keys: ControllerKeys, secrets: Any
) -> None:
    target = postgres_target(remote, workload(system=f"pg-keys-{kind}"))
    delivery: CredentialDelivery = {
        "sealed": lambda: sealed(store, keys),
        "external": lambda: external(store, secrets, force_delete=True),
        "kubernetes": lambda: KubernetesDelivery(InMemorySecrets(), "kind-dev"),
    }[kind]()
    values = login()
    del values["uri"]
    with pytest.raises(ValueError) as refused:
        await delivery.deliver(target, secret_data(values), login_metadata(login()), "v1")
    assert str(refused.value) == (
        f"the postgres credentials of pg-keys-{kind}/cart have the keys dbname, host, password, "
        "port, sslmode, user, but the delivery expects host, port, dbname, user, password, "
        "sslmode, uri"
    )
    assert values["password"] not in str(refused.value)
    assert commit_count(remote) == 0


async def test_a_postgres_sealed_secret_holds_every_key_beside_the_nats_one(
    store: StateStore, remote: Path, keys: ControllerKeys, caplog: pytest.LogCaptureFixture
) -> None:
    delivery = sealed(store, keys)
    nats, postgres = target_for(remote), postgres_target(remote)
    creds = mint_creds()
    await delivery.deliver(nats, {SECRET_KEY: creds.text}, metadata(creds), "nats v1")
    nats_file = show(remote, nats.path(SEALED_FILE))

    values = login()
    delivered = await round_trip(delivery, postgres, values)
    assert delivered.location == "dev/shop/cart/sealedsecret-postgres.yaml"
    assert last_commit(remote) == [("A", delivered.location)]
    manifest = yaml.safe_load(show(remote, delivered.location) or "")
    jsonschema.Draft7Validator(
        load_crd_schema("sealed-secrets/sealedsecrets-crd.yaml", "v1alpha1")
    ).validate(manifest)
    assert manifest["spec"]["template"]["metadata"]["name"] == "cart-postgres"
    assert unseal_sealed_secret(manifest, keys.key) == {k: v.encode() for k, v in values.items()}

    assert await delivery.remove(postgres, "remove postgres") == [delivered.location]
    assert show(remote, nats.path(SEALED_FILE)) == nats_file
    assert (await delivery.check(nats, metadata(creds))).in_place
    assert await delivery.remove(nats, "remove nats") == [nats.path(SEALED_FILE)]
    assert_nowhere([values["password"], values["uri"], creds.reveal()], [remote], caplog)


async def test_a_postgres_sealed_secret_with_a_key_too_few_is_not_in_place(
    store: StateStore, remote: Path, tmp_path: Path, keys: ControllerKeys
) -> None:
    delivery = sealed(store, keys)
    target = postgres_target(remote)
    values = login()
    credential = login_metadata(values)
    await delivery.deliver(target, secret_data(values), credential, "v1")
    path = target.path(target.sealed_file)
    manifest = yaml.safe_load(show(remote, path) or "")
    del manifest["spec"]["encryptedData"]["uri"]
    push_edit(remote, tmp_path, path, yaml.safe_dump(manifest))
    assert (await delivery.check(target, credential)).problem == (
        f"{path} does not hold exactly the keys host, port, dbname, user, password, sslmode, uri"
    )


async def test_a_postgres_external_secret_is_one_json_secret_read_key_by_key(
    store: StateStore, remote: Path, secrets: Any, caplog: pytest.LogCaptureFixture
) -> None:
    w = workload(system="pg-ext")
    nats, postgres = target_for(remote, w), postgres_target(remote, w)
    delivery = external(store, secrets, force_delete=True)
    creds = mint_creds()
    await delivery.deliver(nats, {SECRET_KEY: creds.text}, metadata(creds), "nats v1")

    values = login()
    delivered = await round_trip(delivery, postgres, values)
    name = secret_id(postgres)
    assert name == "idp/pg-ext/cart/postgres"
    token = request_token(w.workflow_id, "postgres", 1)
    assert token != request_token(w.workflow_id, "nats", 1)
    assert delivered.detail == token
    assert versions(secrets, name) == {token: ["AWSCURRENT"]}
    assert json.loads(secrets.get_secret_value(SecretId=name)["SecretString"]) == values
    manifest = yaml.safe_load(show(remote, postgres.path("externalsecret-postgres.yaml")) or "")
    jsonschema.Draft7Validator(
        load_crd_schema("external-secrets/externalsecrets.yaml", "v1")
    ).validate(manifest)
    assert manifest["spec"]["target"] == {"creationPolicy": "Owner", "name": "cart-postgres"}
    assert manifest["spec"]["data"] == [
        {"secretKey": key, "remoteRef": {"key": name, "property": key}} for key in POSTGRES_KEYS
    ]

    removed = await delivery.remove(postgres, "remove postgres")
    assert removed == [name, postgres.path(postgres.external_file)]
    assert (await delivery.check(nats, metadata(creds))).in_place
    assert secrets.get_secret_value(SecretId=secret_id(nats))["SecretString"] == creds.reveal()
    assert_nowhere([values["password"], values["uri"], creds.reveal()], [remote], caplog)


async def test_postgres_and_nats_kubernetes_secrets_live_side_by_side(remote: Path) -> None:
    api = InMemorySecrets()
    delivery = KubernetesDelivery(api, "kind-dev")
    nats, postgres = target_for(remote), postgres_target(remote)
    creds = mint_creds()
    await delivery.deliver(nats, {SECRET_KEY: creds.text}, metadata(creds), "nats v1")

    values = login()
    delivered = await round_trip(delivery, postgres, values)
    assert delivered.location == "Secret shop/cart-postgres (kubernetes kind-dev)"
    assert api.secrets[("shop", "cart-postgres")]["stringData"] == values
    assert await delivery.remove(postgres, "remove") == [delivered.location]
    assert list(api.secrets) == [("shop", "cart-nats")]
    assert (await delivery.check(nats, metadata(creds))).in_place


# ---- the platform configuration the deliveries read --------------------------------------------


def platform_file(tmp_path: Path, **destination: Any) -> Path:
    document = {
        "apiVersion": "idp.dev/v1alpha1",
        "kind": "Platform",
        "destinations": [{"name": "dev", "stateStore": {"url": "state"}, **destination}],
        "synadia": {"url": "http://127.0.0.1:1", "system": "sys", "defaultAccount": "acct"},
    }
    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_a_relative_certificate_file_is_read_from_beside_the_platform_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir("/")
    path = platform_file(
        tmp_path, sealing={"file": "certs/cert.pem"}, secretStore={"name": "aws-secrets"}
    )
    platform = load_platform(path)
    destination = platform.destinations[0]
    assert destination.sealing == CertificateSource(file=tmp_path / "certs" / "cert.pem")
    assert destination.secret_store == SecretStoreConfig(name="aws-secrets")
    assert destination.secret_store.refresh_interval == timedelta(hours=1)
    assert platform.synadia is not None and platform.synadia.token_env == "SYNADIA_TOKEN"


@pytest.mark.parametrize(
    ("destination", "expected"),
    [
        ({}, "defaultDelivery sealed-secret needs sealing"),
        (
            {"defaultDelivery": "external-secret", "secretStore": {"name": "s"}},
            "defaultDelivery external-secret needs secretStore and the aws section",
        ),
        (
            {
                "sealing": {"file": "c.pem"},
                "secretStore": {"name": "s", "forceDelete": True, "recoveryWindowDays": 7},
            },
            "set recoveryWindowDays or forceDelete, not both",
        ),
        (
            {"sealing": {"file": "c.pem"}, "secretStore": {"name": "s", "recoveryWindowDays": 3}},
            "must be a whole number from 7 to 30",
        ),
        ({"sealing": {"file": "c.pem", "url": "http://x/cert.pem"}}, "set exactly one of"),
        ({"sealing": {"file": "c.pem"}, "secretStore": {"name": "S!"}}, "DNS-1123 subdomain"),
    ],
    ids=["no-sealing", "no-aws", "both-deletions", "short-window", "two-sources", "bad-name"],
)
def test_delivery_configuration_errors_name_the_field(
    tmp_path: Path, destination: dict[str, Any], expected: str
) -> None:
    with pytest.raises(PlatformError, match=expected) as raised:
        load_platform(platform_file(tmp_path, **destination))
    assert str(tmp_path / "platform.yaml") in str(raised.value)


def test_the_example_platform_file_loads() -> None:
    platform = load_platform(Path(__file__).parents[1] / "examples/platform/platform.yaml")
    assert platform.synadia is not None
    assert platform.destinations[0].sealing is not None
    assert platform.destinations[0].secret_store is not None


async def test_the_manifests_step_keeps_the_delivered_secret(
    remote: Path, tmp_path: Path, keys: ControllerKeys
) -> None:
    w = workload()
    platform = Platform(
        destinations=[Destination(name="dev", state_store=StateStoreConfig(url=str(remote)))]
    )
    manifests = ManifestsWorker(platform, tmp_path / "cache")
    target = target_for(remote, w)
    creds = mint_creds()
    store = StateStore(str(remote), "main", tmp_path / "clone")
    await sealed(store, keys).deliver(target, {SECRET_KEY: creds.text}, metadata(creds), "v1")

    written = await manifests.reconcile(w)
    assert [(c.action, c.subject) for c in written.plan] == [
        ("write", target.path("serviceaccount.yaml"))
    ]
    assert written.message == f"committed serviceaccount.yaml at {head(remote)[:12]}"
    assert written.outputs is not None and written.outputs["commit"] == head(remote)
    # The commit added the ServiceAccount and nothing else.
    assert last_commit(remote) == [("A", target.path("serviceaccount.yaml"))]
    assert show(remote, target.path(SEALED_FILE)) is not None
    # Teardown still clears the whole directory.
    removed = await manifests.teardown(w, generation=2)
    assert removed.message == f"removed {target.directory}"
    assert last_commit(remote) == [
        ("D", target.path(SEALED_FILE)),
        ("D", target.path("serviceaccount.yaml")),
    ]
