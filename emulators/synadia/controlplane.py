"""The emulated control plane: one team, one system, its operator, accounts and NATS users.

State and rules, no HTTP: the app turns `ApiError` into a status code and the views module
shapes records into the OpenAPI response bodies. Everything is persisted in the state directory
after each change, so a restarted emulator keeps its operator and users: `state.json` holds the
whole state as of some moment, `journal.jsonl` each record changed since, one line per change.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import string
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from emulators.synadia import natsjwt
from emulators.synadia.bodies import (
    ApiError,
    CreateUserIn,
    RevocationIn,
    apply_settings_patch,
    check_name,
    check_settings,
    parse_body,
    settings_from_create,
)
from emulators.synadia.natsjwt import NKey

NO_LIMIT = -1
_ACCOUNT_LIMITS = {
    "subs": NO_LIMIT,
    "data": NO_LIMIT,
    "payload": NO_LIMIT,
    "imports": NO_LIMIT,
    "exports": NO_LIMIT,
    "wildcards": True,
    "conn": NO_LIMIT,
    "leaf": NO_LIMIT,
}
_ID_ALPHABET = string.ascii_letters + string.digits
# Changes the journal holds at least before they are folded into state.json; past this, as many as
# the state has users, so that a fold, which writes every user, comes once per that many changes.
JOURNAL_FOLD_AT = 1000


def new_id() -> str:
    # Synadia ids are 27-character KSUIDs; only their opacity matters to clients.
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(27))


def utcnow() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------- persisted records


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SkGroupRecord(_Record):
    id: str
    name: str
    seed: str
    created: datetime


class RevocationRecord(_Record):
    before: int
    created: datetime
    account_sk_id: str


class AccountRecord(_Record):
    id: str
    name: str
    seed: str
    is_system: bool = False
    created: datetime
    sk_groups: list[SkGroupRecord] = []
    revocations: dict[str, RevocationRecord] = {}
    user_jwt_expires_in_secs: int = 0
    jwt: str = ""

    @property
    def public_key(self) -> str:
        return NKey(self.seed).public


class IssuanceEvent(_Record):
    iat: int
    exp: int = 0
    jti: str
    type: str = "Download"


class IssuanceRecord(_Record):
    """Downloads of one set of claims (user, issuer, key, name, nats claims): the real service
    keys issuance records on a checksum of these and appends an event per download."""

    id: str
    checksum: str
    iss: str
    sub: str
    name: str
    created: datetime
    events: list[IssuanceEvent] = []


class UserRecord(_Record):
    id: str
    name: str
    account_id: str
    sk_group_id: str
    seed: str
    retired_public_keys: list[str] = []
    issuances: list[IssuanceRecord] = []
    jwt_settings: dict[str, Any] = {}
    jwt_expires_in_secs: int = 0
    jwt_expires_at_max: int = 0
    jwt: str = ""
    created: datetime

    @property
    def public_key(self) -> str:
        return NKey(self.seed).public


class PlaneState(_Record):
    team_id: str
    team_name: str
    team_created: datetime
    system_id: str
    system_name: str
    system_created: datetime
    operator_seed: str
    operator_sk_seed: str
    operator_jwt: str
    system_account_id: str
    app_account_id: str
    accounts: dict[str, AccountRecord]
    users: dict[str, UserRecord] = {}


class AccountSpec(BaseModel):
    """An application account to have, with its signing key groups (first one first)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    sk_groups: tuple[str, ...] = ("Default",)

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        try:
            check_name(value, "account name")
        except ApiError as error:
            raise ValueError(error.message) from None
        return value

    @field_validator("sk_groups")
    @classmethod
    def _named_groups(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError("needs at least one signing key group, each named once")
        for name in value:
            try:
                check_name(name, "signing key group name")
            except ApiError as error:
                raise ValueError(error.message) from None
        return value


# What a fresh emulator holds when nobody lists accounts: the one `idpctl dev` always had.
DEFAULT_ACCOUNTS = (AccountSpec(name="platform"),)


class Behaviour(BaseModel):
    """Choices the real service may make differently; tests flip them at run time."""

    model_config = ConfigDict(extra="forbid")

    revoke_on_rotate: bool = False
    revoke_on_delete: bool = False


# ---------------------------------------------------------------- the control plane


class ControlPlane:
    """State and rules of the emulated service; callers serialise access (one event loop)."""

    def __init__(
        self,
        state_dir: Path,
        behaviour: Behaviour | None = None,
        accounts: Sequence[AccountSpec] = DEFAULT_ACCOUNTS,
    ) -> None:
        """`accounts` are created where missing, in a new or a kept state; none is removed,
        since users may live in it."""
        if not accounts:
            raise ValueError("the emulator needs at least one application account")
        self.state_dir = state_dir
        self.behaviour = behaviour or Behaviour()
        self.nats_url = ""
        self.creds_issued: dict[str, int] = {}
        self._accounts_dirty = False
        self._path = state_dir / "state.json"
        self._journal = state_dir / "journal.jsonl"
        self._journaled = 0
        if self._path.exists():
            self.state = PlaneState.model_validate_json(self._path.read_text())
            self._replay()
        else:
            self.state = self._bootstrap(accounts[0])
        for spec in accounts:
            self._ensure_account(spec)
        self.save()

    # -- bootstrap and persistence

    def _bootstrap(self, first: AccountSpec) -> PlaneState:
        now = utcnow()
        operator, operator_sk = NKey.generate("operator"), NKey.generate("operator")
        system_account = AccountRecord(
            id=new_id(), name="SYS", seed=NKey.generate("account").seed, is_system=True, created=now
        )
        app_account = AccountRecord(
            id=new_id(), name=first.name, seed=NKey.generate("account").seed, created=now
        )
        operator_jwt = natsjwt.encode(
            {
                "iat": int(now.timestamp()),
                "name": "emulated-operator",
                "sub": operator.public,
                "nats": {
                    "signing_keys": [operator_sk.public],
                    "system_account": system_account.public_key,
                    "type": "operator",
                    "version": 2,
                },
            },
            operator,
        )
        state = PlaneState(
            team_id=new_id(),
            team_name="emulated-team",
            team_created=now,
            system_id=new_id(),
            system_name="emulated-system",
            system_created=now,
            operator_seed=operator.seed,
            operator_sk_seed=operator_sk.seed,
            operator_jwt=operator_jwt,
            system_account_id=system_account.id,
            app_account_id=app_account.id,
            accounts={system_account.id: system_account, app_account.id: app_account},
        )
        system_account.jwt = self._sign_account(system_account, NKey(state.operator_sk_seed))
        return state

    def application_account(self, name: str) -> AccountRecord | None:
        return next(
            (a for a in self.state.accounts.values() if a.name == name and not a.is_system),
            None,
        )

    def _ensure_account(self, spec: AccountSpec) -> None:
        """Create the account, or the groups it lacks, and sign its JWT again if it changed.
        Before nats-server starts, so its first configuration holds the JWT."""
        if spec.name == self.state.accounts[self.state.system_account_id].name:
            raise ValueError(f"account {spec.name!r} is the system account's name; choose another")
        now = utcnow()
        account = self.application_account(spec.name)
        if account is None:
            account = AccountRecord(
                id=new_id(), name=spec.name, seed=NKey.generate("account").seed, created=now
            )
            self.state.accounts[account.id] = account
        have = {group.name for group in account.sk_groups}
        missing = [name for name in spec.sk_groups if name not in have]
        for name in missing:
            seed = NKey.generate("account").seed
            account.sk_groups.append(SkGroupRecord(id=new_id(), name=name, seed=seed, created=now))
        if missing or not account.jwt:
            account.jwt = self._sign_account(account, NKey(self.state.operator_sk_seed))

    def save(self) -> None:
        """Write the whole state and empty the journal."""
        # Write-then-rename so a crash never leaves a half-written state file behind; one after
        # the rename replays a journal whose every record the state already holds, which is
        # harmless since each line replaces its record whole.
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(self.state.model_dump_json(indent=1))
        os.chmod(tmp, 0o600)
        tmp.replace(self._path)
        self._journal.unlink(missing_ok=True)
        self._journaled = 0

    def _keep(self, *records: UserRecord | AccountRecord, gone: str | None = None) -> None:
        """Journal the records a change left (and the user it deleted): writing the whole state
        after every change made onboarding N users cost O(N²), most of the emulator's CPU."""
        lines = [
            json.dumps({"kind": _kind(r), "record": r.model_dump(mode="json")}) for r in records
        ]
        if gone is not None:
            lines.append(json.dumps({"kind": "gone", "id": gone}))
        fd = os.open(self._journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as journal:
            journal.write("".join(line + "\n" for line in lines))
        self._journaled += len(lines)
        if self._journaled >= max(JOURNAL_FOLD_AT, len(self.state.users)):
            self.save()

    def _replay(self) -> None:
        """Apply the journal's changes to the state read from state.json, up to a line a crash
        cut short."""
        if not self._journal.exists():
            return
        for line in self._journal.read_text().splitlines():
            try:
                change = json.loads(line)
            except ValueError:
                break
            if change["kind"] == "user":
                user = UserRecord.model_validate(change["record"])
                self.state.users[user.id] = user
            elif change["kind"] == "account":
                account = AccountRecord.model_validate(change["record"])
                self.state.accounts[account.id] = account
            else:
                self.state.users.pop(change["id"], None)

    def take_accounts_dirty(self) -> bool:
        """True once after any account JWT changed, so the caller pushes it to nats-server."""
        dirty, self._accounts_dirty = self._accounts_dirty, False
        return dirty

    # -- JWTs

    @staticmethod
    def _sign_account(account: AccountRecord, operator_sk: NKey) -> str:
        nats: dict[str, Any] = {
            "limits": dict(_ACCOUNT_LIMITS),
            "default_permissions": {"pub": {}, "sub": {}},
            "type": "account",
            "version": 2,
        }
        if account.sk_groups:
            nats["signing_keys"] = [NKey(group.seed).public for group in account.sk_groups]
        if account.revocations:
            nats["revocations"] = {key: rec.before for key, rec in account.revocations.items()}
        claims = {
            "iat": int(time.time()),
            "name": account.name,
            "sub": account.public_key,
            "nats": nats,
        }
        return natsjwt.encode(claims, operator_sk)

    def _resign_account(self, account: AccountRecord) -> None:
        account.jwt = self._sign_account(account, NKey(self.state.operator_sk_seed))
        self._accounts_dirty = True

    def _mint_user_jwt(self, user: UserRecord) -> str:
        account = self.state.accounts[user.account_id]
        group = self._sk_group(account, user.sk_group_id)
        settings = user.jwt_settings
        nats: dict[str, Any] = {}
        for direction in ("pub", "sub"):
            # Like Go's omitempty: an empty list is left out, and to nats-server that means
            # "no restriction", exactly as an empty list in the real service's JWTs does.
            rules = {k: v for k, v in settings.get(direction, {}).items() if v}
            if rules:
                nats[direction] = rules
        if "resp" in settings:
            nats["resp"] = settings["resp"]
        for key in ("src", "times", "times_location"):
            if settings.get(key):
                nats[key] = settings[key]
        for limit in ("subs", "data", "payload"):
            nats[limit] = settings.get(limit, NO_LIMIT)
        for key in ("bearer_token", "allowed_connection_types", "tags"):
            if settings.get(key):
                nats[key] = settings[key]
        # Signed by a signing key, so the server must be told which account it speaks for.
        nats.update(issuer_account=account.public_key, type="user", version=2)
        now = int(time.time())
        claims: dict[str, Any] = {"iat": now, "name": user.name, "sub": user.public_key}
        ttl = user.jwt_expires_in_secs or account.user_jwt_expires_in_secs
        if ttl > 0:
            claims["exp"] = now + ttl
        claims["nats"] = nats
        return natsjwt.encode(claims, NKey(group.seed))

    # -- lookups

    def account(self, account_id: str) -> AccountRecord:
        account = self.state.accounts.get(account_id)
        if account is None:
            raise ApiError(404, f"account {account_id} not found")
        return account

    def accounts(self, system_id: str) -> list[AccountRecord]:
        self.require_system(system_id)
        return list(self.state.accounts.values())

    def require_team(self, team_id: str) -> None:
        if team_id != self.state.team_id:
            raise ApiError(404, f"team {team_id} not found")

    def require_system(self, system_id: str) -> None:
        if system_id != self.state.system_id:
            raise ApiError(404, f"system {system_id} not found")

    @staticmethod
    def _sk_group(account: AccountRecord, group_id: str) -> SkGroupRecord:
        for group in account.sk_groups:
            if group.id == group_id:
                return group
        raise ApiError(
            422, f"sk_group_id {group_id} is not a signing key group of account {account.id}"
        )

    def user(self, user_id: str) -> UserRecord:
        user = self.state.users.get(user_id)
        if user is None:
            raise ApiError(404, f"NATS user {user_id} not found")
        return user

    def users(self, account_id: str) -> list[UserRecord]:
        self.account(account_id)
        return [u for u in self.state.users.values() if u.account_id == account_id]

    # -- NATS users

    def create_user(self, account_id: str, payload: Any) -> UserRecord:
        account = self.account(account_id)
        body: CreateUserIn = parse_body(CreateUserIn, payload)
        check_name(body.name, "name")
        if account.is_system:
            raise ApiError(422, "NATS users of the system account are managed by Synadia")
        self._sk_group(account, body.sk_group_id)
        if (body.jwt_expires_in_secs or 0) < 0:
            raise ApiError(422, "jwt_expires_in_secs must not be negative")
        settings = settings_from_create(body.jwt_settings)
        check_settings(settings)
        # Names need not be unique: the published spec documents no 409, so a second create of
        # one name makes a second user, as the real service may.
        user = UserRecord(
            id=new_id(),
            name=body.name,
            account_id=account_id,
            sk_group_id=body.sk_group_id,
            seed=NKey.generate("user").seed,
            jwt_settings=settings,
            jwt_expires_in_secs=body.jwt_expires_in_secs or 0,
            created=utcnow(),
        )
        user.jwt = self._mint_user_jwt(user)
        self.state.users[user.id] = user
        self._keep(user)
        return user

    def patch_user(self, user_id: str, payload: Any) -> UserRecord:
        user = self.user(user_id)
        if not isinstance(payload, dict):
            raise ApiError(400, "invalid request body: expected a JSON object")
        updated = user.model_copy(deep=True)
        if payload.get("name") is not None:
            name = payload["name"]
            if not isinstance(name, str):
                raise ApiError(400, "invalid request body: name: expected a string")
            check_name(name, "name")
            updated.name = name
        if payload.get("jwt_expires_in_secs") is not None:
            ttl = payload["jwt_expires_in_secs"]
            if not isinstance(ttl, int) or isinstance(ttl, bool):
                raise ApiError(400, "invalid request body: jwt_expires_in_secs: not an integer")
            if ttl < 0:
                raise ApiError(422, "jwt_expires_in_secs must not be negative")
            updated.jwt_expires_in_secs = ttl
        patch = payload.get("jwt_settings")
        if patch is not None:
            if not isinstance(patch, dict):
                raise ApiError(400, "invalid request body: jwt_settings: expected an object")
            updated.jwt_settings = apply_settings_patch(user.jwt_settings, patch)
            check_settings(updated.jwt_settings)
        updated.jwt = self._mint_user_jwt(updated)
        self.state.users[user_id] = updated
        self._keep(updated)
        return updated

    def delete_user(self, user_id: str) -> None:
        user = self.user(user_id)
        account = self.account(user.account_id)
        if self.behaviour.revoke_on_delete:
            for key in [user.public_key, *user.retired_public_keys]:
                self._revoke(account, key, 0, user.sk_group_id)
        del self.state.users[user_id]
        self.creds_issued.pop(user_id, None)
        self._keep(account, gone=user_id)

    def issue_creds(self, user_id: str) -> str:
        """A freshly minted JWT with the user's current seed, as a .creds text."""
        user = self.user(user_id)
        user.jwt = self._mint_user_jwt(user)
        exp = natsjwt.decode(user.jwt).get("exp", 0)
        user.jwt_expires_at_max = max(user.jwt_expires_at_max, exp)
        self.creds_issued[user_id] = self.creds_issued.get(user_id, 0) + 1
        self._record_issuance(user)
        self._keep(user)
        return natsjwt.format_creds(user.jwt, user.seed)

    def _record_issuance(self, user: UserRecord) -> None:
        claims = natsjwt.decode(user.jwt)
        identity = [user.id, claims["iss"], claims["sub"], claims["name"], claims["nats"]]
        checksum = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        record = next((i for i in user.issuances if i.checksum == checksum), None)
        if record is None:
            record = IssuanceRecord(
                id=new_id(),
                checksum=checksum,
                iss=claims["iss"],
                sub=claims["sub"],
                name=claims["name"],
                created=utcnow(),
            )
            user.issuances.append(record)
        event = IssuanceEvent(iat=claims["iat"], exp=claims.get("exp", 0), jti=claims["jti"])
        record.events.append(event)

    def issuance_status(self, user: UserRecord, record: IssuanceRecord) -> str:
        """The spec's rule: Revoked when the key's revocation covers the latest download,
        Partially Revoked when it covers only earlier ones, Expired when every one expired."""
        revocation = self.state.accounts[user.account_id].revocations.get(record.sub)
        iats = [e.iat for e in record.events]
        if revocation is not None and max(iats) <= revocation.before:
            return "Revoked"
        if revocation is not None and min(iats) <= revocation.before:
            return "Partially Revoked"
        now = int(time.time())
        if all(e.exp and e.exp <= now for e in record.events):
            return "Expired"
        return "Active"

    def rotate_user(self, user_id: str) -> UserRecord:
        user = self.user(user_id)
        old_key = user.public_key
        user.retired_public_keys.append(old_key)
        user.seed = NKey.generate("user").seed
        user.jwt = self._mint_user_jwt(user)
        account = self.account(user.account_id)
        if self.behaviour.revoke_on_rotate:
            self._revoke(account, old_key, 0, user.sk_group_id)
        self._keep(user, account)
        return user

    # -- revocations

    def _revoke(self, account: AccountRecord, nkey: str, before: int, sk_group_id: str) -> bool:
        created = nkey not in account.revocations
        group = self._sk_group(account, sk_group_id) if account.sk_groups else None
        account.revocations[nkey] = RevocationRecord(
            # 0 asks for "now"; everything issued up to this second is refused.
            before=before or int(time.time()),
            created=utcnow(),
            account_sk_id=group.id if group else "",
        )
        self._resign_account(account)
        return created

    def revocation(self, account_id: str, nkey: str) -> RevocationRecord:
        record = self.account(account_id).revocations.get(nkey)
        if record is None:
            raise ApiError(404, f"no revocation for {nkey} in account {account_id}")
        return record

    def put_revocation(self, account_id: str, nkey: str, payload: Any) -> tuple[bool, int]:
        account = self.account(account_id)
        body: RevocationIn = parse_body(RevocationIn, payload)
        if not natsjwt.is_user_public_key(nkey):
            raise ApiError(422, f"{nkey!r} is not a NATS user public key")
        if body.before < 0:
            raise ApiError(422, "before must be a unix time in seconds, or 0 for now")
        group_id = account.sk_groups[0].id if account.sk_groups else ""
        created = self._revoke(account, nkey, body.before, group_id)
        self._keep(account)
        return created, account.revocations[nkey].before

    def delete_revocation(self, account_id: str, nkey: str) -> None:
        account = self.account(account_id)
        if nkey not in account.revocations:
            raise ApiError(404, f"no revocation for {nkey} in account {account_id}")
        del account.revocations[nkey]
        self._resign_account(account)
        self._keep(account)


def _kind(record: UserRecord | AccountRecord) -> str:
    return "user" if isinstance(record, UserRecord) else "account"
