"""The Postgres capability's worker half: observe, apply and tear down a workload's database.

A password exists only inside `apply`: drawn, set on the idle login as a SCRAM verifier,
handed to the delivery (idp.delivery, the one NATS credentials use) and dropped. What comes back
is metadata: the version, the login, its expiry and a fingerprint (a SHA-256 of a 256-bit random
password reveals nothing).

The order makes a crash harmless. The new password is set on the idle login before it is
delivered, and the login it takes over from keeps working until the delivery is recorded and
its grace is over. A worker that dies between setting and delivering leaves an idle login with a
password nobody holds; the retry sets another on the same login and delivers that one. One that
dies after delivering finds the delivered version with `resume` and does not set it again.

Calls per steady-state pass: one admin connection with two catalogue queries (a second
connection, to the workload's database, when the spec names extensions), and the delivered
secret's check (a git fetch and read; a DescribeSecret for external-secret).
"""

import hashlib
import logging
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import SecretStr

from activities.deliveries import Deliveries
from idp.capability import Actions, Context, Outcome, Report, dump
from idp.credentials import IssueReason, next_refresh
from idp.delivery import CredentialDelivery, CredentialMetadata, Delivered, DeliveryTarget
from idp.errors import PermanentError
from idp.models import DeletionPolicy, Delivery, Workload
from idp.platform import Destination, Platform
from idp_postgres.capability import (
    ROTATE,
    Postgres,
    claim,
    connection,
    explain_postgres,
    problems,
    spec_of,
)
from idp_postgres.client import Admin, admin_session, database_view
from idp_postgres.models import (
    Connection,
    Issue,
    PostgresMemory,
    PostgresObservation,
    PostgresOutputs,
    PostgresPlan,
    PostgresSettings,
    PostgresSpec,
    ServerSettings,
    delivery_digest,
)
from idp_postgres.names import names, names_of

log = logging.getLogger(__name__)

PURPOSE = "postgres"
# libpq's own keywords, so `psql "$(cat uri)"`, PG* variables and every driver read them as is.
SECRET_KEYS = ("host", "port", "dbname", "user", "password", "sslmode", "uri")
DELIVERY_FIELD = "spec.postgres.credentials.delivery"


def secret_data(conn: Connection, login: str, password: SecretStr) -> dict[str, SecretStr]:
    word = password.get_secret_value()
    uri = (
        f"postgresql://{quote(login, safe='')}:{quote(word, safe='')}@{conn.host}:{conn.port}/"
        f"{quote(conn.database, safe='')}?sslmode={conn.sslmode}"
    )
    values = {
        "host": conn.host,
        "port": str(conn.port),
        "dbname": conn.database,
        "user": login,
        "password": word,
        "sslmode": conn.sslmode,
        "uri": uri,
    }
    return {key: SecretStr(values[key]) for key in SECRET_KEYS}


