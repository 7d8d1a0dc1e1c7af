"""The Postgres capability's pure half: what a workload's database and logins must be, and the
plan that gets them there from what observe found. It runs inside WorkloadWorkflow: no driver,
no clock but the workflow's, no randomness. The worker's half is in actions.py.

Rotation without downtime uses two logins that take turns. Both are members of a NOLOGIN owner
role that owns the database, and every session of theirs starts as that owner (the role's
`SET role` default), so whatever either creates belongs to the owner and outlives a turn. A new
password is set on the idle login and delivered; the login it takes over from keeps working
for `rotationGrace` (none with `revokeOld: now`), then loses LOGIN and its password. So a pod
still holding the old secret keeps connecting until it has picked up the new one, and no
password is ever changed under a running pod.

A password is set only for a reason of `idp.credentials.IssueReason`, never by a pass that found
things in order: the first one, a refresh before it expires (its VALID UNTIL), a scheduled
rotation, a request, a new delivery or connection details, a delivered secret gone or altered,
or an active login that was dropped (recreated, it is a new issuance: UserRecreated).
"""

from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from idp.aws.grants import AwsGrant, partition
from idp.capability import Capability, Change, Context
from idp.credentials import IssueReason
from idp.errors import PermanentError
from idp.ids import workload_reference
from idp.models import Model, Workload
from idp_postgres.models import (
    Connection,
    DatabaseView,
    Issue,
    Names,
    PostgresMemory,
    PostgresObservation,
    PostgresOutputs,
    PostgresPlan,
    PostgresSettings,
    PostgresSpec,
    Retirement,
    RoleState,
    RoleView,
    ServerSettings,
)
from idp_postgres.names import names

if TYPE_CHECKING:
    from idp_postgres.actions import PostgresActions

ROTATE = "rotate_credentials"
# The comment on the owner role and the database: which workflow made them. Another
# workload's database of the same name is refused, never taken over or dropped.
CLAIM_PREFIX = "idp:"


class RotateCredentials(Model):
    """An open `rotate_credentials` request (workflows/messages.py RotateRequest): it rotates
    every credential the workload has, its database password among them."""

    reason: str
    revoke_old: Literal["now", "after-grace"] = "after-grace"


def spec_of(workload: Workload) -> PostgresSpec:
    spec = workload.spec.section(Postgres.spec_field)
    assert spec is not None, "only called for workloads that want a database"
    return spec


def claim(workflow_id: str) -> str:
    return f"{CLAIM_PREFIX}{workflow_id}"


def connection(workload: Workload, server: ServerSettings) -> Connection:
    return Connection(
        server=server.name,
        host=server.workload_host or server.host,
        port=server.port,
        database=names(workload, spec_of(workload)).database,
        sslmode=server.sslmode,
    )


