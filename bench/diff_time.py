"""Time of `idpctl diff` for one workload and for a directory of 50, on the local stack.

    .venv/bin/python bench/diff_time.py [--workloads 50] [--runs 5]

Starts `idpctl dev`'s stack in a temporary directory (Temporal dev server with its SQLite file,
the worker as its own process, moto, the Synadia emulator with a real nats-server, the real
PostgreSQL server, a bare git repository), writes N workload files, each with a registry, a NATS
user with its sealed credentials and a database on the stack's server `local`, applies them and
waits until every one is Ready. Then it runs the real CLI as a user does, `idpctl diff -f FILE`
and `idpctl diff -f DIR`, as processes with the stack's environment (what `idpctl dev` tells a
second shell to export), each several times:

- in sync: the files as applied (exit 0);
- changed: every file edited, not applied (a lifecycle rule and a publish permission: exit 1);
- new: N further workloads, never applied (exit 1).

Each run is the whole command, start-up included: reading and validating the files, connecting,
the worker's platform settings, each workload's books (a query) and each capability's preview (a
standalone activity on the worker, 8 workloads at a time).
"""

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import running
import yaml
from onboarding import all_ready

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS)]  # the workload documents the tests use

from support.postgres import postgres_workload_document  # noqa: E402

from idp.models import Workload  # noqa: E402
from starter import dev, temporal  # noqa: E402

SYSTEM = "difftime"
NATS = {"permissions": {"publish": {"allow": ["bench.>"]}}}
IDPCTL = str(Path(sys.executable).parent / "idpctl")


def document(name: str, *, changed: bool = False) -> dict[str, Any]:
    """A workload on the stack's server `local`, as a user's file holds it; `changed` edits
    a registry lifecycle rule and a NATS publish permission."""
    spec: dict[str, Any] = {"nats": NATS}
    if changed:
        spec = {
            "registry": {"lifecycle": {"keepLast": 10}},
            "nats": {"permissions": {"publish": {"allow": ["bench.>", "audit.>"]}}},
        }
    return postgres_workload_document(SYSTEM, name, spec=spec)


def write(directory: Path, names: list[str], *, changed: bool = False) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = directory / f"{name}.yaml"
        path.write_text(yaml.safe_dump(document(name, changed=changed), sort_keys=False))
        paths.append(path)
    return paths


@dataclass
class Case:
    name: str
    files: str
    args: list[str]
    expected: int
    seconds: list[float] = field(default_factory=list)
    lines: int = 0  # of the diff printed


def timed(stack: dev.Stack, case: Case, runs: int) -> Case:
    """Run `idpctl diff` `runs` times, each of which must exit as the case expects."""
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(
            [IDPCTL, "diff", *case.args], env=stack.env(), capture_output=True, text=True
        )
        case.seconds.append(time.perf_counter() - started)
        if done.returncode != case.expected:
            raise SystemExit(
                f"error: idpctl diff {shlex.join(case.args)} exited {done.returncode}, expected "
                f"{case.expected}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        case.lines = len(done.stdout.splitlines())
    return case


async def measure(n: int, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="idp-diff-time-") as tmp:
        root = Path(tmp)
        host = "127.0.0.1"
        stack = dev.Stack.on_free_ports(root / "stack", host)
        names = [f"w{i:03}" for i in range(n)]
        cases: list[Case] = []
        try:
            await dev.start(stack)
            if stack.postgres is None:
                raise SystemExit(
                    "error: the stack has no PostgreSQL (see bench/postgres_onboarding)"
                )
            client = await temporal.connect(temporal.TemporalSettings(address=stack.address))
            applied = write(root / "applied", names)
            started = time.perf_counter()
            await all_ready(client, [Workload.model_validate(document(name)) for name in names])
            onboarding = time.perf_counter() - started
            one, many = applied[0], root / "applied"
            fresh = root / "new"
            # How much of every run is start-up alone: the interpreter and the imports.
            cases = [Case("start-up (--help)", "-", ["--help"], 0)]
            cases += [
                Case("in sync", "1 file", ["-f", str(one)], 0),
                Case("in sync", f"dir of {n}", ["-f", str(many)], 0),
            ]
            for case in cases:
                timed(stack, case, runs)
            write(many, names, changed=True)
            write(fresh, [f"n{i:03}" for i in range(n)])
            later = [
                Case("every file changed", "1 file", ["-f", str(one)], 1),
                Case("every file changed", f"dir of {n}", ["-f", str(many)], 1),
                Case("new, not applied", "1 file", ["-f", str(fresh / "n000.yaml")], 1),
                Case("new, not applied", f"dir of {n}", ["-f", str(fresh)], 1),
            ]
            for case in later:
                timed(stack, case, runs)
            cases += later
        finally:
            stack.stop()
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")  # fmt: skip
    print(f"{n} workloads applied and Ready in {onboarding:.1f} s; each: registry (moto), NATS "
          "user and sealed credentials, database (PostgreSQL), manifests")  # fmt: skip
    print(f"each `idpctl diff` run {runs} times, the whole process timed\n")
    print(f"{'case':<20} {'files':<10} {'exit':>4} {'median (s)':>11} {'min (s)':>8} "
          f"{'max (s)':>8} {'lines shown':>12}  runs in order (s)")  # fmt: skip
    for case in cases:
        seconds = case.seconds
        print(f"{case.name:<20} {case.files:<10} {case.expected:>4} "
              f"{statistics.median(seconds):>11.2f} {min(seconds):>8.2f} {max(seconds):>8.2f} "
              f"{case.lines:>12}  {' '.join(f'{s:.2f}' for s in seconds)}")  # fmt: skip
    print("\ncommands, in the temporary directory, with the stack's TEMPORAL_ADDRESS, "
          "IDP_PLATFORM_CONFIG and IDP_CODEC_KEYS:")  # fmt: skip
    for case in cases:
        shown = [
            str(Path(a).relative_to(root)) if a.startswith(str(root)) else a for a in case.args
        ]
        print(f"  idpctl diff {shlex.join(shown)}")
    print(f"command: {shlex.join([os.path.relpath(sys.executable), *sys.argv])}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    arguments = parser.parse_args()
    running.run(measure(arguments.workloads, arguments.runs))
