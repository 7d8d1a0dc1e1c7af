"""The Port bridge end to end: the Port emulator presses buttons (signed webhooks rendered from
starter/port/actions), the bridge drives a real worker on the session's Temporal dev server, and
PortRunWorkflow reports back to the emulator."""

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.port import PortStack, port_stack
from support.secrets import history_text
from support.stack import bare_repo, commits, workflow_exists
from temporalio.client import WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError

from activities.port import Target, judge, port_errors
from emulators.port.store import Run
from idp.loading import InputError, load
from idp.models import Workload
from idp.port import PortApiError, PortUnavailable
from starter.operations import apply_workload
from workflows.messages import WaitReadyRequest, WorkloadStatus
from workflows.state import Condition, ConditionStatus, Phase
from workflows.workload import WorkloadWorkflow

CREATE = "idp_create_workload"


@pytest.fixture(scope="module")
async def stack(dev_env, tmp_path_factory) -> AsyncIterator[PortStack]:
    """One emulator, worker and bridge for the module; every test uses its own system."""
    root: Path = tmp_path_factory.mktemp("port")
    async with port_stack(dev_env.client, bare_repo(root / "state.git"), root / "cache") as s:
        yield s


def unique_system() -> str:
    return f"s{uuid.uuid4().hex[:10]}"


def fields(system: str, name: str = "hello", **extra: Any) -> dict[str, Any]:
    # One namespace per test: the tests share a state store, where one directory has one owner.
    spec = {"owner": "team-a", "destination": "dev", "namespace": system}
    return {"name": name, "system": system, **spec, **extra}


def body(run_id: str, action: str = CREATE, **overrides: Any) -> dict[str, Any]:
    """What the actions' template renders to, for webhooks sent by hand."""
    return {
        "action": action,
        "runId": run_id,
        "inputs": {},
        "entity": None,
        "triggeredBy": "developer@example.com",
        **overrides,
    }


async def finished(stack: PortStack, run_id: str, timeout: float = 30.0) -> Run:
    def done() -> Run | None:
        run = stack.emulator.run(run_id)
        return run if run is not None and run.status != "IN_PROGRESS" else None

    return await stack.emulator.until(done, timeout)


async def created(stack: PortStack, system: str) -> Run:
    invocation = await stack.emulator.invoke(CREATE, fields(system))
    assert invocation.status_code == 202, invocation.response
    run = await finished(stack, invocation.run_id)
    assert run.status == "SUCCESS", run.logs
    return run


async def test_a_create_webhook_makes_a_ready_workload_and_port_shows_it(stack):
    system = unique_system()
    workflow_id = f"workload/{system}/hello"
    invocation = await stack.emulator.invoke(CREATE, fields(system))
    assert invocation.status_code == 202, invocation.response
    # Delivered again at once, byte for byte (a retry, or a replay within the window).
    again = await stack.emulator.redeliver(invocation.run_id)
    assert again.status_code == 202, again.response

    run = await finished(stack, invocation.run_id)
    assert run.status == "SUCCESS" and run.status_label == "Ready"
    assert run.terminations == ["SUCCESS"]
    assert run.link == [stack.workflow_link(workflow_id)]
    assert run.summary.startswith("**Ready** · generation 1")
    messages = [log.message for log in run.logs]
    assert messages[0] == (
        f"Accepted for developer@example.com: apply generation 1 of workload {system}/hello."
    )
    assert any("Manifests: committed serviceaccount.yaml" in m for m in messages)
    assert messages[-1] == f"Workload {system}/hello is Ready at generation 1."

    status = await stack.client.get_workflow_handle(workflow_id).query(WorkloadWorkflow.status)
    assert (status.phase, status.generation) == (Phase.READY, 1)
    entity = stack.emulator.entity("idpWorkload", f"{system}.hello")
    properties = entity["properties"]
    assert properties["phase"] == "Ready"
    assert (properties["destination"], properties["namespace"]) == ("dev", system)
    assert properties["observedGeneration"] == 1
    assert properties["temporal"] == stack.workflow_link(workflow_id)
    assert "Manifests: True" in properties["conditions"]
    assert yaml.safe_load(properties["spec"])["metadata"] == {"name": "hello", "system": system}
    assert entity["relations"] == {"system": system, "apiAggregators": []}
    assert entity["runIds"] == [invocation.run_id]
    assert stack.emulator.entity("idpSystem", system)["properties"]["workflows"].endswith(
        f"IdpSystem%20%3D%20%27{system}%27"
    )

    late = await stack.emulator.redeliver(invocation.run_id)
    assert late.status_code == 202 and late.response["duplicate"] is True
    reports = [w async for w in stack.client.list_workflows(f"WorkflowId = 'port-run/{run.id}'")]
    assert len(reports) == 1
    assert len(stack.emulator.run(run.id).logs) == len(messages)
    assert [c for c in commits(stack.repo) if f"{system}/hello" in c] == [
        f"apply Workload {system}/hello generation 1"
    ]


