"""Delivering a workload's NATS credentials to its cluster: one interface, three deliveries.

- `sealed-secret`: a Bitnami SealedSecret in the workload's state-store directory, sealed to the
  destination controller's certificate (`sealedsecret-nats.yaml`).
- `external-secret`: the credentials in AWS Secrets Manager (`idp/<system>/<workload>/nats`) and
  an External Secrets Operator `ExternalSecret` that copies them into the cluster
  (`externalsecret-nats.yaml`).
- `kubernetes`: a Secret applied straight to the cluster's API server (server-side apply).

Every delivery is told the credential's metadata (version, fingerprint, key, times) and records
it next to the secret as annotations, so `check` compares what is delivered with what the
workflow remembers without ever reading the secret itself; sealing draws fresh keys every time,
so ciphertext is never compared with a new sealing. `resume` finds a version an earlier attempt
of the same activity already delivered, so a retry neither issues nor delivers twice.

The credentials are a `SecretStr` and leave it only to be sealed, stored or applied. Nothing here
logs, returns or raises them. Free of Temporal; the boto3 and kubernetes calls are synchronous
and run in a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import yaml
from botocore.client import BaseClient
from cryptography import x509
from pydantic import SecretStr

from idp.errors import PermanentError, TransientError
from idp.manifests import (
    EXTERNAL_FILE,
    SEALED_FILE,
    dump,
    workload_claims,
    workload_directory,
    workload_labels,
)
from idp.models import Delivery, Model, Workload
from idp.platform import Destination, SecretStoreConfig
from idp.registry import MANAGED_BY, SYSTEM_TAG, WORKLOAD_TAG, invoke_aws
from idp.sealing import CertificateCache, CertificateSource, SealingScope, render_sealed_secret
from idp.statestore import Change, Claim, StateStore
from idp.synadia import NatsCreds, parse_creds

log = logging.getLogger(__name__)

# botocore writes every request and response body to these loggers at DEBUG, and Secrets Manager
# bodies hold the credentials: however verbose the process is, they stop at INFO.
for _name in ("botocore.endpoint", "botocore.parsers"):
    if logging.getLogger(_name).level < logging.INFO:
        logging.getLogger(_name).setLevel(logging.INFO)

T = TypeVar("T")

SECRET_KEY = "nats.creds"
# Both file names belong to the delivery step, so a change of delivery removes the other file
# in the same commit: two objects must never claim the same Secret.
DELIVERY_FILES = frozenset({SEALED_FILE, EXTERNAL_FILE})

VERSION_ANNOTATION = "idp.dev/credential-version"
FINGERPRINT_ANNOTATION = "idp.dev/credential-fingerprint"
PUBLIC_KEY_ANNOTATION = "idp.dev/credential-public-key"
ISSUED_AT_ANNOTATION = "idp.dev/credential-issued-at"
EXPIRES_AT_ANNOTATION = "idp.dev/credential-expires-at"
CERTIFICATE_ANNOTATION = "idp.dev/sealing-certificate"
SEALED_DIGEST_ANNOTATION = "idp.dev/sealed-data-digest"

EXTERNAL_SECRETS_API = "external-secrets.io/v1"
FIELD_MANAGER = "idp"
# Fixed for all time: request tokens derived from it must stay the same across releases.
_TOKEN_NAMESPACE = uuid.UUID("5b0f8a4e-2f49-4c1e-9d8e-6a1c1d1e0b7a")


# --------------------------------------------------------------------------------------------
# What every delivery is given and returns
# --------------------------------------------------------------------------------------------


class CredentialMetadata(Model):
    """What may be known about a credential without holding it."""

    version: int
    public_key: str
    issued_at: datetime
    expires_at: datetime
    fingerprint: str


class Delivered(Model):
    """Where a credential version went; metadata only."""

    credential: CredentialMetadata
    delivery: Delivery
    location: str
    commit: str | None = None
    detail: str | None = None
    resumed: bool = False


class DeliveryState(Model):
    in_place: bool
    problem: str | None = None


def fingerprint(creds: NatsCreds) -> str:
    """sha256 of the JWT's id: tells versions apart and reveals nothing about the seed."""
    if creds.jwt_id:
        return hashlib.sha256(creds.jwt_id.encode()).hexdigest()
    return creds.fingerprint


