"""Preview changes through Port: the bridge diffs the workload (what `idpctl diff` prints) into
the run's logs, and nothing is started, changed or committed."""

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.port import PortStack, port_stack
from support.stack import bare_repo, commits, workflow_exists
from test_port_bridge import body, created, fields, finished, unique_system

from emulators.port.store import Run
from idp.capability import Change
from idp.models import API_VERSION, Workload
from starter import port_bridge, port_setup, preview
from starter.port_bridge import LOG_CHARS, log_messages, preview_summary

PREVIEW = "idp_preview_workload"


@pytest.fixture(scope="module")
async def stack(dev_env, tmp_path_factory) -> AsyncIterator[PortStack]:
    root: Path = tmp_path_factory.mktemp("port-preview")
    async with port_stack(dev_env.client, bare_repo(root / "state.git"), root / "cache") as s:
        yield s


@pytest.fixture
def diffs(monkeypatch: pytest.MonkeyPatch) -> list[list[Workload]]:
    """The workloads of every diff the bridge takes, as they happen."""
    taken: list[list[Workload]] = []
    real = preview.diff

    async def spy(client: Any, queue: str, workloads: list[Workload], aggregators: Any) -> Any:
        taken.append(workloads)
        return await real(client, queue, workloads, aggregators)

    monkeypatch.setattr(port_bridge.preview, "diff", spy)
    return taken


async def previewed(stack: PortStack, inputs: dict[str, Any]) -> Run:
    invocation = await stack.emulator.invoke(PREVIEW, inputs)
    assert invocation.status_code == 202, invocation.response
    return await finished(stack, invocation.run_id)


async def expected_lines(stack: PortStack, workload: Workload) -> list[str]:
    return (await preview.diff(stack.client, stack.queue, [workload], [])).lines()


def logged(run: Run) -> list[str]:
    """The run's log lines before the last (the summary)."""
    return "\n".join(log.message for log in run.logs[:-1]).splitlines()


def assert_no_port_secret(stack: PortStack, run: Run, caplog: pytest.LogCaptureFixture) -> None:
    text = "\n".join(
        [*(log.message for log in run.logs), run.summary or ""]
        + [f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records]
    )
    for secret in [stack.emulator.client_secret, *stack.emulator.issued_tokens]:
        assert secret not in text


def test_the_preview_action_takes_the_create_actions_inputs():
    _, actions = port_setup.load_definitions(port_setup.DEFINITIONS)
    by_id = {action["identifier"]: action for action in actions}
    create, preview_action = by_id["idp_create_workload"], by_id[PREVIEW]
    assert preview_action["trigger"] == create["trigger"]
    assert preview_action["invocationMethod"] == create["invocationMethod"]
    assert preview_action["title"] == "Preview changes"
    assert "Nothing is changed" in preview_action["description"]


async def test_a_preview_of_a_new_workload_logs_the_diff_and_starts_nothing(stack, caplog):
    caplog.set_level(logging.DEBUG)
    system = unique_system()
    before = commits(stack.repo)
    run = await previewed(stack, fields(system))

    workload = Workload.model_validate(
        {
            "metadata": {"name": "hello", "system": system},
            "spec": {"owner": "team-a", "destination": "dev", "namespace": system},
        }
    )
    lines = await expected_lines(stack, workload)
    assert (run.status, run.status_label) == ("SUCCESS", "Changes"), run.logs
    assert run.terminations == ["SUCCESS"]
    assert logged(run) == lines
    assert run.summary.endswith("would be made")
    assert run.logs[-1].message == f"Preview: {run.summary}."
    assert not await workflow_exists(stack.client, workload.workflow_id)
    assert not await workflow_exists(stack.client, f"port-run/{run.id}")
    assert stack.emulator.entity("idpWorkload", f"{system}.hello") is None
    assert commits(stack.repo) == before
    assert_no_port_secret(stack, run, caplog)


