"""The Credentials capability's worker half: issue and deliver NATS credentials, check what was
delivered, remove it.

Credentials exist only inside `apply`, which downloads them and hands them straight to the
delivery; everything it returns is metadata (public key, expiry, version, a fingerprint that
reveals nothing). idp/natsusers.py and idp/delivery/ do the work; this module resolves the
platform's configuration.

Every download gets a user key of its own (see `idp.natsusers.download_on_unused_key`): NATS
revokes per key, so a download the worker lost before delivering it is revoked by its key on the
next try, and the delivered credential, on another key, is never touched. An issuance thus costs
one GET of the user, one listing of its issuances and the download, plus a rotation when the
current key already carries a credential, plus a revocation when that one was never delivered.

Calls per steady-state pass (`observe`, as apply has nothing to do): no Synadia call, one look at
the state store's head and read, plus one Secrets Manager DescribeSecret for external-secret (one
Secret GET for kubernetes).

A fleet observer sweep (`fleet_observe`) costs, however many workloads sleep on it: per state
store one look at the remote's head and one ls-tree (two git processes when the clone holds that
head, four when it must fetch it, as the Manifests read), and, when any of them delivers by
external-secret, ceil(S/100) ListSecrets calls for the S secrets its name filter matches (the
workloads' own names up to ten, their systems' up to ten systems, else every `idp/` secret of the
region). No Synadia call, no blob read and no secret value: the sealed file and the
ExternalSecret are compared by their git object ids, the Secrets Manager secret by which version
is AWSCURRENT. Workloads delivering by kubernetes give no fingerprint and keep their own checks.
"""

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from activities.deliveries import Deliveries
from capabilities.credentials import (
    CredentialsObservation,
    CredentialsOutputs,
    CredentialsPlan,
    FleetKey,
    Issue,
    delivered_digest,
    delivered_fingerprint,
    explain_credentials,
    nats_user,
    policy_reason,
)
from capabilities.nats.actions import Synadia, unrecorded
from idp.capability import Actions, Context, Outcome, Report, dump
from idp.credentials import IssueReason, delivery_digest, next_refresh, permissions_digest
from idp.delivery import (
    SECRET_KEY,
    CredentialDelivery,
    Delivered,
    DeliveryTarget,
    credential_metadata,
    delivery_kind,
    nats_target,
)
from idp.delivery.external import listed_versions, secret_id
from idp.errors import PermanentError
from idp.models import Delivery, Workload
from idp.natsusers import DeliveredKey, download_on_unused_key, nats_spec
from idp.platform import Destination, Platform
from idp.statestore import StateStore

log = logging.getLogger(__name__)


DELIVERY_FIELD = "spec.nats.credentials.delivery"


@dataclass(frozen=True)
class _Sought:
    """What the fleet read looks for of one key: its delivered file, in `store` at `path` below
    `root` (its destination's directory), and for external-secret the name of its Secrets
    Manager secret."""

    key: str
    kind: Delivery
    store: StateStore
    root: str
    path: str
    secret: str | None