class PostgresActions(Actions[PostgresObservation, PostgresPlan]):
    def __init__(
        self, platform: Platform, settings: PostgresSettings | None, cache_dir: Path
    ) -> None:
        self._platform = platform
        self._settings = settings
        self._deliveries = Deliveries(platform, cache_dir)

    # -- configuration

    def _server(self, workload: Workload) -> ServerSettings:
        """The workload's server; what idpctl would have refused is refused here too, for
        specs that came in without it (a `temporal workflow update`, a platform file changed
        since)."""
        spec = spec_of(workload)
        found = problems(spec, self._settings)
        if found:
            raise PermanentError("; ".join(found), reason="InvalidSpec")
        assert self._settings is not None
        server = self._settings.server(spec.server)
        assert server is not None
        return server

    def _target(self, workload: Workload) -> tuple[Destination, DeliveryTarget, Delivery]:
        destination = self._platform.require_destination(workload.spec.destination)
        credentials = spec_of(workload).credentials
        return (
            destination,
            target_of(workload, destination, credentials.secret_name),
            credentials.delivery or destination.default_delivery,
        )

    # -- the contract

    async def observe(self, ctx: Context) -> PostgresObservation:
        workload = ctx.workload
        spec = spec_of(workload)
        server = self._server(workload)
        want = names(workload, spec)
        conn = connection(workload, server)
        destination, target, kind = self._target(workload)
        async with admin_session(server) as admin:
            roles = await admin.roles(want)
            row = await admin.database(want.database)
        database = None
        if row is not None:
            installed: list[str] = []
            # Extensions live in the database itself; reading them costs a connection, so
            # only for a spec that names some, and only in a database of ours: by its owner,
            # or by its claim when its owner drifted (else the plan would re-create them all).
            ours = row["owner"] == want.owner or row["comment"] == claim(ctx.workflow_id)
            if spec.extensions and ours:
                async with admin_session(server, want.database) as inside:
                    installed = await inside.extensions(spec.extensions)
            database = database_view(row, installed)
        current = ctx.own(PostgresOutputs)
        delivered = None
        if current is not None:
            # Where this version went, even if the spec now names another delivery: the plan
            # decides whether that change calls for a new password.
            delivery = self._deliveries.of(destination, current.delivery, DELIVERY_FIELD)
            delivered = await delivery.check(target, current)
        return PostgresObservation(
            connection=conn,
            delivery_digest=delivery_digest(kind, target.secret_name, conn),
            database=database,
            roles=roles,
            delivered=delivered,
        )

    async def apply(
        self, ctx: Context, plan: PostgresPlan, observation: PostgresObservation
    ) -> Report:
        workload = ctx.workload
        spec = spec_of(workload)
        server = self._server(workload)
        want = names(workload, spec)
        ours = claim(ctx.workflow_id)
        issue = plan.issue
        retire = list(plan.retire)
        if issue is not None and issue.retire is not None and issue.retire.at <= ctx.now:
            retire.append(issue.retire.login)
        outputs = ctx.outputs
        events: list[str] = []
        async with admin_session(server) as admin:
            for role in plan.roles:
                await admin.put_role(role, want.owner, ours)
            if plan.database == "create":
                await admin.create_database(want, spec.connection_limit, ours)
            elif plan.database == "repair":
                await admin.repair_database(want, spec.connection_limit, ours)
            if plan.extensions:
                async with admin_session(server, want.database) as inside:
                    await inside.create_extensions(server.name, plan.extensions)
            if issue is not None:
                outputs = dump(await self._issue(ctx, admin, issue, observation))
            # After the delivery: with `revokeOld: now` the old password stops working only
            # once the new one is where the workload reads it.
            for login in retire:
                await admin.retire(login)
                events.append(f"login {login} retired: no LOGIN, no password")
        memory = ctx.remembered(PostgresMemory)
        retiring = [
            r
            for r in memory.retiring
            if r.login not in retire and (issue is None or r.login != issue.login)
        ]
        if issue is not None and issue.retire is not None and issue.retire.at > ctx.now:
            retiring.append(issue.retire)
        report = _report(plan, issue, outputs)
        return report.model_copy(
            update={
                "memory": dump(
                    PostgresMemory(
                        retiring=retiring,
                        connection_limit=spec.connection_limit,
                        extensions=spec.extensions,
                    )
                ),
                "events": events + report.events,
                "handled": [ROTATE] if issue and issue.reason == IssueReason.REQUESTED else [],
            }
        )

    async def explain(
        self, ctx: Context, plan: PostgresPlan, observation: PostgresObservation
    ) -> list[str]:
        return explain_postgres(ctx, plan, observation)

    async def _issue(
        self, ctx: Context, admin: Admin, issue: Issue, observation: PostgresObservation
    ) -> PostgresOutputs:
        workload = ctx.workload
        credentials = spec_of(workload).credentials
        destination, target, kind = self._target(workload)
        delivery = self._deliveries.of(destination, kind, DELIVERY_FIELD)
        conn = observation.connection
        who = f"Workload {workload.metadata.system}/{workload.metadata.name}"
        message = (
            f"deliver PostgreSQL password v{issue.version} of {who}\n\n"
            f"Reason: {issue.reason}\nWorkflow: {ctx.workflow_id}"
        )
        delivered = await delivery.resume(target, issue.version, issue.login, message)
        if delivered is not None:
            log.info(
                "password v%d of %s was already delivered by an earlier attempt (%s)",
                issue.version,
                who,
                delivered.location,
            )
        else:
            delivered = await self._set_and_deliver(
                ctx, admin, issue, target, delivery, conn, message
            )
        credential = delivered.credential
        return PostgresOutputs(
            **credential.model_dump(),
            server=conn.server,
            host=conn.host,
            port=conn.port,
            database=conn.database,
            owner=names(workload, spec_of(workload)).owner,
            delivery=delivered.delivery,
            location=delivered.location,
            secret_name=target.secret_name,
            delivery_digest=observation.delivery_digest,
            next_refresh_at=next_refresh(credentials, credential.issued_at),
            reason=issue.reason,
        )

    async def _set_and_deliver(
        self,
        ctx: Context,
        admin: Admin,
        issue: Issue,
        target: DeliveryTarget,
        delivery: CredentialDelivery,
        conn: Connection,
        message: str,
    ) -> Delivered:
        credentials = spec_of(ctx.workload).credentials
        password = SecretStr(secrets.token_urlsafe(32))
        expires = ctx.now + credentials.ttl
        await admin.set_password(issue.login, password, expires)
        credential = CredentialMetadata(
            version=issue.version,
            public_key=issue.login,
            issued_at=ctx.now,
            expires_at=expires,
            fingerprint=hashlib.sha256(password.get_secret_value().encode()).hexdigest(),
        )
        log.info(
            "set password v%d of %s on %s: reason %s, fingerprint %s, valid until %s",
            issue.version,
            ctx.workflow_id,
            issue.login,
            issue.reason,
            credential.fingerprint[:16],
            expires.isoformat(),
        )
        data = secret_data(conn, issue.login, password)
        return await delivery.deliver(target, data, credential, message)

    async def teardown(self, ctx: Context) -> Report:
        """By `deletionPolicy`: Retain keeps the database, its owner and data and disables both
        logins; Delete drops them all. Either way the delivered secret goes. Only what this
        workflow made is touched."""
        workload = ctx.workload
        section: PostgresSpec | None = workload.spec.section(Postgres.spec_field)
        current = ctx.own(PostgresOutputs)
        removed = await self._remove_secret(ctx, current)
        # With spec.postgres removed from a live workload, what it made is known from the
        # outputs alone.
        if section is not None:
            want, server_name = names(workload, section), section.server
        elif current is not None:
            want, server_name = names_of(current.database), current.server
        else:
            return Report(reason=Outcome.DELETED, message=f"removed {removed or 'nothing'}")
        server = self._settings.server(server_name) if self._settings else None
        if server is None:
            # No server this worker could reach: it never made anything there.
            return Report(reason=Outcome.DELETED, message=f"removed {removed or 'nothing'}")
        async with admin_session(server) as admin:
            owner = (await admin.roles(want)).get(want.owner)
            if owner is not None and owner.comment != claim(ctx.workflow_id):
                return Report(
                    reason=Outcome.DELETED,
                    message=f"left {want.database} alone: its roles are not this workload's",
                )
            if workload.spec.deletion_policy == DeletionPolicy.DELETE:
                await admin.drop(want)
                message = f"dropped database {want.database} and its roles"
            else:
                for login in want.logins:
                    await admin.retire(login)
                message = f"kept database {want.database} (Retain); logins disabled"
        log.info("%s: %s; removed %s", ctx.workflow_id, message, removed or "no secret")
        return Report(reason=Outcome.DELETED, message=message)

    async def _remove_secret(self, ctx: Context, current: PostgresOutputs | None) -> str:
        """Where the recorded version went (the spec may have changed the secret's name, or
        be gone); an unknown destination never got one."""
        workload = ctx.workload
        destination = self._platform.destination(workload.spec.destination)
        if destination is None:
            return ""
        if current is not None:
            target = target_of(workload, destination, current.secret_name)
        else:
            section: PostgresSpec | None = workload.spec.section(Postgres.spec_field)
            target = target_of(
                workload, destination, section.credentials.secret_name if section else None
            )
        commit = (
            f"remove PostgreSQL password of Workload {workload.metadata.system}/"
            f"{workload.metadata.name}\n\nWorkflow: {ctx.workflow_id}"
        )
        recorded = current.delivery if current else None
        removed = await self._deliveries.remove(destination, target, recorded, commit)
        return ", ".join(removed)