def credential_metadata(creds: NatsCreds, version: int, ttl: timedelta) -> CredentialMetadata:
    # A JWT without exp never expires; assuming the configured ttl only makes refresh earlier.
    expires = creds.expires_at or creds.issued_at + ttl
    return CredentialMetadata(
        version=version,
        public_key=creds.user_public_key,
        issued_at=creds.issued_at,
        expires_at=expires,
        fingerprint=fingerprint(creds),
    )


@dataclass(frozen=True)
class DeliveryTarget:
    """Where one workload's credentials go; everything derived from the workload and platform."""

    owner: str  # the workflow id: idempotency keys derive from it, never from a run id
    system: str
    workload: str
    namespace: str
    secret_name: str
    directory: str
    labels: Mapping[str, str]
    # The names the workload's directory holds: a secret written there by a workload that does
    # not own the directory is refused like its manifests would be (the Credentials step runs
    # before the Manifests step).
    claims: tuple[Claim, ...] = ()

    @classmethod
    def of(cls, workload: Workload, destination: Destination) -> DeliveryTarget:
        nats = workload.spec.nats
        name = (nats.credentials.secret_name if nats else None) or f"{workload.metadata.name}-nats"
        return cls(
            owner=workload.workflow_id,
            system=workload.metadata.system,
            workload=workload.metadata.name,
            namespace=workload.spec.namespace,
            secret_name=name,
            directory=workload_directory(destination.state_store.path, workload),
            labels=workload_labels(workload),
            claims=workload_claims(destination.state_store.path, workload),
        )

    def change(self, files: Mapping[str, str], message: str) -> Change:
        """Write (or, with no files, remove) the delivery's files beside the manifests."""
        return Change(
            self.directory,
            files,
            message,
            DELIVERY_FILES,
            owner=self.owner,
            claims=self.claims,
        )

    def path(self, file: str) -> str:
        return f"{self.directory}/{file}"


def delivery_kind(workload: Workload, destination: Destination) -> Delivery:
    nats = workload.spec.nats
    return (nats.credentials.delivery if nats else None) or destination.default_delivery


class CredentialDelivery(Protocol):
    kind: Delivery

    async def resume(
        self, target: DeliveryTarget, version: int, public_key: str, message: str
    ) -> Delivered | None:
        """The given version if an earlier attempt already delivered it for this key (finishing
        what that attempt left undone); None when the credential must be issued."""
        ...

    async def deliver(
        self,
        target: DeliveryTarget,
        secret: SecretStr,
        credential: CredentialMetadata,
        message: str,
    ) -> Delivered: ...

    async def check(self, target: DeliveryTarget, credential: CredentialMetadata) -> DeliveryState:
        """Is this version still delivered, unaltered? Reads metadata only."""
        ...

    async def current(self, target: DeliveryTarget) -> CredentialMetadata | None:
        """What the delivered secret's annotations say it holds, whatever the version; None
        when there is none or they cannot be read."""
        ...

    async def remove(self, target: DeliveryTarget, message: str) -> list[str]:
        """Remove what was delivered (idempotent); what it removed."""
        ...


