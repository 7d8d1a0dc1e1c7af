"""When a credential may be issued: the whole policy, as pure functions of state and time.

This is the lesson of the old platform, which minted a token on every run: a reconcile pass issues
credentials only for a reason listed here, and each reason is recorded and reported.
"""

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from idp.models import NatsCredentials, NatsSpec


class IssueReason(StrEnum):
    INITIAL = "Initial"
    REFRESH = "Refresh"
    KEY_ROTATION = "KeyRotation"
    REQUESTED = "Requested"
    PERMISSIONS_CHANGED = "PermissionsChanged"
    DELIVERY_CHANGED = "DeliveryChanged"
    DELIVERY_DRIFT = "DeliveryDrift"
    USER_RECREATED = "UserRecreated"
    KEY_CHANGED = "KeyChangedOutOfBand"


@dataclass(frozen=True)
class Issued:
    """The facts about the current credential the policy needs."""

    public_key: str
    permissions_digest: str
    delivery_digest: str
    next_refresh_at: datetime


def refresh_before(credentials: NatsCredentials) -> timedelta:
    return credentials.refresh_before or credentials.ttl / 3


def next_refresh(credentials: NatsCredentials, issued_at: datetime) -> datetime:
    """Measured on the workflow's clock from issuance, so it holds under time skipping too."""
    return issued_at + credentials.ttl - refresh_before(credentials)


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def permissions_digest(spec: NatsSpec) -> str:
    """Changes when the permissions baked into a user JWT would change."""
    return _digest(spec.permissions.model_dump(mode="json"))


def delivery_digest(spec: NatsSpec) -> str:
    """Changes when the credentials must go somewhere else (another delivery or secret name)."""
    return _digest([spec.credentials.delivery, spec.credentials.secret_name])


def key_rotation_due(
    credentials: NatsCredentials, rotated_at: datetime | None, now: datetime
) -> bool:
    if credentials.key_rotation is None or rotated_at is None:
        return False
    return now >= rotated_at + credentials.key_rotation


def issue_reason(
    current: Issued | None,
    *,
    public_key: str,
    key_reason: IssueReason | None,
    spec: NatsSpec,
    now: datetime,
) -> IssueReason | None:
    """Why credentials must be issued now, or None: then the only thing left to do is check
    that what was delivered is still in place.

    `public_key` is the user's current key and `key_reason` why its owner made that key new (a
    rotation, a recreated user); a key that differs from the delivered one for no such reason
    changed out of band."""
    if current is None:
        return IssueReason.INITIAL
    if public_key != current.public_key:
        return key_reason or IssueReason.KEY_CHANGED
    if permissions_digest(spec) != current.permissions_digest:
        return IssueReason.PERMISSIONS_CHANGED
    if delivery_digest(spec) != current.delivery_digest:
        return IssueReason.DELIVERY_CHANGED
    if now >= current.next_refresh_at:
        return IssueReason.REFRESH
    return None
