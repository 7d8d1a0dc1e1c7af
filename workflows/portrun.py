"""PortRunWorkflow: tells Port what became of one self-service action run.

The bridge starts it, id `port-run/<run id>`, once the workload workflow has accepted the run's
request; a re-delivered webhook finds the id taken and reports nothing twice. It logs that the
request was accepted, waits for the workload to settle, logs what the pass did, brings the Port
entities up to date (while the run is still in progress, so Port links them to it), and finishes
the run: label, summary and a link to the workload in the Temporal UI, then the last log line
with the terminal status, exactly once.

Port being down never touches the workload: these activities retry for days with capped
backoff (honouring Port's rate-limit waits), so the report catches up when Port is back.
"""

from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.heartbeat import HEARTBEAT_TIMEOUT
    from activities.port import (
        EntitiesInput,
        FinishInput,
        LogInput,
        PortActivities,
        Settled,
        Target,
        WaitInput,
    )
    from idp import ids
    from idp.models import Model
    from idp.port import RunStatus

REPORT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
)
# Reports give up after a week of Port refusing them; until then the run shows in progress.
REPORT_PATIENCE = timedelta(days=7)
WAIT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10)
)


class PortRunInput(Model):
    run_id: str
    request: str  # what was asked, for the log: "apply generation 2", "rotate credentials"
    workflow_id: str
    target: Target
    accepted_at: datetime
    workload_link: str
    system_link: str
    triggered_by: str | None = None


class PortRunResult(Model):
    status: RunStatus
    label: str
    entities_upserted: list[str] = []
    reported: bool


@workflow.defn
class PortRunWorkflow:
    @workflow.run
    async def run(self, input: PortRunInput) -> PortRunResult:
        name = ids.workload_reference(input.workflow_id)
        by = f" for {input.triggered_by}" if input.triggered_by else ""
        await self._log(input.run_id, f"Accepted{by}: {input.request} of workload {name}.")
        settled: Settled = await workflow.execute_activity_method(
            PortActivities.wait_for_workload,
            WaitInput(workflow_id=input.workflow_id, target=input.target, since=input.accepted_at),
            start_to_close_timeout=timedelta(hours=1),
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=WAIT_RETRY,
            summary=f"wait for {name} to settle",
        )
        if settled.progress:
            await self._log(input.run_id, "\n".join(settled.progress))
        message = settled.message
        upserted: list[str] = []
        if settled.status is not None:
            try:
                result = await workflow.execute_activity_method(
                    PortActivities.sync_port_entities,
                    EntitiesInput(
                        run_id=input.run_id,
                        status=settled.status,
                        workload_link=input.workload_link,
                        system_link=input.system_link,
                    ),
                    **self._report_options("update Port entities"),
                )
                upserted = result.upserted
            except ActivityError as error:
                # The run still gets its outcome; the entity is fixed by the next run's report.
                message += f" Port refused the entity update: {_cause(error)}"
        reported = await workflow.execute_activity_method(
            PortActivities.finish_port_run,
            FinishInput(
                run_id=input.run_id,
                status=settled.outcome,
                message=message,
                label=settled.label,
                summary=settled.summary,
                link=input.workload_link,
            ),
            **self._report_options(f"report {settled.outcome} to Port"),
        )
        return PortRunResult(
            status=settled.outcome,
            label=settled.label,
            entities_upserted=upserted,
            reported=reported,
        )

    async def _log(self, run_id: str, message: str) -> None:
        await workflow.execute_activity_method(
            PortActivities.log_to_port_run,
            LogInput(run_id=run_id, message=message),
            **self._report_options("log to the Port run"),
        )

    @staticmethod
    def _report_options(summary: str) -> dict[str, Any]:
        return {
            "start_to_close_timeout": timedelta(minutes=1),
            "schedule_to_close_timeout": REPORT_PATIENCE,
            "retry_policy": REPORT_RETRY,
            "summary": summary,
        }


def _cause(error: ActivityError) -> str:
    cause = error.cause
    return cause.message if isinstance(cause, ApplicationError) else str(cause or error)
