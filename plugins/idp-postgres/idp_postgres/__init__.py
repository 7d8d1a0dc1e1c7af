"""A PostgreSQL database and login per workload, as an idp capability plugin.

Installing this package is all it takes: idp finds the capability through the entry-point group
`idp.capabilities`, workloads gain `spec.postgres` and the platform file a `postgres` section
(docs/capabilities.md and this package's README say how to configure them). Nothing in idp
names it.
"""

from idp_postgres.capability import Postgres

__all__ = ["Postgres"]
