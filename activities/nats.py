"""Activities for a workload's NATS user in Synadia Cloud and the delivery of its credentials.

The contract the workflow relies on (implementation in progress): credentials exist only inside
`issue_credentials`, which downloads them and hands them straight to the delivery; everything
returned is metadata (ids, public keys, expiry, version, a fingerprint that reveals nothing).
"""

from datetime import datetime

from idp.models import Delivery, Model, Workload


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
