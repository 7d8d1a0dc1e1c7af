"""The Credentials capability: a workload's NATS credentials, issued only by policy and delivered
to its cluster.

Its pure half, which the workflow engine runs. A credential is issued for one of the reasons of
`idp.credentials` and for no other: the first one, a refresh before it expires, a new key of the
user (its reason from the Nats outputs: a rotation, a request, a recreated user; else the key
changed out of band), new permissions, a new delivery, or a delivered secret that is gone or
altered. The outputs are the credential's metadata (`idp.delivery.CredentialMetadata`), where it
went and the policy's bookkeeping; never the credential. The worker's half is in `actions`.

Its fingerprint, for the deliveries kept in the state store, is what their `check` compares as
a listing shows it (`delivered_digest`): the delivered file's git object id and, for
external-secret, which Secrets Manager version is current; the fleet read finds those for every
workload in one listing of each state store and ListSecrets pages.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import Field
from temporalio.common import SearchAttributeKey

from capabilities.nats import Nats, NatsOutputs
from idp.capability import Actions, Capability, Change, Context, Fingerprint, Plan, digest
from idp.credentials import Issued, IssueReason, issue_reason
from idp.delivery import NATS as NATS_PURPOSE
from idp.delivery import CredentialMetadata, DeliveryState, DeliveryTarget
from idp.errors import PermanentError
from idp.ids import parse_workload_id, workload_id
from idp.manifests import resource_directory
from idp.models import Delivery, Model, Workload
from idp.names import dns1123_label
from idp.natsusers import nats_spec
from idp.platform import SynadiaConfig

NATS = Nats.name
# So operators can list the workloads whose credentials expire soon.
EXPIRE_AT = SearchAttributeKey.for_datetime("IdpCredentialsExpireAt")


class CredentialsOutputs(CredentialMetadata):
    """What was issued and delivered; never the credentials themselves."""

    delivery: Delivery
    location: str
    permissions_digest: str
    delivery_digest: str
    next_refresh_at: datetime = Field(description="By the workflow's clock and the policy.")
    reason: IssueReason
    replaced_keys: list[str] = Field(
        default_factory=list,
        description="The user keys this issuance rotated away from (left valid or revoked). "
        "The Nats outputs of the same pass still name one: they were recorded before it.",
    )


class CredentialsObservation(Model):
    delivered: DeliveryState | None = Field(
        None,
        description="Whether the recorded version is still delivered, unaltered; None when not "
        "looked at: nothing was delivered yet, or the policy issues anyway.",
    )


class Issue(Model):
    version: int
    reason: IssueReason
    problem: str | None = Field(None, description="What drifted, for DeliveryDrift.")


class CredentialsPlan(Plan):
    issue: Issue | None = None


# The deliveries a fleet read sees: a file in the git state store, beside a Secrets Manager
# secret for external-secret. Not kubernetes (see `Credentials.fingerprint`).
FLEET_READ = (Delivery.SEALED_SECRET, Delivery.EXTERNAL_SECRET)


@dataclass(frozen=True)
class FleetKey:
    """What a workload's fingerprint is keyed by: the delivery, where it put the credential
    (destination, namespace, workload, purpose) and the owner's id, such as
    "sealed-secret:dev/shop/cart/nats:workload/shop/cart". Without the destination's base
    directory, so that the fleet read looks where the platform file puts it now (as the
    workload's own pass would); the owner names the system, and so the Secrets Manager secret,
    and keeps two workloads' keys apart. Labels, a delivery and an id: no whitespace, and no
    ':' inside a part."""

    kind: Delivery
    destination: str
    namespace: str
    name: str
    purpose: str
    owner: str

    @classmethod
    def of(cls, workload: Workload, kind: Delivery, purpose: str = NATS_PURPOSE) -> "FleetKey":
        spec = workload.spec
        return cls(
            kind,
            spec.destination,
            spec.namespace,
            workload.metadata.name,
            purpose,
            workload.workflow_id,
        )

    @classmethod
    def parse(cls, key: str) -> "FleetKey | None":
        """None for a key of another form (a newer worker's, say), or one naming paths that
        are not labels: the fleet read joins them into a state-store path."""
        parts = key.split(":")
        if len(parts) != 3 or parts[0] not in FLEET_READ:
            return None
        kind, place, owner = parts
        names = place.split("/")
        system, _ = parse_workload_id(owner)
        if len(names) != 4 or not all(map(_is_label, [*names, system])):
            return None
        if owner != workload_id(system, names[2]):
            return None
        return cls(Delivery(kind), *names, owner)

    @property
    def text(self) -> str:
        place = "/".join((self.destination, self.namespace, self.name, self.purpose))
        return f"{self.kind}:{place}:{self.owner}"

    def target(self, base: str) -> DeliveryTarget:
        """The target the key names, below the destination's `base` directory: enough for its
        file's path and its secret's name, all that a fleet read looks at."""
        system, _ = parse_workload_id(self.owner)
        return DeliveryTarget(
            owner=self.owner,
            system=system,
            workload=self.name,
            namespace=self.namespace,
            secret_name=f"{self.name}-{self.purpose}",  # never looked at here
            directory=resource_directory(base, self.destination, self.namespace, self.name),
            labels={},
            purpose=self.purpose,
        )


def _is_label(value: str) -> bool:
    try:
        dns1123_label(value)
    except ValueError:
        return False
    return True


def delivered_fingerprint(
    workload: Workload, delivery: Delivery, delivered: DeliveryState
) -> Fingerprint | None:
    """What the fleet read must find of a version `delivery` left as `delivered` says; None when
    it is not in place, or the fleet read cannot find it."""
    if not delivered.in_place:
        return None
    if delivery not in FLEET_READ:
        # kubernetes: a Secret in each destination's API server. A bulk read there would need
        # `list` on Secrets, which RBAC cannot grant without every Secret's value in the
        # namespace, and no API server runs in this repository's tests to hold a digest to. Such
        # a workload keeps its own drift checks: one GET of the Secret's annotations a pass.
        return None
    external = delivery == Delivery.EXTERNAL_SECRET
    if delivered.file_id is None or (external and delivered.secret_version is None):
        return None  # the file's text could not tell its id (see git_object_id)
    found = delivered_digest(delivery, delivered.file_id, delivered.secret_version)
    return Fingerprint(key=FleetKey.of(workload, delivery).text, digest=found)


def delivered_digest(kind: Delivery, file_id: str, secret_version: str | None) -> str:
    """The digest of a fingerprint, from what `check` of the delivery compares, as a listing
    shows it: the delivered file's git object id (check reads nothing else of the state store,
    and the id changes whenever the text does) and, for external-secret, the id of the Secrets
    Manager version labelled AWSCURRENT (check asks that it be the recorded version's; any new
    value is a new version). Both halves compute it here, so the same outside gives the same
    digest."""
    seen: dict[str, str | None] = {"file": file_id}
    if kind == Delivery.EXTERNAL_SECRET:
        seen["current"] = secret_version
    return digest(seen)


class Credentials(Capability[CredentialsObservation, CredentialsPlan]):
    name = "Credentials"
    requires = (NATS,)
    # Offered where NATS users are: the same section of the platform file.
    settings_field = "synadia"
    settings_model = SynadiaConfig
    observation_model = CredentialsObservation
    plan_model = CredentialsPlan
    outputs_model = CredentialsOutputs
    search_attributes = (EXPIRE_AT,)
    summary = "NATS credentials"

    def wanted(self, ctx: Context) -> bool:
        return ctx.workload.spec.nats is not None

    def holds(self, ctx: Context) -> bool:
        # A delivery whose result was lost before it was recorded may still have left its
        # files: wherever a NATS user exists, clean up.
        return ctx.outputs is not None or NATS in ctx.inputs

    def plan(self, ctx: Context, observation: CredentialsObservation) -> CredentialsPlan:
        reason = policy_reason(ctx)
        delivered = observation.delivered
        problem = None
        if reason is None and delivered is not None and not delivered.in_place:
            reason, problem = IssueReason.DELIVERY_DRIFT, delivered.problem
        if reason is None:
            return CredentialsPlan()
        current = ctx.own(CredentialsOutputs)
        version = current.version + 1 if current else 1
        why = reason.value if problem is None else f"{reason.value}: {problem}"
        return CredentialsPlan(
            changes=[Change(action="issue", subject=f"NATS credentials v{version}", why=why)],
            issue=Issue(version=version, reason=reason, problem=problem),
        )

    def fingerprint(self, ctx: Context, observation: CredentialsObservation) -> Fingerprint | None:
        """Only when the pass found the recorded version delivered, unaltered (observe looks
        only when the policy issues nothing), by a delivery with a fleet read."""
        current = ctx.own(CredentialsOutputs)
        delivered = observation.delivered
        if current is None or delivered is None:
            return None
        return delivered_fingerprint(ctx.workload, current.delivery, delivered)

    def deadline(self, ctx: Context) -> datetime | None:
        """The refresh."""
        current = ctx.own(CredentialsOutputs)
        return current.next_refresh_at if current else None

    def describe(self, outputs: Mapping[str, Any]) -> list[str]:
        c = CredentialsOutputs.model_validate(outputs)
        return [
            f"credentials: version {c.version} ({c.reason}), delivered to {c.location}; "
            f"expires {c.expires_at.isoformat()}, next refresh {c.next_refresh_at.isoformat()}"
        ]

    def port_properties(self, outputs: Mapping[str, Any] | None) -> dict[str, Any]:
        c = None if outputs is None else CredentialsOutputs.model_validate(outputs)
        return {
            "credentialsVersion": c.version if c else None,
            "credentialsExpireAt": c.expires_at.isoformat() if c else None,
        }

    def port_schema(self) -> dict[str, dict[str, Any]]:
        return {
            "credentialsVersion": {"type": "number", "title": "Credentials version"},
            "credentialsExpireAt": {
                "type": "string",
                "format": "date-time",
                "title": "Credentials expire",
            },
        }

    def attributes(self, outputs: Mapping[str, Any] | None) -> dict[str, Any]:
        if outputs is None:
            return {}
        return {EXPIRE_AT.name: CredentialsOutputs.model_validate(outputs).expires_at}

    def actions(
        self, platform: Any, settings: Any, cache_dir: Path
    ) -> Actions[CredentialsObservation, CredentialsPlan]:
        # Imported here: the workflow imports this module, and the actions hold the clients.
        from capabilities.credentials.actions import CredentialsActions

        return CredentialsActions(platform, cache_dir)


def explain_credentials(ctx: Context, plan: CredentialsPlan) -> list[str]:
    """What `idpctl diff` says of the credentials, issued or not, since an issuance is what
    people fear most: by version, reason and fingerprint, never the credentials."""
    current = ctx.own(CredentialsOutputs)
    issue = plan.issue
    if issue is None:
        assert current is not None  # the policy issues the first version
        return [
            f"credentials: no issuance (version {current.version} stays, expires "
            f"{current.expires_at.isoformat()}, next refresh {current.next_refresh_at.isoformat()})"
        ]
    (issuance,) = plan.changes
    line = f"credentials: would issue v{issue.version} ({issuance.why})"
    if current is not None:
        line += (
            f", replacing v{current.version} (fingerprint {current.fingerprint[:16]}, expires "
            f"{current.expires_at.isoformat()})"
        )
    return [line]


def nats_user(ctx: Context) -> NatsOutputs:
    user = ctx.input(NATS, NatsOutputs)
    if user is None:
        raise PermanentError(
            "credentials are issued for the workload's NATS user, which the Nats capability "
            "has not reported",
            reason="NoNatsUser",
        )
    return user


def policy_reason(ctx: Context) -> IssueReason | None:
    """Why the policy issues now, whatever is delivered (see `idp.credentials.issue_reason`)."""
    spec = nats_spec(ctx.workload)
    user = nats_user(ctx)
    current = ctx.own(CredentialsOutputs)
    public_key = user.public_key
    issued = None
    if current is not None:
        if public_key in current.replaced_keys:
            # The issuance's own rotation, which the Nats pass records next time: not a key
            # changed since, so the read-back after it finds the credential in sync.
            public_key = current.public_key
        issued = Issued(
            public_key=current.public_key,
            permissions_digest=current.permissions_digest,
            delivery_digest=current.delivery_digest,
            next_refresh_at=current.next_refresh_at,
        )
    return issue_reason(
        issued, public_key=public_key, key_reason=user.key_reason, spec=spec, now=ctx.now
    )


capability = Credentials()
