"""One hostname with many API targets: render and commit time, and commits per changed target.

    .venv/bin/python bench/api_routes.py [--targets 200]

Two measurements:
- the domain layer alone: render the Gateway API objects of N targets and commit them to a bare
  git repository through the state store, then change one target and commit again;
- end to end on the local stack (`idpctl dev`'s parts in a temporary directory): an ApiAggregator
  and N workloads applied at once, each with one target on the hostname, until every workload's
  Api condition says Routed; then one workload changes its path, and a drift check of the
  aggregator changes nothing.
Prints one table and stops everything.
"""

import argparse
import asyncio
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import running

from idp import ids
from idp.gateway import aggregator_directory, render_aggregator
from idp.models import ApiAggregator, ApiTarget, Workload
from idp.routes import RouteTarget
from idp.statechange import Change
from idp.statestore import StateStore
from starter import dev, operations, temporal
from workflows.aggregator import ApiAggregatorWorkflow
from workflows.messages import WaitReadyRequest
from workflows.state import ConditionStatus, Phase
from workflows.workload import WorkloadWorkflow

HOSTNAME = "api.bench.example.com"


def aggregator() -> ApiAggregator:
    return ApiAggregator.model_validate(
        {
            "metadata": {"name": "public"},
            "spec": {
                "hostname": HOSTNAME,
                "gateway": {"name": "edge", "namespace": "gateways", "sectionName": "https"},
                "destination": "dev",
                "namespace": "platform",
                "maxRequestBodySize": "10Mi",
            },
        }
    )


def target(name: str, path: str) -> ApiTarget:
    return ApiTarget(aggregator=HOSTNAME, paths=[path], service={"name": name, "port": 8080})


def workload(name: str, path: str) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": name, "system": "bench"},
            "spec": {
                "owner": "bench",
                "destination": "dev",
                "namespace": f"ns{int(name[1:]) % 10}",
                "api": [target(name, path).model_dump()],
            },
        }
    )


def bare_repo(path: Path) -> Path:
    subprocess.run(["git", "init", "--quiet", "--bare", "-b", "main", str(path)], check=True)
    return path


def git_commits(repo: Path) -> int:
    out = subprocess.run(
        ["git", "rev-list", "--count", "main"], cwd=repo, capture_output=True, text=True
    )
    return int(out.stdout.strip() or 0)


async def domain_layer(n: int, tmp: Path) -> dict[str, float]:
    repo = bare_repo(tmp / "direct.git")
    store = StateStore(str(repo), "main", tmp / "direct-clone")
    agg = aggregator()
    targets = [
        RouteTarget.of("bench", f"w{i:04}", f"ns{i % 10}", 0, target(f"w{i:04}", f"/svc{i}"))
        for i in range(n)
    ]
    directory = aggregator_directory("", agg)

    started = time.perf_counter()
    files = render_aggregator(agg, targets)
    rendered = time.perf_counter()
    await store.apply(Change(directory, files, "bench: all targets"))
    committed = time.perf_counter()

    before = git_commits(repo)
    targets[n // 2] = targets[n // 2].model_copy(update={"paths": ["/changed"]})
    changed_started = time.perf_counter()
    await store.apply(Change(directory, render_aggregator(agg, targets), "bench: one target"))
    changed = time.perf_counter()
    one_change_commits = git_commits(repo) - before

    before = git_commits(repo)
    await store.apply(Change(directory, render_aggregator(agg, targets), "bench: no change"))
    return {
        "files": len(files),
        "render_ms": (rendered - started) * 1000,
        "commit_ms": (committed - rendered) * 1000,
        "change_ms": (changed - changed_started) * 1000,
        "change_commits": one_change_commits,
        "nochange_commits": git_commits(repo) - before,
    }


async def routed(client, item: Workload, generation: int) -> None:
    handle = client.get_workflow_handle(item.workflow_id)
    status = await handle.execute_update(
        WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=generation, timeout_seconds=600)
    )
    api = next((c for c in status.conditions if c.type == "Api"), None)
    if status.phase != Phase.READY or api is None or api.status != ConditionStatus.TRUE:
        raise SystemExit(f"{item.workflow_id}: {status.phase.value} {status.conditions}")


async def end_to_end(n: int, tmp: Path) -> dict[str, float]:
    (tmp / "stack").mkdir()
    stack = dev.Stack.on_free_ports(tmp / "stack")
    try:
        await dev.start(stack)
        client = await temporal.connect(temporal.TemporalSettings(address=stack.address))
        await operations.apply_aggregator(client, "idp", aggregator())
        items = [workload(f"w{i:04}", f"/svc{i}") for i in range(n)]

        started = time.perf_counter()
        results = await asyncio.gather(
            *(operations.apply_workload(client, "idp", item) for item in items)
        )
        await asyncio.gather(
            *(routed(client, i, r.generation) for i, r in zip(items, results, strict=True))
        )
        all_routed = time.perf_counter() - started

        before = git_commits(stack.state_store)
        moved = workload(items[n // 2].metadata.name, "/changed")
        changed_started = time.perf_counter()
        result = await operations.apply_workload(client, "idp", moved)
        await routed(client, moved, result.generation)
        change_seconds = time.perf_counter() - changed_started
        change_commits = git_commits(stack.state_store) - before

        before = git_commits(stack.state_store)
        handle = client.get_workflow_handle(ids.aggregator_id(HOSTNAME))
        generation = (await handle.query(ApiAggregatorWorkflow.status)).generation
        await handle.signal(ApiAggregatorWorkflow.reconcile)
        async with asyncio.timeout(60):
            while True:
                status = await handle.query(ApiAggregatorWorkflow.status)
                if status.written_generation == generation and status.next_check_at:
                    break
                await asyncio.sleep(0.05)
        return {
            "all_routed_s": all_routed,
            "change_s": change_seconds,
            "change_commits": change_commits,
            "nochange_commits": git_commits(stack.state_store) - before,
        }
    finally:
        stack.stop()


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="idp-bench-") as name:
        tmp = Path(name)
        direct = await domain_layer(n, tmp)
        stack = await end_to_end(n, tmp)
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")  # fmt: skip
    print(f"one hostname, {n} targets ({direct['files']:.0f} files: HTTPRoutes, policies)")
    rows = [
        ("render all targets (ms)", f"{direct['render_ms']:.1f}"),
        ("commit all targets to a bare repo (ms)", f"{direct['commit_ms']:.1f}"),
        ("render + commit one changed target (ms)", f"{direct['change_ms']:.1f}"),
        ("commits for one changed target", f"{direct['change_commits']:.0f}"),
        ("commits for an unchanged render", f"{direct['nochange_commits']:.0f}"),
        (f"stack: {n} workloads applied at once → all Routed (s)", f"{stack['all_routed_s']:.2f}"),
        ("stack: one workload changes its path → Routed (s)", f"{stack['change_s']:.2f}"),
        ("stack: commits for that change", f"{stack['change_commits']:.0f}"),
        ("stack: commits for an aggregator drift check", f"{stack['nochange_commits']:.0f}"),
    ]
    width = max(len(label) for label, _ in rows)
    print(f"{'measure':<{width}}  {'value':>10}")
    for label, value in rows:
        print(f"{label:<{width}}  {value:>10}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=200)
    running.run(main(parser.parse_args().targets))