def _annotations(credential: CredentialMetadata) -> dict[str, str]:
    return {
        VERSION_ANNOTATION: str(credential.version),
        FINGERPRINT_ANNOTATION: credential.fingerprint,
        PUBLIC_KEY_ANNOTATION: credential.public_key,
        ISSUED_AT_ANNOTATION: _timestamp(credential.issued_at),
        EXPIRES_AT_ANNOTATION: _timestamp(credential.expires_at),
    }


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _metadata_from(annotations: Mapping[str, Any]) -> CredentialMetadata | None:
    """The credential the annotations describe; None when any part is missing or malformed."""
    try:
        issued = datetime.fromisoformat(str(annotations[ISSUED_AT_ANNOTATION]))
        expires = datetime.fromisoformat(str(annotations[EXPIRES_AT_ANNOTATION]))
        if issued.tzinfo is None or expires.tzinfo is None:
            return None  # we write UTC; a naive time was edited by hand
        return CredentialMetadata(
            version=int(annotations[VERSION_ANNOTATION]),
            public_key=str(annotations[PUBLIC_KEY_ANNOTATION]),
            issued_at=issued,
            expires_at=expires,
            fingerprint=str(annotations[FINGERPRINT_ANNOTATION]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _usable(found: CredentialMetadata | None, version: int, public_key: str) -> bool:
    """An earlier attempt's credential can stand in for a new one only if it is this version,
    of the user's current key, and not about to expire."""
    return (
        found is not None
        and found.version == version
        and found.public_key == public_key
        and found.expires_at > datetime.now(UTC) + timedelta(minutes=1)
    )


def _parse_manifest(text: str | None, path: str, kind: str) -> tuple[dict[str, Any] | None, str]:
    if text is None:
        return None, f"{path} is missing from the state store"
    try:
        manifest = yaml.safe_load(text)
    except yaml.YAMLError:
        return None, f"{path} is not valid YAML"
    if not isinstance(manifest, dict) or manifest.get("kind") != kind:
        return None, f"{path} does not hold a {kind}"
    return manifest, ""


def _check_annotations(
    annotations: Mapping[str, Any], credential: CredentialMetadata, where: str
) -> str | None:
    found = annotations.get(VERSION_ANNOTATION)
    if found is None:
        return f"{where} has no {VERSION_ANNOTATION} annotation"
    if found != str(credential.version):
        return f"{where} holds credential version {found}, expected {credential.version}"
    if annotations.get(FINGERPRINT_ANNOTATION) != credential.fingerprint:
        return f"{where} holds another credential than version {credential.version} (fingerprint)"
    return None


# --------------------------------------------------------------------------------------------
# sealed-secret
# --------------------------------------------------------------------------------------------


def sealed_digest(encrypted: Mapping[str, Any]) -> str:
    """sha256 of the sealed values as written: an edit of the ciphertext shows up here."""
    canonical = json.dumps(dict(encrypted), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def render_sealed(
    target: DeliveryTarget,
    secret: SecretStr,
    credential: CredentialMetadata,
    certificate: x509.Certificate,
    certificate_fingerprint: str,
) -> dict[str, Any]:
    """The SealedSecret manifest; the Secret it makes carries the version and fingerprint."""
    template_annotations = {
        VERSION_ANNOTATION: str(credential.version),
        FINGERPRINT_ANNOTATION: credential.fingerprint,
    }
    manifest = render_sealed_secret(
        target.secret_name,
        target.namespace,
        {SECRET_KEY: secret.get_secret_value().encode()},
        certificate,
        SealingScope.STRICT,
        labels=target.labels,
        annotations=template_annotations,
    )
    metadata = manifest["metadata"]
    metadata["labels"] = dict(sorted(target.labels.items()))
    metadata["annotations"] = {
        **metadata.get("annotations", {}),
        **_annotations(credential),
        CERTIFICATE_ANNOTATION: certificate_fingerprint,
        SEALED_DIGEST_ANNOTATION: sealed_digest(manifest["spec"]["encryptedData"]),
    }
    return manifest


class SealedSecretDelivery:
    kind = Delivery.SEALED_SECRET

    def __init__(
        self, store: StateStore, source: CertificateSource, certificates: CertificateCache
    ) -> None:
        self._store = store
        self._source = source
        self._certificates = certificates

    def _inspect(
        self, target: DeliveryTarget, files: Mapping[str, str]
    ) -> tuple[dict[str, Any], str | None]:
        """The file's annotations, and what is wrong with it apart from the credential."""
        path = target.path(SEALED_FILE)
        manifest, problem = _parse_manifest(files.get(SEALED_FILE), path, "SealedSecret")
        if manifest is None:
            return {}, problem
        metadata = manifest.get("metadata") or {}
        annotations = metadata.get("annotations") or {}
        spec = manifest.get("spec") or {}
        encrypted = spec.get("encryptedData") or {}
        template = (spec.get("template") or {}).get("metadata") or {}
        names = {(metadata.get("name"), metadata.get("namespace"))}
        names.add((template.get("name"), template.get("namespace")))
        if names != {(target.secret_name, target.namespace)}:
            return annotations, f"{path} names another secret than {target.secret_name}"
        if set(encrypted) != {SECRET_KEY}:
            return annotations, f"{path} does not hold exactly the key {SECRET_KEY}"
        if annotations.get(SEALED_DIGEST_ANNOTATION) != sealed_digest(encrypted):
            return annotations, f"{path} has sealed data that was edited after sealing"
        return annotations, None

    async def resume(
        self, target: DeliveryTarget, version: int, public_key: str, message: str
    ) -> Delivered | None:
        annotations, problem = self._inspect(target, await self._store.read(target.directory))
        found = _metadata_from(annotations)
        if problem or not _usable(found, version, public_key):
            return None
        assert found is not None
        return Delivered(
            credential=found,
            delivery=self.kind,
            location=target.path(SEALED_FILE),
            detail=annotations.get(CERTIFICATE_ANNOTATION),
            resumed=True,
        )

    async def deliver(
        self,
        target: DeliveryTarget,
        secret: SecretStr,
        credential: CredentialMetadata,
        message: str,
    ) -> Delivered:
        certificate = await self._certificates.aget(self._source)
        manifest = render_sealed(
            target, secret, credential, certificate.certificate, certificate.fingerprint
        )
        change = target.change({SEALED_FILE: dump(manifest)}, message)
        result = await self._store.apply(change)
        return Delivered(
            credential=credential,
            delivery=self.kind,
            location=target.path(SEALED_FILE),
            commit=result.commit,
            detail=certificate.fingerprint,
        )

    async def check(self, target: DeliveryTarget, credential: CredentialMetadata) -> DeliveryState:
        annotations, problem = self._inspect(target, await self._store.read(target.directory))
        problem = problem or _check_annotations(annotations, credential, target.path(SEALED_FILE))
        return DeliveryState(in_place=problem is None, problem=problem)

    async def current(self, target: DeliveryTarget) -> CredentialMetadata | None:
        # An edited ciphertext still says, in its annotations, which credential it was.
        annotations, _ = self._inspect(target, await self._store.read(target.directory))
        return _metadata_from(annotations)

    async def remove(self, target: DeliveryTarget, message: str) -> list[str]:
        result = await self._store.apply(target.change({}, message))
        return list(result.removed)


# --------------------------------------------------------------------------------------------
# external-secret
# --------------------------------------------------------------------------------------------


def secret_id(target: DeliveryTarget) -> str:
    return f"idp/{target.system}/{target.workload}/nats"


def request_token(owner: str, version: int) -> str:
    """Secrets Manager's ClientRequestToken (and so the VersionId) of one credential version:
    the same for every retry of the activity, so a retry never makes a second version."""
    return str(uuid.uuid5(_TOKEN_NAMESPACE, f"{owner}/nats-credentials/{version}"))


def go_duration(value: timedelta) -> str:
    """A Go duration string as External Secrets expects ("1h0m0s"): Go has no days."""
    seconds = int(value.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def render_external_secret(
    target: DeliveryTarget, credential: CredentialMetadata, store: SecretStoreConfig
) -> dict[str, Any]:
    """The ExternalSecret; its annotations change with every version, and an annotation change
    makes the operator re-read the secret at once rather than at the next refresh."""
    return {
        "apiVersion": EXTERNAL_SECRETS_API,
        "kind": "ExternalSecret",
        "metadata": {
            "name": target.secret_name,
            "namespace": target.namespace,
            "labels": dict(sorted(target.labels.items())),
            "annotations": _annotations(credential),
        },
        "spec": {
            "refreshInterval": go_duration(store.refresh_interval),
            "secretStoreRef": {"kind": "ClusterSecretStore", "name": store.name},
            "target": {"name": target.secret_name, "creationPolicy": "Owner"},
            "data": [{"secretKey": SECRET_KEY, "remoteRef": {"key": secret_id(target)}}],
        },
    }


def _tags(described: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in described.get("Tags") or []}


def _ownership(target: DeliveryTarget) -> dict[str, str]:
    return {MANAGED_BY: "idp", SYSTEM_TAG: target.system, WORKLOAD_TAG: target.workload}


class ExternalSecretDelivery:
    """Secrets Manager plus an ExternalSecret manifest. Steady-state check: one DescribeSecret
    and one read of the state store."""

    kind = Delivery.EXTERNAL_SECRET

    def __init__(self, store: StateStore, secrets: BaseClient, config: SecretStoreConfig) -> None:
        self._store = store
        self._secrets = secrets
        self._config = config

    async def _call(
        self,
        operation: str,
        *,
        absent: tuple[str, ...] = (),
        secret_bearing: bool = False,
        **params: Any,
    ) -> dict[str, Any] | None:
        return await asyncio.to_thread(
            _call_aws, self._secrets, operation, absent, secret_bearing, params
        )

    async def _describe(self, target: DeliveryTarget) -> dict[str, Any] | None:
        return await self._call(
            "describe_secret", absent=("ResourceNotFoundException",), SecretId=secret_id(target)
        )

    def _refuse_foreign(self, target: DeliveryTarget, described: Mapping[str, Any]) -> None:
        tags = _tags(described)
        if any(tags.get(k) != v for k, v in _ownership(target).items()):
            raise PermanentError(
                f"Secrets Manager secret {secret_id(target)} already exists but is not managed by "
                f"idp for workload {target.system}/{target.workload} (its tags say otherwise); "
                "delete it or tag it to adopt it.",
                reason="ForeignResource",
            )

    async def _discard(self, target: DeliveryTarget, why: str) -> None:
        """Delete a secret left by an earlier workload of this name: its versions (and request
        tokens) belong to credentials that no longer exist."""
        log.info("deleting Secrets Manager secret %s at once: %s", secret_id(target), why)
        await self._call(
            "delete_secret",
            absent=("ResourceNotFoundException",),
            SecretId=secret_id(target),
            ForceDeleteWithoutRecovery=True,
        )

    async def resume(
        self, target: DeliveryTarget, version: int, public_key: str, message: str
    ) -> Delivered | None:
        described = await self._describe(target)
        if described is None:
            return None
        self._refuse_foreign(target, described)
        if described.get("DeletedDate"):
            await self._discard(target, "it was scheduled for deletion by an earlier workload")
            return None
        token = request_token(target.owner, version)
        if token not in (described.get("VersionIdsToStages") or {}):
            return None
        found = await self._stored_metadata(target, token, version)
        if not _usable(found, version, public_key):
            await self._discard(target, f"its version {version} is of another or an expired key")
            return None
        assert found is not None
        stages = described.get("VersionIdsToStages") or {}
        delivered = await self._finish(target, found, stages, message)
        return delivered.model_copy(update={"resumed": True})

    async def _stored_metadata(
        self, target: DeliveryTarget, token: str, version: int
    ) -> CredentialMetadata | None:
        # Read back only to describe it: the text goes no further than this function.
        stored = await self._call("get_secret_value", SecretId=secret_id(target), VersionId=token)
        try:
            creds = parse_creds(str((stored or {}).get("SecretString", "")))
        except ValueError:
            return None
        return credential_metadata(creds, version, timedelta(0))

    async def deliver(
        self,
        target: DeliveryTarget,
        secret: SecretStr,
        credential: CredentialMetadata,
        message: str,
    ) -> Delivered:
        name = secret_id(target)
        token = request_token(target.owner, credential.version)
        described = await self._describe(target)
        # Put makes the new version AWSCURRENT; a put repeating an earlier one changes nothing.
        stages = {token: ["AWSCURRENT"]}
        if described is not None:
            self._refuse_foreign(target, described)
            if described.get("DeletedDate"):
                await self._discard(target, "it was scheduled for deletion by an earlier workload")
                described = None
        if described is not None:
            existing = described.get("VersionIdsToStages") or {}
            if token in existing:
                stages = existing
            try:
                await self._call(
                    "put_secret_value",
                    secret_bearing=True,
                    SecretId=name,
                    SecretString=secret.get_secret_value(),
                    ClientRequestToken=token,
                )
            except PermanentError as error:
                if error.reason != "ResourceExistsException":
                    raise
                # Another credential holds this version's token (an earlier workload of this
                # name never removed its secret): versions cannot change, so start afresh.
                await self._discard(target, f"its version {credential.version} is stale")
                described, stages = None, {token: ["AWSCURRENT"]}
        if described is None:
            tags = [{"Key": k, "Value": v} for k, v in sorted(_ownership(target).items())]
            await self._call(
                "create_secret",
                secret_bearing=True,
                Name=name,
                Description=f"NATS credentials of workload {target.system}/{target.workload} "
                "(managed by idp)",
                SecretString=secret.get_secret_value(),
                ClientRequestToken=token,
                Tags=tags,
            )
        return await self._finish(target, credential, stages, message)

    async def _finish(
        self,
        target: DeliveryTarget,
        credential: CredentialMetadata,
        stages: Mapping[str, list[str]],
        message: str,
    ) -> Delivered:
        """Make our version AWSCURRENT (unless it is) and write the ExternalSecret that points
        the cluster at the secret."""
        token = request_token(target.owner, credential.version)
        if "AWSCURRENT" not in stages.get(token, []):
            current = next((v for v, s in stages.items() if "AWSCURRENT" in s), None)
            params: dict[str, Any] = {"RemoveFromVersionId": current} if current else {}
            await self._call(
                "update_secret_version_stage",
                SecretId=secret_id(target),
                VersionStage="AWSCURRENT",
                MoveToVersionId=token,
                **params,
            )
        manifest = dump(render_external_secret(target, credential, self._config))
        change = target.change({EXTERNAL_FILE: manifest}, message)
        result = await self._store.apply(change)
        return Delivered(
            credential=credential,
            delivery=self.kind,
            location=f"{secret_id(target)} (Secrets Manager) via {target.path(EXTERNAL_FILE)}",
            commit=result.commit,
            detail=token,
        )

    async def check(self, target: DeliveryTarget, credential: CredentialMetadata) -> DeliveryState:
        name = secret_id(target)
        described = await self._describe(target)
        problem: str | None = None
        if described is None:
            problem = f"Secrets Manager secret {name} does not exist"
        elif described.get("DeletedDate"):
            problem = f"Secrets Manager secret {name} is scheduled for deletion"
        else:
            token = request_token(target.owner, credential.version)
            if "AWSCURRENT" not in (described.get("VersionIdsToStages") or {}).get(token, []):
                problem = (
                    f"the current version of Secrets Manager secret {name} is not credential "
                    f"version {credential.version}"
                )
        if problem is None:
            files = await self._store.read(target.directory)
            problem = self._manifest_problem(target, credential, files.get(EXTERNAL_FILE))
        return DeliveryState(in_place=problem is None, problem=problem)

    async def current(self, target: DeliveryTarget) -> CredentialMetadata | None:
        files = await self._store.read(target.directory)
        manifest, _ = _parse_manifest(
            files.get(EXTERNAL_FILE), target.path(EXTERNAL_FILE), "ExternalSecret"
        )
        return _metadata_from(((manifest or {}).get("metadata") or {}).get("annotations") or {})

    def _manifest_problem(
        self, target: DeliveryTarget, credential: CredentialMetadata, text: str | None
    ) -> str | None:
        path = target.path(EXTERNAL_FILE)
        manifest, problem = _parse_manifest(text, path, "ExternalSecret")
        if manifest is None:
            return problem
        # What decides which secret reaches the pods; labels and refreshInterval do not.
        expected = render_external_secret(target, credential, self._config)
        metadata = manifest.get("metadata") or {}
        spec = manifest.get("spec") or {}
        for key in ("secretStoreRef", "data"):
            if spec.get(key) != expected["spec"][key]:
                return f"{path} has another spec.{key} than the one written"
        if (spec.get("target") or {}).get("name") != target.secret_name or (
            metadata.get("name"),
            metadata.get("namespace"),
        ) != (target.secret_name, target.namespace):
            return f"{path} names another secret than {target.secret_name}"
        return _check_annotations(metadata.get("annotations") or {}, credential, path)

    async def remove(self, target: DeliveryTarget, message: str) -> list[str]:
        removed: list[str] = []
        described = await self._describe(target)
        if described is not None and not described.get("DeletedDate"):
            tags = _tags(described)
            if any(tags.get(k) != v for k, v in _ownership(target).items()):
                log.warning("leaving Secrets Manager secret %s alone: not ours", secret_id(target))
            else:
                params: dict[str, Any] = (
                    {"ForceDeleteWithoutRecovery": True}
                    if self._config.force_delete
                    else {"RecoveryWindowInDays": self._config.recovery_window_days}
                    if self._config.recovery_window_days
                    else {}
                )
                await self._call(
                    "delete_secret",
                    absent=("ResourceNotFoundException",),
                    SecretId=secret_id(target),
                    **params,
                )
                removed.append(secret_id(target))
        result = await self._store.apply(target.change({}, message))
        return removed + list(result.removed)


def _call_aws(
    client: BaseClient,
    operation: str,
    absent: tuple[str, ...],
    secret_bearing: bool,
    params: dict[str, Any],
) -> dict[str, Any] | None:
    try:
        return invoke_aws(client, operation, absent, params, quiet=secret_bearing)
    except PermanentError as err:
        if err.reason == "InvalidRequestException" and "deletion" in str(err).lower():
            # AWS frees a force-deleted secret's name a few seconds later.
            raise TransientError(str(err), reason="SecretBeingDeleted") from None
        raise


# --------------------------------------------------------------------------------------------
# kubernetes
# --------------------------------------------------------------------------------------------


def render_kubernetes_secret(
    target: DeliveryTarget, secret: SecretStr, credential: CredentialMetadata
) -> dict[str, Any]:
    """The Secret applied to the cluster (stringData: the API server encodes it)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": target.secret_name,
            "namespace": target.namespace,
            "labels": dict(sorted(target.labels.items())),
            "annotations": _annotations(credential),
        },
        "type": "Opaque",
        "stringData": {SECRET_KEY: secret.get_secret_value()},
    }


class KubernetesSecrets(Protocol):
    """The three calls the kubernetes delivery makes; `KubeApi` makes them for real."""

    def apply(self, body: dict[str, Any]) -> None: ...

    def annotations(self, namespace: str, name: str) -> dict[str, str] | None: ...

    def delete(self, namespace: str, name: str) -> bool: ...


class KubeApi:
    """The seam to a real API server, one call per method. No API server runs in this
    repository's tests, so this class is not exercised there; everything around it is."""

    def __init__(self, context: str | None) -> None:
        self._context = context

    def _core(self) -> Any:
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        try:
            if self._context is None:
                try:
                    configuration = client.Configuration()
                    config.load_incluster_config(client_configuration=configuration)
                    return client.CoreV1Api(client.ApiClient(configuration))
                except ConfigException:
                    pass
            return client.CoreV1Api(config.new_client_from_config(context=self._context))
        except (ConfigException, OSError) as exc:
            raise PermanentError(
                f"No usable Kubernetes config for context {self._context or 'in-cluster'}: "
                f"{type(exc).__name__}.",
                reason="NoKubeConfig",
            ) from None

    def apply(self, body: dict[str, Any]) -> None:
        metadata = body["metadata"]
        _kube(
            lambda: self._core().patch_namespaced_secret(
                metadata["name"],
                metadata["namespace"],
                body,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type="application/apply-patch+yaml",
            ),
            "apply",
        )

    def annotations(self, namespace: str, name: str) -> dict[str, str] | None:
        found = _kube(lambda: self._core().read_namespaced_secret(name, namespace), "read")
        return None if found is None else dict(found.metadata.annotations or {})

    def delete(self, namespace: str, name: str) -> bool:
        return (
            _kube(lambda: self._core().delete_namespaced_secret(name, namespace), "delete")
            is not None
        )


def _kube(call: Callable[[], T], verb: str) -> T | None:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return call()
    except ApiException as exc:
        # Only the status: an error body may quote the object, and the object holds the secret.
        status = exc.status or 0
        if status == 404 and verb != "apply":
            return None
        text = f"Kubernetes refused to {verb} the NATS credentials Secret (HTTP {status})."
        if status >= 500 or status in (408, 429):
            raise TransientError(text, reason=f"KubernetesHTTP{status}") from None
        raise PermanentError(text, reason=f"KubernetesHTTP{status}") from None
    except HTTPError as exc:
        raise TransientError(
            f"The Kubernetes API server could not be reached ({type(exc).__name__}).",
            reason="KubernetesUnavailable",
        ) from None


class KubernetesDelivery:
    kind = Delivery.KUBERNETES

    def __init__(self, api: KubernetesSecrets, context: str | None) -> None:
        self._api = api
        self._where = context or "in-cluster"

    def _location(self, target: DeliveryTarget) -> str:
        return f"Secret {target.namespace}/{target.secret_name} (kubernetes {self._where})"

    async def resume(
        self, target: DeliveryTarget, version: int, public_key: str, message: str
    ) -> Delivered | None:
        found = await asyncio.to_thread(self._api.annotations, target.namespace, target.secret_name)
        metadata = _metadata_from(found or {})
        if not _usable(metadata, version, public_key):
            return None
        assert metadata is not None
        return Delivered(
            credential=metadata, delivery=self.kind, location=self._location(target), resumed=True
        )

    async def deliver(
        self,
        target: DeliveryTarget,
        secret: SecretStr,
        credential: CredentialMetadata,
        message: str,
    ) -> Delivered:
        body = render_kubernetes_secret(target, secret, credential)
        await asyncio.to_thread(self._api.apply, body)
        return Delivered(credential=credential, delivery=self.kind, location=self._location(target))

    async def check(self, target: DeliveryTarget, credential: CredentialMetadata) -> DeliveryState:
        found = await asyncio.to_thread(self._api.annotations, target.namespace, target.secret_name)
        where = self._location(target)
        problem = (
            f"{where} does not exist"
            if found is None
            else _check_annotations(found, credential, where)
        )
        return DeliveryState(in_place=problem is None, problem=problem)

    async def current(self, target: DeliveryTarget) -> CredentialMetadata | None:
        found = await asyncio.to_thread(self._api.annotations, target.namespace, target.secret_name)
        return _metadata_from(found or {})

    async def remove(self, target: DeliveryTarget, message: str) -> list[str]:
        gone = await asyncio.to_thread(self._api.delete, target.namespace, target.secret_name)
        return [self._location(target)] if gone else []
