"""Where the worker's CPU goes during an onboarding: N workloads applied at once on a fresh local
stack (started as bench/onboarding.py starts it), the worker's CPU per thread and that of its
git children, its Temporal metrics, and optionally py-spy samples of its Python threads (py-spy is
no dependency of the project: `.venv/bin/pip install py-spy` first).

    .venv/bin/python bench/profile_worker.py --n 250 [--py-spy out.raw [--gil]] [--count-git]
        [--json result.json]

--gil samples only the thread holding the GIL: where the worker's Python CPU goes. Without it
every thread is sampled, and py-spy counts some threads that wait on a socket as busy: in a
profile of 250 workloads, a new connection per AWS call looked like 5% of the worker's samples,
yet serving moto with keep-alive left the client's CPU per call unchanged (2 ms).

The window is from the first apply to the last workload Ready; the worker's start-up is outside it.
The state store is served by `git daemon` (bench/measure.py's MeteredStack), so the worker's git
children are its own half of each command. --count-git puts a `git` on the worker's PATH that logs
each invocation (the shell it runs costs a little CPU, so do not combine it with a CPU measurement
you mean to compare).
"""

import argparse
import asyncio
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import running
from measure import MeteredStack
from onboarding import all_ready, workload

from starter import dev, temporal

TICKS = os.sysconf("SC_CLK_TCK")
METRICS = (
    "sticky_cache",
    "workflow_task",
    "workflow_activation",
    "workflow_completed",
    "activity_execution",
    "activity_task",
    "request",
)


def proc_cpu(pid: int) -> tuple[float, float]:
    """(own user+system, waited-for children user+system) in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime) / TICKS, (cutime + cstime) / TICKS


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    out: dict[int, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except OSError:
            continue
        comm = text.split("(", 1)[1].rsplit(")", 1)[0]
        fields = text.rsplit(")", 1)[1].split()
        out[int(task.name)] = (comm, (int(fields[11]) + int(fields[12])) / TICKS)
    return out


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, for how noisy the window was."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / TICKS, sum(values) / TICKS


async def metrics(url: str) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(url)).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not any(m in line for m in METRICS):
            continue
        name, _, value = line.rpartition(" ")
        if name.endswith("_bucket") or "_bucket{" in name:
            continue
        out[name] = float(value)
    return out


def git_shim(root: Path) -> Path:
    real = shutil.which("git")
    assert real
    shim = root / "shim"
    shim.mkdir()
    # Logs the command, after however many `-c name=value` the store puts before it.
    (shim / "git").write_text(
        "#!/bin/sh\n"
        'logged() { while [ "$1" = -c ]; do shift 2; done; echo "$PPID $1" >> "$LOG"; }\n'
        f'LOG={shlex.quote(str(root / "git-calls.log"))} logged "$@"\nexec {real} "$@"\n'
    )
    (shim / "git").chmod(0o755)
    return shim


async def wait_for_worker(stack: dev.Stack) -> int:
    log = stack.logs / "worker.log"
    for _ in range(600):
        if log.exists() and "worker polling task queue" in log.read_text():
            return stack.processes["worker"].pid
        if stack.dead():
            raise SystemExit(stack.dead())
        await asyncio.sleep(0.2)
    raise SystemExit("worker did not start")


async def measure(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="idp-profile-") as tmp:
        root = Path(tmp)
        if args.count_git:
            os.environ["PATH"] = f"{git_shim(root)}:{os.environ['PATH']}"
        stack = MeteredStack.on_free_ports(root / "stack")
        stack.root.mkdir()
        spy = None
        try:
            await dev.start(stack)
            pid = await wait_for_worker(stack)
            client = await temporal.connect(temporal.TemporalSettings(address=stack.address))
            await asyncio.sleep(3)  # let start-up settle
            items = [workload("onboard", f"w{i:04}") for i in range(args.n)]
            if args.py_spy:
                spy = await asyncio.create_subprocess_exec(
                    str(Path(sys.executable).parent / "py-spy"),
                    "record", "--pid", str(pid), "--rate", str(args.rate),
                    "--format", "raw", "--threads", "--nonblocking",
                    *(["--gil"] if args.gil else []),
                    "-o", str(Path(args.py_spy).resolve()),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
                await asyncio.sleep(1)
            m0 = await metrics(stack.metrics_url)
            t0, c0, mach0 = thread_cpu(pid), proc_cpu(pid), machine_cpu()
            others0 = {n: proc_cpu(p.pid) for n, p in stack.processes.items() if n != "worker"}
            started = time.perf_counter()
            await all_ready(client, items)
            seconds = time.perf_counter() - started
            t1, c1, mach1 = thread_cpu(pid), proc_cpu(pid), machine_cpu()
            others1 = {n: proc_cpu(p.pid) for n, p in stack.processes.items() if n != "worker"}
            m1 = await metrics(stack.metrics_url)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                await asyncio.wait_for(spy.wait(), 120)
            calls: Counter[str] = Counter()
            if args.count_git:
                log = root / "git-calls.log"
                for line in log.read_text().splitlines() if log.exists() else []:
                    ppid, _, sub = line.partition(" ")
                    if int(ppid) == pid:
                        calls[sub] += 1
        finally:
            if spy is not None and spy.returncode is None:
                spy.send_signal(signal.SIGINT)
                await asyncio.wait_for(spy.wait(), 120)
            stack.stop()
    threads: dict[str, float] = {}
    for tid, (comm, cpu) in t1.items():
        delta = cpu - t0.get(tid, (comm, 0.0))[1]
        if delta > 0:
            threads[f"{tid} {comm}{' (main)' if tid == pid else ''}"] = round(delta, 2)
    gone = (c1[0] - c0[0]) - sum(threads.values())
    busy, total = mach1[0] - mach0[0], mach1[1] - mach0[1]
    return {
        "n": args.n,
        "seconds": round(seconds, 1),
        "worker_cpu": round(c1[0] - c0[0], 2),
        "git_children_cpu": round(c1[1] - c0[1], 2),
        "threads": dict(sorted(threads.items(), key=lambda kv: -kv[1])),
        "exited_threads_cpu": round(gone, 2),
        "others_cpu": {n: round(sum(others1[n]) - sum(others0[n]), 2) for n in others1},
        "machine_busy_share": round(busy / total, 3) if total else None,
        "metrics": {k: m1[k] - m0.get(k, 0.0) for k in sorted(m1) if m1[k] != m0.get(k, 0.0)},
        "git_calls": dict(calls.most_common()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=250)
    parser.add_argument("--py-spy", help="write py-spy raw samples of the worker here")
    parser.add_argument("--gil", action="store_true", help="sample only the GIL's holder")
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--count-git", action="store_true")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    if args.gil and not args.py_spy:
        parser.error("--gil chooses what py-spy samples: give --py-spy FILE with it")
    result = running.run(measure(args))
    n = result["n"]
    own, git = result["worker_cpu"], result["git_children_cpu"]
    print(json.dumps(result, indent=1))
    print(
        f"\n{n} workloads Ready in {result['seconds']} s; worker {own:.1f} cpu-s + git children "
        f"{git:.1f} = {(own + git) / n:.3f} cpu-s per workload "
        f"(own {own / n:.3f}, git {git / n:.3f}); machine busy {result['machine_busy_share']}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