class Postgres(Capability[PostgresObservation, PostgresPlan]):
    name = "Postgres"
    spec_field = "postgres"
    spec_model = PostgresSpec
    settings_field = "postgres"
    settings_model = PostgresSettings
    observation_model = PostgresObservation
    plan_model = PostgresPlan
    outputs_model = PostgresOutputs
    requests = {ROTATE: "has no database, so no password to rotate"}
    summary = "PostgreSQL database and login"

    def check(self, section: PostgresSpec, settings: PostgresSettings | None) -> list[str]:
        return problems(section, settings)

    def plan(self, ctx: Context, observation: PostgresObservation) -> PostgresPlan:
        spec = spec_of(ctx.workload)
        want = names(ctx.workload, spec)
        current = ctx.own(PostgresOutputs)
        refuse_foreign(ctx, want, observation)
        if current is not None and current.database != want.database:
            raise PermanentError(
                f"spec.postgres.database: the workload's database is {current.database}; it "
                "holds data, so it is never renamed: set it back, or remove spec.postgres "
                "(with deletionPolicy Retain the database stays) and add it anew",
                reason="DatabaseRenamed",
            )
        memory = ctx.remembered(PostgresMemory)
        retire = [r.login for r in memory.retiring if r.at <= ctx.now]
        issue = _issue(ctx, want, observation, current, memory)
        roles = _roles(want, current, memory, issue, retire, ctx.now)
        changes: list[Change] = []
        repairs: list[RoleState] = []
        for role in roles:
            found = observation.roles.get(role.name)
            if found is None:
                why = "it does not exist" if current is None else "it was dropped"
                changes.append(Change(action="create", subject=f"role {role.name}", why=why))
                repairs.append(role)
                continue
            drifted = role_drift(role, found, want.owner)
            if drifted:
                why = f"{', '.join(drifted)} drifted"
                changes.append(Change(action="update", subject=f"role {role.name}", why=why))
                repairs.append(role)
        drift = bool(repairs)
        database: Literal["create", "repair"] | None = None
        db = observation.database
        if db is None:
            database = "create"
            why = "it does not exist" if current is None else "it was dropped"
            drift = drift or current is not None
            changes.append(Change(action="create", subject=f"database {want.database}", why=why))
        else:
            reasons = database_drift(db, want.owner, claim(ctx.workflow_id))
            drift = drift or bool(reasons)
            if reasons:
                reasons = [f"{', '.join(reasons)} drifted"]
            if db.connection_limit != spec.connection_limit:
                # The limit this capability last set tells a spec change from someone's edit.
                if memory.connection_limit not in (None, db.connection_limit):
                    reasons.append(f"connection limit drifted (now {db.connection_limit})")
                    drift = True
                else:
                    reasons.append(f"spec.postgres.connectionLimit is {spec.connection_limit}")
            if reasons:
                database = "repair"
                subject = f"database {want.database}"
                changes.append(Change(action="update", subject=subject, why="; ".join(reasons)))
        installed = set(db.extensions) if db is not None else set()
        extensions = [e for e in spec.extensions if e not in installed]
        for extension in extensions:
            dropped = extension in memory.extensions
            drift = drift or dropped
            why = "it was dropped" if dropped else "spec.postgres.extensions names it"
            subject = f"extension {extension} in {want.database}"
            changes.append(Change(action="create", subject=subject, why=why))
        if issue is not None:
            why = (
                issue.reason.value if issue.problem is None else f"{issue.reason}: {issue.problem}"
            )
            subject = f"password v{issue.version} of {issue.login}"
            changes.append(Change(action="issue", subject=subject, why=why))
        changes += [
            Change(action="revoke", subject=f"login {login}", why="its grace period is over")
            for login in retire
        ]
        return PostgresPlan(
            changes=changes,
            roles=repairs,
            database=database,
            extensions=extensions,
            issue=issue,
            retire=retire,
            drift=drift,
        )

    def expect(
        self, ctx: Context, plan: PostgresPlan, observation: PostgresObservation
    ) -> dict[str, Any] | None:
        # Only an issuance changes the outputs; repairs, extensions and retirements keep them.
        return None if plan.issue else ctx.outputs

    def holds(self, ctx: Context) -> bool:
        # A first pass that failed after creating the database (before it recorded anything)
        # must still be cleaned up.
        return super().holds(ctx) or self.section(ctx.workload) is not None

    def deadline(self, ctx: Context) -> datetime | None:
        """The refresh, the scheduled rotation, the end of a grace period."""
        current = ctx.own(PostgresOutputs)
        deadlines = [r.at for r in ctx.remembered(PostgresMemory).retiring]
        if current is not None:
            deadlines.append(current.next_refresh_at)
            rotation = spec_of(ctx.workload).credentials.key_rotation
            if rotation is not None:
                deadlines.append(current.issued_at + rotation)
        return min(deadlines, default=None)

    def describe(self, outputs: Mapping[str, Any]) -> list[str]:
        o = PostgresOutputs.model_validate(outputs)
        return [
            f"postgres:    database {o.database} on {o.server} ({o.host}:{o.port}), login "
            f"{o.login}",
            f"  password:  version {o.version} ({o.reason}), delivered to {o.location}; "
            f"expires {o.expires_at.isoformat()}, next refresh {o.next_refresh_at.isoformat()}",
        ]

    def port_properties(self, outputs: Mapping[str, Any] | None) -> dict[str, Any]:
        o = None if outputs is None else PostgresOutputs.model_validate(outputs)
        return {
            "postgresDatabase": f"{o.server}/{o.database}" if o else None,
            "postgresPasswordExpireAt": o.expires_at.isoformat() if o else None,
        }

    def port_schema(self) -> dict[str, dict[str, Any]]:
        return {
            "postgresDatabase": {"type": "string", "title": "PostgreSQL database"},
            "postgresPasswordExpireAt": {
                "type": "string",
                "format": "date-time",
                "title": "Database password expires",
            },
        }

    def aws_grants(self, platform: Any, settings: PostgresSettings | None) -> list[AwsGrant]:
        """RDS IAM authentication for the admin users that log in with it. A token names the
        database user; the instance is known only by its host, so any instance (its resource
        id) in the region may be connected to as that user."""
        account = platform.aws.account_id if platform.aws else "*"
        users: set[str] = set()
        for server in settings.servers if settings else []:
            if server.admin.iam is not None:
                where = f"{partition(server.admin.iam.region)}:rds-db:{server.admin.iam.region}"
                users.add(f"arn:{where}:{account}:dbuser:*/{server.admin.user}")
        if not users:
            return []
        return [AwsGrant("PostgresIamAuthentication", ("rds-db:connect",), tuple(sorted(users)))]

    def actions(
        self, platform: Any, settings: PostgresSettings | None, cache_dir: Path
    ) -> "PostgresActions":
        # Imported here: the workflow imports this module, and the actions hold the driver.
        from idp_postgres.actions import PostgresActions

        return PostgresActions(platform, settings, cache_dir)


