"""The names a workload's database and roles get: stable for the workload's whole life, since
renaming a database is not something a reconcile pass may do to a workload's data."""

import hashlib

from idp.models import Workload
from idp_postgres.models import DATABASE_MAX, Names, PostgresSpec

HASH_LENGTH = 8


def database_name(workload: Workload, spec: PostgresSpec) -> str:
    """`spec.database`, else `<system>_<name>`; one too long keeps its start and gains a hash
    of the workload's id, so two long names that share a start still differ."""
    if spec.database:
        return spec.database
    name = f"{workload.metadata.system}_{workload.metadata.name}".replace("-", "_")
    if len(name) <= DATABASE_MAX:
        return name
    digest = hashlib.sha256(workload.workflow_id.encode()).hexdigest()[:HASH_LENGTH]
    return f"{name[: DATABASE_MAX - HASH_LENGTH - 1]}_{digest}"


def names(workload: Workload, spec: PostgresSpec) -> Names:
    return names_of(database_name(workload, spec))


def names_of(database: str) -> Names:
    """The roles of a database of ours, by its name."""
    return Names(
        database=database,
        owner=f"{database}_owner",
        logins=(f"{database}_login1", f"{database}_login2"),
    )
