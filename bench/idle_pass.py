"""What one idle pass and one onboarding cost a workload, in history events and billable actions.

    .venv/bin/python bench/idle_pass.py [--passes 5]

On a Temporal dev server with moto, the Synadia emulator and a bare git repository, it onboards
two workloads, one with a registry and manifests, one with a NATS user and sealed credentials as
well, and counts the activities of the onboarding (the first pass). Then it lets the drift timer
(2 s here) run `--passes` idle passes and counts, per pass, the history events and the billable
actions: timers started, activities scheduled and local-activity batches (one per workflow task
that records local-activity markers), which is what Temporal Cloud bills for these.
"""

import argparse
import asyncio
import os
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import running
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "histories")]  # the stack the tests and recordings use

from record import SYNADIA_TOKEN_ENV, with_aws, with_nats  # noqa: E402
from support.moto import moto_server  # noqa: E402
from support.secrets import controller_keys  # noqa: E402
from support.stack import bare_repo, platform_for, running_worker, start_dev_server  # noqa: E402

from emulators.synadia import DEFAULT_TOKEN, SynadiaEmulator  # noqa: E402
from idp.models import Workload  # noqa: E402
from starter.operations import apply_workload  # noqa: E402
from workflows.messages import WaitReadyRequest  # noqa: E402
from workflows.state import Phase  # noqa: E402
from workflows.workload import WorkloadWorkflow  # noqa: E402

QUEUE = "idle-pass"
DRIFT = timedelta(seconds=2)
SCHEDULED = EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
TIMER = EventType.EVENT_TYPE_TIMER_STARTED
FIRED = EventType.EVENT_TYPE_TIMER_FIRED
MARKER = EventType.EVENT_TYPE_MARKER_RECORDED
TASK_COMPLETED = EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED


def workload(name: str, nats: bool) -> Workload:
    spec = {"owner": "bench", "destination": "dev", "namespace": "bench"}
    if nats:
        spec["nats"] = {"permissions": {"publish": {"allow": ["bench.>"]}}}
    return Workload.model_validate({"metadata": {"name": name, "system": "idle"}, "spec": spec})


def actions(events: list[HistoryEvent]) -> int:
    """Timers, activities, and one per workflow task whose commands record local activities."""
    batches, batch = 0, False
    for event in events:
        if event.event_type == MARKER and event.marker_recorded_event_attributes.marker_name == (
            "core_local_activity"
        ):
            batch = True
        elif event.event_type == TASK_COMPLETED:
            batches, batch = batches + batch, False
    batches += batch
    return batches + sum(e.event_type in (TIMER, SCHEDULED) for e in events)


async def measure(client: Client, w: Workload, passes: int) -> tuple[int, float, float]:
    """(activities onboarding, events per idle pass, actions per idle pass)."""
    await apply_workload(client, QUEUE, w)
    handle: WorkflowHandle = client.get_workflow_handle(w.workflow_id)
    status = await handle.execute_update(
        WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=1, timeout_seconds=60)
    )
    assert status.phase == Phase.READY, status.conditions
    onboarding = (await handle.fetch_history()).events
    activities = sum(e.event_type == SCHEDULED for e in onboarding)
    # Idle passes are the ones a fired drift timer starts; count from the first to the one
    # `passes` later, each ending with its next timer.
    async with asyncio.timeout(passes * DRIFT.total_seconds() * 10 + 30):
        while True:
            events = list((await handle.fetch_history()).events)
            fired = [i for i, e in enumerate(events) if e.event_type == FIRED]
            if len(fired) > passes and any(e.event_type == TIMER for e in events[fired[-1] :]):
                break
            await asyncio.sleep(DRIFT.total_seconds() / 2)
    window = events[fired[-passes - 1] : fired[-1]]
    return activities, len(window) / passes, actions(window) / passes


async def main(passes: int) -> None:
    os.environ[SYNADIA_TOKEN_ENV] = DEFAULT_TOKEN
    with moto_server() as aws_url, tempfile.TemporaryDirectory() as tmp:
        keys = controller_keys(Path(tmp) / "keys")
        async with (
            SynadiaEmulator.running(Path(tmp) / "synadia") as synadia,
            await start_dev_server() as env,
        ):
            repo = bare_repo(Path(tmp) / "state.git")
            platform = with_nats(with_aws(platform_for(repo, DRIFT), aws_url), synadia, keys)
            async with running_worker(env.client, platform, QUEUE, Path(tmp) / "cache"):
                plain = await measure(env.client, workload("rm", False), passes)
                nats = await measure(env.client, workload("rn", True), passes)
    rows = [("registry + manifests", plain), ("+ NATS user and credentials", nats)]
    header = ("workload", "onboarding activities", "events/idle pass", "actions/idle pass")
    print(f"{header[0]:<30} {header[1]:>22} {header[2]:>17} {header[3]:>18}")
    for name, (activities, events, billed) in rows:
        print(f"{name:<30} {activities:>22} {events:>17.1f} {billed:>18.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=5)
    running.run(main(parser.parse_args().passes))
