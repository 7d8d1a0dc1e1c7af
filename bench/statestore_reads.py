"""Concurrent reads of one git state store, as an onboarding asks for them: each workload's
Manifests listing and its Credentials read of the delivered secret, all at once.

    .venv/bin/python bench/statestore_reads.py [--directories 250] [--rounds 3]

A bare repository on disk holds one directory of two files per workload; a clone reads every
directory with `read` (texts) and `files` (object ids) at once, each round after nothing new was
pushed. Prints the wall time, the CPU of this process and of its git children, and the git
processes each round started.
"""

import argparse
import asyncio
import resource
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from idp.statestore import Change, StateStore


def cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


async def measure(tmp: Path, directories: int, rounds: int) -> None:
    store = StateStore(str(tmp / "state.git"), "main", tmp / "clone")
    names = [f"dev/bench/w{i}" for i in range(directories)]
    await asyncio.gather(
        *(store.apply(Change(n, {"a.yaml": f"n: {n}\n", "b.yaml": "b\n"}, n)) for n in names)
    )
    started: Counter[str] = Counter()
    run_git = store._git

    async def counted(*args: str, **kwargs):
        started[args[0]] += 1
        return await run_git(*args, **kwargs)

    store._git = counted  # type: ignore[method-assign]
    print(f"\n{2 * directories} reads of {directories} directories at once")
    print(f"{'round':>5} {'wall s':>8} {'process cpu-s':>14} {'git cpu-s':>10}  git processes")
    for round_ in range(1, rounds + 1):
        started.clear()
        own, children = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
        begun = time.perf_counter()
        await asyncio.gather(*(store.read(n) for n in names), *(store.files([n]) for n in names))
        wall = time.perf_counter() - begun
        own = cpu(resource.RUSAGE_SELF) - own
        children = cpu(resource.RUSAGE_CHILDREN) - children
        spawned = ", ".join(f"{name} {n}" for name, n in sorted(started.items()))
        print(f"{round_:>5} {wall:>8.2f} {own:>14.2f} {children:>10.2f}  {spawned}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--directories", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="idp-reads-") as tmp:
        remote = Path(tmp) / "state.git"
        subprocess.run(["git", "init", "-q", "--bare", "--initial-branch=main", remote], check=True)
        asyncio.run(measure(Path(tmp), args.directories, args.rounds))