class CredentialsActions(Actions[CredentialsObservation, CredentialsPlan]):
    """`cache_dir` is where state-store clones live: the one the manifests step uses, so their
    commits group."""

    def __init__(self, platform: Platform, cache_dir: Path) -> None:
        self._platform = platform
        self.deliveries = Deliveries(platform, cache_dir)
        self._synadia = Synadia(platform.synadia)

    # -- configuration

    def _destination(self, workload: Workload) -> Destination:
        return self._platform.require_destination(workload.spec.destination)

    def _delivery(self, destination: Destination, kind: Delivery) -> CredentialDelivery:
        return self.deliveries.of(destination, kind, DELIVERY_FIELD)

    # -- the contract

    async def observe(self, ctx: Context) -> CredentialsObservation:
        current = ctx.own(CredentialsOutputs)
        # Nothing delivered to look at; or the policy issues anyway, and the issuance reads
        # what is delivered itself.
        if current is None or policy_reason(ctx) is not None:
            return CredentialsObservation()
        destination = self._destination(ctx.workload)
        # Where this version was delivered, even if the spec now names another delivery: the
        # policy decides whether that change calls for a new issuance.
        delivery = self._delivery(destination, current.delivery)
        target = nats_target(ctx.workload, destination)
        return CredentialsObservation(delivered=await delivery.check(target, current))

    async def apply(
        self, ctx: Context, plan: CredentialsPlan, observation: CredentialsObservation
    ) -> Report:
        current = ctx.own(CredentialsOutputs)
        issue = plan.issue
        if issue is None:
            assert current is not None  # the policy issues the first version
            message = f"version {current.version} delivered to {current.location}"
            return Report(message=message, outputs=ctx.outputs)
        delivered, replaced = await self._issue(ctx, issue, current)
        spec = nats_spec(ctx.workload)
        outputs = CredentialsOutputs(
            **delivered.credential.model_dump(),
            delivery=delivered.delivery,
            location=delivered.location,
            permissions_digest=permissions_digest(spec),
            delivery_digest=delivery_digest(spec),
            next_refresh_at=next_refresh(spec.credentials, ctx.now),
            reason=issue.reason,
            replaced_keys=replaced,
        )
        drifted = issue.reason == IssueReason.DELIVERY_DRIFT
        # What it just wrote spares the activity reading it back (a state-store read).
        left = delivered.left
        return Report(
            reason=Outcome.ISSUED,
            cause=issue.reason.value,
            changed=True,
            message=f"version {issue.version} ({issue.reason}) delivered to {delivered.location}",
            outputs=dump(outputs),
            events=[f"delivered secret drifted: {issue.problem}"] if drifted else [],
            fingerprint=left and delivered_fingerprint(ctx.workload, delivered.delivery, left),
        )

    async def explain(
        self, ctx: Context, plan: CredentialsPlan, observation: CredentialsObservation
    ) -> list[str]:
        return explain_credentials(ctx, plan)

    async def fleet_observe(self, keys: list[str]) -> dict[str, str]:
        """Each key's `delivered_digest` as it is now: one listing per state store (the
        destinations' directories, as `StateStore.files` reads them) and ListSecrets pages for
        the external-secret keys, side by side; see the module's doc for the cost. A key is
        left out when its file or its secret is gone (its pass re-issues), and so is one of
        another form or of a destination the platform no longer has or no longer gives a
        secret store: its workload looks for itself."""
        sought = [found for key in keys if (found := self._sought(key)) is not None]
        # Each destination's directory, as the Manifests read lists it: one ls-tree a store.
        roots: dict[StateStore, set[str]] = {}
        for s in sought:
            roots.setdefault(s.store, set()).add(s.root)
        names = sorted({s.secret for s in sought if s.secret is not None})

        async def versions() -> dict[str, str | None]:
            if not names:
                return {}
            return await asyncio.to_thread(listed_versions, self.deliveries.secrets_client(), names)

        listings = asyncio.gather(*(store.files(sorted(dirs)) for store, dirs in roots.items()))
        current, listed = await asyncio.gather(versions(), listings)
        files = dict(zip(roots, listed, strict=True))
        found: dict[str, str] = {}
        for s in sought:
            file_id = files[s.store].get(s.path)
            if file_id is None or (s.secret is not None and s.secret not in current):
                continue
            version = current.get(s.secret) if s.secret is not None else None
            found[s.key] = delivered_digest(s.kind, file_id, version)
        return found

    def _sought(self, key: str) -> _Sought | None:
        parsed = FleetKey.parse(key)
        destination = self._platform.destination(parsed.destination) if parsed else None
        if parsed is None or destination is None:
            return None
        external = parsed.kind == Delivery.EXTERNAL_SECRET
        if external and (destination.secret_store is None or self._platform.aws is None):
            return None
        base = destination.state_store.path
        target = parsed.target(base)
        return _Sought(
            key=key,
            kind=parsed.kind,
            store=self.deliveries.store(destination),
            root="/".join(filter(None, (base, parsed.destination))),
            path=target.path(target.external_file if external else target.sealed_file),
            secret=secret_id(target) if external else None,
        )

    async def _issue(
        self, ctx: Context, issue: Issue, current: CredentialsOutputs | None
    ) -> tuple[Delivered, list[str]]:
        """What was delivered, and the user keys the download rotated away from."""
        workload = ctx.workload
        nats = nats_spec(workload)
        user_id = nats_user(ctx).user_id
        destination = self._destination(workload)
        # Resolved before anything is issued: a delivery that cannot work must cost no issuance.
        kind = delivery_kind(workload, destination)
        delivery = self._delivery(destination, kind)
        target = nats_target(workload, destination)
        who = f"Workload {workload.metadata.system}/{workload.metadata.name}"
        message = (
            f"deliver NATS credentials v{issue.version} of {who}\n\n"
            f"Reason: {issue.reason}\nWorkflow: {ctx.workflow_id}"
        )
        async with self._synadia.client() as client:
            user = await client.get_nats_user(user_id)
            if user is None:
                raise PermanentError(
                    f"NATS user {user_id} of {who} no longer exists; the next pass "
                    "creates it again before issuing",
                    reason="NatsUserGone",
                )
            # As the Nats step looks for its user before creating one only when a create may
            # have gone through unrecorded, so here for an earlier try's delivery: that look
            # is a state-store read, or one of the API server.
            resumed = None
            if delivery.resume_readies or unrecorded(ctx):
                resumed = await delivery.resume(
                    target, issue.version, user.user_public_key, message
                )
            if resumed is not None:
                log.info(
                    "credentials v%d of %s were already delivered by an earlier attempt (%s)",
                    issue.version,
                    who,
                    resumed.location,
                )
                # That attempt's rotations are unknown here; a Nats record still naming the
                # key it left costs one more pass, never an issuance.
                return resumed, []

            async def delivered_key() -> DeliveredKey:
                if current is None:
                    return DeliveredKey(known=True)  # this workflow never delivered one
                found = await self._delivered_key(destination, kind, target)
                if not found.known:
                    # What the workload holds when the delivered secret itself cannot be read
                    # (deleted or edited by hand): the key last delivered.
                    return DeliveredKey(known=True, public_key=current.public_key)
                return found

            download = await download_on_unused_key(client, user, delivered_key)
        creds = download.creds
        credential = credential_metadata(creds, issue.version, nats.credentials.ttl)
        log.info(
            "issued NATS credentials v%d of %s: reason %s, key %s, fingerprint %s, expires %s; "
            "earlier keys left valid: %s, revoked as never delivered: %s",
            issue.version,
            who,
            issue.reason,
            credential.public_key,
            credential.fingerprint[:16],
            credential.expires_at.isoformat(),
            ", ".join(download.kept) or "none",
            ", ".join(download.revoked) or "none",
        )
        delivered = await delivery.deliver(target, {SECRET_KEY: creds.text}, credential, message)
        return delivered, download.kept + download.revoked

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

    async def teardown(self, ctx: Context) -> Report:
        """Whatever delivery was used before, its traces go: both state-store files, the
        Secrets Manager secret where one can exist, the Secret where it was applied."""
        workload = ctx.workload
        current = ctx.own(CredentialsOutputs)
        destination = self._destination(workload)
        target = nats_target(workload, destination)
        commit = (
            f"remove NATS credentials of Workload {workload.metadata.system}/"
            f"{workload.metadata.name}\n\nWorkflow: {workload.workflow_id}"
        )
        recorded = current.delivery if current else None
        removed = await self.deliveries.remove(destination, target, recorded, commit)
        if removed:
            log.info("removed NATS credentials of %s: %s", workload.workflow_id, ", ".join(removed))
        if current is None:
            # Nothing recorded, yet a delivery whose result was lost may have left its traces.
            message = f"removed {', '.join(removed) or 'nothing'}"
        else:
            message = f"removed version {current.version} from {current.location}"
        return Report(reason=Outcome.DELETED, message=message)
