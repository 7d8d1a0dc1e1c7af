"""The one place that speaks SQL: an admin session on a server, and what it reads and does.

Passwords never travel in SQL: `set_password` sends the SCRAM-SHA-256 verifier that libpq
computes on the worker (as psql's `\\password` does), so neither the statement, the server's log
nor `pg_stat_statements` ever holds one. Identifiers are quoted by psycopg, never formatted in.
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import SecretStr

from idp.errors import PermanentError, TransientError
from idp_postgres.models import (
    DatabaseView,
    Names,
    RoleState,
    RoleView,
    ServerSettings,
)

# What no role of a workload may have; each shows as drift when it does.
PRIVILEGES = {
    "rolsuper": "SUPERUSER",
    "rolcreatedb": "CREATEDB",
    "rolcreaterole": "CREATEROLE",
    "rolreplication": "REPLICATION",
    "rolbypassrls": "BYPASSRLS",
}
UNPRIVILEGED = sql.SQL("NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT")

_ROLES = """
SELECT r.rolname, r.rolcanlogin, r.rolinherit, r.rolsuper, r.rolcreatedb, r.rolcreaterole,
       r.rolreplication, r.rolbypassrls, r.rolvaliduntil,
       shobj_description(r.oid, 'pg_authid') AS comment,
       EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles o ON o.oid = m.roleid
               WHERE m.member = r.oid AND o.rolname = %(owner)s) AS member_of_owner,
       ('role=' || %(owner)s) = ANY (coalesce(r.rolconfig, '{}')) AS runs_as_owner
FROM pg_roles r WHERE r.rolname = ANY (%(names)s)
"""
_DATABASE = """
SELECT pg_get_userbyid(d.datdba) AS owner, d.datconnlimit,
       shobj_description(d.oid, 'pg_database') AS comment,
       d.datacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(d.datacl) a
                                   WHERE a.grantee = 0 AND a.privilege_type = 'CONNECT')
         AS public_connect
