"""Record the workflow histories that tests/test_replay.py replays.

    .venv/bin/python tests/histories/record.py [SCENARIO ...]

Run it when a new scenario is worth pinning (never to "fix" a failing replay: a history that no
longer replays means the code change needs `workflow.patched` or a new workflow version). Each
scenario runs on a fresh dev server with a low continue-as-new threshold, against a real git repo.
"""

import asyncio
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import boto3
from temporalio.client import Client, WorkflowHandle

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/, for support.*

from support.moto import MOTO_ACCOUNT_ID, moto_server  # noqa: E402
from support.port import port_stack  # noqa: E402
from support.secrets import ControllerKeys, controller_keys  # noqa: E402
from support.stack import bare_repo, git, platform_for, running_worker, start_dev_server  # noqa: E402

from emulators.synadia import DEFAULT_TOKEN, SynadiaEmulator  # noqa: E402
from idp.models import ApiAggregator, Workload  # noqa: E402
from idp.platform import AwsConfig, ClusterIdentity, Platform, SynadiaConfig  # noqa: E402
from idp.sealing import CertificateSource  # noqa: E402
from starter.operations import apply_aggregator, apply_workload, delete_aggregator  # noqa: E402
from worker import start_fleet_observer  # noqa: E402
from workflows.aggregator import ApiAggregatorWorkflow  # noqa: E402
from workflows.messages import RotateRequest, WaitReadyRequest  # noqa: E402
from workflows.observer import observer_id  # noqa: E402
from workflows.state import Phase  # noqa: E402
from workflows.workload import WorkloadWorkflow  # noqa: E402

QUEUE = "idp"
SYNADIA_TOKEN_ENV = "IDP_RECORD_SYNADIA_TOKEN"
REGION = "eu-west-1"
Scenario = Callable[[Client, Path, str], Awaitable[WorkflowHandle]]


def workload(name: str, **spec: object) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": name, "system": "replay"},
            "spec": {"owner": "team-demo", "destination": "dev", "namespace": "demo", **spec},
        }
    )


async def ready(handle: WorkflowHandle, generation: int) -> None:
    status = await handle.execute_update(
        WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=generation, timeout_seconds=30)
    )
    assert status.phase == Phase.READY, status


async def until_phase(handle: WorkflowHandle, phase: Phase) -> None:
    await until(handle, lambda s: s.phase == phase)


async def until(handle: WorkflowHandle, predicate, query=WorkloadWorkflow.status) -> None:
    """Poll a status query until predicate(status) holds."""
    async with asyncio.timeout(30):
        while not predicate(await handle.query(query)):
            await asyncio.sleep(0.1)


def repaired(status) -> bool:
    return any(c.reason == "DriftRepaired" for c in status.conditions)


async def apply_change_reconcile(client: Client, repo: Path, name: str) -> WorkflowHandle:
    await apply_workload(client, QUEUE, workload(name), request_id="run-1")
    handle = client.get_workflow_handle(workload(name).workflow_id)
    await ready(handle, 1)
    await apply_workload(client, QUEUE, workload(name, serviceAccount="renamed"), "run-2")
    await ready(handle, 2)
    await handle.signal(WorkloadWorkflow.reconcile)
    await handle.signal(WorkloadWorkflow.pause)
    await until_phase(handle, Phase.PAUSED)
    await handle.signal(WorkloadWorkflow.resume)
    await ready(handle, 2)
    return handle


async def drift_repair(client: Client, repo: Path, name: str) -> WorkflowHandle:
    await apply_workload(client, QUEUE, workload(name))
    handle = client.get_workflow_handle(workload(name).workflow_id)
    await ready(handle, 1)
    clone = repo.parent / f"clone-{name}"
    git("clone", "--quiet", str(repo), str(clone))
    git("rm", "--quiet", f"dev/demo/{name}/serviceaccount.yaml", cwd=clone)
    git("commit", "--quiet", "-m", "hand delete", cwd=clone)
    git("push", "--quiet", "origin", "main", cwd=clone)
    await handle.signal(WorkloadWorkflow.reconcile)
    await until(handle, repaired)
    return handle