def explain_postgres(
    ctx: Context, plan: PostgresPlan, observation: PostgresObservation
) -> list[str]:
    """What `idpctl diff` shows beneath the plan: the database's settings a repair or the spec
    changes, as they are → as they will be, and the password, issued or not (by version,
    reason and fingerprint, never the password)."""
    spec = spec_of(ctx.workload)
    want = names(ctx.workload, spec)
    db = observation.database
    lines = []
    if db is not None and plan.database == "repair":
        if db.owner != want.owner:
            lines.append(f"owner of database {want.database}: {db.owner} → {want.owner}")
        if db.connection_limit != spec.connection_limit:
            lines.append(
                f"connection limit of database {want.database}: {db.connection_limit} → "
                f"{spec.connection_limit}"
            )
    if plan.extensions:
        # Of those the spec names: the others are left as they are.
        installed = [e for e in spec.extensions if e not in plan.extensions]
        lines.append(
            f"extensions of database {want.database}: {', '.join(installed) or 'none'} → "
            f"{', '.join(spec.extensions)}"
        )
    return [*lines, _password_line(ctx, plan)]


def _password_line(ctx: Context, plan: PostgresPlan) -> str:
    current = ctx.own(PostgresOutputs)
    issue = plan.issue
    if issue is None:
        assert current is not None  # the policy issues the first version
        return (
            f"database password: no issuance (version {current.version} of login "
            f"{current.login} stays, expires {current.expires_at.isoformat()}, next refresh "
            f"{current.next_refresh_at.isoformat()})"
        )
    why = next(change.why for change in plan.changes if change.action == "issue")
    line = f"database password: would issue v{issue.version} ({why}) on login {issue.login}"
    if current is not None:
        line += (
            f", replacing v{current.version} on {current.login} (fingerprint "
            f"{current.fingerprint[:16]}, expires {current.expires_at.isoformat()})"
        )
    retire = issue.retire
    if retire is not None:
        until = "at once" if retire.at <= ctx.now else f"at {retire.at.isoformat()}"
        line += f"; {retire.login} stops working {until}"
    return line


def problems(spec: PostgresSpec, settings: PostgresSettings | None) -> list[str]:
    """What only the platform file can tell is wrong with `spec.postgres`, one sentence each."""
    if settings is None:
        return [
            "spec.postgres: the platform configuration has no postgres section, so it "
            "offers no databases; remove spec.postgres or ask the platform team"
        ]
    found: list[str] = []
    if settings.server(spec.server) is None:
        known = ", ".join(s.name for s in settings.servers)
        found.append(
            f"spec.postgres.server: {spec.server!r} is not a server of the platform "
            f"configuration; allowed: {known}"
        )
    allowed = settings.extensions
    for i, extension in enumerate(spec.extensions):
        if extension not in allowed:
            choices = ", ".join(allowed) if allowed else "none (postgres.extensions is empty)"
            found.append(
                f"spec.postgres.extensions[{i}]: {extension!r} is not an extension the "
                f"platform allows; allowed: {choices}"
            )
    return found


def refuse_foreign(ctx: Context, want: Names, observation: PostgresObservation) -> None:
    """A database or owner role of these names that another workload made, or someone by hand,
    is not ours to change: refused before anything is done, saying what to do instead."""
    ours = claim(ctx.workflow_id)
    owner = observation.roles.get(want.owner)
    database = observation.database
    found = []
    if owner is not None and owner.comment != ours:
        found.append((f"role {want.owner}", owner.comment))
    # A database of ours may lack its claim for a moment (CREATE DATABASE cannot share a
    # transaction with COMMENT), but it is owned by our owner role from the start.
    if database is not None and database.comment != ours:
        if database.comment is not None or database.owner != want.owner:
            found.append((f"database {want.database}", database.comment))
    for what, comment in found:
        holder = "something this reconciler did not make"
        if comment and comment.startswith(CLAIM_PREFIX):
            # "workload shop/orders", as people name it, not its workflow id.
            holder = f"workload {workload_reference(comment[len(CLAIM_PREFIX) :])}"
        raise PermanentError(
            f"{what} already exists and belongs to {holder}; set another spec.postgres.database",
            reason="DatabaseTaken",
        )


