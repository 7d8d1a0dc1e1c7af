"""The Nats capability: a workload's NATS user in Synadia Cloud, and the lifecycle of its keys.

Its pure half, which the workflow engine runs. The user is found by the id this capability
recorded, else by its deterministic name (idp/natsusers.py), and the plan, from what Synadia
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
"""

from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from idp.capability import Actions, Capability, Change, Context, Plan
from idp.credentials import IssueReason, key_rotation_due
from idp.models import Model, NatsSpec
from idp.natsusers import UserView, check_account, drift, nats_spec, user_name
from idp.platform import SynadiaConfig

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
    user: UserView | None = Field(description="None: Synadia has no such user, by id or name.")
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
    repair: list[str] = Field([], description="What drifted, as idp.natsusers.drift names it.")
    rotation: Rotation | None = None
    revoke: list[str] = Field([], description="Replaced keys whose grace is over.")
    key_reason: IssueReason | None = Field(
        None, description="What the outputs say of the key the user has after this plan."
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
        if user is None:
            create = "create" if ctx.outputs is None else "recreate"
            why = "it does not exist" if create == "create" else "it vanished"
            changes.append(Change(action="create", subject=subject, why=why))
        else:
            check_account(user, observation.account)
            repair = drift(user, workload)
            if repair:
                why = f"{', '.join(repair)} drifted"
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
            rotation=rotation,
            revoke=revoke,
            key_reason=_key_reason(ctx.own(NatsOutputs), user, create, rotation),
        )

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