async def degraded_then_recovered(client: Client, repo: Path, name: str) -> WorkflowHandle:
    hidden = repo.with_name("hidden.git")
    repo.rename(hidden)
    await apply_workload(client, QUEUE, workload(name))
    handle = client.get_workflow_handle(workload(name).workflow_id)
    await until_phase(handle, Phase.DEGRADED)
    hidden.rename(repo)
    # The failure is permanent until someone acts: here, the repository is back.
    await handle.signal(WorkloadWorkflow.reconcile)
    await ready(handle, 1)
    return handle


async def continue_as_new(client: Client, repo: Path, name: str) -> WorkflowHandle:
    await apply_workload(client, QUEUE, workload(name), request_id="run-1")
    handle = client.get_workflow_handle(workload(name).workflow_id)
    await ready(handle, 1)
    first = (await handle.describe()).run_id
    async with asyncio.timeout(60):
        while (await handle.describe()).run_id == first:
            await handle.signal(WorkloadWorkflow.reconcile)
            await asyncio.sleep(0.05)
    return client.get_workflow_handle(handle.id, run_id=first)


async def delete(client: Client, repo: Path, name: str) -> WorkflowHandle:
    await apply_workload(client, QUEUE, workload(name))
    handle = client.get_workflow_handle(workload(name).workflow_id)
    await ready(handle, 1)
    await handle.signal(WorkloadWorkflow.delete)
    await handle.result()
    return handle


async def registry_lifecycle(client: Client, repo: Path, name: str) -> WorkflowHandle:
    """Create, repair a deleted inline policy, then delete with deletionPolicy Delete."""
    w = workload(name, deletionPolicy="Delete")
    await apply_workload(client, QUEUE, w)
    handle = client.get_workflow_handle(w.workflow_id)
    await ready(handle, 1)
    status = await handle.query(WorkloadWorkflow.status)
    role = status.outputs["Registry"]["roleArn"].rsplit("/", 1)[-1]
    iam = boto3.client("iam", region_name=REGION, endpoint_url=os.environ["IDP_RECORD_AWS"])
    iam.delete_role_policy(RoleName=role, PolicyName="idp-registry")
    await handle.signal(WorkloadWorkflow.reconcile)
    await until(handle, repaired)
    await handle.signal(WorkloadWorkflow.delete)
    await handle.result()
    return handle


async def delete_after_refused_pass(client: Client, repo: Path, name: str) -> WorkflowHandle:
    """The first pass makes the repository and the role, then IAM refuses a managed policy that
    does not exist; the delete tears down what that pass recorded nothing of."""
    missing = f"arn:aws:iam::{MOTO_ACCOUNT_ID}:policy/{name}-missing"
    w = workload(name, deletionPolicy="Delete", registry={"managedPolicyArns": [missing]})
    await apply_workload(client, QUEUE, w)
    handle = client.get_workflow_handle(w.workflow_id)
    await until_phase(handle, Phase.DEGRADED)
    await handle.signal(WorkloadWorkflow.delete)
    await handle.result()
    return handle


async def nats_rotation(client: Client, repo: Path, name: str) -> WorkflowHandle:
    """Issue, check, rotate with immediate revocation, then delete (revoke and remove the user)."""
    w = workload(name, nats={"permissions": {"publish": {"allow": ["orders.>"]}}})
    await apply_workload(client, QUEUE, w)
    handle = client.get_workflow_handle(w.workflow_id)
    await ready(handle, 1)
    await handle.signal(WorkloadWorkflow.reconcile)
    await handle.signal(
        WorkloadWorkflow.rotate_credentials, RotateRequest(reason="recorded", revoke_old="now")
    )
    await until(handle, lambda s: any(e.message.startswith("revoked") for e in s.events))
    await handle.signal(WorkloadWorkflow.delete)
    await handle.result()
    return handle


