"""The worker: runs every workflow and activity of the reconciler.

    idp-worker --platform platform.yaml [--address host:port] [--namespace ns]
        [--metrics-address 0.0.0.0:9464] [--health-address 0.0.0.0:8080]
        [--worker-image ghcr.io/acme/idp-reconciler:1.4.0]

Configuration comes from the platform file and the environment; SIGTERM and Ctrl-C stop it
gracefully (running activities get to finish; workflows resume on another worker).

With a worker image (`IDP_WORKER_IMAGE`) the worker is one version of a Temporal Worker
Deployment, named by the image: each workflow run stays on the version that started it, and the
long-lived ones move to the deployment's current version when they continue as new
(docs/architecture.md, Upgrading workers). Without one it is unversioned.
"""

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion, WorkflowIDConflictPolicy
from temporalio.service import RPCError
from temporalio.worker import Worker, WorkerDeploymentConfig
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.apiroutes import ApiRouteActivities
from activities.capabilities import all_actions, all_activities
from activities.errors import log_classified_failures_on_one_line
from activities.fleet import FleetActivities
from activities.platform import PlatformActivities
from activities.port import PortActivities
from idp.errors import PermanentError
from idp.keyring import KeyRingError
from idp.platform import Platform, PlatformError, load_platform, platform_path
from idp.port import client_from_config
from starter import health, telemetry, temporal
from workflows import search_attributes
from workflows.aggregator import ApiAggregatorWorkflow
from workflows.observer import FleetObserverWorkflow, ObserverInput, observer_id
from workflows.portrun import PortRunWorkflow
from workflows.steps import STEP_TIMEOUT
from workflows.workload import WorkloadWorkflow

log = logging.getLogger("idp.worker")
STICKY_TIMEOUT = timedelta(seconds=5)

# PortRunWorkflow is registered even without Port: only the bridge starts it, and the replayer
# must know every workflow type a server may hold.
WORKFLOWS: list[type] = [
    WorkloadWorkflow,
    ApiAggregatorWorkflow,
    PortRunWorkflow,
    FleetObserverWorkflow,
]
# The domain models and the capabilities are deterministic libraries, loaded once per process:
# the sandbox shares them rather than re-importing them per workflow, so every workflow sees the
# capabilities the worker found at start (entry points cannot be read inside the sandbox).
# The sandbox itself costs about a sixth of the worker's own CPU in an onboarding (measured with
# bench/profile_worker.py against UnsandboxedWorkflowRunner); it stays, because it is what stops
# a non-deterministic call in workflows/ before it reaches a history that must replay for years.
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("idp", "capabilities")
)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WORKER_IMAGE_ENV = "IDP_WORKER_IMAGE"


class WorkerImageError(Exception):
    """The worker image names no deployment version; the message says why and what would."""


def deployment_version(image: str) -> WorkerDeploymentVersion:
    """The Worker Deployment Version an image reference names: the repository's last path
    element is the deployment, the tag (else the digest) the build id.

    `ghcr.io/acme/idp-reconciler:1.4.0` is build `1.4.0` of `idp-reconciler`, and
    `registry.local:5000/idp-reconciler@sha256:ab...` build `sha256:ab...`. With both a tag and
    a digest the tag is the build id: it is what operators type into `temporal worker
    deployment`, and the digest only pins that tag's bytes."""
    name, _, digest = image.partition("@")
    repository, tag = name, ""
    # A colon before the last slash is a registry's port, not a tag.
    if ":" in name.rpartition("/")[2]:
        repository, _, tag = name.rpartition(":")
    deployment = repository.rpartition("/")[2]
    example = "e.g. ghcr.io/acme/idp-reconciler:1.4.0"
    if not deployment:
        raise WorkerImageError(
            f"{WORKER_IMAGE_ENV} (--worker-image) {image!r} is not an image reference, {example}"
        )
    if not (tag or digest):
        raise WorkerImageError(
            f"{WORKER_IMAGE_ENV} (--worker-image) {image!r} has no tag or digest, so it names no "
            f"build: give the image exactly as deployed, {example}"
        )
    if "." in deployment:
        # Temporal spells a version `<deployment>.<build id>`: the first dot ends the name.
        raise WorkerImageError(
            f"{WORKER_IMAGE_ENV} (--worker-image) {image!r}: the repository name {deployment!r} "
            "names the worker deployment, and a deployment name cannot contain '.'"
        )
    return WorkerDeploymentVersion(deployment_name=deployment, build_id=tag or digest)


def activities(client: Client, platform: Platform, cache_dir: Path) -> list:
    """The platform's own activities, the ApiAggregator's, every installed capability's and the
    fleet observer's sweep, which reads through the same capabilities' actions."""
    # The same clone directory as the capabilities': one store per repository, one commit queue.
    routes = ApiRouteActivities(platform, cache_dir / "statestore")
    actions = all_actions(platform, cache_dir / "statestore")
    return [
        PlatformActivities(platform).runtime_settings,
        routes.write_api_routes,
        routes.remove_api_routes,
        *all_activities(actions),
        FleetActivities(client, platform, actions).sweep,
    ]


class FleetObserverError(Exception):
    """The platform asks for the fleet observer where it cannot work; the message says why."""


