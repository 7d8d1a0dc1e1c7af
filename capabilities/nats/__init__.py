"""The Nats capability: a workload's NATS user in Synadia Cloud, and the lifecycle of its keys.

Its pure half, which the workflow engine runs. The user is found by the id this capability
recorded, else by its deterministic name (idp/natsusers.py) when a create may have gone through
unrecorded (`actions.unrecorded`: a retry, or `ctx.unsettled`); the plan, from what Synadia
holds, the spec, the capability's memory and the clock, is what a pass does:

- create the user when there is none ("recreate" when it vanished after this capability had
  made it, which Credentials answers with UserRecreated);
- PATCH back its permissions, JWT lifetime or name when they drifted;
- rotate its key when `keyRotation` says so or a `rotate_credentials` request asks; the key it
  replaces stays valid for `rotationGrace` (none with `revokeOld: now`), so pods pick up the
  credentials Credentials issues on the new key first;
- revoke the replaced keys whose grace is over.

The outputs name the user and its current key, and why that key is new when this capability
made it so: Credentials reads that to say why it issues. The worker's half is in `actions`.

Its fingerprint (`FleetKey`, `user_digest`) is the user, keyed by account and id, and what of it
a pass repairs or reacts to; the fleet read finds it for every workload of an account in the one
listing of that account's users.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from capabilities import ASSIGNED_ON_APPLY
from idp.capability import Actions, Capability, Change, Context, Fingerprint, Plan, digest, dump
from idp.credentials import IssueReason, key_rotation_due
from idp.durations import format_duration
from idp.models import Model, NatsSpec, Workload
from idp.natsusers import (
    EVERYTHING,
    UserView,
    asked_digest,
    check_account,
    desired_settings,
    drift,
    nats_spec,
    user_name,
)
from idp.platform import SynadiaConfig
from idp.synadia import Permission, ResponsePermission

ROTATE = "rotate_credentials"


class RotateCredentials(Model):
    """An open `rotate_credentials` request (workflows/messages.py RotateRequest)."""

    reason: str
    revoke_old: Literal["now", "after-grace"] = "after-grace"


class Revocation(Model):
    """A replaced key, revoked once the workload had time to pick up the new one."""

    public_key: str
    revoke_at: datetime


class NatsMemory(Model):
    asked: str | None = Field(
        None, description="idp.natsusers.asked_digest of the spec the user was last made to match."
    )
    key_rotated_at: datetime | None = Field(
        None, description="When the key was last rotated; the first pass's time before that."
    )
    revocations: list[Revocation] = []


class NatsOutputs(Model):
    user_id: str
    account_id: str
    name: str
    public_key: str
    key_reason: IssueReason | None = Field(
        None,
        description="Why `public_key` is new, when this capability made it so: KeyRotation, "
        "Requested or UserRecreated.",
    )


class NatsObservation(Model):
    user: UserView | None = Field(
        description="None: Synadia has no user of the recorded id, nor of the workload's name "
        "where that was looked up (only when one may exist unrecorded)."
    )
    account: str = Field(
        description="The account the spec puts the user in (spec.nats.account, else the "
        "platform's synadia.defaultAccount), by id or name."
    )


class Rotation(Model):
    reason: Literal[IssueReason.KEY_ROTATION, IssueReason.REQUESTED]
    why: str
    revoke_at: datetime = Field(description="When the key it replaces is revoked.")


class NatsPlan(Plan):
    user: Literal["create", "recreate"] | None = None
    repair: list[str] = Field(
        [], description="What differs from the spec, as idp.natsusers.drift names it."
    )
    drifted: bool = Field(False, description="Whether someone else made it differ.")
    rotation: Rotation | None = None
    revoke: list[str] = Field([], description="Replaced keys whose grace is over.")
    key_reason: IssueReason | None = Field(
        None, description="What the outputs say of the key the user has after this plan."
    )


@dataclass(frozen=True)
class FleetKey:
    """What a workload's fingerprint is keyed by: its user, by the account whose listing the
    fleet read finds it in and its id there (`<account id>/<user id>`).

    By id, not by name: the name is something a pass repairs, and a user deleted and made again
    by hand under the same name is another user (another id, another key), which the workload's
    own pass must see (it would recreate its own)."""

    account_id: str
    user_id: str

    SEPARATOR: ClassVar[str] = "/"
    # Synadia's ids are opaque (27-character KSUIDs today); one that could not be parsed back,
    # or that a fleet entry could not hold, gives no key, never a wrong one.
    _PART: ClassVar[re.Pattern[str]] = re.compile(r"[^\s/]+")
    _MAX: ClassVar[int] = 400

    @property
    def text(self) -> str:
        return f"{self.account_id}{self.SEPARATOR}{self.user_id}"

    @classmethod
    def of(cls, user: UserView) -> "FleetKey | None":
        """None when the ids cannot make a key: the workload then keeps its own drift checks."""
        key = cls(user.account_id, user.id)
        return key if cls.parse(key.text) == key else None

    @classmethod
    def parse(cls, key: str) -> "FleetKey | None":
        """None for a key of another form (a newer worker's, say)."""
        match key.split(cls.SEPARATOR):
            case [account_id, user_id] if len(key) <= cls._MAX and all(
                cls._PART.fullmatch(part) for part in (account_id, user_id)
            ):
                return cls(account_id, user_id)
        return None


def user_fingerprint(user: UserView) -> Fingerprint | None:
    """What the fleet read must find of `user`; None when it cannot key it."""
    key = FleetKey.of(user)
    return None if key is None else Fingerprint(key=key.text, digest=user_digest(user))


def user_digest(user: UserView) -> str:
    """The digest of a fingerprint, which the workload's observe (one GET of the user) and the
    fleet read (the listing of its account, whose items are the same NatsUserViewResponse) both
    compute from the user as `UserView.of` reads it, so that the same user gives the same digest.

    It covers what the plan reads of the user and a pass repairs or reacts to: the name, the JWT
    lifetime and the managed permissions (`drift`), the account (`check_account`, by id or by
    name), and the current public key, on which Credentials issues when it changed out of band.
    The permissions are taken as Synadia gives them, not as sets the way `drift` compares them:
    a finer digest can only wake a workload for nothing (someone re-ordered a list: one pass),
    never miss a drift. Left out: the limits and other JWT settings, which are the account's or
    an operator's to set and no pass touches; and the JWT, a credential for a bearer user."""
    settings = user.jwt_settings
    return digest(
        {
            "name": user.name,
            "account": [user.account_id, user.account_name],
            "public_key": user.public_key,
            "jwt_expires_in_secs": user.jwt_expires_in_secs,
            "permissions": settings.model_dump(mode="json", include={"pub", "sub", "resp"}),
        }
    )


class Nats(Capability[NatsObservation, NatsPlan]):
    name = "Nats"
    spec_field = "nats"
    spec_model = NatsSpec
    settings_field = "synadia"
    settings_model = SynadiaConfig
    observation_model = NatsObservation
    plan_model = NatsPlan
    outputs_model = NatsOutputs
    requests = {ROTATE: "has no NATS user, so no credentials to rotate"}
    summary = "NATS user"

    def plan(self, ctx: Context, observation: NatsObservation) -> NatsPlan:
        workload = ctx.workload
        name = user_name(workload)
        subject = f"NATS user {name}"
        changes: list[Change] = []
        user = observation.user
        create: Literal["create", "recreate"] | None = None
        repair: list[str] = []
        drifted = False
        if user is None:
            create = "create" if ctx.outputs is None else "recreate"
            why = "it does not exist" if create == "create" else "it vanished"
            changes.append(Change(action="create", subject=subject, why=why))
        else:
            check_account(user, observation.account)
            repair = drift(user, workload)
            if repair:
                asked = ctx.remembered(NatsMemory).asked
                drifted = asked in (None, asked_digest(workload))
                if asked is None:
                    why = f"{', '.join(repair)} differ from the spec"
                elif drifted:
                    why = f"{', '.join(repair)} drifted"
                else:
                    why = f"the spec changed {', '.join(repair)}"
                changes.append(Change(action="update", subject=subject, why=why))
        rotation = _rotation(ctx, nats_spec(workload))
        if rotation is not None:
            why = f"{rotation.why}; old key revoked at {rotation.revoke_at}"
            changes.append(Change(action="rotate", subject=f"key of {subject}", why=why))
        revoke = [
            r.public_key for r in ctx.remembered(NatsMemory).revocations if r.revoke_at <= ctx.now
        ]
        changes += [
            Change(action="revoke", subject=f"NATS key {key}", why="its grace period is over")
            for key in revoke
        ]
        return NatsPlan(
            changes=changes,
            user=create,
            repair=repair,
            drifted=drifted,
            rotation=rotation,
            revoke=revoke,
            key_reason=_key_reason(ctx.own(NatsOutputs), user, create, rotation),
        )

    def holds(self, ctx: Context) -> bool:
        """Also when unsettled: an apply that ended without a report may have made the user,
        which a delete must then look up by name and remove."""
        return super().holds(ctx) or ctx.unsettled

    def expect(self, ctx: Context, plan: NatsPlan, observation: NatsObservation) -> dict[str, Any]:
        """The user as the apply will report it. What Synadia draws, a new user's id and
        account id and any new key, is ASSIGNED_ON_APPLY: Credentials needs only to see that
        the key changes, and why (`key_reason`), to plan the issuance that follows."""
        user = observation.user
        if plan.user is not None or user is None:
            user_id = account_id = public_key = ASSIGNED_ON_APPLY
        else:
            user_id, account_id = user.id, user.account_id
            public_key = ASSIGNED_ON_APPLY if plan.rotation else user.public_key
        outputs = NatsOutputs(
            user_id=user_id,
            account_id=account_id,
            # Its name is the one a repair puts back, when it drifted.
            name=user_name(ctx.workload),
            public_key=public_key,
            key_reason=plan.key_reason,
        )
        return dump(outputs)

    def fingerprint(self, ctx: Context, observation: NatsObservation) -> Fingerprint | None:
        """Only when the user exists: the fleet read leaves out a key whose user it does not
        find. What else the plan depends on wakes the workload by itself: the clock (a rotation
        or revocation due) through `deadline`, a spec change or a rotate request as a message."""
        return None if observation.user is None else user_fingerprint(observation.user)

    def deadline(self, ctx: Context) -> datetime | None:
        """The next revocation or scheduled rotation."""
        memory = ctx.remembered(NatsMemory)
        deadlines = [r.revoke_at for r in memory.revocations]
        spec = self.section(ctx.workload)
        if spec is not None and spec.credentials.key_rotation and memory.key_rotated_at:
            deadlines.append(memory.key_rotated_at + spec.credentials.key_rotation)
        return min(deadlines, default=None)

    def describe(self, outputs: Mapping[str, Any]) -> list[str]:
        user = NatsOutputs.model_validate(outputs)
        return [f"nats user:   {user.name} ({user.user_id}), key {user.public_key}"]

    def port_properties(self, outputs: Mapping[str, Any] | None) -> dict[str, Any]:
        user = None if outputs is None else NatsOutputs.model_validate(outputs)
        return {"natsUser": user.name if user else None}

    def port_schema(self) -> dict[str, dict[str, Any]]:
        return {"natsUser": {"type": "string", "title": "NATS user"}}

    def actions(
        self, platform: Any, settings: SynadiaConfig | None, cache_dir: Path
    ) -> Actions[NatsObservation, NatsPlan]:
        # Imported here: the workflow imports this module, and the actions hold the clients.
        from capabilities.nats.actions import NatsActions

        return NatsActions(settings)


def _rotation(ctx: Context, spec: NatsSpec) -> Rotation | None:
    raw = ctx.requests.get(ROTATE)
    grace = spec.credentials.rotation_grace
    if raw is not None:
        request = RotateCredentials.model_validate(raw)
        # A leak: the old key must stop working at once.
        revoke_at = ctx.now + (timedelta(0) if request.revoke_old == "now" else grace)
        why = f"requested: {request.reason}"
        return Rotation(reason=IssueReason.REQUESTED, why=why, revoke_at=revoke_at)
    if key_rotation_due(spec.credentials, ctx.remembered(NatsMemory).key_rotated_at, ctx.now):
        why = "scheduled key rotation"
        return Rotation(reason=IssueReason.KEY_ROTATION, why=why, revoke_at=ctx.now + grace)
    return None


def explain_nats(workload: Workload, plan: NatsPlan, observation: NatsObservation) -> list[str]:
    """What `idpctl diff` shows beneath the plan: what a new user gets, each part a repair
    puts back as it is → as the spec says, and the key a rotation replaces."""
    nats = nats_spec(workload)
    wanted = desired_settings(nats.permissions)
    ttl = format_duration(nats.credentials.ttl)
    user = observation.user
    if plan.user is not None or user is None:
        return [
            f"publish: {_subjects(wanted.pub)}",
            f"subscribe: {_subjects(wanted.sub)}",
            f"allow responses: {_responses(wanted.resp)}",
            f"JWT lifetime: {ttl}",
        ]
    shown: dict[str, tuple[str, str]] = {
        "permissions.publish": (_subjects(user.jwt_settings.pub), _subjects(wanted.pub)),
        "permissions.subscribe": (_subjects(user.jwt_settings.sub), _subjects(wanted.sub)),
        "permissions.allowResponses": (
            _responses(user.jwt_settings.resp),
            _responses(wanted.resp),
        ),
        "credentials.ttl": (format_duration(timedelta(seconds=user.jwt_expires_in_secs)), ttl),
        "name": (user.name, user_name(workload)),
    }
    lines = [f"{part}: {shown[part][0]} → {shown[part][1]}" for part in plan.repair]
    if plan.rotation is not None:
        lines.append(f"key: {user.public_key} → a new key, drawn by Synadia")
    return lines


def _subjects(permission: Permission | None) -> str:
    """One direction of a user JWT's permissions, as a person reads it: an empty allow list
    lets everything through, so the spec's "nothing" is a deny of everything."""
    allow = sorted(set(permission.allow or [])) if permission else []
    deny = sorted(set(permission.deny or [])) if permission else []
    if EVERYTHING in deny:
        return "nothing"
    allowed = ", ".join(allow) or "everything"
    return f"{allowed} except {', '.join(deny)}" if deny else allowed


def _responses(permission: ResponsePermission | None) -> str:
    if permission is None:
        return "false"
    return "true" if permission == ResponsePermission() else permission.model_dump_json()


def _key_reason(
    known: NatsOutputs | None,
    user: UserView | None,
    create: Literal["create", "recreate"] | None,
    rotation: Rotation | None,
) -> IssueReason | None:
    if rotation is not None:
        return rotation.reason
    if create is not None:
        return IssueReason.USER_RECREATED if create == "recreate" else None
    # The same key keeps its reason; one that changed without us (out of band, or by a download
    # on a key of its own) has none.
    if known is not None and user is not None and known.public_key == user.public_key:
        return known.key_reason
    return None


capability = Nats()
