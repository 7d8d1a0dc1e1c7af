"""The worker's Prometheus endpoint after an end-to-end run: the SDK's metrics and the project's.

A Temporal dev server of its own, because `idp_workloads` counts every running workload in the
namespace and the session's server holds other tests' workflows. The worker runs in this process
on a client with its own Runtime (the one serving /metrics), as `idp-worker --metrics-address`
sets it up.
"""

import asyncio
import importlib.util
import logging
import re
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from support.cli import eventually
from support.stack import (
    bare_repo,
    git,
    platform_for,
    running_worker,
    start_dev_server,
    start_listed,
    task_queue,
)
from temporalio.client import (
    Client,
    CountWorkflowsInput,
    Interceptor,
    OutboundInterceptor,
    WorkflowExecutionCount,
)
from temporalio.common import SearchAttributePair
from temporalio.testing import WorkflowEnvironment

import worker
from idp.models import Workload
from idp.platform import ReconcileSettings
from starter import telemetry, temporal
from starter.operations import apply_workload
from workflows import search_attributes as sa
from workflows.messages import WaitReadyRequest
from workflows.state import Phase
from workflows.workload import WorkloadWorkflow

Sample = tuple[str, dict[str, str], float]
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@pytest.fixture(scope="module")
async def own_server() -> AsyncIterator[WorkflowEnvironment]:
    async with await start_dev_server() as env:
        yield env


def free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def workload(system: str, name: str, destination: str = "dev") -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": name, "system": system},
            "spec": {"owner": "team-ops", "destination": destination, "namespace": "ops"},
        }
    )


async def scrape(url: str) -> list[Sample]:
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(url)
    response.raise_for_status()
    samples = []
    for line in response.text.splitlines():
        match = SAMPLE.match(line)
        if match:
            labels = dict(LABEL.findall(match["labels"] or ""))
            samples.append((match["name"], labels, float(match["value"])))
    return samples


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    """The sum over the series of `name` carrying these labels; None when there is none."""
    found = [v for n, ls, v in samples if n == name and labels.items() <= ls.items()]
    return sum(found) if found else None


async def scrape_until(url: str, expected: dict[tuple[str, tuple], float]) -> list[Sample]:
    """Scrape until every (name, labels) has its expected value; workers count asynchronously."""
    async with asyncio.timeout(30):
        while True:
            samples = await scrape(url)
            if all(value(samples, n, **dict(ls)) == v for (n, ls), v in expected.items()):
                return samples
            await asyncio.sleep(0.2)


async def test_metrics_after_apply_drift_repair_and_a_failing_step(
    own_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    address = free_address()
    runtime = telemetry.metrics_runtime(telemetry.metrics_address(address))
    target = own_server.client.service_client.config.target_host
    client: Client = await temporal.connect(
        temporal.TemporalSettings(address=target), runtime=runtime
    )
    repo = bare_repo(tmp_path / "state.git")
    # Backoff as long as the drift interval: the failing workload makes exactly one pass here.
    slow = ReconcileSettings(min_backoff=timedelta(minutes=10), max_backoff=timedelta(minutes=10))
    platform = platform_for(repo).model_copy(update={"reconcile": slow})
    queue, system = task_queue(), "metrics"
    url = f"http://{address}/metrics"
    phases = asyncio.create_task(
        telemetry.report_workloads_by_phase(
            client, runtime.metric_meter, interval=timedelta(seconds=0.2)
        )
    )
    try:
        async with running_worker(client, platform, queue, tmp_path / "cache"):
            ready = workload(system, "ready")
            await apply_workload(client, queue, ready)
            handle = client.get_workflow_handle(ready.workflow_id)
            status = await handle.execute_update(
                WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=1, timeout_seconds=30)
            )
            assert status.phase == Phase.READY

            # Someone edits the rendered ServiceAccount in the state store; a pass puts it back.
            clone = tmp_path / "someone"
            git("clone", "--quiet", str(repo), str(clone))
            (clone / "dev/ops/ready/serviceaccount.yaml").write_text("# edited by hand\n")
            git("commit", "--quiet", "-am", "hand edit", cwd=clone)
            git("push", "--quiet", "origin", "main", cwd=clone)
            await handle.signal(WorkloadWorkflow.reconcile)

            # A destination the platform does not define: the Manifests step fails for good.
            await apply_workload(client, queue, workload(system, "lost", destination="nowhere"))

            samples = await scrape_until(
                url,
                {
                    ("idp_reconcile_passes", (("kind", "Workload"),)): 3,
                    ("idp_drift_repairs", (("step", "Manifests"),)): 1,
                    ("idp_step_failures", (("step", "Manifests"),)): 1,
                    ("idp_workloads", (("phase", "Ready"),)): 1,
                    ("idp_workloads", (("phase", "Degraded"),)): 1,
                    # Counted phase by phase, so awaited too: a count taken while the
                    # failing workload was still provisioning may linger for an interval.
                    ("idp_workloads", (("phase", "Provisioning"),)): 0,
                },
            )
            # Two passes of "ready" (apply, repair) and one of "lost", each counted once.
            assert value(samples, "idp_reconcile_passes", task_queue=queue) == 3
            assert value(samples, "idp_step_failures", reason="UnknownDestination") == 1
            assert value(samples, "idp_drift_repairs") == 1
            # No NATS here, so nothing was issued.
            assert value(samples, "idp_credential_issuances") is None
            # The SDK's own metrics come from the same endpoint.
            writes = value(
                samples,
                "temporal_activity_execution_latency_count",
                activity_type="Manifests.reconcile",
            )
            assert writes is not None and writes >= 3
            assert value(samples, "temporal_workflow_task_execution_latency_count") is not None
    finally:
        phases.cancel()


