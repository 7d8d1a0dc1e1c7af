"""Activities for a workload's NATS user in Synadia Cloud and the delivery of its credentials.

The contract the workflow relies on: credentials exist only inside `issue_credentials`, which
downloads them and hands them straight to the delivery; everything returned is metadata (ids,
public keys, expiry, version, a fingerprint that reveals nothing). idp/natsusers.py and
idp/delivery/ do the work; this module resolves configuration and maps errors.

Every download gets a user key of its own (see `idp.natsusers.download_on_unused_key`): NATS
revokes per key, so a download the worker lost before delivering it is revoked by its key on the
next try, and the delivered credential, on another key, is never touched. An issuance thus costs
one GET of the user, one listing of its issuances and the download, plus a rotation when the
current key already carries a credential, plus a revocation when that one was never delivered.

Calls per steady-state pass: `ensure_nats_user` with a known user id makes one Synadia GET;
`check_delivery` makes no Synadia call, one git fetch and read, plus one Secrets Manager
DescribeSecret for external-secret (one Secret GET for kubernetes).
"""

import logging
import os
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from temporalio import activity

from activities.errors import as_activity_errors
from activities.heartbeat import heartbeating
from activities.statestore import destination_store
from idp.delivery import (
    DELIVERY_FILES,
    CredentialDelivery,
    CredentialMetadata,
    Delivered,
    DeliveryTarget,
    credential_metadata,
    delivery_kind,
)
from idp.delivery.external import ExternalSecretDelivery
from idp.delivery.kubernetes import KubeApi, KubernetesDelivery, KubernetesSecrets
from idp.delivery.sealed import SealedSecretDelivery
from idp.errors import PermanentError
from idp.models import Delivery, Model, Workload
from idp.natsusers import (
    DeliveredKey,
    Directory,
    download_on_unused_key,
    ensure_user,
    find_user,
    live_keys,
    revoke_keys,
)
from idp.platform import Destination, Platform, SynadiaConfig
from idp.sealing import CertificateCache
from idp.statestore import Change, StateStore
from idp.synadia import SynadiaApiError, SynadiaClient

log = logging.getLogger(__name__)

T = TypeVar("T")


class NatsUserInput(Model):
    workload: Workload
    user_id: str | None = None  # known from an earlier pass: look it up by id, not by listing


class NatsUser(Model):
    """What ensure_nats_user found or made. `created` is True when this call created the user
    (including the first call after it vanished out of band)."""

    user_id: str
    account_id: str
    name: str
    public_key: str
    created: bool = False
    repaired: list[str] = []


class IssueInput(Model):
    workload: Workload
    workflow_id: str
    user_id: str
    version: int
    reason: str
    # The workflow's record of the key it last delivered: what the workload holds when the
    # delivered secret itself cannot be read (deleted or edited by hand).
    delivered_public_key: str | None = None


class CredentialRecord(Model):
    version: int
    public_key: str
    issued_at: datetime
    expires_at: datetime
    fingerprint: str
    delivery: Delivery
    location: str


class DeliveryCheckInput(Model):
    workload: Workload
    record: CredentialRecord


class DeliveryCheck(Model):
    in_place: bool
    problem: str | None = None


class RevokeInput(Model):
    workload: Workload
    account_id: str
    public_keys: list[str]


class RemoveInput(Model):
    workload: Workload
    user_id: str | None
    account_id: str | None
    public_keys: list[str]
    record: CredentialRecord | None