async def with_fleet_observer(client: Client, platform: Platform, namespace: str) -> Platform:
    """`platform` with reconcile.fleetObserver decided, as the workflows are told it: unset, on
    where the namespace has the search attribute watched workloads publish, else off with a
    warning. FleetObserverError when the file asks for it and the attribute is missing: every
    watched workload's workflow task would fail on it."""
    reconcile = platform.reconcile
    on = reconcile.fleet_observer is not False and reconcile.search_attributes
    if on:
        name = search_attributes.FLEET.name
        lacks = f"namespace {namespace!r} lacks the search attribute {name} (KeywordList)"
        fix = "run `idpctl platform init`, or add it to the Temporal Cloud namespace"
        try:
            missing = name in await search_attributes.missing(client, namespace)
        except RPCError as error:
            if reconcile.fleet_observer:
                raise
            # Unset: an API key that may not list attributes must not stop the worker.
            lacks = f"the worker could not list the search attributes of {namespace!r} ({error})"
            missing = True
        if missing and reconcile.fleet_observer:
            raise FleetObserverError(f"reconcile.fleetObserver is true, but {lacks}: {fix}")
        if missing:
            log.warning(
                "the fleet observer is off, so every workload checks itself each drift "
                "interval: %s; %s, or set reconcile.fleetObserver: false to silence this",
                lacks,
                fix,
            )
        on = not missing
    return platform.model_copy(
        update={"reconcile": reconcile.model_copy(update={"fleet_observer": on})}
    )


async def start_fleet_observer(client: Client, platform: Platform, task_queue: str) -> None:
    """Make sure the task queue's fleet observer runs, when `platform` (as `with_fleet_observer`
    decided it) has one; every worker asks, and the first one starts it."""
    if not platform.reconcile.fleet_observer:
        return
    await client.start_workflow(
        FleetObserverWorkflow.run,
        ObserverInput(),
        id=observer_id(task_queue),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )


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


def build_worker(
    client: Client,
    platform: Platform,
    task_queue: str,
    cache_dir: Path,
    *,
    version: WorkerDeploymentVersion | None = None,
) -> Worker:
    """The worker; with `version`, one version of a Worker Deployment whose workflows are pinned:
    a run never meets code other than the code that started it, and moves to a new version
    only when it continues as new (workflows/steps.py)."""
    deployment = None
    if version is not None:
        deployment = WorkerDeploymentConfig(
            version=version,
            use_worker_versioning=True,
            default_versioning_behavior=VersioningBehavior.PINNED,
        )
    return Worker(
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        workflow_runner=WORKFLOW_RUNNER,
        activities=activities(client, platform, cache_dir) + port_activities(client, platform),
        # A step under way on SIGTERM gets its whole timeout to finish rather than being cut off
        # and redone elsewhere; Port's long waits give way at once (activities/port.py).
        graceful_shutdown_timeout=STEP_TIMEOUT,
        # A workflow cached on a worker that died waits this long before any worker may take its
        # next task (the SDK's default is 10 s); a live worker this busy is rare, and costs one
        # replay elsewhere.
        sticky_queue_schedule_to_start_timeout=STICKY_TIMEOUT,
        deployment_config=deployment,
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
    parser.add_argument(
        "--health-address",
        default=os.environ.get(health.HEALTH_ADDRESS_ENV),
        metavar="HOST:PORT",
        help="serve Kubernetes probes at http://HOST:PORT/livez and /readyz, e.g. 0.0.0.0:8080 "
        f"({health.HEALTH_ADDRESS_ENV}; default: off)",
    )
    parser.add_argument(
        "--worker-image",
        default=os.environ.get(WORKER_IMAGE_ENV),
        metavar="IMAGE",
        help="the image this worker runs, e.g. ghcr.io/acme/idp-reconciler:1.4.0: makes it build "
        f"1.4.0 of the worker deployment idp-reconciler ({WORKER_IMAGE_ENV}; default: "
        "unversioned)",
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
        version = deployment_version(args.worker_image) if args.worker_image is not None else None
        probe_address = health.parse_address(args.health_address) if args.health_address else None
    except (WorkerImageError, health.HealthError) as error:
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
        platform = await with_fleet_observer(client, platform, settings.namespace)
        worker = build_worker(
            client, platform, settings.task_queue, Path(args.cache_dir), version=version
        )
        await start_fleet_observer(client, platform, settings.task_queue)
        listener = health.listen(probe_address) if probe_address else None
    except (PermanentError, health.HealthError, FleetObserverError) as error:
        log.error("%s", error)
        return 2
    probes: health.Probes | None = None
    probing: contextlib.AbstractAsyncContextManager = contextlib.nullcontext()
    if listener is not None:
        probes = health.Probes(worker, client, settings.address)
        probing = health.serving(probes, listener)

    # The loop keeps only weak references to tasks: hold the shutdown until it is done.
    stopping: list[asyncio.Task] = []

    def stop() -> None:
        if probes is not None:
            probes.stopping = True
        stopping.append(asyncio.create_task(worker.shutdown()))

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    if version is not None:
        log.info(
            "worker deployment %r, build id %r (image %s): new workflows are pinned to this "
            "version and move on at continue-as-new once another is current",
            version.deployment_name,
            version.build_id,
            args.worker_image,
        )
    if probes is not None:
        log.info("health probes on http://%s/livez and /readyz", args.health_address)
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
    # The probes are served only while the worker runs: they stop with it, whatever stops it.
    async with probing:
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
