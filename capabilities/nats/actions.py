"""The Nats capability's worker half: observe, apply and tear down a workload's NATS user.

Calls per steady-state pass (the user's id known, nothing drifted or due): one Synadia GET in
observe, none in apply. Per create: no call in observe and one POST in apply, whatever the account
holds, once the worker has resolved the system, the account and its signing key group (a few
listings, the first time). The account's users are listed, to find the user by name, only when a
create may have gone through unrecorded (`unrecorded`). `Synadia` is also how Credentials reaches
Synadia.

Calls per fleet sweep (`fleet_observe`), whatever the number of workloads: one GET of the users of
each account that holds a watched workload's user (`GET /accounts/{accountId}/nats-users`), so A
calls for A accounts where the workloads' own passes make one GET each. The published API neither
pages nor filters that listing: each answer carries every user of the account, others' included,
with its JWT, so its size grows with the account (about 2 KB a user from the emulator) while the
calls do not.
"""

import asyncio
import functools
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from temporalio import activity

from capabilities.nats import (
    ROTATE,
    FleetKey,
    NatsMemory,
    NatsObservation,
    NatsOutputs,
    NatsPlan,
    Revocation,
    explain_nats,
    user_digest,
    user_fingerprint,
)
from idp.capability import Actions, Context, Outcome, Report, dump
from idp.credentials import IssueReason
from idp.errors import PermanentError
from idp.natsusers import (
    Directory,
    UserView,
    account_ref,
    asked_digest,
    create_user,
    find_user,
    live_keys,
    repair_user,
    revoke_keys,
)
from idp.platform import SynadiaConfig
from idp.synadia import NatsUser, SynadiaApiError, SynadiaClient, SynadiaNotFoundError

log = logging.getLogger(__name__)

# Account listings the fleet read makes at once: a platform has few accounts, but one that has
# many must not open a connection for each.
_LISTINGS_AT_ONCE = 8


class Synadia:
    """The worker's way into Synadia: the platform's `synadia` section, the API token from the
    environment, the system and account names it resolved, and the client it calls through."""

    def __init__(self, config: SynadiaConfig | None) -> None:
        self.configured = config is not None
        self._directory = Directory(config) if config else None

    @property
    def directory(self) -> Directory:
        if self._directory is None:
            raise PermanentError(
                "the platform configuration has no synadia section, so workloads get no NATS "
                "user; add one or remove spec.nats",
                reason="NoSynadia",
            )
        return self._directory

    @asynccontextmanager
    async def client(self) -> AsyncIterator[SynadiaClient]:
        config = self.directory.config
        token = os.environ.get(config.token_env, "")
        if not token:
            raise PermanentError(
                f"the Synadia API token is not set: the worker needs it in ${config.token_env} "
                "(synadia.tokenEnv)",
                reason="NoSynadiaToken",
            )
        try:
            yield _shared_client(asyncio.get_running_loop(), config.url, token)
        except SynadiaApiError as error:
            if error.status != 401:
                raise
            # The token is the operator's to fix, and the worker reads it only at start.
            raise PermanentError(
                f"{error} Synadia refused the API token in ${config.token_env} "
                "(synadia.tokenEnv): the worker reads it when it starts, so restart it after "
                "changing the variable.",
                reason=error.reason,
            ) from None


@functools.lru_cache(maxsize=1)
def _shared_client(loop: asyncio.AbstractEventLoop, url: str, token: str) -> SynadiaClient:
    """One client, so one pool of kept-alive connections, for every activity of the worker that
    calls Synadia, Nats's and Credentials' alike (each has a `Synadia` of its own). A client per
    activity paid for a new connection each time (a TLS handshake, against Synadia Cloud), and
    making it was 2% of the worker's Python time onboarding (httpx reads the proxy settings from
    the environment). Another event loop, URL or token gets a new one: a connection belongs to
    the loop that opened it."""
    return SynadiaClient(url, token)


