"""The Registry capability's worker half: where the AWS clients live, and the report of a pass."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from capabilities.registry import aws
from capabilities.registry.capability import (
    RegistryObservation,
    RegistryOutput,
    RegistryPlan,
    explain_registry,
    registry_fingerprint,
    registry_problems,
)
from capabilities.registry.target import RegistryTarget
from idp.aws.client import AwsClients
from idp.capability import Actions, Context, Outcome, Report, dump
from idp.errors import PermanentError
from idp.models import RegistrySpec, Workload
from idp.platform import AwsConfig, Platform

T = TypeVar("T")


class RegistryActions(Actions[RegistryObservation, RegistryPlan]):
    def __init__(self, platform: Platform, settings: AwsConfig | None) -> None:
        self._platform = platform
        self._aws = settings
        self._clients: AwsClients | None = None

    def clients(self) -> AwsClients:
        if self._aws is None:
            raise PermanentError("the platform configuration has no aws section", reason="NoAws")
        if self._clients is None:
            self._clients = AwsClients.create(self._aws.region, endpoint_url=self._aws.endpoint_url)
        return self._clients

    def target(self, workload: Workload) -> RegistryTarget:
        aws_config = self._aws
        destination = self._platform.destination(workload.spec.destination)
        if aws_config is None or destination is None or destination.cluster is None:
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
            account_id=aws_config.account_id,
            region=aws_config.region,
            repository_prefix=aws_config.repository_prefix,
            trust=cluster.trust,
            oidc_provider_arn=cluster.oidc_provider_arn,
            oidc_issuer_url=cluster.oidc_issuer_url,
            deletion_policy=workload.spec.deletion_policy.value,
        )

    async def _run(
        self, ctx: Context, work: Callable[[RegistryTarget, RegistrySpec, AwsClients], T]
    ) -> T:
        target, clients = self.target(ctx.workload), self.clients()
        # boto3 blocks: a thread keeps the worker's event loop (and its heartbeats) running.
        return await asyncio.to_thread(work, target, ctx.workload.spec.registry, clients)

    async def observe(self, ctx: Context) -> RegistryObservation:
        # What idpctl and the Port bridge refuse is refused here too, for a spec that came in
        # without them (`temporal workflow update`) or a platform file changed since.
        found = registry_problems(ctx.workload.spec.registry, self._aws)
        if found:
            raise PermanentError("; ".join(found), reason="InvalidSpec")
        return await self._run(ctx, aws.observe)

    async def fleet_observe(self, keys: list[str]) -> dict[str, str]:
        return await asyncio.to_thread(aws.fleet_observe, keys, self.clients())

    async def apply(
        self, ctx: Context, plan: RegistryPlan, observation: RegistryObservation
    ) -> Report:
        output, made = await asyncio.to_thread(aws.apply, plan, observation, self.clients())
        applied = report(plan, output)
        if made is None:
            return applied  # the activity reads back what the apply left
        return applied.model_copy(update={"fingerprint": registry_fingerprint(made)})

    async def explain(
        self, ctx: Context, plan: RegistryPlan, observation: RegistryObservation
    ) -> list[str]:
        return explain_registry(ctx.workload.spec.registry, plan, observation)

    async def teardown(self, ctx: Context) -> Report:
        removed = await self._run(ctx, aws.teardown)
        message = f"removed {', '.join(removed) or 'nothing left to remove'}"
        return Report(reason=Outcome.DELETED, message=message)


def report(plan: RegistryPlan, output: RegistryOutput) -> Report:
    """A pass as the condition and the events say it: what was created, else what was put
    back, else the repository, in sync."""
    outputs = dump(output)
    if plan.created:
        message = f"created {', '.join(plan.created)}: {output.repository_uri}"
        return Report(reason=Outcome.CREATED, changed=True, message=message, outputs=outputs)
    if plan.repaired:
        message = f"put back what changed outside the reconciler: {', '.join(plan.repaired)}"
        return Report(reason=Outcome.DRIFT_REPAIRED, changed=True, message=message, outputs=outputs)
    return Report(reason=Outcome.IN_SYNC, message=output.repository_uri, outputs=outputs)