async def test_a_preview_of_an_applied_workload_changes_nothing(stack, caplog):
    caplog.set_level(logging.DEBUG)
    system = unique_system()
    await created(stack, system)
    handle = stack.client.get_workflow_handle(f"workload/{system}/hello")
    events = len((await handle.fetch_history()).events)
    before = commits(stack.repo)
    applied = stack.emulator.entity("idpWorkload", f"{system}.hello")["properties"]["spec"]

    unchanged = await previewed(stack, {"spec": applied})
    assert (unchanged.status, unchanged.status_label) == ("SUCCESS", "No changes"), unchanged.logs
    assert unchanged.summary == "nothing would change"
    workload = Workload.model_validate(yaml.safe_load(applied))
    assert logged(unchanged) == await expected_lines(stack, workload)

    document = yaml.safe_load(applied)
    document["metadata"]["labels"] = {"tier": "gold"}
    changed = await previewed(stack, {"spec": yaml.safe_dump(document)})
    assert (changed.status, changed.status_label) == ("SUCCESS", "Changes"), changed.logs
    lines = await expected_lines(stack, Workload.model_validate(document))
    assert logged(changed) == lines and any("tier" in line for line in lines)

    assert len((await handle.fetch_history()).events) == events
    assert commits(stack.repo) == before
    assert_no_port_secret(stack, changed, caplog)


async def test_the_webhook_is_answered_before_the_diff_and_a_redelivery_adds_nothing(
    stack, diffs, monkeypatch
):
    gate = asyncio.Event()
    spy = preview.diff  # the `diffs` fixture's

    async def held(*args: Any) -> preview.Diff:
        await gate.wait()
        return await spy(*args)

    monkeypatch.setattr(port_bridge.preview, "diff", held)
    try:
        invocation = await stack.emulator.invoke(PREVIEW, fields(unique_system()))
        assert invocation.status_code == 202, invocation.response
        again = await stack.emulator.redeliver(invocation.run_id)
        assert again.status_code == 202, again.response
        assert stack.emulator.run(invocation.run_id).status == "IN_PROGRESS"
    finally:
        gate.set()  # the server waits for the preview when it stops
    run = await finished(stack, invocation.run_id)
    assert run.status == "SUCCESS" and len(diffs) == 1
    assert logged(run) == run.logs[0].message.splitlines() and len(run.logs) == 2


@pytest.mark.parametrize("case", ["missing-owner", "unknown-destination", "capability-check"])
async def test_bad_input_fails_the_run_with_the_reason(stack, diffs, monkeypatch, case):
    system = unique_system()
    inputs = fields(system)
    if case == "missing-owner":
        del inputs["owner"]
        reason = "inputs: owner required (or give the whole Workload as YAML in spec)"
    elif case == "unknown-destination":
        inputs["destination"] = "prod"
        reason = (
            "spec.destination: 'prod' is not a destination of the platform configuration; "
            "allowed: dev"
        )
    else:
        document = {
            "apiVersion": API_VERSION,
            "kind": "Workload",
            "metadata": {"name": "hello", "system": system},
            "spec": {
                "owner": "team-a",
                "destination": "dev",
                "namespace": system,
                "postgres": {"server": "main"},
            },
        }
        inputs = {"spec": yaml.safe_dump(document)}
        settings = dataclasses.replace(stack.bridge.settings, capabilities={"Postgres": None})
        monkeypatch.setattr(stack.bridge, "settings", settings)
        reason = (
            "spec.postgres: the platform configuration has no postgres section, so it offers no "
            "databases; remove spec.postgres or ask the platform team"
        )
    invocation = await stack.emulator.invoke(PREVIEW, inputs)
    assert (invocation.status_code, invocation.response["message"]) == (400, reason)
    run = await finished(stack, invocation.run_id)
    assert (run.status, run.status_label, run.summary) == ("FAILURE", "Rejected", reason)
    assert [log.message for log in run.logs] == [f"Rejected: {reason}"]
    assert diffs == []
    assert not await workflow_exists(stack.client, f"workload/{system}/hello")