async def test_update_by_yaml_then_reconcile_upserts_entities_only_on_change(stack):
    system = unique_system()
    await created(stack, system)
    entity_id = f"{system}.hello"
    spec = yaml.safe_load(stack.emulator.entity("idpWorkload", entity_id)["properties"]["spec"])
    spec["spec"]["owner"] = "team-b"
    update = await stack.emulator.invoke(
        "idp_update_workload", {"spec": yaml.safe_dump(spec)}, entity=entity_id
    )
    assert update.status_code == 202, update.response
    run = await finished(stack, update.run_id)
    assert run.status == "SUCCESS"
    assert run.logs[-1].message == f"Workload {system}/hello is Ready at generation 2."
    properties = stack.emulator.entity("idpWorkload", entity_id)["properties"]
    assert (properties["owner"], properties["generation"]) == ("team-b", 2)

    upserts = "POST /v1/blueprints/{blueprint}/entities"
    for round_ in range(2):
        before = stack.emulator.calls(upserts)
        reconcile = await stack.emulator.invoke("idp_reconcile_workload", entity=entity_id)
        assert reconcile.status_code == 202, reconcile.response
        assert (await finished(stack, reconcile.run_id)).status == "SUCCESS"
        if round_ == 1:
            # Nothing Port shows changed: the entities were read, not written.
            assert stack.emulator.calls(upserts) == before

    # A field alone changes that field; over the prefilled spec, the field wins.
    handle = stack.client.get_workflow_handle(f"workload/{system}/hello")
    prefilled = stack.emulator.entity("idpWorkload", entity_id)["properties"]["spec"]
    for generation, inputs in ((3, {"owner": "team-c"}), (4, {"spec": prefilled, "owner": "d"})):
        update = await stack.emulator.invoke("idp_update_workload", inputs, entity=entity_id)
        assert (await finished(stack, update.run_id)).status == "SUCCESS"
        status = await handle.query(WorkloadWorkflow.status)
        assert (status.workload.spec.owner, status.generation) == (inputs["owner"], generation)


@pytest.mark.parametrize("mode", ["bad-signature", "stale", "future", "unsigned"])
async def test_an_untrusted_webhook_is_refused_and_nothing_happens(stack, mode):
    system = unique_system()
    run = stack.emulator.create_run(CREATE, fields(system))
    answer = await stack.emulator.deliver(
        stack.webhook_url, body(run.id, inputs=fields(system)), run_id=run.id, mode=mode
    )
    assert answer.status_code == 401
    assert answer.response["ok"] is False and answer.response["error"] == "unauthorized"
    assert not await workflow_exists(stack.client, f"workload/{system}/hello")
    assert not await workflow_exists(stack.client, f"port-run/{run.id}")
    assert (run.status, run.logs) == ("IN_PROGRESS", [])


async def test_an_unknown_action_is_refused_and_its_run_fails(stack):
    run = stack.emulator.create_run("idp_launch_rocket")
    answer = await stack.emulator.deliver(
        stack.webhook_url, body(run.id, action="idp_launch_rocket"), run_id=run.id
    )
    assert answer.status_code == 400
    assert answer.response["message"].startswith("unknown action 'idp_launch_rocket'")
    failed = await finished(stack, run.id)
    assert failed.status == "FAILURE" and failed.terminations == ["FAILURE"]
    assert failed.logs[-1].message == f"Rejected: {answer.response['message']}"
    assert not await workflow_exists(stack.client, f"port-run/{run.id}")


