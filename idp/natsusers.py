"""A workload's NATS user in Synadia Cloud: find or create it, keep its JWT settings as the spec
says, rotate and revoke its keys, delete it. Free of Temporal: the Nats capability
(capabilities/nats) observes, plans and applies with it, the Credentials capability downloads
with it.

Ownership is by name: every workload's user is called `<system>-<workload>` in its account, so a
retried create, or a workflow that lost the user's id, finds the same user instead of making a
second one. Finding it by name means listing every user of the account (the API has no name
filter, and documents no 409 for a taken name), so the caller asks for that look only when a
create may have gone through without its result being recorded; otherwise a create is one POST
whatever the account holds. Permission changes are PATCHed onto the existing user; a user is
never recreated to change what it may do (recreating would change its key and break every
connected client).

Permissions mapping (spec.nats.permissions -> jwt_settings). In a NATS user JWT an empty or
absent allow list means *no restriction*, which is the opposite of what a workload that lists no
subjects means. So, per direction (publish, subscribe):

- allow non-empty: `allow` = the listed subjects, `deny` = the listed exceptions (if any);
- allow empty: nothing may pass in that direction: `deny: [">"]` (and no allow). Deny entries
  given beside an empty allow list add nothing, so they are not sent.

To allow everything, a workload says so: `allow: [">"]`. `allowResponses: true` sets `resp`
(max 1 reply per request, the server's default expiry), which lets a user answer requests on
their reply subjects even where publish is denied; false sends no `resp`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from idp.errors import PermanentError, TransientError
from idp.models import Model, NatsPermissions, NatsSpec, SubjectRules, Workload
from idp.platform import SynadiaConfig
from idp.synadia import (
    Account,
    JwtSettings,
    NatsCreds,
    NatsUser,
    Permission,
    ResponsePermission,
    SynadiaClient,
    SynadiaNotFoundError,
)

log = logging.getLogger(__name__)

EVERYTHING = ">"
USER_NAME_MAX = 128


def user_name(workload: Workload) -> str:
    """The deterministic name of the workload's user (Synadia names allow up to 128)."""
    name = f"{workload.metadata.system}-{workload.metadata.name}"
    if len(name) > USER_NAME_MAX:
        raise PermanentError(
            f"NATS user name {name[:40]}... is longer than Synadia's {USER_NAME_MAX} characters; "
            "shorten the workload's system or name.",
            reason="NameTooLong",
        )
    return name


def account_ref(workload: Workload, config: SynadiaConfig) -> str:
    """The account (name or id) the workload's user belongs in."""
    nats = workload.spec.nats
    return (nats.account if nats and nats.account else None) or config.default_account


def _direction(rules: SubjectRules) -> Permission:
    if not rules.allow:
        return Permission(allow=None, deny=[EVERYTHING])
    return Permission(allow=sorted(set(rules.allow)), deny=sorted(set(rules.deny)) or None)


def desired_settings(permissions: NatsPermissions) -> JwtSettings:
    """The JWT settings the spec asks for (see the module docstring for the mapping)."""
    return JwtSettings(
        pub=_direction(permissions.publish),
        sub=_direction(permissions.subscribe),
        resp=ResponsePermission(max=1, ttl=0) if permissions.allow_responses else None,
    )