class CountedQueries(Interceptor):
    """Records the query of every count the client makes."""

    def __init__(self) -> None:
        self.queries: list[str | None] = []

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        queries = self.queries

        class Recording(OutboundInterceptor):
            async def count_workflows(self, input: CountWorkflowsInput) -> WorkflowExecutionCount:
                queries.append(input.query)
                return await super().count_workflows(input)

        return Recording(next)


async def test_workloads_by_phase_counts_until_the_phases_add_up() -> None:
    # A server of its own: the counts take in every running workload of the namespace.
    async with await start_dev_server() as env:
        counted = CountedQueries()
        client = await Client.connect(
            env.client.service_client.config.target_host, interceptors=[counted]
        )
        # Running workloads with their phase, and no worker: they stay as they were started.
        phases = {"a": "Ready", "b": "Ready", "c": "Ready", "d": "Degraded", "e": None}
        queue = task_queue()
        for name, phase in phases.items():
            attributes = [SearchAttributePair(sa.PHASE, phase)] if phase else []
            await start_listed(client, f"workload/phases/{name}", queue, *attributes)
        kind = "IdpKind = 'Workload'"
        await eventually(lambda: client.count_workflows(kind), lambda c: c.count == len(phases))
        expected = dict.fromkeys((p.value for p in Phase), 0) | {"Ready": 3, "Degraded": 1}

        # One not yet given a phase: the phases never add up, so each is counted.
        counted.queries.clear()
        assert await telemetry.count_workloads_by_phase(client) == expected
        assert len(counted.queries) == 1 + len(Phase)

        await client.get_workflow_handle("workload/phases/e").terminate()
        running = telemetry.RUNNING_WORKLOADS
        await eventually(lambda: client.count_workflows(running), lambda c: c.count == 4)
        # In Phase's order, until Ready and Degraded add up to the four running.
        counted.queries.clear()
        assert await telemetry.count_workloads_by_phase(client) == expected
        assert len(counted.queries) == 1 + 4
        # The fullest of the last counts first: Ready, then Degraded.
        counted.queries.clear()
        assert await telemetry.count_workloads_by_phase(client, expected) == expected
        assert [q and q.rsplit("'", 2)[1] for q in counted.queries[1:]] == ["Ready", "Degraded"]
        # Last counts that no longer hold cost counts, not the truth.
        stale = expected | {"Ready": 0, "Degraded": 0, "Paused": 4}
        assert await telemetry.count_workloads_by_phase(client, stale) == expected


@pytest.mark.parametrize(
    ("environment", "args", "message"),
    [
        ({}, ["--metrics-address", "9464"], "is not host:port"),
        ({"IDP_METRICS_ADDRESS": "nowhere.invalid:9464"}, [], "nowhere.invalid:9464"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
            [],
            "pip install 'idp-reconciler[otel]'",
        ),
    ],
)
async def test_telemetry_misconfiguration_stops_the_worker_with_one_clear_error(
    environment: dict[str, str],
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    otel_installed = importlib.util.find_spec("opentelemetry") is not None
    if "OTEL_EXPORTER_OTLP_ENDPOINT" in environment and otel_installed:
        pytest.skip("the otel extra is installed here, so tracing starts instead of failing")
    for name, setting in environment.items():
        monkeypatch.setenv(name, setting)
    platform = tmp_path / "platform.yaml"
    platform.write_text("kind: Platform\n")
    argv = ["--platform", str(platform), "--insecure-no-encryption", *args]
    with caplog.at_level(logging.ERROR, logger="idp.worker"):
        code = await worker.run(worker.parse_args(argv))
    assert code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0]
