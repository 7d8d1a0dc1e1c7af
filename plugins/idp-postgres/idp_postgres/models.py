"""What users and platform teams write, and what the capability records.

- `PostgresSpec` is `spec.postgres` of a Workload: which server, the database and its extensions,
  a connection limit, and the credential policy in the words NATS credentials use.
- `PostgresSettings` is the platform file's `postgres` section: the servers by name and the
  extensions workloads may enable. It holds no secret: the admin password comes from an
  environment variable it names, or from RDS IAM database authentication.
- The outputs, memory, observation and plan are the capability's books; none holds a password.
"""

import hashlib
import json
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import Field, model_validator

from idp.capability import Plan
from idp.credentials import IssueReason
from idp.delivery import CredentialMetadata, DeliveryState
from idp.durations import Duration
from idp.models import Delivery, Model, NatsCredentials
from idp.names import Label, Matches, Subdomain
from idp.platform import EnvName

# PostgreSQL cuts identifiers at 63 bytes (NAMEDATALEN - 1). The roles add "_owner" and
# "_login1" to the database's name, so the database gets the rest.
IDENTIFIER_MAX = 63
ROLE_SUFFIX_MAX = len("_login1")
DATABASE_MAX = IDENTIFIER_MAX - ROLE_SUFFIX_MAX

Identifier = Annotated[
    str,
    Matches(
        rf"^[a-z_][a-z0-9_]{{0,{DATABASE_MAX - 1}}}$",
        f"at most {DATABASE_MAX} lowercase letters, digits or '_', not starting with a digit "
        f"(so that its roles, <name>_owner and <name>_login1, fit PostgreSQL's "
        f"{IDENTIFIER_MAX}-byte limit)",
    ),
]
Extension = Annotated[
    str,
    Matches(r"^[a-z_][a-z0-9_-]{0,62}$", "an extension name such as citext or pg_trgm"),
]
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class PostgresCredentials(NatsCredentials):
    """The same vocabulary as NATS credentials; a password has no key, so `keyRotation` is how
    often a new password is set whatever the ttl."""

    key_rotation: Duration | None = Field(
        None, description="Set a new password this often, whatever the ttl."
    )
    rotation_grace: Duration = Field(
        timedelta(hours=1),
        json_schema_extra={"default": "1h"},
        description="How long the previous login keeps working after a new password is "
        "delivered, so running pods pick the new one up first.",
    )
    secret_name: Subdomain | None = Field(None, description="<workload>-postgres when unset.")


class PostgresSpec(Model):
    """`spec.postgres`: a database of its own on one of the platform's servers."""

    server: Label = Field(description="A server of the platform file's postgres.servers.")
    database: Identifier | None = Field(
        None,
        description="<system>_<name> when unset ('-' written '_'), shortened with a stable "
        "hash when too long. Fixed once created: it holds the workload's data.",
    )
    extensions: list[Extension] = Field(
        [], description="Enabled in the database; each from the platform's postgres.extensions."
    )
    connection_limit: int = Field(
        20, ge=1, le=10_000, description="Concurrent connections to the database."
    )
    credentials: PostgresCredentials = PostgresCredentials()

    @model_validator(mode="after")
    def _unique_extensions(self) -> "PostgresSpec":
        repeated = sorted({e for e in self.extensions if self.extensions.count(e) > 1})
        if repeated:
            raise ValueError(f"extensions must be unique; repeated: {', '.join(repeated)}")
        return self


class IamAuth(Model):
    """RDS IAM database authentication: the worker's AWS identity signs a 15-minute token
    instead of a stored password (the admin user needs the rds_iam role)."""

    region: str = Field(min_length=1, description="The RDS instance's region.")


class AdminAccess(Model):
    """How the worker logs in to create databases and roles: a role with CREATEDB and
    CREATEROLE (rds_superuser on RDS)."""

    user: str = Field("postgres", min_length=1, max_length=IDENTIFIER_MAX)
    password_env: EnvName | None = Field(
        None, description="The environment variable holding its password."
    )
    iam: IamAuth | None = None

    @model_validator(mode="after")
    def _one_way_in(self) -> "AdminAccess":
        if (self.password_env is None) == (self.iam is None):
            raise ValueError("set exactly one of passwordEnv and iam")
        return self


class ServerSettings(Model):
    name: Label
    host: str = Field(min_length=1, description="Where the worker reaches the server.")
    port: int = Field(5432, ge=1, le=65535)
    sslmode: SslMode = Field(
        "verify-full", description="libpq's sslmode, for the worker and in delivered secrets."
    )
    workload_host: str | None = Field(
        None, description="The host workloads connect to, when not `host` (a private name)."
    )
    maintenance_database: str = Field("postgres", min_length=1)
    admin: AdminAccess