def _rules(permission: Permission | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if permission is None:
        return (), ()
    return tuple(sorted(set(permission.allow or ()))), tuple(sorted(set(permission.deny or ())))


def permission_drift(current: JwtSettings, desired: JwtSettings) -> list[str]:
    """Which managed parts of the user's settings differ: compared as sets, order ignored.

    Only pub, sub and resp are ours; limits (subs, data, payload) and the rest are left as the
    account or an operator set them."""
    drift = []
    if _rules(current.pub) != _rules(desired.pub):
        drift.append("permissions.publish")
    if _rules(current.sub) != _rules(desired.sub):
        drift.append("permissions.subscribe")
    now = (current.resp.max, current.resp.ttl) if current.resp else None
    want = (desired.resp.max, desired.resp.ttl) if desired.resp else None
    if now != want:
        drift.append("permissions.allowResponses")
    return drift


@dataclass
class Directory:
    """Resolves the configured system and account names to ids, once per worker: they do not
    change under a running platform, and resolving costs a listing per level."""

    config: SynadiaConfig
    _system_id: str | None = None
    _accounts: dict[str, Account] = field(default_factory=dict)
    _groups: dict[str, str] = field(default_factory=dict)

    async def system_id(self, client: SynadiaClient) -> str:
        if self._system_id is None:
            system = await client.find_system(self.config.system)
            if system is None:
                raise PermanentError(
                    f"Synadia system {self.config.system!r} (synadia.system in the platform "
                    "configuration) does not exist or the token cannot see it.",
                    reason="UnknownSystem",
                )
            self._system_id = system.id
        return self._system_id

    async def account(self, client: SynadiaClient, ref: str) -> Account:
        cached = self._accounts.get(ref)
        if cached is not None:
            return cached
        account = await client.find_account(await self.system_id(client), ref)
        if account is None:
            raise PermanentError(
                f"Synadia account {ref!r} does not exist in system {self.config.system!r}; "
                + self.config.missing_account_advice(ref),
                reason="UnknownAccount",
            )
        if account.is_system_account:
            raise PermanentError(
                f"Synadia account {ref!r} is the system account, which holds no workload users; "
                "choose an application account.",
                reason="SystemAccount",
            )
        self._accounts[ref] = account
        return account

    def forget(self) -> None:
        """Resolve names again next time: an account we knew by id answered 404."""
        self._system_id = None
        self._accounts.clear()
        self._groups.clear()

    async def signing_key_group(self, client: SynadiaClient, account: Account) -> str:
        cached = self._groups.get(account.id)
        if cached is not None:
            return cached
        groups = [g for g in await client.list_sk_groups(account.id) if not g.disabled]
        wanted = self.config.signing_key_group
        chosen = [g for g in groups if g.name == wanted or g.id == wanted] if wanted else groups
        if not chosen:
            which = f"named {wanted!r} " if wanted else ""
            raise PermanentError(
                f"Synadia account {account.name!r} has no enabled signing key group {which}to "
                "sign user JWTs with; add one (or correct synadia.signingKeyGroup).",
                reason="NoSigningKeyGroup",
            )
        self._groups[account.id] = chosen[0].id
        return chosen[0].id


class UserView(Model):
    """A user as Synadia has it, without its JWT: what a pass observes and records."""

    id: str
    name: str
    account_id: str
    account_name: str
    public_key: str
    jwt_expires_in_secs: int
    jwt_settings: JwtSettings

    @classmethod
    def of(cls, user: NatsUser) -> UserView:
        return cls(
            id=user.id,
            name=user.name,
            account_id=user.account.id,
            account_name=user.account.name,
            public_key=user.user_public_key,
            jwt_expires_in_secs=user.jwt_expires_in_secs,
            jwt_settings=user.jwt_settings,
        )


def nats_spec(workload: Workload) -> NatsSpec:
    nats = workload.spec.nats
    if nats is None:
        raise PermanentError(
            f"Workload {workload.metadata.system}/{workload.metadata.name} has no spec.nats.",
            reason="NoNats",
        )
    return nats


def drift(user: UserView, workload: Workload) -> list[str]:
    """What of the user differs from what the spec asks for: its managed permissions, its JWT
    lifetime, its name (renamed in the console, say)."""
    nats = nats_spec(workload)
    drifted = permission_drift(user.jwt_settings, desired_settings(nats.permissions))
    if user.jwt_expires_in_secs != _ttl(nats):
        drifted.append("credentials.ttl")
    if user.name != user_name(workload):
        drifted.append("name")
    return drifted


def asked_digest(workload: Workload) -> str:
    """Of what the spec asks of the user (what `drift` compares): so a pass can tell a spec
    change from someone else's edit."""
    nats = nats_spec(workload)
    asked = [desired_settings(nats.permissions), _ttl(nats), user_name(workload)]
    return hashlib.sha256(json.dumps(asked, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_account(user: UserView, ref: str) -> None:
    """Refuses a user that is not in the account `ref` (an id or a name) the spec asks for."""
    if ref not in (user.account_id, user.account_name):
        raise PermanentError(
            f"NATS user {user.name} is in account {user.account_name!r}, but the workload now "
            f"asks for account {ref!r}; a user cannot move between accounts: delete the workload "
            "and apply it again to move it.",
            reason="AccountChanged",
        )


def _ttl(nats: NatsSpec) -> int:
    return int(nats.credentials.ttl.total_seconds())


async def create_user(client: SynadiaClient, directory: Directory, workload: Workload) -> UserView:
    """Create the workload's user in its account, with the settings the spec asks for."""
    nats = nats_spec(workload)
    name = user_name(workload)
    try:
        account = await directory.account(client, account_ref(workload, directory.config))
        group = await directory.signing_key_group(client, account)
        created = await client.create_nats_user(
            account.id,
            name,
            sk_group_id=group,
            jwt_expires_in_secs=_ttl(nats),
            jwt_settings=desired_settings(nats.permissions),
        )
    except SynadiaNotFoundError:
        directory.forget()
        raise
    log.info("created NATS user %s (%s) in account %s", name, created.id, account.name)
    user = UserView.of(created)
    # A 409 answer returns the user a lost race or an earlier try made, with its own settings.
    drifted = drift(user, workload)
    return await repair_user(client, user, workload, drifted) if drifted else user


async def repair_user(
    client: SynadiaClient, user: UserView, workload: Workload, drifted: list[str]
) -> UserView:
    """PATCH back the parts that drifted (as `drift` names them), and only those."""
    nats = nats_spec(workload)
    name = user_name(workload)
    permissions = any(part.startswith("permissions.") for part in drifted)
    patched = await client.update_nats_user(
        user.id,
        name=name if "name" in drifted else None,
        jwt_expires_in_secs=_ttl(nats) if "credentials.ttl" in drifted else None,
        jwt_settings=desired_settings(nats.permissions) if permissions else None,
    )
    log.info("NATS user %s: put back %s", name, ", ".join(drifted))
    return UserView.of(patched)


async def find_user(
    client: SynadiaClient,
    directory: Directory,
    workload: Workload,
    user_id: str | None,
    *,
    by_name: bool,
) -> NatsUser | None:
    """The workload's user by id (one GET), else, when `by_name`, by its deterministic name (a
    listing of the whole account); None when there is none, or none was looked for by name.

    The account is resolved either way (listed once per worker), so that one the spec names
    wrongly is refused here, where `idpctl diff` sees it too, and not only when creating."""
    if user_id:
        user = await client.get_nats_user(user_id)
        if user is not None:
            return user
    try:
        account = await directory.account(client, account_ref(workload, directory.config))
        return await client.find_nats_user(account.id, user_name(workload)) if by_name else None
    except SynadiaNotFoundError:
        directory.forget()
        raise


async def revoke_keys(
    client: SynadiaClient, account_id: str, public_keys: list[str], *, now: datetime | None = None
) -> None:
    """Refuse every JWT issued up to now for each key, live connections included.

    PUT is idempotent: a retry moves `before` a few seconds on, which for a retired key (no JWT
    is issued for it any more) refuses nothing new."""
    before = int(now.timestamp()) if now else int(time.time())
    for key in dict.fromkeys(public_keys):
        await client.revoke_nats_user_key(account_id, key, before=before)
        log.info("revoked NATS user key %s in account %s", key, account_id)


# Issuance statuses whose JWTs nats-server still accepts (some of them, for a partial revocation).
LIVE_ISSUANCE = frozenset({"Active", "Partially Revoked"})


@dataclass(frozen=True)
class DeliveredKey:
    """The key of the credential the workload holds now (None: it holds none); `known` is
    False when what is delivered could not be read."""

    known: bool
    public_key: str | None = None


@dataclass
class Download:
    """Fresh creds, and what happened to earlier keys."""

    creds: NatsCreds
    kept: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)


async def download_on_unused_key(
    client: SynadiaClient,
    user: NatsUser,
    delivered: Callable[[], Awaitable[DeliveredKey]],
    *,
    tries: int = 3,
) -> Download:
    """Download creds on a key nothing was downloaded on before.

    NATS revokes by key: a revocation refuses every JWT of one user key issued at or before a
    time, so a JWT can be revoked without its siblings only if it is alone on its key. Giving
    each download a key of its own makes a download that never reached the workload (the
    worker died before delivering it, the delivery failed, the answer was lost) revocable by
    its key, while the delivered credential, on another key, stays valid. Synadia's issuance
    history (which survives any crash of ours) says what was downloaded on the current key:

    - nothing: download on it (a new user, a key the workflow just rotated to, an earlier try
      that died before its download);
    - the delivered credential: rotate and leave that key valid, since the workload runs on it
      until the new credential reaches it (a refresh never revoked it either);
    - only credentials nobody holds: revoke the key, then rotate. In this order, because a
      crash between the two leaves a revoked key current, which the next try rotates away
      from; the other order would leave a valid key that no longer is the user's, found by
      nobody;
    - and when what is delivered cannot be read: rotate and leave the key valid, since it may
      be what the workload runs on.

    A failed download is not retried blindly: it may have issued anyway, and the next round
    sees that in the history.
    """
    kept: list[str] = []
    revoked: list[str] = []
    attempt = 1
    while True:
        user = await _unused_key(client, user, delivered, kept, revoked)
        try:
            return Download(await client.download_creds(user.id), kept, revoked)
        except TransientError:
            if attempt >= tries:
                raise
        await asyncio.sleep(client.backoff(attempt))
        attempt += 1


async def _unused_key(
    client: SynadiaClient,
    user: NatsUser,
    delivered: Callable[[], Awaitable[DeliveredKey]],
    kept: list[str],
    revoked: list[str],
) -> NatsUser:
    key = user.user_public_key
    issued = [i for i in await client.list_nats_user_issuances(user.id) if i.sub == key]
    if not issued:
        return user
    holder = await delivered()
    if holder.known and holder.public_key != key:
        if any(i.status in LIVE_ISSUANCE for i in issued):
            await client.revoke_nats_user_key(user.account.id, key)
            revoked.append(key)
            log.info(
                "revoked NATS user key %s of %s: it holds only credentials that were never "
                "delivered",
                key,
                user.name,
            )
    else:
        kept.append(key)
        if not holder.known:
            log.warning(
                "NATS user key %s of %s may hold the delivered credential (what is delivered "
                "could not be read), so it is left valid; revoke it once the workload runs on "
                "the new one if it held a lost download",
                key,
                user.name,
            )
    rotated = await client.rotate_nats_user(user.id)
    log.info(
        "NATS user %s: key %s for this issuance, was %s", user.name, rotated.user_public_key, key
    )
    return rotated


async def live_keys(client: SynadiaClient, user_id: str) -> list[str]:
    """Every key of the user that some unexpired, unrevoked JWT was issued for."""
    issuances = await client.list_nats_user_issuances(user_id)
    return list(dict.fromkeys(i.sub for i in issuances if i.status in LIVE_ISSUANCE))