FROM pg_database d WHERE d.datname = %(name)s
"""


def admin_password(server: ServerSettings) -> str:
    admin = server.admin
    if admin.iam is not None:
        import boto3  # only for RDS IAM authentication

        rds = boto3.session.Session().client("rds", region_name=admin.iam.region)
        return str(
            rds.generate_db_auth_token(
                DBHostname=server.host, Port=server.port, DBUsername=admin.user
            )
        )
    assert admin.password_env is not None
    password = os.environ.get(admin.password_env, "")
    if not password:
        raise PermanentError(
            f"the admin password of PostgreSQL server {server.name} is not set: the worker "
            f"needs it in ${admin.password_env} (postgres.servers[].admin.passwordEnv)",
            reason="NoAdminPassword",
        )
    return password


@asynccontextmanager
async def admin_session(
    server: ServerSettings, database: str | None = None
) -> AsyncIterator["Admin"]:
    """An autocommit session of the server's admin, in its maintenance database by default.

    A refused login is the operator's to fix (a retry reads the same password), a server that
    does not answer may come back: PermanentError and TransientError say which."""
    try:
        connection = await psycopg.AsyncConnection.connect(
            host=server.host,
            port=server.port,
            user=server.admin.user,
            password=admin_password(server),
            dbname=database or server.maintenance_database,
            sslmode=server.sslmode,
            connect_timeout=10,
            application_name="idp-worker",
            autocommit=True,
        )
    except psycopg.OperationalError as error:
        problem = str(error).strip().splitlines()[-1] if str(error).strip() else "no answer"
        if "password authentication failed" in problem or "no pg_hba.conf entry" in problem:
            raise PermanentError(
                f"PostgreSQL server {server.name} refused the admin login {server.admin.user}: "
                f"{problem}",
                reason="AdminLoginRefused",
            ) from None
        raise TransientError(
            f"PostgreSQL server {server.name} ({server.host}:{server.port}) is unreachable: "
            f"{problem}",
            reason="ServerUnreachable",
        ) from None
    try:
        async with connection:
            yield Admin(connection)
    except psycopg.errors.InsufficientPrivilege as error:
        raise PermanentError(
            f"the admin {server.admin.user} of PostgreSQL server {server.name} may not do this: "
            f"{error.diag.message_primary}; it needs CREATEDB and CREATEROLE",
            reason="InsufficientPrivilege",
        ) from None


class Admin:
    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self._db = connection

    async def _rows(self, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        async with self._db.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(query, params)
            return await cursor.fetchall()

    async def _run(self, *statements: sql.Composable) -> None:
        for statement in statements:
            await self._db.execute(statement)

    async def _exists(self, role: str) -> bool:
        return bool(await self._rows("SELECT 1 FROM pg_roles WHERE rolname = %(n)s", {"n": role}))

    # -- observe

    async def roles(self, names: Names) -> dict[str, RoleView]:
        rows = await self._rows(
            _ROLES, {"owner": names.owner, "names": [names.owner, *names.logins]}
        )
        return {
            row["rolname"]: RoleView(
                name=row["rolname"],
                login=row["rolcanlogin"],
                inherit=row["rolinherit"],
                privileged=[word for column, word in PRIVILEGES.items() if row[column]],
                valid_until=_utc(row["rolvaliduntil"]),
                comment=row["comment"],
                member_of_owner=row["member_of_owner"],
                runs_as_owner=row["runs_as_owner"],
            )
            for row in rows
        }

    async def database(self, name: str) -> dict[str, Any] | None:
        rows = await self._rows(_DATABASE, {"name": name})
        return rows[0] if rows else None

    async def extensions(self, wanted: list[str]) -> list[str]:
        """Of `wanted`, those installed in this session's database."""
        rows = await self._rows(
            "SELECT extname FROM pg_extension WHERE extname = ANY (%(names)s)", {"names": wanted}
        )
        return sorted(row["extname"] for row in rows)

    # -- act

    async def put_role(self, role: RoleState, owner: str, claim: str) -> None:
        """Create the role if it is missing, then give it what it must have."""
        name = sql.Identifier(role.name)
        async with self._db.transaction():
            # With its claim in the same transaction: a role of ours always says so.
            if not await self._rows(
                "SELECT 1 FROM pg_roles WHERE rolname = %(n)s", {"n": role.name}
            ):
                await self._run(
                    sql.SQL("CREATE ROLE {} NOLOGIN").format(name),
                    sql.SQL("COMMENT ON ROLE {} IS {}").format(name, sql.Literal(claim)),
                )
        login = {None: sql.SQL(""), True: sql.SQL(" LOGIN"), False: sql.SQL(" NOLOGIN")}
        statements = [sql.SQL("ALTER ROLE {} {}{}").format(name, UNPRIVILEGED, login[role.login])]
        if role.valid_until is not None:
            statements.append(
                sql.SQL("ALTER ROLE {} VALID UNTIL {}").format(name, _timestamp(role.valid_until))
            )
        if role.member:
            statements += [
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(owner), name),
                # Every session starts as the owner, so what a login creates is the owner's
                # and survives the login's turn ending.
                sql.SQL("ALTER ROLE {} SET role = {}").format(name, sql.Literal(owner)),
            ]
        await self._run(*statements)

    async def create_database(self, names: Names, limit: int, claim: str) -> None:
        owner = sql.Identifier(names.owner)
        # The admin must be able to act as the owner to create a database for it (PostgreSQL
        # 16 asks this of a non-superuser admin, as on RDS).
        await self._run(sql.SQL("GRANT {} TO CURRENT_USER").format(owner))
        try:
            await self._run(
                sql.SQL("CREATE DATABASE {} OWNER {} CONNECTION LIMIT {}").format(
                    sql.Identifier(names.database), owner, sql.Literal(limit)
                )
            )
        except psycopg.errors.DuplicateDatabase:
            pass  # an earlier attempt made it; the repair below finishes its setup
        await self.repair_database(names, limit, claim)

    async def repair_database(self, names: Names, limit: int, claim: str) -> None:
        database = sql.Identifier(names.database)
        await self._run(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(database, sql.Identifier(names.owner)),
            sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(database, sql.Literal(limit)),
            # Only its own logins may connect: the owner role's members.
            sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(database),
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(database, sql.Literal(claim)),
        )

    async def create_extensions(self, server: str, extensions: list[str]) -> None:
        """In this session's database."""
        for extension in extensions:
            statement = sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(
                sql.Identifier(extension)
            )
            try:
                await self._run(statement)
            except (psycopg.errors.UndefinedFile, psycopg.errors.FeatureNotSupported):
                # Allowed by the platform file, missing on the server: retrying cannot help.
                raise PermanentError(
                    f"extension {extension} is not available on PostgreSQL server {server}: "
                    "install it there, or take it out of postgres.extensions and "
                    "spec.postgres.extensions",
                    reason="ExtensionUnavailable",
                ) from None

    async def set_password(self, login: str, password: SecretStr, valid_until: datetime) -> None:
        verifier = self._db.pgconn.encrypt_password(
            password.get_secret_value().encode(), login.encode(), b"scram-sha-256"
        )
        await self._run(
            sql.SQL("ALTER ROLE {} LOGIN PASSWORD {} VALID UNTIL {}").format(
                sql.Identifier(login), sql.Literal(verifier.decode()), _timestamp(valid_until)
            )
        )

    async def retire(self, login: str) -> None:
        """The login stops working now: no LOGIN, no password, its sessions ended."""
        if not await self._rows("SELECT 1 FROM pg_roles WHERE rolname = %(n)s", {"n": login}):
            return
        await self._run(
            sql.SQL("ALTER ROLE {} NOLOGIN PASSWORD NULL").format(sql.Identifier(login))
        )
        await self._rows(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %(n)s",
            {"n": login},
        )

    async def drop(self, names: Names) -> None:
        """The database (its sessions ended first) and every role of the workload."""
        await self._run(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(names.database)
            ),
            sql.SQL("DROP ROLE IF EXISTS {}").format(
                sql.SQL(", ").join(sql.Identifier(n) for n in (*names.logins, names.owner))
            ),
        )


def _timestamp(value: datetime) -> sql.Composable:
    return sql.Literal(value.astimezone(UTC).isoformat())


def _utc(value: datetime | None) -> datetime | None:
    # 'infinity' comes back as datetime.max without a zone.
    if value is None or value.tzinfo is None:
        return None
    return value.astimezone(UTC)


def database_view(row: dict[str, Any], extensions: list[str]) -> DatabaseView:
    return DatabaseView(
        owner=row["owner"],
        connection_limit=row["datconnlimit"],
        public_connect=row["public_connect"],
        comment=row["comment"],
        extensions=extensions,
    )
