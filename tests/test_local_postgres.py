"""The local PostgreSQL server that tests and `idpctl dev` run: password logins over TCP only, so a
wrong password is refused and CONNECT privileges hold, and its data survives a restart."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from support.postgres import connect, local_postgres

from idp_postgres.local import LocalPostgres, LocalPostgresError


def test_the_superuser_logs_in_over_tcp_with_its_password_only(
    postgres_server: LocalPostgres,
) -> None:
    with connect(postgres_server) as admin:
        address = admin.execute("SELECT host(inet_server_addr())").fetchone()
        methods = admin.execute("SELECT DISTINCT auth_method FROM pg_hba_file_rules").fetchall()
    assert address == ("127.0.0.1",)
    assert methods == [("scram-sha-256",)]  # no trust, no peer: every login needs its password
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(postgres_server, password="not-" + postgres_server.admin_password)


def test_a_login_reaches_the_database_granted_to_it_and_no_other(
    postgres_server: LocalPostgres,
) -> None:
    login, password = "local_pg_login", "s3cret-for-the-test"
    granted, other = "local_pg_granted", "local_pg_other"
    with connect(postgres_server) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(login), sql.Literal(password)
        ))  # fmt: skip
        for database in (granted, other):
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            admin.execute(
                sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(
                    sql.Identifier(database)
                )
            )
        admin.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
            sql.Identifier(granted), sql.Identifier(login)
        ))  # fmt: skip

    with connect(postgres_server, user=login, password=password, dbname=granted) as session:
        assert session.execute("SELECT current_user").fetchone() == (login,)
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        connect(postgres_server, user=login, password=password, dbname=other)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(postgres_server, user=login, password="retired", dbname=granted)


def test_a_restart_keeps_the_data_and_the_password(tmp_path: Path) -> None:
    with local_postgres(tmp_path) as server:
        with connect(server) as admin:
            admin.execute("CREATE TABLE kept (value text)")
            admin.execute("INSERT INTO kept VALUES ('still here')")
    assert (tmp_path / "admin-password").stat().st_mode & 0o777 == 0o600

    # Another object, on whichever port is free now, as with the next `idpctl dev`.
    with local_postgres(tmp_path) as server:
        with connect(server) as admin:
            assert admin.execute("SELECT value FROM kept").fetchall() == [("still here",)]

    # The data only accepts the password it was made with: a lost one is not replaced silently.
    (tmp_path / "admin-password").unlink()
    with pytest.raises(LocalPostgresError, match="admin-password is missing"):
        LocalPostgres(tmp_path).start()
