"""What the workflow needs to know about the platform, read through a local activity so history
records it and a changed platform file takes effect on the next pass."""

from pydantic import Field
from temporalio import activity

from idp.models import Model
from idp.platform import Platform, ReconcileSettings


class RuntimeSettings(Model):
    reconcile: ReconcileSettings = ReconcileSettings()
    registry: bool = Field(False, description="The platform offers registries (aws configured).")
    nats: bool = Field(False, description="The platform offers NATS users (synadia configured).")
    port: bool = Field(False, description="Workloads are published to Port (port configured).")


class PlatformActivities:
    def __init__(self, platform: Platform) -> None:
        self._platform = platform

    @activity.defn
    async def runtime_settings(self) -> RuntimeSettings:
        return RuntimeSettings(
            reconcile=self._platform.reconcile,
            registry=self._platform.aws is not None,
            nats=self._platform.synadia is not None,
            port=self._platform.port is not None,
        )
