"""The worker: runs every workflow and activity of the reconciler.

    idp-worker --platform platform.yaml [--address host:port] [--namespace ns]
        [--metrics-address 0.0.0.0:9464]

Configuration comes from the platform file and the environment; SIGTERM and Ctrl-C stop it
gracefully (running activities get to finish; workflows resume on another worker).
"""

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.apiroutes import ApiRouteActivities
from activities.capabilities import all_activities
from activities.errors import log_classified_failures_on_one_line
from activities.platform import PlatformActivities
from activities.port import PortActivities
from idp.errors import PermanentError
from idp.keyring import KeyRingError
from idp.platform import Platform, PlatformError, load_platform, platform_path
from idp.port import client_from_config
from starter import telemetry, temporal
from workflows.aggregator import ApiAggregatorWorkflow
from workflows.portrun import PortRunWorkflow
from workflows.workload import WorkloadWorkflow

log = logging.getLogger("idp.worker")

# PortRunWorkflow is registered even without Port: only the bridge starts it, and the replayer
# must know every workflow type a server may hold.
WORKFLOWS: list[type] = [WorkloadWorkflow, ApiAggregatorWorkflow, PortRunWorkflow]
# The domain models and the capabilities are deterministic libraries, loaded once per process:
# the sandbox shares them rather than re-importing them per workflow, so every workflow sees the
# capabilities the worker found at start (entry points cannot be read inside the sandbox).
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("idp", "capabilities")
)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def activities(platform: Platform, cache_dir: Path) -> list:
    """The platform's own activities, the ApiAggregator's, and every installed capability's."""
    # The same clone directory as the capabilities': one store per repository, one commit queue.
    routes = ApiRouteActivities(platform, cache_dir / "statestore")
    return [
        PlatformActivities(platform).runtime_settings,
        routes.write_api_routes,
        routes.remove_api_routes,
        *all_activities(platform, cache_dir / "statestore"),
    ]


def port_activities(client: Client, platform: Platform) -> list:
    """Port's activities, when the platform has Port; PermanentError naming the variable when
    Port's client id or secret is missing from the environment."""
    if platform.port is None:
        return []
    ui_url = platform.port.ui_url or platform.temporal.ui_url
    port = PortActivities(client_from_config(platform.port), client, ui_url)
    return [
        port.publish_workload,
        port.log_to_port_run,
        port.wait_for_workload,
        port.sync_port_entities,
        port.finish_port_run,
    ]


def build_worker(client: Client, platform: Platform, task_queue: str, cache_dir: Path) -> Worker:
    return Worker(
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        workflow_runner=WORKFLOW_RUNNER,
        activities=activities(platform, cache_dir) + port_activities(client, platform),
        graceful_shutdown_timeout=timedelta(seconds=20),
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="idp-worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", help="platform configuration file (IDP_PLATFORM_CONFIG)")
    parser.add_argument(
        "--cache-dir",
        default=".idp/worker",
        help="where the worker keeps its git clones (default: .idp/worker)",
    )
    parser.add_argument(
        "--insecure-no-encryption",
        action="store_true",
        help=f"run without {temporal.CODEC_KEYS_ENV}: payloads are stored in plaintext "
        "(local experiments only; `idpctl dev` sets up a key for you)",
    )
    parser.add_argument(
        "--metrics-address",
        default=os.environ.get(telemetry.METRICS_ADDRESS_ENV),
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics, e.g. 0.0.0.0:9464 "
        f"({telemetry.METRICS_ADDRESS_ENV}; default: off)",
    )
    temporal.add_arguments(parser)
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    path = platform_path(args.platform)
    if path is None:
        log.error("no platform configuration: pass --platform FILE or set IDP_PLATFORM_CONFIG")
        return 2
    try:
        temporal.required_keyring(args.insecure_no_encryption, log)
    except KeyRingError as error:
        log.error("%s", error)
        return 2
    try:
        address = args.metrics_address and telemetry.metrics_address(args.metrics_address)
        runtime = telemetry.metrics_runtime(address) if address else None
        tracing = telemetry.tracing("idp-worker")
    except telemetry.TelemetryError as error:
        log.error("%s", error)
        return 2
    try:
        platform = load_platform(path)
        settings = temporal.settings(args, platform.temporal)
        interceptors = [tracing.interceptor] if tracing else []
        client = await temporal.connect(settings, runtime=runtime, interceptors=interceptors)
    except (PlatformError, temporal.ConnectError) as error:
        log.error("%s", error)
        return 1
    try:
        worker = build_worker(client, platform, settings.task_queue, Path(args.cache_dir))
    except PermanentError as error:
        log.error("%s", error)
        return 2
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(worker.shutdown()))
    log.info(
        "worker polling task queue %r on %s (namespace %s)",
        settings.task_queue,
        settings.address,
        settings.namespace,
    )
    phases = None
    if runtime is not None:
        log.info("metrics on http://%s/metrics", address)
        # Without the search attributes there is nothing to count workloads by.
        if platform.reconcile.search_attributes:
            meter = runtime.metric_meter
            phases = asyncio.create_task(telemetry.report_workloads_by_phase(client, meter))
    await worker.run()
    if phases is not None:
        phases.cancel()
    if tracing is not None:
        tracing.shutdown()
    log.info("worker stopped")
    return 0


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    log_classified_failures_on_one_line()


def main(argv: Sequence[str] | None = None) -> None:
    configure_logging()
    temporal.exit_now(asyncio.run(run(parse_args(argv))))


if __name__ == "__main__":
    main()