class PostgresSettings(Model):
    """The platform file's `postgres` section; without it the platform offers no databases."""

    servers: list[ServerSettings] = Field(min_length=1)
    extensions: list[Extension] = Field(
        [], description="The extensions a workload may enable: the platform team's allow-list."
    )

    @model_validator(mode="after")
    def _unique_servers(self) -> "PostgresSettings":
        names = [s.name for s in self.servers]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"server names must be unique; repeated: {', '.join(repeated)}")
        return self

    def server(self, name: str) -> ServerSettings | None:
        return next((s for s in self.servers if s.name == name), None)


class Connection(Model):
    """What a delivered secret tells the workload besides the password."""

    server: str
    host: str
    port: int
    database: str
    sslmode: str = Field(description="libpq's sslmode.")


def delivery_digest(kind: Delivery, secret_name: str, conn: Connection) -> str:
    """Changes when the delivered secret must change: another delivery, secret name, or
    connection details (a server moved to another host, say)."""
    value = [kind, secret_name, conn.model_dump(mode="json")]
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


class Names(Model):
    """The names a workload's database and roles have on its server."""

    database: str
    owner: str = Field(description="NOLOGIN; owns the database and everything created in it.")
    logins: tuple[str, str] = Field(description="The two logins that take turns.")

    def other(self, login: str) -> str:
        return self.logins[1] if login == self.logins[0] else self.logins[0]


class PostgresOutputs(CredentialMetadata):
    """The database, the login in use and its credential's metadata (`public_key` is the
    login's name); never the password."""

    server: str
    host: str
    port: int
    database: str
    owner: str
    delivery: Delivery
    location: str
    secret_name: str
    delivery_digest: str = Field(description="Changes when the delivered secret must change.")
    next_refresh_at: datetime
    reason: IssueReason

    @property
    def login(self) -> str:
        return self.public_key


class Retirement(Model):
    """A login whose password was replaced: it stops working at `at`."""

    login: str
    at: datetime


class PostgresMemory(Model):
    retiring: list[Retirement] = []
    # As last made so, to tell a spec change from someone's edit.
    connection_limit: int | None = None
    extensions: list[str] = []


class RoleView(Model):
    name: str
    login: bool
    inherit: bool
    privileged: list[str] = Field(
        description="Attributes it must not have that it has: SUPERUSER, CREATEDB, ..."
    )
    valid_until: datetime | None
    comment: str | None = Field(description="Ours name the workflow that made the role.")
    member_of_owner: bool = False
    runs_as_owner: bool = Field(False, description="Its sessions start with SET ROLE owner.")


class DatabaseView(Model):
    owner: str
    connection_limit: int
    public_connect: bool = Field(description="Whether every role may connect (the default).")
    comment: str | None
    extensions: list[str] = Field(description="Of those the spec names, the ones installed.")


class PostgresObservation(Model):
    connection: Connection = Field(description="What a delivered secret would say now.")
    delivery_digest: str = Field(description="Of where a secret would go now, and what it says.")
    database: DatabaseView | None
    roles: dict[str, RoleView] = Field(description="The workload's roles that exist, by name.")
    delivered: DeliveryState | None = Field(
        None,
        description="Whether the recorded version is still delivered, unaltered; None when "
        "not looked at (nothing delivered yet, or the policy issues anyway).",
    )


class RoleState(Model):
    """What one of the workload's roles must be; apply makes it so, creating it if missing."""

    name: str
    login: bool | None = Field(description="None: not judged, this pass sets it anyway.")
    member: bool = Field(description="A login: member of the owner role, running as it.")
    valid_until: datetime | None = Field(None, description="The active login's expiry.")


class Issue(Model):
    version: int
    login: str = Field(description="The login that gets the new password: the idle one.")
    reason: IssueReason
    retire: Retirement | None = Field(None, description="The login it takes over from.")
    problem: str | None = Field(None, description="What drifted, for DeliveryDrift.")


class PostgresPlan(Plan):
    roles: list[RoleState] = Field([], description="Roles to create or put back.")
    database: Literal["create", "repair"] | None = None
    extensions: list[str] = Field([], description="To create.")
    issue: Issue | None = None
    retire: list[str] = Field([], description="Logins whose grace is over.")
    drift: bool = Field(False, description="Whether it puts back what someone changed.")
