"""What the workflow needs to know about the platform, read through a local activity so history
records it and a changed platform file takes effect on the next pass."""

from pydantic import ConfigDict, Field
from temporalio import activity

from activities.capabilities import installed_names, offered
from idp.capability import digest
from idp.models import Model
from idp.platform import Platform, ReconcileSettings


class RuntimeSettings(Model):
    # Histories hold what earlier workers answered (the first version named registry and nats
    # here): read them still, so running aggregators replay.
    model_config = ConfigDict(extra="ignore")

    reconcile: ReconcileSettings = ReconcileSettings()
    capabilities: list[str] = Field(
        [], description="The installed capabilities the platform offers (aws for Registry, ...)."
    )
    port: bool = Field(False, description="Workloads are published to Port (port configured).")
    installed: list[str] = Field(
        [],
        description="Every capability the worker has installed: a replay decides as the pass "
        "did, whatever the replaying worker has (workflows/engine.py).",
    )
    platform_digest: str | None = Field(
        None,
        description="Of the whole platform file: a workload the fleet observer keeps asleep is "
        "woken when it changes, since its plans may too.",
    )


class PlatformActivities:
    def __init__(self, platform: Platform) -> None:
        self._platform = platform

    @activity.defn
    async def runtime_settings(self) -> RuntimeSettings:
        return RuntimeSettings(
            reconcile=self._platform.reconcile,
            capabilities=offered(self._platform),
            port=self._platform.port is not None,
            installed=installed_names(),
            platform_digest=platform_digest(self._platform),
        )


def platform_digest(platform: Platform) -> str:
    return digest(platform.model_dump(mode="json"))