async def test_a_malformed_body_is_refused_and_fails_the_run_when_it_names_one(stack):
    run = stack.emulator.create_run(CREATE)
    answer = await stack.emulator.deliver(stack.webhook_url, body(run.id, inputs=["x"]))
    assert answer.status_code == 400
    assert answer.response["message"] == "body.inputs: Input should be a valid dictionary"
    assert (await finished(stack, run.id)).status == "FAILURE"

    not_json = await stack.emulator.deliver(stack.webhook_url, b"{runId: r_1")
    assert not_json.status_code == 400 and not_json.response["message"] == "the body is not JSON"

    huge = stack.emulator.create_run(CREATE)
    padded = body(huge.id, inputs={"spec": "#" * (1024 * 1024)})
    too_large = await stack.emulator.deliver(stack.webhook_url, padded, run_id=huge.id)
    assert too_large.status_code == 413
    assert (huge.status, huge.logs) == ("IN_PROGRESS", [])


@pytest.mark.parametrize(
    "spec",
    [
        "apiVersion: idp.dev/v1alpha1\nkind: Workload\nmetadata: {name: hello, system: SYS}\n"
        "spec: {destination: dev, namespace: demo}\n",
        "kind: Workload\nmetadata: [name: hello\n",
    ],
    ids=["missing-owner", "not-yaml"],
)
async def test_an_invalid_spec_fails_the_run_with_the_loader_message(stack, tmp_path, spec):
    system = unique_system()
    spec = spec.replace("SYS", system)
    # What `idpctl apply -f` says about the same document, with the input named instead.
    file = tmp_path / "workload.yaml"
    file.write_text(spec)
    with pytest.raises(InputError) as loader:
        load([file])
    (problem,) = loader.value.problems
    message = re.sub(rf"^{re.escape(str(file))}(: document 1)?", "inputs.spec", problem)

    invocation = await stack.emulator.invoke(CREATE, {"spec": spec})
    assert invocation.status_code == 400
    assert invocation.response["message"] == message
    run = await finished(stack, invocation.run_id)
    assert (run.status, run.status_label, run.summary) == ("FAILURE", "Rejected", message)
    assert not await workflow_exists(stack.client, f"workload/{system}/hello")
    assert not await workflow_exists(stack.client, f"port-run/{run.id}")


async def test_a_change_the_validator_refuses_fails_the_run(stack):
    system = unique_system()
    await created(stack, system)
    entity_id = f"{system}.hello"
    spec = yaml.safe_load(stack.emulator.entity("idpWorkload", entity_id)["properties"]["spec"])
    spec["spec"]["namespace"] = "elsewhere"
    invocation = await stack.emulator.invoke(
        "idp_update_workload", {"spec": yaml.safe_dump(spec)}, entity=entity_id
    )
    assert invocation.status_code == 409
    run = await finished(stack, invocation.run_id)
    assert run.status == "FAILURE"
    assert "spec.namespace cannot change on a live workload" in run.logs[-1].message
    status = await stack.client.get_workflow_handle(f"workload/{system}/hello").query(
        WorkloadWorkflow.status
    )
    assert (status.generation, status.workload.spec.namespace) == (1, system)


async def test_pause_resume_and_delete_through_port(stack):
    system = unique_system()
    create = await created(stack, system)
    entity_id = f"{system}.hello"

    async def press(action: str, expected: int = 202) -> Run:
        invocation = await stack.emulator.invoke(action, {"reason": "test"}, entity=entity_id)
        assert invocation.status_code == expected, invocation.response
        return await finished(stack, invocation.run_id)

    assert (await press("idp_pause_workload")).status_label == "Paused"
    refused = await press("idp_reconcile_workload", 409)
    assert refused.logs[-1].message.endswith("is paused; resume it first")
    assert (await press("idp_resume_workload")).status_label == "Ready"
    no_nats = await press("idp_rotate_workload_credentials", 409)
    assert "has no NATS user" in no_nats.logs[-1].message
    deleted = await press("idp_delete_workload")
    assert (deleted.status, deleted.status_label) == ("SUCCESS", "Deleted")
    description = await stack.client.get_workflow_handle(f"workload/{system}/hello").describe()
    assert description.status == WorkflowExecutionStatus.COMPLETED
    assert stack.emulator.entity("idpWorkload", entity_id)["properties"]["phase"] == "Deleted"
    # The create delivered again (a replay inside the window) does not bring the workload back.
    replay = await stack.emulator.redeliver(create.id)
    assert replay.status_code == 202 and replay.response["duplicate"] is True
    description = await stack.client.get_workflow_handle(f"workload/{system}/hello").describe()
    assert description.status == WorkflowExecutionStatus.COMPLETED


