"""The worker's git state stores (`destination_store`, one per repository and branch, shared by
every writer) and the result of a manifests write (`ManifestsResult`, the ApiAggregator's)."""

from collections.abc import Mapping
from pathlib import Path

from idp.manifests import digest
from idp.models import Model
from idp.platform import Destination
from idp.statechange import ChangeResult
from idp.statestore import StateStore, state_store


class ManifestsResult(Model):
    directory: str
    digest: str
    commit: str | None
    written: list[str] = []
    removed: list[str] = []

    @classmethod
    def of(
        cls, directory: str, files: Mapping[str, str], result: ChangeResult
    ) -> "ManifestsResult":
        return cls(
            directory=directory,
            digest=digest(files),
            commit=result.commit,
            written=list(result.written),
            removed=list(result.removed),
        )


def destination_store(destination: Destination, cache_dir: Path) -> StateStore:
    """The worker's one StateStore per repository and branch, shared by every step."""
    config = destination.state_store
    return state_store(config.url, config.branch, cache_dir)