def unrecorded(ctx: Context) -> bool:
    """Whether a user this capability made may exist without the workflow having recorded it,
    so that it must be looked up by name (a listing of the account) before one is made: this
    activity is a retry (its first try may have died, or timed out, after the POST), or the
    engine says the capability's last pass failed in a way a retry may fix (`ctx.unsettled`).

    Otherwise no create can have happened unrecorded: a workload with no user recorded has none
    yet, and one whose recorded id answers 404 lost it, so creating it at once is safe and costs
    one call. Outside an activity (a script driving the actions itself) nothing retries behind
    the caller's back: `ctx.unsettled` is how it says that it tries again."""
    return ctx.unsettled or (activity.in_activity() and activity.info().attempt > 1)


class NatsActions(Actions[NatsObservation, NatsPlan]):
    def __init__(self, config: SynadiaConfig | None) -> None:
        self._synadia = Synadia(config)

    async def observe(self, ctx: Context) -> NatsObservation:
        known = ctx.own(NatsOutputs)
        directory = self._synadia.directory
        async with self._synadia.client() as client:
            user = await find_user(
                client,
                directory,
                ctx.workload,
                known.user_id if known else None,
                by_name=unrecorded(ctx),
            )
        return NatsObservation(
            user=UserView.of(user) if user else None,
            account=account_ref(ctx.workload, directory.config),
        )

    async def apply(self, ctx: Context, plan: NatsPlan, observation: NatsObservation) -> Report:
        workload = ctx.workload
        memory = ctx.remembered(NatsMemory)
        revoke = list(plan.revoke)
        pending = [r for r in memory.revocations if r.public_key not in revoke]
        rotated_at = memory.key_rotated_at or ctx.now
        events: list[str] = []
        async with self._synadia.client() as client:
            if plan.user is None and observation.user is not None:
                user = observation.user
                if plan.repair:
                    user = await repair_user(client, user, workload, plan.repair)
            else:
                user = await create_user(client, self._synadia.directory, workload)
            # The condition tells what the pass did to the user itself, before any rotation.
            reason, message = _outcome(plan, user)
            rotation = plan.rotation
            if rotation is not None:
                # The recorded key too: after a crash that followed the rotation, the retry
                # finds the new key current, and the one it replaced only in the outputs.
                known = ctx.own(NatsOutputs)
                keys = [user.public_key, *([known.public_key] if known else [])]
                replaced = list(dict.fromkeys(keys))
                if rotation.revoke_at <= ctx.now:
                    revoke += replaced
                else:
                    pending += [
                        Revocation(public_key=k, revoke_at=rotation.revoke_at) for k in replaced
                    ]
            # Revoked before the rotation: a crash between the two leaves a revoked key current,
            # which the retry rotates away from, never a valid key the user no longer has.
            if revoke:
                await revoke_keys(client, user.account_id, revoke)
            if rotation is not None:
                user = UserView.of(await client.rotate_nats_user(user.id))
                log.info("rotated the key of NATS user %s: now %s", user.name, user.public_key)
                rotated_at = ctx.now
                events.append(
                    f"rotated key ({rotation.why}); old key revoked at {rotation.revoke_at}"
                )
            if revoke:
                events.append(f"revoked {', '.join(revoke)}")
        outputs = NatsOutputs(
            user_id=user.id,
            account_id=user.account_id,
            name=user.name,
            public_key=user.public_key,
            key_reason=plan.key_reason,
        )
        requested = rotation is not None and rotation.reason == IssueReason.REQUESTED
        # A user it just made is as its create (and any repair) answered, in the same view a GET
        # gives, and nothing is left to do: that spares the activity its read-back, a GET per
        # onboarded workload. After a rotation or a revocation, the read-back decides.
        made = plan.user is not None and rotation is None and not revoke
        return Report(
            reason=reason,
            message=message,
            changed=reason != Outcome.IN_SYNC,
            outputs=dump(outputs),
            memory=dump(
                NatsMemory(
                    asked=asked_digest(workload),
                    key_rotated_at=rotated_at,
                    revocations=pending,
                )
            ),
            events=events,
            handled=[ROTATE] if requested else [],
            fingerprint=user_fingerprint(user) if made else None,
        )

    async def fleet_observe(self, keys: list[str]) -> dict[str, str]:
        """The digest (`user_digest`) of each of `keys` whose user its account still holds,
        from one listing of the users of each account the keys name, whatever their number (see
        the module's doc for the cost). A key of another form, a user gone and an account gone
        are left out, which wakes those workloads; any other failure raises, which wakes all."""
        wanted = {key: parsed for key in keys if (parsed := FleetKey.parse(key)) is not None}
        if not wanted:
            return {}
        accounts = sorted({k.account_id for k in wanted.values()})
        limit = asyncio.Semaphore(_LISTINGS_AT_ONCE)
        async with self._synadia.client() as client:

            async def listing(account_id: str) -> list[NatsUser]:
                async with limit:
                    return await _users_of(client, account_id)

            listings = await asyncio.gather(*(listing(a) for a in accounts))
        users = {(u.account.id, u.id): u for listed in listings for u in listed}
        return {
            key: user_digest(UserView.of(user))
            for key, k in wanted.items()
            if (user := users.get((k.account_id, k.user_id))) is not None
        }

    async def explain(
        self, ctx: Context, plan: NatsPlan, observation: NatsObservation
    ) -> list[str]:
        return explain_nats(ctx.workload, plan, observation)

    async def teardown(self, ctx: Context) -> Report:
        """Revoke every key of the user, then delete it; without Synadia configured any more,
        there is nothing this worker can reach."""
        if self._synadia.configured:
            await self._remove(ctx)
        return Report(reason=Outcome.DELETED, message="keys revoked, user deleted")

    async def _remove(self, ctx: Context) -> None:
        known = ctx.own(NatsOutputs)
        directory = self._synadia.directory
        async with self._synadia.client() as client:
            # By id, else by its name when the id is not known or a create may have gone
            # unrecorded: a user whose id the workflow never learned is removed too. A recorded
            # one that answers 404 is gone, and another user of its name is not this one's.
            try:
                user = await find_user(
                    client,
                    directory,
                    ctx.workload,
                    known.user_id if known else None,
                    by_name=known is None or unrecorded(ctx),
                )
            except PermanentError as error:
                if error.reason != "UnknownAccount":
                    raise
                user = None  # no account, so no user in it to remove
            account_id = known.account_id if known else (user.account.id if user else None)
            keys = [r.public_key for r in ctx.remembered(NatsMemory).revocations]
            if known is not None:
                keys.append(known.public_key)
            if user is not None:
                # Each issuance has a key of its own, so superseded versions, still valid until
                # they expire, are on keys the workflow may never have seen.
                keys += [user.user_public_key, *await live_keys(client, user.id)]
            if account_id and keys:
                # Before the delete: a deleted user's JWTs stay valid until they expire.
                await revoke_keys(client, account_id, keys)
            if user is not None and await client.delete_nats_user(user.id):
                log.info("deleted NATS user %s (%s)", user.name, user.id)


async def _users_of(client: SynadiaClient, account_id: str) -> list[NatsUser]:
    """Every user of the account; none when the account is gone (404), so that only the
    workloads whose users were in it wake (their passes say why), not the whole fleet."""
    try:
        return await client.list_nats_users(account_id)
    except SynadiaNotFoundError:
        return []


def _outcome(plan: NatsPlan, user: UserView) -> tuple[str, str]:
    if plan.user == "create":
        return Outcome.CREATED, f"user {user.name} ({user.public_key})"
    if plan.user == "recreate":
        return "Recreated", f"user {user.name} had vanished and was recreated"
    if plan.repair and plan.drifted:
        return Outcome.DRIFT_REPAIRED, f"put back {', '.join(plan.repair)}"
    if plan.repair:
        return Outcome.APPLIED, f"applied {', '.join(plan.repair)}"
    return Outcome.IN_SYNC, f"user {user.name}"
