"""Replaying histories against the current workflow code.

Workflows live for years, so every change to workflow code must still replay the histories of
runs that are alive today. `idpctl replay` checks that against a server before a deploy, and the
test suite checks it against the histories committed under tests/histories/.
"""

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer

from starter.temporal import codec_keyring, data_converter
from worker import WORKFLOW_RUNNER, WORKFLOWS

DEFAULT_QUERY = " OR ".join(f"WorkflowType = '{w.__name__}'" for w in WORKFLOWS)


@dataclass(frozen=True)
class ReplayOutcome:
    workflow_id: str
    error: str | None


def replayer() -> Replayer:
    # With keys, encrypted histories decode; histories recorded before encryption (such as
    # tests/histories/) pass through the codec untouched, so they replay either way.
    converter = data_converter(codec_keyring(), encode_failures=False)
    return Replayer(workflows=WORKFLOWS, workflow_runner=WORKFLOW_RUNNER, data_converter=converter)


async def replay(histories: AsyncIterator[WorkflowHistory]) -> list[ReplayOutcome]:
    outcomes = []
    async with replayer().workflow_replay_iterator(histories) as results:
        async for result in results:
            error = repr(result.replay_failure) if result.replay_failure else None
            outcomes.append(ReplayOutcome(result.history.workflow_id, error))
    return outcomes


async def from_files(paths: Iterable[Path]) -> AsyncIterator[WorkflowHistory]:
    for path in paths:
        yield WorkflowHistory.from_json(path.stem, path.read_text())


async def from_server(client: Client, query: str, limit: int) -> AsyncIterator[WorkflowHistory]:
    async for history in client.list_workflows(query, limit=limit).map_histories():
        yield history
