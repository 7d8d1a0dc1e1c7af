"""What the git state store's work costs in git processes, command by command: commits of
workloads' files in batches of a given size, then concurrent reads of every directory, as an
onboarding asks for them (each workload's Manifests listing and Credentials read).

    .venv/bin/python bench/statestore_git.py [--directories 1000] [--batches 10 50]

For each batch size, a bare repository on disk (the remote) and a clone: the directories are
written in batches of that many changes at once (one commit per batch when nothing else
writes), then all of them are read at once, twice, and once more after another clone has
committed (so that the reads must fetch its commit). The remote keeps pushes as packs, as the
local stack's does, unless --loose-remote. Prints, per phase, the wall time, the CPU of
this process, and each git command's count and CPU (its children included: a push's
receive-pack, a fetch's upload-pack).
"""

import argparse
import asyncio
import resource
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from idp.statechange import Change
from idp.statestore import StateStore
from starter.dev import keep_pushed_packs


def cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class Metered:
    """Counts the store's git commands and the CPU of each; one command runs at a time (the
    store holds its clone's lock around each), so the children's CPU between a command's start
    and end is its own."""

    def __init__(self, store: StateStore) -> None:
        self.count: Counter[str] = Counter()
        self.cpu: Counter[str] = Counter()
        run_git = store._git

        async def metered(*args: str, **kwargs):
            before = cpu(resource.RUSAGE_CHILDREN)
            try:
                return await run_git(*args, **kwargs)
            finally:
                self.count[args[0]] += 1
                self.cpu[args[0]] += cpu(resource.RUSAGE_CHILDREN) - before

        store._git = metered  # type: ignore[method-assign]

    async def phase(self, name: str, work) -> None:
        self.count.clear()
        self.cpu.clear()
        own, begun = cpu(resource.RUSAGE_SELF), time.perf_counter()
        await work
        wall, own = time.perf_counter() - begun, cpu(resource.RUSAGE_SELF) - own
        git = sum(self.cpu.values())
        print(f"  {name}: {wall:.2f} s, this process {own:.2f} cpu-s, git {git:.2f} cpu-s")
        for command, seconds in self.cpu.most_common():
            n = self.count[command]
            print(f"    {command:<12} {n:>5} x {1000 * seconds / n:6.1f} ms = {seconds:6.2f} cpu-s")


async def measure(tmp: Path, directories: int, batch: int) -> None:
    store = StateStore(str(tmp / "state.git"), "main", tmp / "clone")
    meter = Metered(store)
    names = [f"dev/bench/w{i}" for i in range(directories)]

    async def write() -> None:
        for start in range(0, directories, batch):
            await asyncio.gather(
                *(
                    store.apply(Change(n, {"a.yaml": f"n: {n}\n", "b.yaml": n * 20}, n))
                    for n in names[start : start + batch]
                )
            )

    async def read() -> None:
        await asyncio.gather(*(store.read(n) for n in names), *(store.files([n]) for n in names))

    print(f"\n{directories} directories written {batch} at a time, then {2 * directories} reads")
    await meter.phase("writes", write())
    for round_ in (1, 2):
        await meter.phase(f"reads, round {round_}", read())
    # Another worker's clone commits: the next reads find a head this clone must fetch.
    other = StateStore(str(tmp / "state.git"), "main", tmp / "other-clone")
    await other.apply(Change("dev/bench/other", {"a.yaml": "n: other\n"}, "another writer"))
    await meter.phase("reads after another writer's commit", read())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--directories", type=int, default=1000)
    parser.add_argument("--batches", type=int, nargs="+", default=[10, 50])
    parser.add_argument(
        "--loose-remote",
        action="store_true",
        help="leave the remote at git's default, unpacking small pushes into loose objects",
    )
    args = parser.parse_args()
    for batch in args.batches:
        with tempfile.TemporaryDirectory(prefix="idp-statestore-") as tmp:
            remote = Path(tmp) / "state.git"
            subprocess.run(
                ["git", "init", "-q", "--bare", "--initial-branch=main", remote], check=True
            )
            if not args.loose_remote:
                keep_pushed_packs(remote)
            asyncio.run(measure(Path(tmp), args.directories, batch))