def workload_diff(system: str, *capabilities: preview.CapabilityDiff) -> preview.WorkloadDiff:
    return preview.WorkloadDiff(
        workflow_id=f"workload/{system}/hello",
        exists=True,
        generation=1,
        next_generation=2,
        spec=[],
        capabilities=list(capabilities),
    )


async def test_a_preview_that_cannot_be_taken_fails_the_run(stack, monkeypatch):
    async def unavailable(*args: Any) -> preview.Diff:
        raise preview.PreviewError("Temporal could not be reached")

    monkeypatch.setattr(port_bridge.preview, "diff", unavailable)
    run = await previewed(stack, fields(unique_system()))
    assert (run.status, run.status_label) == ("FAILURE", "Preview failed")
    assert run.summary == "Temporal could not be reached"
    assert [log.message for log in run.logs] == ["Preview failed: Temporal could not be reached"]


async def test_a_preview_missing_a_capability_logs_the_rest_and_fails(stack, monkeypatch):
    system = unique_system()
    timed_out = preview.CapabilityDiff(name="Manifests", error="it timed out (START_TO_CLOSE)")
    incomplete = preview.Diff(workloads=[workload_diff(system, timed_out)])

    async def partial(*args: Any) -> preview.Diff:
        return incomplete

    monkeypatch.setattr(port_bridge.preview, "diff", partial)
    run = await previewed(stack, fields(system))
    (problem,) = incomplete.problems
    assert (run.status, run.status_label, run.summary) == ("FAILURE", "Preview failed", problem)
    assert logged(run) == incomplete.lines()


def test_the_summary_counts_changes_and_names_what_would_stop_them():
    change = Change(action="write", subject="serviceaccount.yaml", why="it is missing")
    found = preview.Diff(
        workloads=[
            workload_diff(
                "shop",
                preview.CapabilityDiff(name="Manifests", changes=[change, change]),
                preview.CapabilityDiff(name="Registry", release=True),
                preview.CapabilityDiff(name="Nats", refused="a foreign user holds the name"),
                preview.CapabilityDiff(name="Credentials", waiting_for=["Nats"]),
            )
        ]
    )
    assert preview_summary(found) == (
        "3 changes would be made; Nats would be refused; Credentials is planned once Nats applied"
    )
    owner_only = preview.Diff(workloads=[workload_diff("shop").model_copy(update={"spec": ["+x"]})])
    assert preview_summary(owner_only) == "only the spec would change"
    assert preview_summary(preview.Diff(workloads=[workload_diff("shop")])) == (
        "nothing would change"
    )


async def test_an_untrusted_preview_is_refused_and_nothing_happens(stack, diffs):
    system = unique_system()
    run = stack.emulator.create_run(PREVIEW, fields(system))
    answer = await stack.emulator.deliver(
        stack.webhook_url,
        body(run.id, action=PREVIEW, inputs=fields(system)),
        run_id=run.id,
        mode="bad-signature",
    )
    assert answer.status_code == 401 and answer.response["error"] == "unauthorized"
    assert (run.status, run.logs) == ("IN_PROGRESS", [])
    assert diffs == []


async def test_a_preview_delivered_again_after_it_ended_reports_nothing(stack, diffs, caplog):
    caplog.set_level(logging.INFO, logger=port_bridge.log.name)
    invocation = await stack.emulator.invoke(PREVIEW, fields(unique_system()))
    run = await finished(stack, invocation.run_id)
    logs = len(run.logs)
    again = await stack.emulator.redeliver(invocation.run_id)
    assert again.status_code == 202
    skipped = f"run {run.id} is not in progress in Port; nothing to preview"
    async with asyncio.timeout(10):
        while skipped not in caplog.messages:
            await asyncio.sleep(0.01)
    assert len(diffs) == 1
    assert len(stack.emulator.run(run.id).logs) == logs


def test_a_long_diff_is_logged_in_messages_port_takes():
    lines = [f"{i:05d} " + "x" * 1000 for i in range(400)]
    messages = log_messages(lines)
    assert len(messages) > 1
    assert all(len(message) <= LOG_CHARS for message in messages)
    assert "\n".join(messages).splitlines() == lines
    assert log_messages([]) == []
