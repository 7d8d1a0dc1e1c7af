"""Split the worker's CPU, as bench/profile_worker.py measured it, over what its threads were doing.

    .venv/bin/python bench/profile_split.py RAW JSON

RAW is profile_worker.py's --py-spy output (py-spy raw, --threads), JSON its --json result. Each
thread's CPU comes from /proc (JSON); py-spy's samples only divide it: a thread group's CPU is
shared out over the costs in proportion to its samples, idle samples left out. The git children's
CPU is a row of its own; threads that have exited (asyncio's one waitpid thread per child process)
go to git spawning. A sample goes to the first cost below that any of its frames matches.
"""

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

RULES: list[tuple[str, tuple[str, ...]]] = [
    ("A  httpx.AsyncClient construction: ssl.create_default_context per client",
     ("create_default_context", "create_ssl_context")),
    ("5  sealing (RSA-OAEP + AES-GCM, certificate cache)", ("idp/sealing.py",)),
    ("B  Synadia: find_user lists every user of the account", ("find_user (", "list_nats_users")),
    ("3b git: spawning from the worker (fork/exec, child watcher, pipes)",
     ("create_subprocess_exec", "ThreadedChildWatcher", "_UnixSubprocessTransport",
      "_UnixReadPipeTransport", "_UnixWritePipeTransport", "BaseSubprocessTransport",
      "asyncio-waitpid", "SubprocessStreamProtocol", "Process.communicate", "Process.wait",
      "_child_watcher_callback")),
    ("3c git: state store in Python (stale-lock rglob of the clone, plan)",
     ("idp/statestore.py", "idp/statechange.py", "_RecursiveWildcardSelector",
      "_WildcardSelector")),
    ("4a pydantic: Temporal payload converter", ("temporalio/contrib/pydantic.py",)),
    ("1a sandbox: new workflow instance (re-import of the workflow module)",
     ("_create_workflow_instance",)),
    ("1b sandbox: serialization context per payload", ("get_serialization_context",
                                                        "_get_current_dc")),
    ("6a payload codec (AES-GCM) + payload visitor",
     ("starter/codec.py", "_visitor", "PayloadVisitor", "encode_completion", "decode_activation",
      "idp/keyring.py")),
    ("1c sandbox: workflow code + SDK in activations",
     ("_RunningWorkflow.activate", "_Instance.activate", "InSandbox", "workflows/")),
    ("6b boto3/botocore (registry, to_thread pool)",
     ("botocore", "boto3", "capabilities/registry", "idp/aws")),
    ("6c yaml rendering (manifests)", ("yaml/",)),
    ("6d logging", ("logging/__init__",)),
    ("6e Port publish (httpx)", ("idp/port.py", "activities/port.py")),
    ("C  Synadia: other calls (httpx/httpcore, JSON)",
     ("idp/synadia.py", "httpx/", "httpcore/", "anyio/", "idp/natsusers.py", "capabilities/nats",
      "capabilities/credentials", "idp/delivery")),
    ("4b pydantic: elsewhere", ("pydantic/", "pydantic_core")),
    ("6f Temporal SDK on the event loop (activity/workflow worker)", ("temporalio/",)),
    ("6g asyncio loop", ("asyncio/", "selectors.py")),
]  # fmt: skip
IDLE_LEAVES = ("_worker (concurrent", "EpollSelector.select", "Condition.wait", "SimpleQueue.get")


def classify(frames: list[str]) -> str | None:
    if frames[-1].startswith(IDLE_LEAVES):
        return None
    for name, patterns in RULES:
        if any(p in frame for frame in frames for p in patterns):
            return name
    return "6h other"


def group(thread: str) -> str:
    for marker, name in (
        ("MainThread", "main"),
        ("temporal_workflow", "workflow threads"),
        ("asyncio_", "to_thread pool"),
        ("asyncio-waitpid", "waitpid threads"),
    ):
        if marker in thread:
            return name
    return "other threads"


def split(raw: Path, result: dict) -> tuple[dict[str, float], dict[str, float]]:
    """(cost -> cpu-s, thread group -> cpu-s)."""
    samples: dict[str, Counter[str]] = defaultdict(Counter)
    groups: dict[str, str] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not (line.startswith("thread (") and count.isdigit()):
            continue  # the pieces of a frame whose name py-spy printed with a line break in it
        frames = stack.split(";")
        groups[frames[0].split("(")[1].split(")")[0]] = group(frames[0])
        cost = classify(frames)
        if cost:
            samples[group(frames[0])][cost] += int(count)
    cpu: Counter[str] = Counter()
    for thread, seconds in result["threads"].items():
        tid, comm = thread.split()[0], thread
        rust = "tokio" in comm or "workflow-proces" in comm
        name = "main" if "(main)" in comm else groups.get(tid, "rust" if rust else "other threads")
        cpu[name] += seconds
    cpu["waitpid threads"] += result["exited_threads_cpu"]
    costs: Counter[str] = Counter()
    for name, counts in samples.items():
        total = sum(counts.values())
        for cost, count in counts.items():
            costs[cost] += cpu.get(name, 0.0) * count / total
    for name, seconds in cpu.items():
        if name not in samples:
            costs["6i Rust core threads" if name == "rust" else f"?  {name}"] += seconds
    costs["3a git: the child processes' own CPU"] = result["git_children_cpu"]
    return dict(costs), dict(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw", type=Path)
    parser.add_argument("json", type=Path)
    args = parser.parse_args()
    result = json.loads(args.json.read_text())
    costs, cpu = split(args.raw, result)
    n, total = result["n"], result["worker_cpu"] + result["git_children_cpu"]
    print(f"thread groups (cpu-s): { {k: round(v, 2) for k, v in cpu.items()} }")
    print(f"| {'cost':70} | cpu-s/workload | share |")
    print(f"|{'-' * 72}|---------------:|------:|")
    for cost, seconds in sorted(costs.items(), key=lambda kv: -kv[1]):
        print(f"| {cost:70} | {seconds / n:14.4f} | {100 * seconds / total:4.1f}% |")
    print(f"| {'worker + git children, measured':70} | {total / n:14.4f} |  100% |")


if __name__ == "__main__":
    main()
