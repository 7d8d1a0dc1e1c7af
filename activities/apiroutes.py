"""Activities of the ApiAggregatorWorkflow: writing its rendered routes into the state store and
removing them. Workloads register their targets through the Api capability (capabilities/api)."""

from pathlib import Path

from temporalio import activity

from activities.errors import as_activity_errors
from activities.heartbeat import heartbeating
from activities.statestore import ManifestsResult, destination_store
from idp.gateway import aggregator_claims, aggregator_directory, render_aggregator
from idp.manifests import owner_records
from idp.models import ApiAggregator, Model
from idp.platform import Platform
from idp.routes import RouteTarget
from idp.statechange import Change


class RoutesInput(Model):
    aggregator: ApiAggregator
    targets: list[RouteTarget]
    generation: int
    workflow_id: str


class ApiRouteActivities:
    def __init__(self, platform: Platform, cache_dir: Path) -> None:
        self._platform = platform
        self._cache_dir = cache_dir

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