def api(hostname: str, path: str) -> list[dict[str, object]]:
    return [{"aggregator": hostname, "paths": [path], "service": {"name": "web", "port": 80}}]


async def api_routes(client: Client, repo: Path, name: str) -> WorkflowHandle:
    """A workload registers before its ApiAggregator exists, is routed once it is applied,
    changes its path, and is deleted (unregistering)."""
    hostname = "api.replay.example.com"
    w = workload(name, api=api(hostname, "/shop"))
    await apply_workload(client, QUEUE, w)
    handle = client.get_workflow_handle(w.workflow_id)
    await until(handle, lambda s: s.observed_generation == 1)  # Pending: no aggregator yet
    await apply_aggregator(client, QUEUE, aggregator(hostname))
    await until_condition(handle, "Api", "Routed")
    await apply_workload(client, QUEUE, workload(name, api=api(hostname, "/store")))
    await ready(handle, 2)
    await handle.signal(WorkloadWorkflow.delete)
    await handle.result()
    return handle


async def api_aggregator(client: Client, repo: Path, name: str) -> WorkflowHandle:
    """Applied, two workloads registered, a conflict refused and released, routes repaired by a
    drift check, then deleted once empty."""
    hostname = "agg.replay.example.com"
    await apply_aggregator(client, QUEUE, aggregator(hostname))
    handle = client.get_workflow_handle(f"api-aggregator/{hostname}")
    first, second = (
        workload(f"{name}-a", api=api(hostname, "/a")),
        workload(f"{name}-b", api=api(hostname, "/a/b")),
    )
    for w in (first, second):
        await apply_workload(client, QUEUE, w)
        await until(client.get_workflow_handle(w.workflow_id), lambda s: s.observed_generation == 1)
    clone = repo.parent / f"clone-{name}"
    git("clone", "--quiet", str(repo), str(clone))
    git("rm", "--quiet", "-r", "dev/platform/api-public", cwd=clone)
    git("commit", "--quiet", "-m", "hand delete", cwd=clone)
    git("push", "--quiet", "origin", "main", cwd=clone)
    await handle.signal(ApiAggregatorWorkflow.reconcile)
    await until(handle, repaired, ApiAggregatorWorkflow.status)
    for w in (first, second):
        workload_handle = client.get_workflow_handle(w.workflow_id)
        await workload_handle.signal(WorkloadWorkflow.delete)
        await workload_handle.result()
    await delete_aggregator(client, hostname)
    await handle.result()
    return handle


def aggregator(hostname: str) -> ApiAggregator:
    return ApiAggregator.model_validate(
        {
            "metadata": {"name": "public"},
            "spec": {
                "hostname": hostname,
                "gateway": {"name": "edge", "namespace": "gateways"},
                "destination": "dev",
                "namespace": "platform",
                "maxRequestBodySize": "1Mi",
            },
        }
    )


async def refusals(client: Client, repo: Path, name: str) -> WorkflowHandle:
    """A shadowed path makes the workload Degraded and wait_ready answers at once; requests go
    as updates (refused while paused) and as signals (an unreadable one is an event); the
    holder lets go and the path is claimed; then deleted by the update."""
    hostname = "refusals.replay.example.com"
    await apply_aggregator(client, QUEUE, aggregator(hostname))
    holder = workload(f"{name}-holder", api=api(hostname, "/a"))
    await apply_workload(client, QUEUE, holder)
    await ready(client.get_workflow_handle(holder.workflow_id), 1)
    w = workload(name, api=api(hostname, "/a/b"))
    await apply_workload(client, QUEUE, w)
    handle = client.get_workflow_handle(w.workflow_id)
    status = await handle.execute_update(
        WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=1, timeout_seconds=30)
    )
    assert status.phase == Phase.DEGRADED, status
    await handle.execute_update(WorkloadWorkflow.request_pause)
    await until_phase(handle, Phase.PAUSED)
    await handle.signal(WorkloadWorkflow.reconcile)  # ignored while paused: an event
    await handle.signal("rotate_credentials", {"revokeOld": "tomorrow"})  # unreadable: an event
    await handle.execute_update(WorkloadWorkflow.request_resume)
    await until_phase(handle, Phase.DEGRADED)
    holder_handle = client.get_workflow_handle(holder.workflow_id)
    await holder_handle.execute_update(WorkloadWorkflow.request_delete)
    await holder_handle.result()
    await handle.execute_update(WorkloadWorkflow.request_reconcile)
    await until_phase(handle, Phase.READY)
    await handle.execute_update(WorkloadWorkflow.request_delete)
    await handle.result()
    await delete_aggregator(client, hostname)
    # The first run holds the refusals; the low continue-as-new threshold ends it early.
    runs = [r async for r in client.list_workflows(f"WorkflowId = '{w.workflow_id}'")]
    first = min(runs, key=lambda r: r.start_time)
    return client.get_workflow_handle(w.workflow_id, run_id=first.run_id)


