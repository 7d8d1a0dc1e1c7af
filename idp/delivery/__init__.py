"""Delivering a workload's credentials to its cluster: one interface, three deliveries.

A workload may hold several credentials (its NATS credentials, a database login), each a
`DeliveryTarget` with a `purpose` ("nats", "postgres") that names its files and its Secrets
Manager secret, and the keys of the Secret it becomes:

- `sealed-secret` (sealed.py): a Bitnami SealedSecret in the workload's state-store directory,
  sealed to the destination controller's certificate (`sealedsecret-<purpose>.yaml`).
- `external-secret` (external.py): the credentials in AWS Secrets Manager
  (`idp/<system>/<workload>/<purpose>`) and an External Secrets Operator `ExternalSecret` that
  copies them into the cluster (`externalsecret-<purpose>.yaml`).
- `kubernetes` (kubernetes.py): a Secret applied straight to the cluster's API server
  (server-side apply).

This module holds what they share: the interface, where a workload's credentials go, and the
credential's metadata. Every delivery is told that metadata (version, fingerprint, key, times)
and records it next to the secret as annotations, so `check` compares what is delivered with
what the workflow remembers without ever reading the secret itself; sealing draws fresh keys
every time, so ciphertext is never compared with a new sealing. `resume` finds a version an
earlier attempt of the same activity already delivered, so a retry neither issues nor delivers
twice.

The credentials are `SecretStr`s and leave them only to be sealed, stored or applied. Nothing here
logs, returns or raises them. Free of Temporal; the boto3 and kubernetes calls are synchronous
and run in a thread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import yaml
from pydantic import Field, SecretStr

from idp.manifests import (
    workload_claims,
    workload_directory,
    workload_file_claim,
    workload_labels,
)
from idp.models import Delivery, Model, Workload
from idp.platform import Destination
from idp.statechange import Change, Claim, blob_id
from idp.synadia import NatsCreds
from idp.yamltext import load

NATS = "nats"
SECRET_KEY = "nats.creds"

VERSION_ANNOTATION = "idp.dev/credential-version"
FINGERPRINT_ANNOTATION = "idp.dev/credential-fingerprint"
PUBLIC_KEY_ANNOTATION = "idp.dev/credential-public-key"
ISSUED_AT_ANNOTATION = "idp.dev/credential-issued-at"
EXPIRES_AT_ANNOTATION = "idp.dev/credential-expires-at"


class CredentialMetadata(Model):
    """What may be known about a credential without holding it."""

    version: int
    public_key: str
    issued_at: datetime
    expires_at: datetime
    fingerprint: str


class DeliveryState(Model):
    in_place: bool
    problem: str | None = None
    # What a fleet read compares in place of what `check` read (capabilities/credentials): ids
    # a listing shows, never the secret.
    file_id: str | None = Field(
        None,
        description="The git object id of the delivered file in the state store, as check read "
        "it; None without one: another delivery, a missing file, or text that cannot tell it "
        "(`git_object_id`).",
    )
    secret_version: str | None = Field(
        None,
        description="external-secret: the id of the Secrets Manager version labelled AWSCURRENT "
        "when check looked; None when it found no secret.",
    )


class Delivered(Model):
    """Where a credential version went; metadata only."""

    credential: CredentialMetadata
    delivery: Delivery
    location: str
    commit: str | None = None
    detail: str | None = None
    resumed: bool = False
    left: DeliveryState | None = Field(
        None,
        description="What `check` would find right after, where the delivery knows it from what "
        "it wrote; None when only a check can tell.",
    )


def git_object_id(text: str | None) -> str | None:
    """The git object id of a state-store file whose text `StateStore.read` gave: the id
    `StateStore.files` lists for it (SHA-1 repositories, git's default, as the store assumes),
    so that a fleet read compares files without reading them. None when there is no text, or
    when it holds U+FFFD: read puts that in for bytes that are not UTF-8, and the text no
    longer has the file's id."""
    if text is None or "\ufffd" in text:
        return None
    return blob_id(text.encode())


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
    """Where one of a workload's credentials goes; everything derived from the workload and
    platform."""

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
    # Which of the workload's credentials this is: names its files and its Secrets Manager
    # secret, so credentials of several purposes live side by side.
    purpose: str = NATS
    keys: tuple[str, ...] = (SECRET_KEY,)  # the keys of the Secret it delivers, in order

    @classmethod
    def of(
        cls,
        workload: Workload,
        destination: Destination,
        *,
        purpose: str,
        secret_name: str | None,
        keys: tuple[str, ...],
    ) -> DeliveryTarget:
        base = destination.state_store.path
        target = cls(
            owner=workload.workflow_id,
            system=workload.metadata.system,
            workload=workload.metadata.name,
            namespace=workload.spec.namespace,
            secret_name=secret_name or f"{workload.metadata.name}-{purpose}",
            directory=workload_directory(base, workload),
            labels=workload_labels(workload),
            purpose=purpose,
            keys=keys,
        )
        claims = workload_claims(base, workload)
        held = {claim.path for claim in claims}
        # workload_claims names the NATS files; those of any other purpose hold the directory
        # just the same.
        own = (workload_file_claim(base, workload, file) for file in sorted(target.files))
        return replace(target, claims=claims + tuple(c for c in own if c.path not in held))

    @property
    def sealed_file(self) -> str:
        return f"sealedsecret-{self.purpose}.yaml"

    @property
    def external_file(self) -> str:
        return f"externalsecret-{self.purpose}.yaml"

    @property
    def files(self) -> frozenset[str]:
        """Both belong to the delivery step, so a change of delivery removes the other file in
        the same commit: two objects must never claim the same Secret."""
        return frozenset({self.sealed_file, self.external_file})

    def change(self, files: Mapping[str, str], message: str) -> Change:
        """Write (or, with no files, remove) the delivery's files beside the manifests; the
        files of other purposes stay as they are."""
        return Change(
            self.directory,
            files,
            message,
            self.files,
            owner=self.owner,
            claims=self.claims,
        )

    def path(self, file: str) -> str:
        return f"{self.directory}/{file}"


def nats_target(workload: Workload, destination: Destination) -> DeliveryTarget:
    """Where a workload's NATS credentials go."""
    nats = workload.spec.nats
    return DeliveryTarget.of(
        workload,
        destination,
        purpose=NATS,
        secret_name=nats.credentials.secret_name if nats else None,
        keys=(SECRET_KEY,),
    )


def revealed(target: DeliveryTarget, data: Mapping[str, SecretStr]) -> dict[str, str]:
    """The values to deliver, in the target's key order; ValueError (naming keys, never values)
    unless `data` holds exactly the target's keys."""
    if set(data) != set(target.keys):
        raise ValueError(
            f"the {target.purpose} credentials of {target.system}/{target.workload} have the keys "
            f"{', '.join(sorted(data)) or 'none'}, but the delivery expects "
            f"{', '.join(target.keys)}"
        )
    return {key: data[key].get_secret_value() for key in target.keys}


def delivery_kind(workload: Workload, destination: Destination) -> Delivery:
    nats = workload.spec.nats
    return (nats.credentials.delivery if nats else None) or destination.default_delivery


class CredentialDelivery(Protocol):
    kind: Delivery
    # Whether `resume` also readies the place before anything is issued (refuses another's,
    # clears a leftover), so that it runs on every try; else it only looks for what an earlier
    # try delivered, which a caller may skip where none can have (the first try of a settled
    # pass).
    resume_readies: bool

    async def resume(
        self, target: DeliveryTarget, version: int, public_key: str, message: str
    ) -> Delivered | None:
        """The given version if an earlier attempt already delivered it for this key (finishing
        what that attempt left undone); None when the credential must be issued."""
        ...

    async def deliver(
        self,
        target: DeliveryTarget,
        data: Mapping[str, SecretStr],
        credential: CredentialMetadata,
        message: str,
    ) -> Delivered:
        """Deliver `data`, which must hold exactly `target.keys` (ValueError otherwise)."""
        ...

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


def credential_annotations(credential: CredentialMetadata) -> dict[str, str]:
    """What every delivery records beside the secret, so `check` and `current` need not read it."""
    return {
        VERSION_ANNOTATION: str(credential.version),
        FINGERPRINT_ANNOTATION: credential.fingerprint,
        PUBLIC_KEY_ANNOTATION: credential.public_key,
        ISSUED_AT_ANNOTATION: _timestamp(credential.issued_at),
        EXPIRES_AT_ANNOTATION: _timestamp(credential.expires_at),
    }


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def metadata_from(annotations: Mapping[str, Any]) -> CredentialMetadata | None:
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


def can_resume(found: CredentialMetadata | None, version: int, public_key: str) -> bool:
    """An earlier attempt's credential can stand in for a new one only if it is this version,
    of the user's current key, and not about to expire."""
    return (
        found is not None
        and found.version == version
        and found.public_key == public_key
        and found.expires_at > datetime.now(UTC) + timedelta(minutes=1)
    )


def parse_manifest(text: str | None, path: str, kind: str) -> tuple[dict[str, Any] | None, str]:
    """The manifest if `text` holds a `kind`; else None and what is wrong with the file."""
    if text is None:
        return None, f"{path} is missing from the state store"
    try:
        manifest = load(text)
    except yaml.YAMLError:
        return None, f"{path} is not valid YAML"
    if not isinstance(manifest, dict) or manifest.get("kind") != kind:
        return None, f"{path} does not hold a {kind}"
    return manifest, ""


def check_annotations(
    annotations: Mapping[str, Any], credential: CredentialMetadata, where: str
) -> str | None:
    """None when the annotations name this credential; else what `where` holds instead."""
    found = annotations.get(VERSION_ANNOTATION)
    if found is None:
        return f"{where} has no {VERSION_ANNOTATION} annotation"
    if found != str(credential.version):
        return f"{where} holds credential version {found}, expected {credential.version}"
    if annotations.get(FINGERPRINT_ANNOTATION) != credential.fingerprint:
        return f"{where} holds another credential than version {credential.version} (fingerprint)"
    return None
