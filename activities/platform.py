"""Platform settings the workflow needs, read through an activity so history records them."""

from temporalio import activity

from idp.platform import Platform, ReconcileSettings


class PlatformActivities:
    def __init__(self, platform: Platform) -> None:
        self._platform = platform

    @activity.defn
    async def reconcile_settings(self) -> ReconcileSettings:
        return self._platform.reconcile