async def until_condition(handle: WorkflowHandle, type_: str, reason: str) -> None:
    await until(handle, lambda s: any(c.type == type_ and c.reason == reason for c in s.conditions))


async def port_run(client: Client, repo: Path, name: str) -> WorkflowHandle:
    """A Port "create workload" run, reported back to the Port emulator."""
    async with port_stack(client, repo, repo.parent / "port-cache") as stack:
        fields = {"name": name, "system": "replay", "owner": "team-demo"}
        invocation = await stack.emulator.invoke(
            "idp_create_workload", fields | {"destination": "dev", "namespace": "demo"}
        )
        handle = client.get_workflow_handle(f"port-run/{invocation.run_id}")
        await handle.result()
        workload = client.get_workflow_handle(f"workload/replay/{name}")
        await workload.signal(WorkloadWorkflow.pause)
        await until_phase(workload, Phase.PAUSED)
        await workload.signal(WorkloadWorkflow.delete)
        await workload.result()
        WORKLOAD_HISTORIES[name] = workload
        return handle


async def fleet_observer(client: Client, repo: Path, name: str) -> WorkflowHandle:
    """A workload found in sync is watched and sleeps; a hand edit wakes it through the fleet
    observer's sweep, the pass repairs it, and it is watched again."""
    await start_fleet_observer(client, OBSERVED_PLATFORMS[name], QUEUE)
    await apply_workload(client, QUEUE, workload(name))
    handle = client.get_workflow_handle(workload(name).workflow_id)
    await ready(handle, 1)
    # The run that is watched, woken and repaired: it continues as new after that.
    watched = client.get_workflow_handle(handle.id, run_id=(await handle.describe()).run_id)
    await until(handle, lambda s: s.watched)
    clone = repo.parent / f"clone-{name}"
    git("clone", "--quiet", str(repo), str(clone))
    git("rm", "--quiet", f"dev/demo/{name}/serviceaccount.yaml", cwd=clone)
    git("commit", "--quiet", "-m", "hand delete", cwd=clone)
    git("push", "--quiet", "origin", "main", cwd=clone)
    await until(handle, repaired)
    await until(handle, lambda s: s.watched)
    WORKLOAD_HISTORIES[name] = watched
    await handle.signal(WorkloadWorkflow.delete)
    await handle.result()
    observer = client.get_workflow_handle(observer_id(QUEUE))
    await observer.terminate("recorded")
    return observer


# Scenarios that also leave a workload history worth keeping (its Port publishing).
WORKLOAD_HISTORIES: dict[str, WorkflowHandle] = {}
# Scenarios that run with the fleet observer, a drift interval short enough to watch, and the
# platform they ran with.
OBSERVED = {
    "fleet-observer",
    "baseline-fleet-observer",
    "compact-fleet-observer",
    "waiting-fleet-observer",
}
OBSERVED_PLATFORMS: dict[str, Platform] = {}