def target_of(
    workload: Workload, destination: Destination, secret_name: str | None
) -> DeliveryTarget:
    return DeliveryTarget.of(
        workload, destination, purpose=PURPOSE, secret_name=secret_name, keys=SECRET_KEYS
    )


def _report(plan: PostgresPlan, issue: Issue | None, outputs: dict[str, Any] | None) -> Report:
    assert outputs is not None  # the first pass issues
    o = PostgresOutputs.model_validate(outputs)
    if issue is not None:
        drifted = issue.problem is not None
        return Report(
            reason=Outcome.ISSUED,
            cause=issue.reason.value,
            changed=True,
            message=f"password v{issue.version} ({issue.reason}) of {issue.login} delivered to "
            f"{o.location}",
            outputs=outputs,
            events=[f"delivered secret drifted: {issue.problem}"] if drifted else [],
            plan=plan.changes,
        )
    if plan.roles or plan.database or plan.extensions:
        return Report(
            reason=Outcome.DRIFT_REPAIRED if plan.drift else Outcome.APPLIED,
            changed=True,
            message=f"{'put back' if plan.drift else 'applied'}: {plan.summary()}",
            outputs=outputs,
            plan=plan.changes,
        )
    if plan.retire:
        return Report(
            reason=Outcome.APPLIED,
            changed=True,
            message=f"retired {', '.join(plan.retire)}: the grace period is over",
            outputs=outputs,
            plan=plan.changes,
        )
    return Report(
        message=f"database {o.database}, login {o.login}, password v{o.version}", outputs=outputs
    )