def role_drift(want: RoleState, found: RoleView, owner: str) -> list[str]:
    drifted = []
    if want.login is not None and found.login != want.login:
        drifted.append("LOGIN" if want.login else "NOLOGIN")
    if found.privileged:
        drifted.append(f"no {', '.join(found.privileged)}")
    if not found.inherit:
        drifted.append("INHERIT")
    if want.member and not found.member_of_owner:
        drifted.append(f"membership of {owner}")
    if want.member and not found.runs_as_owner:
        drifted.append(f"SET role {owner}")
    if want.valid_until is not None and not _same_second(found.valid_until, want.valid_until):
        drifted.append("VALID UNTIL")
    return drifted


def database_drift(found: DatabaseView, owner: str, ours: str) -> list[str]:
    """What someone changed; the connection limit is judged by the plan, which knows whether
    the spec or someone else changed it."""
    drifted = []
    if found.comment != ours:
        drifted.append("its claim (comment)")
    if found.owner != owner:
        drifted.append(f"owner (now {found.owner})")
    if found.public_connect:
        drifted.append("CONNECT revoked from PUBLIC")
    return drifted


def _roles(
    want: Names,
    current: PostgresOutputs | None,
    memory: PostgresMemory,
    issue: Issue | None,
    retire: list[str],
    now: datetime,
) -> list[RoleState]:
    """Every role as this pass must leave it. LOGIN is not judged (None) where this pass sets
    it anyway: the login that gets the new password, and those that lose theirs."""
    active = issue.login if issue else current.login if current else None
    losing = set(retire)
    if issue is not None and issue.retire is not None and issue.retire.at <= now:
        losing.add(issue.retire.login)
    in_grace = {r.login for r in memory.retiring if r.at > now}
    if issue is not None and issue.retire is not None and issue.retire.at > now:
        in_grace.add(issue.retire.login)
    roles = [RoleState(name=want.owner, login=False, member=False)]
    for login in want.logins:
        if login == active and issue is None:
            assert current is not None
            state = RoleState(name=login, login=True, member=True, valid_until=current.expires_at)
        elif login == active or login in losing:
            state = RoleState(name=login, login=None, member=True)
        else:
            state = RoleState(name=login, login=login in in_grace, member=True)
        roles.append(state)
    return roles


def _same_second(a: datetime | None, b: datetime) -> bool:
    return a is not None and abs((a - b).total_seconds()) < 1


def _issue(
    ctx: Context,
    want: Names,
    observation: PostgresObservation,
    current: PostgresOutputs | None,
    memory: PostgresMemory,
) -> Issue | None:
    spec = spec_of(ctx.workload)
    if current is None:
        return Issue(version=1, login=want.logins[0], reason=IssueReason.INITIAL)
    version = current.version + 1
    login = want.other(current.login)
    grace = spec.credentials.rotation_grace
    if current.login not in observation.roles:
        # Its password went with it: the idle login takes over, and the dropped one comes
        # back idle.
        return Issue(version=version, login=login, reason=IssueReason.USER_RECREATED)
    reason, retire_at, problem = _reason(ctx, current, observation, grace)
    if reason is None:
        return None
    return Issue(
        version=version,
        login=login,
        reason=reason,
        retire=Retirement(login=current.login, at=retire_at),
        problem=problem,
    )


def _reason(
    ctx: Context,
    current: PostgresOutputs,
    observation: PostgresObservation,
    grace: timedelta,
) -> tuple[IssueReason | None, datetime, str | None]:
    """Why the policy sets a new password now, when the old one stops working, and what
    drifted; (None, ...) when nothing calls for one."""
    spec = spec_of(ctx.workload)
    later = ctx.now + grace
    raw = ctx.requests.get(ROTATE)
    if raw is not None:
        request = RotateCredentials.model_validate(raw)
        # A leak: the old password must stop working at once.
        return IssueReason.REQUESTED, ctx.now if request.revoke_old == "now" else later, None
    if observation.delivery_digest != current.delivery_digest:
        return IssueReason.DELIVERY_CHANGED, later, None
    if ctx.now >= current.next_refresh_at:
        return IssueReason.REFRESH, later, None
    rotation = spec.credentials.key_rotation
    if rotation is not None and ctx.now >= current.issued_at + rotation:
        return IssueReason.KEY_ROTATION, later, None
    delivered = observation.delivered
    if delivered is not None and not delivered.in_place:
        return IssueReason.DELIVERY_DRIFT, later, delivered.problem
    return None, later, None
