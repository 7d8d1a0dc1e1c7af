"""Activities for a workload's ECR repository and IAM role (idp/registry.py does the work)."""

import asyncio
from collections.abc import Callable
from typing import TypeVar

from temporalio import activity

from activities.errors import as_activity_errors
from activities.heartbeat import heartbeating
from idp.aws.client import AwsClients
from idp.errors import PermanentError
from idp.models import Model, Workload
from idp.platform import Platform
from idp.registry import RegistryObservation, RegistryTarget, ensure, teardown

T = TypeVar("T")


class RegistryInput(Model):
    workload: Workload


class RegistryRemoval(Model):
    removed: list[str]


class AwsActivities:
    def __init__(self, platform: Platform) -> None:
        self._platform = platform
        self._clients: AwsClients | None = None

    def _aws(self) -> AwsClients:
        aws = self._platform.aws
        if aws is None:
            raise PermanentError("the platform configuration has no aws section", reason="NoAws")
        if self._clients is None:
            self._clients = AwsClients.create(aws.region, endpoint_url=aws.endpoint_url)
        return self._clients

    def _target(self, workload: Workload) -> RegistryTarget:
        aws = self._platform.aws
        destination = self._platform.destination(workload.spec.destination)
        if aws is None or destination is None or destination.cluster is None:
            raise PermanentError(
                f"destination {workload.spec.destination!r} is not defined with a cluster in the "
                "platform configuration",
                reason="UnknownDestination",
            )
        cluster = destination.cluster
        return RegistryTarget(
            system=workload.metadata.system,
            name=workload.metadata.name,
            namespace=workload.spec.namespace,
            service_account=workload.service_account,
            account_id=aws.account_id,
            region=aws.region,
            repository_prefix=aws.repository_prefix,
            trust=cluster.trust,
            oidc_provider_arn=cluster.oidc_provider_arn,
            oidc_issuer_url=cluster.oidc_issuer_url,
            deletion_policy=workload.spec.deletion_policy.value,
        )

    async def _run(self, workload: Workload, work: Callable[[RegistryTarget, AwsClients], T]) -> T:
        with as_activity_errors():
            target, clients = self._target(workload), self._aws()
            # boto3 blocks: run it in a thread and heartbeat meanwhile, so a lost worker is
            # noticed in seconds.
            return await heartbeating(asyncio.to_thread(work, target, clients))

    @activity.defn
    async def ensure_registry(self, request: RegistryInput) -> RegistryObservation:
        spec = request.workload.spec.registry
        return await self._run(request.workload, lambda t, c: ensure(t, spec, c))

    @activity.defn
    async def remove_registry(self, request: RegistryInput) -> RegistryRemoval:
        spec = request.workload.spec.registry
        removed = await self._run(request.workload, lambda t, c: teardown(t, spec, c))
        return RegistryRemoval(removed=removed)
