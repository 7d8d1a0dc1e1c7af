"""Activities of API aggregation: a workload registering its targets with the aggregator of a
hostname, and the aggregator writing its rendered routes into the state store."""

import asyncio
import collections
from pathlib import Path

from temporalio import activity
from temporalio.client import WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy

from activities.errors import as_activity_errors
from activities.heartbeat import heartbeating
from activities.statestore import ManifestsResult, destination_store
from idp import ids
from idp.gateway import aggregator_claims, aggregator_directory, render_aggregator
from idp.manifests import owner_records
from idp.models import ApiAggregator, Model
from idp.names import Hostname
from idp.platform import Platform
from idp.routes import RegisterTargets, Registration, RouteTarget
from idp.statestore import Change


class RoutesInput(Model):
    aggregator: ApiAggregator
    targets: list[RouteTarget]
    generation: int
    workflow_id: str


class RegisterInput(Model):
    hostname: Hostname
    request: RegisterTargets


AGGREGATOR_WORKFLOW = "ApiAggregatorWorkflow"
# Temporal admits only a few updates in flight per workflow (10 by default) and makes the rest
# retry with backoff; queueing here instead keeps a burst of workloads on one hostname from
# spending most of its time in that backoff.
UPDATES_IN_FLIGHT = 8


class ApiRouteActivities:
    def __init__(self, platform: Platform, cache_dir: Path) -> None:
        self._platform = platform
        self._cache_dir = cache_dir
        self._in_flight: dict[str, asyncio.Semaphore] = collections.defaultdict(
            lambda: asyncio.Semaphore(UPDATES_IN_FLIGHT)
        )

    @activity.defn
    async def register_api_targets(self, request: RegisterInput) -> Registration:
        # Update-with-start: the aggregator of a hostname exists as soon as a workload names
        # it, and holds the targets until its ApiAggregator is applied.
        # The workflow is named, not imported: activities sit below workflows in the layering.
        start = WithStartWorkflowOperation(
            AGGREGATOR_WORKFLOW,
            {"hostname": request.hostname},
            id=ids.aggregator_id(request.hostname),
            task_queue=activity.info().task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary=f"API routes of {request.hostname}",
        )
        async with self._in_flight[request.hostname]:
            return await heartbeating(
                activity.client().execute_update_with_start_workflow(
                    "register",
                    request.request,
                    start_workflow_operation=start,
                    result_type=Registration,
                )
            )

    @activity.defn
    async def write_api_routes(self, request: RoutesInput) -> ManifestsResult:
        with as_activity_errors():
            return await self._apply(request, "apply")

    @activity.defn
    async def remove_api_routes(self, request: RoutesInput) -> ManifestsResult:
        with as_activity_errors():
            return await self._apply(request.model_copy(update={"targets": []}), "delete")

    async def _apply(self, request: RoutesInput, verb: str) -> ManifestsResult:
        spec = request.aggregator.spec
        destination = self._platform.require_destination(spec.destination)
        gateway = destination.gateway(spec.gateway.name, spec.gateway.namespace)
        implementation = gateway.implementation if gateway else "envoy-gateway"
        files = render_aggregator(request.aggregator, request.targets, implementation)
        base = destination.state_store.path
        directory = aggregator_directory(base, request.aggregator)
        message = (
            f"{verb} ApiAggregator {request.aggregator.metadata.name} ({spec.hostname}) "
            f"generation {request.generation}, {len(request.targets)} target(s)\n\n"
            f"Workflow: {request.workflow_id}"
        )
        change = Change(
            directory,
            files,
            message,
            owner=request.aggregator.workflow_id,
            claims=aggregator_claims(base, request.aggregator, files),
            # Its routes live in the workloads' namespaces: its records may be in any of them.
            records=owner_records(base, spec.destination),
        )
        store = destination_store(destination, self._cache_dir)
        result = await heartbeating(store.apply(change))
        return ManifestsResult.of(directory, files, result)
