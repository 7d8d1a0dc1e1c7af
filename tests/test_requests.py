"""One rule for requests that cannot take effect, the same through idpctl, the temporal CLI and
a signal; and `apply --wait` answering at once when waiting cannot help.

Real parts: the session's Temporal dev server, a worker in the test's event loop, a bare git
repository as the state store, idpctl and the temporal CLI as processes.
"""

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.cli import Cli, Result, eventually, write_platform
from support.stack import platform_for, running_worker
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from workflows.workload import WorkloadWorkflow


def workload_doc(system: str, name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "idp.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": name, "system": system},
        "spec": {"owner": "team-demo", "destination": "dev", "namespace": "demo", **spec},
    }


def aggregator_doc(hostname: str) -> dict[str, Any]:
    return {
        "apiVersion": "idp.dev/v1alpha1",
        "kind": "ApiAggregator",
        "metadata": {"name": "public"},
        "spec": {
            "hostname": hostname,
            "destination": "dev",
            "namespace": "platform",
            "gateway": {"name": "edge", "namespace": "platform"},
        },
    }


def write_yaml(path: Path, *documents: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return str(path)


@pytest.fixture
def cli(dev_env: WorkflowEnvironment, repo: Path, queue: str, tmp_path: Path) -> Cli:
    address = dev_env.client.service_client.config.target_host
    return Cli(address, queue, write_platform(tmp_path / "platform.yaml", repo, address))


@pytest.fixture
async def worker(client: Client, repo: Path, queue: str, tmp_path: Path) -> AsyncIterator[None]:
    async with running_worker(client, platform_for(repo), queue, tmp_path / "cache"):
        yield


async def events(client: Client, workflow_id: str) -> list[str]:
    status = await client.get_workflow_handle(workflow_id).query(WorkloadWorkflow.status)
    return [f"{e.step}: {e.message}" for e in status.events]


async def test_a_request_that_cannot_take_effect_is_refused_alike_everywhere(
    cli: Cli, worker: None, client: Client, queue: str, tmp_path: Path
) -> None:
    file = write_yaml(tmp_path / "web.yaml", workload_doc(queue, "web"))
    assert (await cli.idpctl("apply", "-f", file, "--wait", "--timeout", "30")).code == 0
    reference, workflow_id = f"{queue}/web", f"workload/{queue}/web"
    no_nats = f"workload {reference} has no NATS user, so no credentials to rotate"

    rotated = await cli.idpctl("rotate-credentials", "workload", reference)
    assert (rotated.code, rotated.stderr, rotated.stdout) == (1, f"error: {no_nats}\n", "")

    target = ("--workflow-id", workflow_id)
    by_update = await cli.temporal(
        "workflow", "update", "execute", *target, "--name", "rotate_credentials"
    )  # fmt: skip
    assert by_update.code != 0 and no_nats in by_update.stderr, by_update
    # The signal of the same name cannot answer; it leaves the refusal where `status` shows it.
    by_signal = await cli.temporal("workflow", "signal", *target, "--name", "rotate_credentials")
    assert by_signal.code == 0, by_signal
    await eventually(
        lambda: events(client, workflow_id),
        lambda shown: f"Signal: ignored rotate_credentials: {no_nats}" in shown,
    )

    assert (await cli.idpctl("pause", "workload", reference)).code == 0
    paused = f"workload {reference} is paused; resume it first"
    reconciled = await cli.idpctl("reconcile", "workload", reference)
    assert (reconciled.code, reconciled.stderr) == (1, f"error: {paused}\n"), reconciled
    by_update = await cli.temporal("workflow", "update", "execute", *target, "--name", "reconcile")
    assert by_update.code != 0 and paused in by_update.stderr, by_update
    resumed = await cli.idpctl("resume", "workload", reference)
    assert (resumed.code, resumed.stdout) == (0, f"{workflow_id} resume requested\n"), resumed


async def test_bad_input_through_the_temporal_cli_names_the_field(
    cli: Cli, worker: None, client: Client, queue: str, tmp_path: Path
) -> None:
    workflow_id = f"workload/{queue}/web"
    file = write_yaml(tmp_path / "web.yaml", workload_doc(queue, "web"))
    assert (await cli.idpctl("apply", "-f", file, "--wait", "--timeout", "30")).code == 0
    target = ("--workflow-id", workflow_id)

    document = workload_doc(queue, "web", replicas=3)
    document["metadata"]["name"] = "Web_1"
    applied = await cli.temporal(
        "workflow", "update", "execute", *target, "--name", "apply",
        "--input", json.dumps({"workload": document}),
    )  # fmt: skip
    assert applied.code != 0
    assert "Failed decoding arguments" not in applied.stderr, applied
    assert "apply: workload.metadata.name: must be a DNS-1123 label" in applied.stderr, applied
    assert "workload.spec.replicas: unknown field; allowed fields are" in applied.stderr, applied

    waited = await cli.temporal(
        "workflow", "update", "execute", *target, "--name", "wait_ready",
        "--input", '{"generation": 0}',
    )  # fmt: skip
    assert waited.code != 0 and "wait_ready: generation:" in waited.stderr, waited
    assert "Failed decoding arguments" not in waited.stderr, waited

    rotate = await cli.temporal(
        "workflow", "signal", *target, "--name", "rotate_credentials",
        "--input", '{"revokeOld": "tomorrow"}',
    )  # fmt: skip
    assert rotate.code == 0, rotate
    shown = await eventually(
        lambda: events(client, workflow_id),
        lambda shown: any(e.startswith("Signal: ignored: rotate_credentials") for e in shown),
    )
    ignored = next(e for e in shown if e.startswith("Signal: ignored: rotate_credentials"))
    assert "revokeOld" in ignored and "now" in ignored and "after-grace" in ignored, ignored
    status = await client.get_workflow_handle(workflow_id).query(WorkloadWorkflow.status)
    assert status.generation == 1


async def test_wait_answers_at_once_on_a_refused_path_and_waits_for_a_missing_aggregator(
    cli: Cli, worker: None, queue: str, tmp_path: Path
) -> None:
    hostname = f"{queue}.example.com"
    api = [{"aggregator": hostname, "paths": ["/orders"], "service": {"name": "s", "port": 80}}]
    pending = write_yaml(tmp_path / "orders.yaml", workload_doc(queue, "orders", api=api))
    # No ApiAggregator yet: the workload is not Ready; --wait says every 10 s which workloads
    # it still waits for, and at the end what holds each back.
    waited: Result = await cli.idpctl("apply", "-f", pending, "--wait", "--timeout", "11")
    assert waited.code == 1, waited
    assert f"  waiting for {queue}/orders\n" in waited.stdout, waited
    assert f"{queue}/orders: Pending (generation 1/1) Api waiting: AggregatorPending" in (
        waited.stdout
    ), waited
    assert "timed out after 11s" in waited.stderr, waited

    routed = write_yaml(tmp_path / "aggregator.yaml", aggregator_doc(hostname))
    assert (await cli.idpctl("apply", "-f", routed, "-f", pending, "--wait")).code == 0

    api[0]["paths"] = ["/orders/admin"]
    shadowed = write_yaml(tmp_path / "admin.yaml", workload_doc(queue, "admin", api=api))
    refused = await cli.idpctl("apply", "-f", shadowed, "--wait", "--timeout", "300")
    assert refused.code == 1, refused
    assert refused.stderr == (
        f"error: {queue}/admin: Api: path /orders/admin on {hostname} would be shadowed by "
        f"/orders to workload {queue}/orders\n"
    ), refused

    listed = await eventually(
        lambda: cli.idpctl("get", "workloads", "--system", queue, "-o", "json"),
        lambda r: (
            {(w["name"], w["phase"]) for w in r.json}
            == {
                ("admin", "Degraded"),
                ("orders", "Ready"),
            }
        ),
    )
    assert listed.code == 0


async def test_wait_answers_at_once_for_a_paused_workload(
    cli: Cli, worker: None, queue: str, tmp_path: Path
) -> None:
    file = write_yaml(tmp_path / "web.yaml", workload_doc(queue, "web"))
    assert (await cli.idpctl("apply", "-f", file, "--wait", "--timeout", "30")).code == 0
    reference = f"{queue}/web"
    assert (await cli.idpctl("pause", "workload", reference)).code == 0
    changed = write_yaml(tmp_path / "web.yaml", workload_doc(queue, "web", owner="team-shop"))
    # Paused, its new generation will not be applied until someone resumes it: waiting the
    # five minutes asked for would tell nothing more.
    waited = await cli.idpctl("apply", "-f", changed, "--wait", "--timeout", "300")
    assert waited.code == 1, waited
    assert f"workload/{reference} configured (generation 2)" in waited.stdout, waited
    assert f"  {reference}: Paused (generation 1/2)" in waited.stdout, waited
    assert waited.stderr == f"error: {reference} is Paused, not Ready\n", waited