def with_aws(platform: Platform, url: str) -> Platform:
    oidc = f"arn:aws:iam::{MOTO_ACCOUNT_ID}:oidc-provider/oidc.eks.{REGION}.amazonaws.com/id/X"
    destination = platform.destinations[0].model_copy(
        update={"cluster": ClusterIdentity(oidc_provider_arn=oidc)}
    )
    aws = AwsConfig(region=REGION, account_id=MOTO_ACCOUNT_ID, endpoint_url=url)
    return platform.model_copy(update={"destinations": [destination], "aws": aws})


def with_nats(platform: Platform, synadia: SynadiaEmulator, keys: ControllerKeys) -> Platform:
    destination = platform.destinations[0].model_copy(
        update={"sealing": CertificateSource(file=keys.cert_file)}
    )
    config = SynadiaConfig(
        url=synadia.api_url,
        token_env=SYNADIA_TOKEN_ENV,
        system=synadia.system_name,
        default_account=synadia.account_name,
    )
    return platform.model_copy(update={"destinations": [destination], "synadia": config})


SCENARIOS: dict[str, Scenario] = {
    "workload-nats-rotation": nats_rotation,
    "workload-registry-lifecycle": registry_lifecycle,
    "workload-apply-change-pause": apply_change_reconcile,
    "workload-drift-repair": drift_repair,
    "workload-degraded-recovered": degraded_then_recovered,
    "workload-continue-as-new": continue_as_new,
    "workload-delete": delete,
    "workload-delete-after-refused-pass": delete_after_refused_pass,
    "workload-api-routes": api_routes,
    "api-aggregator-lifecycle": api_aggregator,
    "port-run": port_run,
    "workload-refusals": refusals,
    "fleet-observer": fleet_observer,
    # Recorded again after workflows.steps.BASELINE, which records one marker in place of the
    # rollout, fleet-observed and auto-upgrade patches, and the observer's sweeps at a fixed
    # rate: the new runs' form must replay too.
    "baseline-fleet-observer": fleet_observer,
    "workload-baseline-continue-as-new": continue_as_new,
    # And after the baseline that folded in COMPACT_PASSES, whose first pass sends three
    # commands fewer.
    "compact-fleet-observer": fleet_observer,
    "workload-compact-continue-as-new": continue_as_new,
    # And after each sweep began to wait for its time in its activity, with no timer.
    "waiting-fleet-observer": fleet_observer,
}


async def main() -> None:
    limit = "limit.historyCount.suggestContinueAsNew=60"
    with moto_server() as aws_url, tempfile.TemporaryDirectory() as keys_dir:
        os.environ["IDP_RECORD_AWS"] = aws_url
        os.environ[SYNADIA_TOKEN_ENV] = DEFAULT_TOKEN
        keys = controller_keys(Path(keys_dir))
        async with (
            SynadiaEmulator.running(Path(keys_dir) / "synadia") as synadia,
            await start_dev_server("--dynamic-config-value", limit) as env,
        ):
            await record_all(env.client, aws_url, synadia, keys)


async def record_all(
    client: Client, aws_url: str, synadia: SynadiaEmulator, keys: ControllerKeys
) -> None:
    chosen = sys.argv[1:] or list(SCENARIOS)
    for name in chosen:
        scenario = SCENARIOS[name]
        with tempfile.TemporaryDirectory() as tmp:
            repo = bare_repo(Path(tmp) / "state.git")
            if name in OBSERVED:
                bare = platform_for(repo, timedelta(seconds=3), fleet_observer=True)
            else:
                bare = platform_for(repo)
            platform = with_nats(with_aws(bare, aws_url), synadia, keys)
            OBSERVED_PLATFORMS[name] = platform
            async with running_worker(client, platform, QUEUE, Path(tmp) / "cache"):
                handle = await scenario(client, repo, name)
                histories = {name: await handle.fetch_history()}
                if name in WORKLOAD_HISTORIES:
                    workload = WORKLOAD_HISTORIES[name]
                    histories[f"workload-{name}"] = await workload.fetch_history()
        for recorded, history in histories.items():
            (HERE / f"{recorded}.json").write_text(history.to_json() + "\n")
            print(f"recorded {recorded}: {len(history.events)} events")


if __name__ == "__main__":
    asyncio.run(main())