class NatsActivities:
    """`cache_dir` is where state-store clones live (shared with the manifests step, so their
    commits group)."""

    def __init__(
        self,
        platform: Platform,
        cache_dir: Path,
        *,
        certificates: CertificateCache | None = None,
        kubernetes: Callable[[str | None], KubernetesSecrets] = KubeApi,
    ) -> None:
        self._platform = platform
        self._cache_dir = cache_dir
        self._certificates = certificates or CertificateCache()
        self._kubernetes = kubernetes
        self._directory = Directory(platform.synadia) if platform.synadia else None
        self._secrets: BaseClient | None = None

    # -- configuration

    def _synadia(self) -> tuple[SynadiaConfig, Directory]:
        if self._platform.synadia is None or self._directory is None:
            raise PermanentError(
                "the platform configuration has no synadia section, so workloads get no NATS "
                "user; add one or remove spec.nats",
                reason="NoSynadia",
            )
        return self._platform.synadia, self._directory

    def _client(self) -> SynadiaClient:
        config, _ = self._synadia()
        token = os.environ.get(config.token_env, "")
        if not token:
            raise PermanentError(
                f"the Synadia API token is not set: the worker needs it in ${config.token_env} "
                "(synadia.tokenEnv)",
                reason="NoSynadiaToken",
            )
        return SynadiaClient(config.url, token)

    def _destination(self, workload: Workload) -> Destination:
        return self._platform.require_destination(workload.spec.destination)

    def _store(self, destination: Destination) -> StateStore:
        return destination_store(destination, self._cache_dir)

    def _secrets_client(self) -> BaseClient:
        aws = self._platform.aws
        assert aws is not None
        if self._secrets is None:
            config = Config(
                region_name=aws.region,
                retries={"mode": "standard", "max_attempts": 4},
                connect_timeout=5,
                read_timeout=30,
            )
            self._secrets = boto3.session.Session().client(
                "secretsmanager", endpoint_url=aws.endpoint_url, config=config
            )
        return self._secrets

    def _delivery(self, destination: Destination, kind: Delivery) -> CredentialDelivery:
        if kind == Delivery.SEALED_SECRET:
            if destination.sealing is None:
                raise PermanentError(
                    f"delivery sealed-secret needs the sealing certificate of destination "
                    f"{destination.name} (destinations[].sealing in the platform configuration); "
                    "set it or choose another spec.nats.credentials.delivery",
                    reason="NoSealingCertificate",
                )
            return SealedSecretDelivery(
                self._store(destination), destination.sealing, self._certificates
            )
        if kind == Delivery.EXTERNAL_SECRET:
            if destination.secret_store is None or self._platform.aws is None:
                raise PermanentError(
                    f"delivery external-secret needs destinations[].secretStore for "
                    f"{destination.name} and the aws section in the platform configuration; set "
                    "them or choose another spec.nats.credentials.delivery",
                    reason="NoSecretStore",
                )
            return ExternalSecretDelivery(
                self._store(destination), self._secrets_client(), destination.secret_store
            )
        return KubernetesDelivery(
            self._kubernetes(destination.kube_context), destination.kube_context
        )

    async def _run(self, work: Callable[[], Awaitable[T]]) -> T:
        with as_activity_errors():
            try:
                return await heartbeating(work())
            except SynadiaApiError as error:
                if error.status != 401:
                    raise
                # The token is the operator's to fix, and the worker reads it only at start.
                config, _ = self._synadia()
                raise PermanentError(
                    f"{error} Synadia refused the API token in ${config.token_env} "
                    "(synadia.tokenEnv): the worker reads it when it starts, so restart it after "
                    "changing the variable.",
                    reason=error.reason,
                ) from None

    # -- activities

    @activity.defn
    async def ensure_nats_user(self, request: NatsUserInput) -> NatsUser:
        async def work() -> NatsUser:
            _, directory = self._synadia()
            async with self._client() as client:
                ensured = await ensure_user(client, directory, request.workload, request.user_id)
            user = ensured.user
            return NatsUser(
                user_id=user.id,
                account_id=user.account.id,
                name=user.name,
                public_key=user.user_public_key,
                created=ensured.created,
                repaired=ensured.repaired,
            )

        return await self._run(work)

    @activity.defn
    async def issue_credentials(self, request: IssueInput) -> CredentialRecord:
        return await self._run(lambda: self._issue(request))

    async def _issue(self, request: IssueInput) -> CredentialRecord:
        workload = request.workload
        nats = workload.spec.nats
        if nats is None:
            raise PermanentError(
                "the workload has no spec.nats to issue credentials for", reason="NoNats"
            )
        destination = self._destination(workload)
        # Resolved before anything is issued: a delivery that cannot work must cost no issuance.
        kind = delivery_kind(workload, destination)
        delivery = self._delivery(destination, kind)
        target = DeliveryTarget.of(workload, destination)
        who = f"Workload {workload.metadata.system}/{workload.metadata.name}"
        message = (
            f"deliver NATS credentials v{request.version} of {who}\n\n"
            f"Reason: {request.reason}\nWorkflow: {request.workflow_id}"
        )
        async with self._client() as client:
            user = await client.get_nats_user(request.user_id)
            if user is None:
                raise PermanentError(
                    f"NATS user {request.user_id} of {who} no longer exists; the next pass "
                    "creates it again before issuing",
                    reason="NatsUserGone",
                )
            resumed = await delivery.resume(target, request.version, user.user_public_key, message)
            if resumed is not None:
                log.info(
                    "credentials v%d of %s were already delivered by an earlier attempt (%s)",
                    request.version,
                    who,
                    resumed.location,
                )
                return _record(resumed)

            async def delivered_key() -> DeliveredKey:
                if request.version == 1:
                    return DeliveredKey(known=True)  # this workflow never delivered one
                found = await self._delivered_key(destination, kind, target)
                if not found.known and request.delivered_public_key is not None:
                    return DeliveredKey(known=True, public_key=request.delivered_public_key)
                return found

            download = await download_on_unused_key(client, user, delivered_key)
        creds = download.creds
        credential = credential_metadata(creds, request.version, nats.credentials.ttl)
        log.info(
            "issued NATS credentials v%d of %s: reason %s, key %s, fingerprint %s, expires %s; "
            "earlier keys left valid: %s, revoked as never delivered: %s",
            request.version,
            who,
            request.reason,
            credential.public_key,
            credential.fingerprint[:16],
            credential.expires_at.isoformat(),
            ", ".join(download.kept) or "none",
            ", ".join(download.revoked) or "none",
        )
        delivered = await delivery.deliver(target, creds.text, credential, message)
        return _record(delivered)

    async def _delivered_key(
        self, destination: Destination, kind: Delivery, target: DeliveryTarget
    ) -> DeliveredKey:
        """The key of the credential delivered now: where the spec delivers, else in the
        git-borne deliveries (the spec may have just switched from one of them)."""
        git_borne = (Delivery.SEALED_SECRET, Delivery.EXTERNAL_SECRET)
        kinds = [kind, *(other for other in git_borne if other != kind)]
        for candidate in kinds:
            try:
                delivery = self._delivery(destination, candidate)
            except PermanentError:
                continue  # not configured here, so nothing can be delivered that way
            found = await delivery.current(target)
            if found is not None:
                return DeliveredKey(known=True, public_key=found.public_key)
        return DeliveredKey(known=False)

    @activity.defn
    async def check_delivery(self, request: DeliveryCheckInput) -> DeliveryCheck:
        async def work() -> DeliveryCheck:
            destination = self._destination(request.workload)
            record = request.record
            # Where this version was delivered, even if the spec now names another delivery:
            # the workflow's policy decides whether that change calls for a new issuance.
            delivery = self._delivery(destination, record.delivery)
            credential = CredentialMetadata(
                version=record.version,
                public_key=record.public_key,
                issued_at=record.issued_at,
                expires_at=record.expires_at,
                fingerprint=record.fingerprint,
            )
            target = DeliveryTarget.of(request.workload, destination)
            state = await delivery.check(target, credential)
            return DeliveryCheck(in_place=state.in_place, problem=state.problem)

        return await self._run(work)

    @activity.defn
    async def rotate_nats_key(self, request: NatsUserInput) -> NatsUser:
        async def work() -> NatsUser:
            if not request.user_id:
                raise PermanentError("rotating a NATS key needs the user's id", reason="NoUserId")
            async with self._client() as client:
                user = await client.rotate_nats_user(request.user_id)
            log.info("rotated the key of NATS user %s: now %s", user.name, user.user_public_key)
            return NatsUser(
                user_id=user.id,
                account_id=user.account.id,
                name=user.name,
                public_key=user.user_public_key,
            )

        return await self._run(work)

    @activity.defn
    async def revoke_nats_keys(self, request: RevokeInput) -> None:
        async def work() -> None:
            async with self._client() as client:
                await revoke_keys(client, request.account_id, request.public_keys)

        await self._run(work)

    @activity.defn
    async def remove_nats(self, request: RemoveInput) -> None:
        await self._run(lambda: self._remove(request))

    async def _remove(self, request: RemoveInput) -> None:
        workload = request.workload
        if self._platform.synadia is not None:
            _, directory = self._synadia()
            async with self._client() as client:
                # By id, else by its name: a user whose id the workflow never learned (a lost
                # activity result) is found and removed too.
                try:
                    user = await find_user(client, directory, workload, request.user_id)
                except PermanentError as error:
                    if error.reason != "UnknownAccount":
                        raise
                    user = None  # no account, so no user in it to remove
                account_id = request.account_id or (user.account.id if user else None)
                keys = list(request.public_keys)
                if user is not None:
                    # Each issuance has a key of its own, so superseded versions, still valid
                    # until they expire, are on keys the workflow may never have seen.
                    keys += [user.user_public_key, *await live_keys(client, user.id)]
                if account_id and keys:
                    # Before the delete: a deleted user's JWTs stay valid until they expire.
                    await revoke_keys(client, account_id, keys)
                if user is not None and await client.delete_nats_user(user.id):
                    log.info("deleted NATS user %s (%s)", user.name, user.id)
        destination = self._destination(workload)
        target = DeliveryTarget.of(workload, destination)
        message = (
            f"remove NATS credentials of Workload {workload.metadata.system}/"
            f"{workload.metadata.name}\n\nWorkflow: {workload.workflow_id}"
        )
        removed: list[str] = []
        # Whatever delivery was used before, its traces go: both state-store files, the
        # Secrets Manager secret where one can exist, the Secret where it was applied.
        if destination.secret_store is not None and self._platform.aws is not None:
            external = self._delivery(destination, Delivery.EXTERNAL_SECRET)
            removed += await external.remove(target, message)
        else:
            change = Change(target.directory, {}, message, DELIVERY_FILES)
            removed += (await self._store(destination).apply(change)).removed
        if request.record is not None and request.record.delivery == Delivery.KUBERNETES:
            kubernetes = self._delivery(destination, Delivery.KUBERNETES)
            removed += await kubernetes.remove(target, message)
        if removed:
            log.info("removed NATS credentials of %s: %s", workload.workflow_id, ", ".join(removed))


def _record(delivered: Delivered) -> CredentialRecord:
    credential = delivered.credential
    return CredentialRecord(
        version=credential.version,
        public_key=credential.public_key,
        issued_at=credential.issued_at,
        expires_at=credential.expires_at,
        fingerprint=credential.fingerprint,
        delivery=delivered.delivery,
        location=delivered.location,
    )