async def test_port_down_leaves_the_workload_alone_and_the_report_catches_up(stack):
    system = unique_system()
    stack.emulator.set_faults(status=503)
    try:
        invocation = await stack.emulator.invoke(CREATE, fields(system))
        assert invocation.status_code == 202, invocation.response
        handle = stack.client.get_workflow_handle(f"workload/{system}/hello")
        status = await handle.execute_update(
            WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=1, timeout_seconds=30)
        )
        assert status.phase == Phase.READY
        # The reporter keeps knocking while Port is down: past the client's own attempts, so
        # Temporal retries the activity.
        reporter = stack.client.get_workflow_handle(f"port-run/{invocation.run_id}")
        async with asyncio.timeout(30):
            while not any(
                pending.attempt >= 2
                for pending in (await reporter.describe()).raw_description.pending_activities
            ):
                await asyncio.sleep(0.1)
        assert stack.emulator.run(invocation.run_id).logs == []
    finally:
        stack.emulator.clear_faults()
    run = await finished(stack, invocation.run_id, timeout=45)
    assert run.status == "SUCCESS" and run.terminations == ["SUCCESS"]
    assert [log.message for log in run.logs].count(run.logs[0].message) == 1
    assert run.logs[0].message.startswith("Accepted")
    assert stack.emulator.entity("idpWorkload", f"{system}.hello")["properties"]["phase"] == "Ready"
    history = await stack.client.get_workflow_handle(f"port-run/{run.id}").fetch_history()
    attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
    ]
    assert max(attempts) >= 2


async def test_no_port_secret_reaches_a_history_or_a_log(stack, caplog):
    caplog.set_level(logging.DEBUG)
    system = unique_system()
    await created(stack, system)
    stack.emulator.expire_tokens()  # the worker and the bridge fetch new ones
    reconcile = await stack.emulator.invoke("idp_reconcile_workload", entity=f"{system}.hello")
    assert (await finished(stack, reconcile.run_id)).status == "SUCCESS"
    nobody = stack.emulator.create_run("idp_reconcile_workload", entity=f"{system}.nobody")
    rejected = await stack.emulator.deliver(
        stack.webhook_url,
        body(nobody.id, action="idp_reconcile_workload", entity=f"{system}.nobody"),
    )
    assert rejected.status_code == 404
    assert (await finished(stack, nobody.id)).status == "FAILURE"

    histories = []
    async for execution in stack.client.list_workflows(f"TaskQueue = '{stack.queue}'"):
        handle = stack.client.get_workflow_handle(execution.id, run_id=execution.run_id)
        histories.append(history_text(await handle.fetch_history()))
    text = "\n".join(histories)
    assert reconcile.run_id in text, "the scan must see the payloads"
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)
    assert "could not" not in logged  # the rejection was reported, so the bridge's client worked
    secrets = [stack.emulator.client_secret, *stack.emulator.issued_tokens]
    assert len(secrets) > 2
    for secret in secrets:
        assert secret not in text, "a Port secret reached a workflow history"
        assert secret not in logged, "a Port secret reached a log record"


# ---- the rules PortRunWorkflow reports by (pure functions, no servers)


def status_of(phase: Phase, **changes: Any) -> WorkloadStatus:
    workload = Workload.model_validate(
        {
            "metadata": {"name": "hello", "system": "demo"},
            "spec": {"owner": "team-a", "destination": "dev", "namespace": "demo"},
        }
    )
    values: dict[str, Any] = {
        "name": "hello",
        "system": "demo",
        "workload": workload,
        "phase": phase,
        "paused": False,
        "generation": 2,
        "observed_generation": 2,
        "conditions": [],
        "outputs": {},
        "events": [],
        "next_check_at": datetime(2030, 1, 1, tzinfo=UTC),
    }
    return WorkloadStatus(**(values | changes))


