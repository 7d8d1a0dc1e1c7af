"""Response bodies shaped like the OpenAPI schemas (`*ViewResponse`, `*ListResponse`).

Every required property of the schema is present; optional ones appear where the emulator has a
meaningful value. The contract tests validate these against the spec.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from emulators.synadia import natsjwt
from emulators.synadia.controlplane import (
    NO_LIMIT,
    AccountRecord,
    ControlPlane,
    IssuanceRecord,
    RevocationRecord,
    SkGroupRecord,
    UserRecord,
)


def timestamp(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def items(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"items": entries}


def team_info(plane: ControlPlane) -> dict[str, Any]:
    return {"id": plane.state.team_id, "name": plane.state.team_name}


def team(plane: ControlPlane) -> dict[str, Any]:
    return {**team_info(plane), "created": timestamp(plane.state.team_created)}


def system_info(plane: ControlPlane) -> dict[str, Any]:
    return {
        "id": plane.state.system_id,
        "name": plane.state.system_name,
        "config_mode": False,
        "connection_type": "Direct",
        "is_tenant": False,
        "jetstream_enabled": False,
        "state": "Connected",
        "user_jwt_expires_in_secs": 0,
        "server_urls": plane.nats_url,
    }


def system(plane: ControlPlane) -> dict[str, Any]:
    state = plane.state
    # SystemViewResponse has no server_urls; only the SystemInfo embedded elsewhere does.
    info = {k: v for k, v in system_info(plane).items() if k != "server_urls"}
    return {
        **info,
        "created": timestamp(state.system_created),
        "has_managed_operator": True,
        "has_managed_system_account": True,
        "limited": False,
        "team": team_info(plane),
        "updates_available": {},
        "operator_jwt": state.operator_jwt,
        "operator_claims": natsjwt.decode(state.operator_jwt),
        "system_account_jwt": state.accounts[state.system_account_id].jwt,
    }


def _account_flags(account: AccountRecord) -> dict[str, Any]:
    return {
        "id": account.id,
        "name": account.name,
        "account_public_key": account.public_key,
        "auth_type": "jwt",
        "is_platform_account": False,
        "is_scp_account": False,
        "is_system_account": account.is_system,
        "user_jwt_expires_in_secs": account.user_jwt_expires_in_secs,
    }


def account(plane: ControlPlane, record: AccountRecord) -> dict[str, Any]:
    claims = natsjwt.decode(record.jwt)
    nats = claims.get("nats", {})
    settings: dict[str, Any] = {"limits": nats.get("limits", {})}
    if nats.get("revocations"):
        settings["revocations"] = nats["revocations"]
    return {
        **_account_flags(record),
        "claims": claims,
        "connectors": False,
        "created": timestamp(record.created),
        "jwt": record.jwt,
        "jwt_settings": settings,
        "jwt_sync_error": "",
        "jwt_sync_status": "Complete",
        "nsc_managed": False,
        "system": system_info(plane),
        "team": team_info(plane),
        "workloads": False,
    }


def sk_group(record: SkGroupRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "created": timestamp(record.created),
        "disabled": False,
        "is_scoped": False,
        "missing_seed": False,
        "programmatic": False,
    }


def _jwt_settings(user: UserRecord) -> dict[str, Any]:
    return {"subs": NO_LIMIT, "data": NO_LIMIT, "payload": NO_LIMIT, **user.jwt_settings}


def user(plane: ControlPlane, record: UserRecord) -> dict[str, Any]:
    acct = plane.state.accounts[record.account_id]
    return {
        "id": record.id,
        "name": record.name,
        "sk_group_id": record.sk_group_id,
        "user_public_key": record.public_key,
        "created": timestamp(record.created),
        "jwt": record.jwt,
        "claims": natsjwt.decode(record.jwt),
        "jwt_expires_in_secs": record.jwt_expires_in_secs,
        "jwt_expires_at_max": record.jwt_expires_at_max,
        "jwt_settings": _jwt_settings(record),
        "account": _account_flags(acct),
        "system": system_info(plane),
        "team": team_info(plane),
    }


def revocation(account_id: str, nkey: str, record: RevocationRecord) -> dict[str, Any]:
    body = {
        "account_id": account_id,
        "user_nkey_public": nkey,
        "before": record.before,
        "created": timestamp(record.created),
    }
    if record.account_sk_id:
        body["account_sk_id"] = record.account_sk_id
    return body


def issuance(plane: ControlPlane, user: UserRecord, record: IssuanceRecord) -> dict[str, Any]:
    """`NatsUserIssuanceInfo`: one set of claims and how often it was downloaded."""
    body: dict[str, Any] = {
        "id": record.id,
        "created": timestamp(record.created),
        "events_count": len(record.events),
        "iat_min": min(e.iat for e in record.events),
        "iat_max": max(e.iat for e in record.events),
        "iss": record.iss,
        "name": record.name,
        "status": plane.issuance_status(user, record),
        "sub": record.sub,
    }
    if all(e.exp for e in record.events):
        # Absent means unlimited: one download without exp never expires.
        body["exp_max"] = max(e.exp for e in record.events)
    return body
