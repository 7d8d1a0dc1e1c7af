"""Onboarding N workloads that each get a database, on the local stack: time until all are Ready.

    .venv/bin/python bench/postgres_onboarding.py [--workloads 100]

Starts `idpctl dev`'s stack in a temporary directory (Temporal dev server with its SQLite file, the
worker as its own process, the real PostgreSQL server with fsync on, moto, the Synadia and Port
emulators, a bare git repository) and applies N workloads at once, each with `spec.postgres` on
the stack's server `local` and no registry: a database, its owner role, two logins, a password
sealed into the state store, and the ServiceAccount. The clock stops when every one is Ready.

Afterwards it checks what exists rather than taking the workflows' word: N databases on the
server and N sealed secrets in git, each committed once. Beside the time, the CPU seconds each
process of the stack spent over the run (its own, and its children's that exited: git for the
worker, the backends for PostgreSQL), from /proc.
"""

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import running
from onboarding import all_ready
from steady_state import cpu_seconds

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS)]  # the workloads and the census the tests use

from support.fleet import commits_per_file  # noqa: E402
from support.postgres import SECRET_FILE, postgres_workload  # noqa: E402

from idp.models import Workload  # noqa: E402
from idp_postgres.capability import claim  # noqa: E402
from starter import dev, temporal  # noqa: E402

SYSTEM = "pgonboard"


def workload(index: int) -> Workload:
    # On the server `idpctl dev` names `local`; no registry, as the database is what is measured.
    spec = {"registry": {"enabled": False}}
    return postgres_workload(SYSTEM, f"w{index:04}", spec=spec, server="local")


def databases(stack: dev.Stack, items: list[Workload]) -> int:
    """Databases on the server that carry one of `items`' claims."""
    assert stack.postgres is not None
    with psycopg.connect(stack.postgres.dsn) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_database "
            "WHERE shobj_description(oid, 'pg_database') = ANY (%s)",
            [[claim(item.workflow_id) for item in items]],
        ).fetchone()
    assert row is not None
    return int(row[0])


def secret_commits(repo: Path) -> list[int]:
    """For each sealed password in the state store, how many commits changed it."""
    touched = commits_per_file(repo)
    return [count for path, count in sorted(touched.items()) if path.endswith(f"/{SECRET_FILE}")]


async def measure(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="idp-pg-onboarding-") as tmp:
        host = "127.0.0.1"
        stack = dev.Stack.on_free_ports(Path(tmp), host)
        try:
            await dev.start(stack)
            if stack.postgres is None:
                raise SystemExit("error: the stack has no PostgreSQL (see the note above)")
            client = await temporal.connect(temporal.TemporalSettings(address=stack.address))
            items = [workload(i) for i in range(n)]
            pids = {name: process.pid for name, process in stack.processes.items()}
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            started = time.perf_counter()
            await all_ready(client, items)
            seconds = time.perf_counter() - started
            after = {name: cpu_seconds(pid) for name, pid in pids.items()}
            made = databases(stack, items)
            committed = secret_commits(stack.state_store)
        finally:
            stack.stop()
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")  # fmt: skip
    print("steps per workload: database, owner and two logins (PostgreSQL), sealed password, "
          "ServiceAccount")  # fmt: skip
    print(f"{'workloads':>9} {'all Ready (s)':>14} {'workloads/s':>12} {'databases':>10} "
          f"{'secrets':>8} {'commits per secret':>19}")  # fmt: skip
    per_secret = "/".join(str(c) for c in sorted(set(committed))) or "-"
    print(f"{n:>9} {seconds:>14.1f} {n / seconds:>12.1f} {made:>10} {len(committed):>8} "
          f"{per_secret:>19}")  # fmt: skip
    print(f"\nCPU seconds over the run, by process (own + exited children), of {seconds:.1f} s")
    for name in pids:
        own = after[name][0] - before[name][0]
        children = after[name][1] - before[name][1]
        print(f"  {name:<13} {own:>7.1f} + {children:>6.1f}")
    print(f"command: {shlex.join([os.path.relpath(sys.executable), *sys.argv])}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", type=int, default=100)
    running.run(measure(parser.parse_args().workloads))