def test_a_generation_settles_when_observed_ready_or_degraded():
    target = Target(kind="generation", generation=2)
    assert judge(target, status_of(Phase.PROVISIONING, observed_generation=1)) is None
    assert judge(target, status_of(Phase.READY))[:2] == ("SUCCESS", "Ready")
    failing = Condition(
        type="Registry",
        status=ConditionStatus.FALSE,
        reason="AccessDenied",
        message="not allowed",
        last_transition_time=datetime(2030, 1, 1, tzinfo=UTC),
    )
    outcome, label, message = judge(target, status_of(Phase.DEGRADED, conditions=[failing]))
    assert (outcome, label) == ("FAILURE", "Degraded")
    assert message == "is Degraded: Registry: AccessDenied: not allowed"
    paused = judge(target, status_of(Phase.PAUSED, paused=True, observed_generation=1))
    assert paused[:2] == ("SUCCESS", "Applied (paused)")


def test_a_rotation_settles_on_a_new_credential_version_or_a_failed_pass():
    before = datetime(2030, 1, 1, tzinfo=UTC)
    target = Target(kind="rotated", baseline_next_check_at=before)
    assert judge(target, status_of(Phase.READY, next_check_at=before)) is None
    later = datetime(2030, 1, 2, tzinfo=UTC)
    assert judge(target, status_of(Phase.DEGRADED, next_check_at=later))[0] == "FAILURE"


def test_a_deletion_that_keeps_failing_is_reported():
    before = datetime(2030, 1, 1, tzinfo=UTC)
    target = Target(kind="deleted", baseline_next_check_at=before)
    assert judge(target, status_of(Phase.DELETING, next_check_at=before)) is None
    retrying = status_of(Phase.DELETING, next_check_at=datetime(2030, 1, 2, tzinfo=UTC))
    assert judge(target, retrying)[:2] == ("FAILURE", "Deletion failing")
    assert judge(target, status_of(Phase.DELETED))[:2] == ("SUCCESS", "Deleted")


def test_port_errors_become_activity_failures_that_honour_port():
    with pytest.raises(ApplicationError) as limited, port_errors():
        raise PortUnavailable("Port is rate limiting", retry_after=45)
    assert limited.value.next_retry_delay == timedelta(seconds=45)
    assert not limited.value.non_retryable
    with pytest.raises(ApplicationError) as refused, port_errors():
        raise PortApiError("Port said no", status=422, error="invalid_request")
    assert refused.value.non_retryable and refused.value.type == "PortHTTP422"


async def test_a_workload_applied_outside_port_is_published_once_per_change(stack):
    # Applied with idpctl's code path, no Port run: the workload's own passes publish it.
    system = unique_system()
    workload = Workload.model_validate(
        {
            "metadata": {"name": "hello", "system": system},
            "spec": {"owner": "team-a", "destination": "dev", "namespace": system},
        }
    )
    await apply_workload(stack.client, stack.queue, workload)
    handle = stack.client.get_workflow_handle(workload.workflow_id)
    await handle.execute_update(
        WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=1, timeout_seconds=30)
    )
    identifier = f"{system}.hello"
    await stack.emulator.until(
        lambda: (
            (stack.emulator.entity("idpWorkload", identifier) or {})
            .get("properties", {})
            .get("phase")
            == "Ready"
        )
    )

    async def reconciled() -> None:
        before = (await handle.query(WorkloadWorkflow.status)).next_check_at
        await handle.signal(WorkloadWorkflow.reconcile)
        async with asyncio.timeout(30):
            while (await handle.query(WorkloadWorkflow.status)).next_check_at == before:
                await asyncio.sleep(0.05)

    # The second pass turns "created"/"committed" conditions into "in sync", which Port shows;
    # from then on a pass that changes nothing sends Port nothing at all.
    await reconciled()
    await stack.emulator.until(
        lambda: (
            "Manifests: True (InSync)"
            in stack.emulator.entity("idpWorkload", identifier)["properties"]["conditions"]
        )
    )
    calls = stack.emulator.counters()["calls"]
    for _ in range(3):
        await reconciled()
    assert stack.emulator.counters()["calls"] == calls

    # Pausing changes what Port shows: published again.
    await handle.signal(WorkloadWorkflow.pause)
    await stack.emulator.until(
        lambda: stack.emulator.entity("idpWorkload", identifier)["properties"]["phase"] == "Paused"
    )
