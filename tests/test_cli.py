"""`idpctl` and the `temporal` CLI end to end, run as processes the way a user runs them.

Real parts: the session's Temporal dev server, a worker in the test's event loop on its own task
queue, and a bare git repository as the state store. Every test has its own system name because
workflow ids are global on the session's server.
"""

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.cli import Cli, Result, eventually, write_platform
from support.stack import (
    commits,
    platform_for,
    read,
    running_worker,
    workflow_exists,
)
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from starter.idpctl import rpc_failure
from workflows.workload import WorkloadWorkflow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SA_PATH = "dev/demo/{name}/serviceaccount.yaml"


def workload_doc(system: str, name: str = "hello", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "idp.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": name, "system": system, "labels": {"tier": "backend"}},
        "spec": {"owner": "team-demo", "destination": "dev", "namespace": "demo", **spec},
    }


def write_yaml(path: Path, *documents: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return str(path)


def stderr_lines(result: Result) -> list[str]:
    lines = result.stderr.strip().splitlines()
    return [lines[0].removeprefix("error: "), *lines[1:]] if lines else []


@pytest.fixture
def system(queue: str) -> str:
    return queue


@pytest.fixture
def cli(dev_env: WorkflowEnvironment, repo: Path, queue: str, tmp_path: Path) -> Cli:
    address = dev_env.client.service_client.config.target_host
    platform_file = write_platform(tmp_path / "platform.yaml", repo, address)
    return Cli(address=address, task_queue=queue, platform_file=platform_file)


@pytest.fixture
async def worker(client: Client, repo: Path, queue: str, tmp_path: Path) -> AsyncIterator[None]:
    async with running_worker(client, platform_for(repo), queue, tmp_path / "cache"):
        yield


# ---- idpctl apply ------------------------------------------------------------------------------


async def test_apply_creates_then_is_unchanged_then_configures(
    cli: Cli, worker: None, repo: Path, system: str, tmp_path: Path
) -> None:
    file = write_yaml(tmp_path / "hello.yaml", workload_doc(system))

    created = await cli.idpctl("apply", "-f", file, "--wait", "--timeout", "30")
    assert created.code == 0, created
    assert f"workload/{system}/hello created (generation 1)" in created.stdout
    assert f"{system}/hello: Ready (generation 1/1)" in created.stdout
    assert "1 workload(s) Ready" in created.stdout

    again = await cli.idpctl("apply", "-f", file)
    assert again.code == 0, again
    assert again.stdout.strip() == f"workload/{system}/hello unchanged (generation 1)"

    changed = write_yaml(tmp_path / "hello.yaml", workload_doc(system, serviceAccount="hello-sa"))
    configured = await cli.idpctl("apply", "-f", changed, "--wait", "--timeout", "30")
    assert configured.code == 0, configured
    assert f"workload/{system}/hello configured (generation 2)" in configured.stdout
    assert f"{system}/hello: Ready (generation 2/2)" in configured.stdout
    manifest = yaml.safe_load(read(repo, SA_PATH.format(name="hello")) or "")
    assert manifest["metadata"]["name"] == "hello-sa"
    assert len(commits(repo)) == 2


async def test_invalid_files_are_all_reported_and_nothing_starts(
    cli: Cli, client: Client, system: str, tmp_path: Path
) -> None:
    first = write_yaml(
        tmp_path / "first.yaml",
        workload_doc(system, name="Bad_Name", bogus=1),
        {**workload_doc(system, name="no-owner"), "spec": {"destination": "dev", "namespace": "x"}},
    )
    second = write_yaml(
        tmp_path / "second.yaml",
        workload_doc(system, name="fine"),
        workload_doc(system, name="bad-registry", registry={"encryption": "DES"}),
    )

    result = await cli.idpctl("apply", "-f", first, "-f", second, "--wait")

    assert result.code == 2, result
    assert result.stdout == ""
    lines = stderr_lines(result)
    expected = [
        (first, 1, "metadata.name:"),
        (first, 1, "spec.bogus: unknown field; allowed fields are owner, destination"),
        (first, 2, "spec.owner: required field is missing"),
        (second, 2, "spec.registry.encryption:"),
    ]
    assert len(lines) == len(expected), result
    for line, (file, document, field) in zip(lines, expected, strict=True):
        assert line.startswith(f"{file}: document {document}: {field}"), line
    assert "Traceback" not in result.stderr
    for name in ("Bad_Name", "no-owner", "fine", "bad-registry"):
        assert not await workflow_exists(client, f"workload/{system}/{name}")


async def test_a_wait_longer_than_an_update_may_wait_is_refused_and_nothing_starts(
    cli: Cli, client: Client, system: str, tmp_path: Path
) -> None:
    file = write_yaml(tmp_path / "hello.yaml", workload_doc(system, name="hello"))
    result = await cli.idpctl("apply", "-f", file, "--wait", "--timeout", "7200")
    assert result.code == 2, result
    assert result.stderr.splitlines()[-1] == (
        "idpctl apply: error: argument --timeout: 7200 is not a number of seconds from 1 to 3600"
    ), result
    assert not await workflow_exists(client, f"workload/{system}/hello")


async def test_a_disallowed_change_stops_the_whole_apply(
    cli: Cli, worker: None, client: Client, system: str, tmp_path: Path
) -> None:
    live = write_yaml(tmp_path / "live.yaml", workload_doc(system))
    assert (await cli.idpctl("apply", "-f", live, "--wait", "--timeout", "30")).code == 0

    both = write_yaml(
        tmp_path / "both.yaml",
        workload_doc(system, name="newcomer"),
        workload_doc(system, namespace="elsewhere"),
    )
    result = await cli.idpctl("apply", "-f", both)

    assert result.code == 2, result
    assert f"workload/{system}/hello: spec.namespace cannot change on a live workload" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert not await workflow_exists(client, f"workload/{system}/newcomer")
    status = await client.get_workflow_handle(f"workload/{system}/hello").query(
        WorkloadWorkflow.status
    )
    assert (status.generation, status.workload.spec.namespace) == (1, "demo")


async def test_an_unknown_destination_names_the_field_and_the_allowed_values(
    cli: Cli, client: Client, system: str, tmp_path: Path
) -> None:
    file = write_yaml(tmp_path / "w.yaml", workload_doc(system, destination="nowhere"))

    result = await cli.idpctl("apply", "-f", file)

    assert result.code == 2, result
    assert stderr_lines(result) == [
        f"{file}: document 1: spec.destination: 'nowhere' is not a destination of the platform "
        "configuration; allowed: dev"
    ]
    assert not await workflow_exists(client, f"workload/{system}/hello")


# ---- get, describe, and the signals --------------------------------------------------------


async def test_get_describe_reconcile_pause_resume_delete(
    cli: Cli, worker: None, client: Client, repo: Path, system: str, tmp_path: Path
) -> None:
    file = write_yaml(tmp_path / "hello.yaml", workload_doc(system))
    assert (await cli.idpctl("apply", "-f", file, "--wait", "--timeout", "30")).code == 0
    reference = f"{system}/hello"

    # Visibility is eventually consistent: ask again until the row shows the Ready phase.
    def has_ready_row(result: Result) -> bool:
        return any(
            line.split()[:4] == ["hello", system, "Ready", "dev"]
            for line in result.stdout.splitlines()
        )

    table = await eventually(
        lambda: cli.idpctl("get", "workloads", "--system", system), has_ready_row
    )
    assert table.code == 0, table
    assert table.stdout.splitlines()[0].split() == ["NAME", "SYSTEM", "PHASE", "DESTINATION", "AGE"]

    listed = (await cli.idpctl("get", "workloads", "--system", system, "-o", "json")).json
    assert [(r["name"], r["system"], r["phase"], r["destination"], r["owner"]) for r in listed] == [
        ("hello", system, "Ready", "dev", "team-demo")
    ]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", listed[0]["started"]), listed

    described = await cli.idpctl("describe", "workload", reference)
    assert described.code == 0, described
    text = described.stdout
    assert f"Name:         {reference}" in text
    assert "Phase:        Ready" in text
    assert re.search(r"^  Manifests +True +Applied +committed serviceaccount\.yaml", text, re.M)
    assert "state store: dev/demo/hello (commit " in text

    as_json = (await cli.idpctl("describe", "workload", reference, "-o", "json")).json
    assert as_json["phase"] == "Ready"
    assert as_json["observedGeneration"] == 1
    assert as_json["outputs"]["Manifests"]["directory"] == "dev/demo/hello"
    assert as_json["workload"]["spec"]["namespace"] == "demo"

    missing = await cli.idpctl("describe", "workload", f"{system}/nope")
    assert missing.code == 1, missing
    assert missing.stderr == f"error: no workload {system}/nope found\n"

    async def describe_json() -> dict[str, Any]:
        return (await cli.idpctl("describe", "workload", reference, "-o", "json")).json

    reconciled = await cli.idpctl("reconcile", "workload", reference, "--reason", "test")
    assert reconciled.code == 0, reconciled
    assert reconciled.stdout.strip() == f"workload/{reference} reconcile requested"
    # A reconcile pass with nothing to change reports the files in sync and commits nothing.
    await eventually(describe_json, lambda s: [c["reason"] for c in s["conditions"]] == ["InSync"])
    assert len(commits(repo)) == 1

    paused = await cli.idpctl("pause", "workload", reference)
    assert paused.code == 0, paused
    status = await eventually(describe_json, lambda s: s["phase"] == "Paused")
    assert status["paused"] is True
    text = (await cli.idpctl("describe", "workload", reference)).stdout
    assert "Phase:        Paused" in text

    resumed = await cli.idpctl("resume", "workload", reference)
    assert resumed.code == 0, resumed
    status = await eventually(describe_json, lambda s: s["phase"] == "Ready")
    assert status["paused"] is False

    deleted = await cli.idpctl("delete", "workload", reference, "--wait", "--timeout", "30")
    assert deleted.code == 0, deleted
    assert deleted.stdout.splitlines() == [
        f"workload/{reference} delete requested",
        f"workload/{reference} deleted",
    ]
    description = await client.get_workflow_handle(f"workload/{reference}").describe()
    assert description.status == WorkflowExecutionStatus.COMPLETED
    assert read(repo, SA_PATH.format(name="hello")) is None
    assert commits(repo)[-1] == f"delete Workload {reference} generation 1"

    gone = await cli.idpctl("pause", "workload", reference)
    assert gone.code == 1, gone
    assert re.fullmatch(
        rf"error: workload {reference} was deleted at \S+; apply it to create it again\n",
        gone.stderr,
    ), gone

    # Described once deleted: every condition says so, nothing is scheduled, and the
    # deletion is in the events.
    text = (await cli.idpctl("describe", "workload", reference)).stdout
    assert "Phase:        Deleted" in text
    assert "Next check" not in text and "Outputs:" not in text
    assert re.search(r"^  Manifests +False +Deleted +removed dev/demo/hello$", text, re.M), text
    conditions = [line.split()[:3] for line in text.splitlines() if re.match(r"  [A-Z]", line)]
    assert conditions and all(c[1:] == ["False", "Deleted"] for c in conditions), text
    assert re.search(r"Workload: deleted$", text, re.M), text


# ---- usage, connection, schema -------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["describe", "workload", "nonsense"],
        ["describe", "workload", "a/b/c"],
        ["--address", "127.0.0.1:1", "describe", "workload", "nonsense"],
        ["--address", "127.0.0.1:1", "delete", "workload", "nonsense"],
        ["get"],
        ["apply"],
        ["frobnicate"],
    ],
)
async def test_bad_usage_exits_2(cli: Cli, args: list[str]) -> None:
    result = await cli.idpctl(*args)
    assert result.code == 2, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


async def test_an_unreachable_server_is_one_sentence_naming_the_address(cli: Cli) -> None:
    result = await cli.idpctl("--address", "127.0.0.1:1", "get", "workloads")
    assert result.code == 1, result
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result
    assert result.stderr.startswith("error: cannot reach the Temporal server at 127.0.0.1:1 ")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("status", "says"),
    [
        (RPCStatusCode.DEADLINE_EXCEEDED, "did not answer in time (context deadline exceeded); "
         "the request may still have been carried out"),
        (RPCStatusCode.CANCELLED, "did not answer in time"),
        (RPCStatusCode.UNAVAILABLE, "cannot reach the Temporal server: "),
        (RPCStatusCode.RESOURCE_EXHAUSTED, "is limiting requests, try again later: "),
        (RPCStatusCode.INVALID_ARGUMENT, "refused the request: "),
    ],
)  # fmt: skip
def test_a_failed_call_says_whether_the_server_refused_it(status: RPCStatusCode, says: str) -> None:
    # Called directly: a real server cannot be made to time out one call on demand. A user who
    # reads "refused" after a timeout would not look whether an apply went through.
    line = rpc_failure(RPCError("context deadline exceeded", status, b""))
    assert says in line
    assert ("refused" in line) == (status == RPCStatusCode.INVALID_ARGUMENT)


async def test_schema_is_json_schema_with_camel_case_names(cli: Cli) -> None:
    result = await cli.idpctl("schema", "Workload")
    assert result.code == 0, result
    schema = result.json
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"apiVersion", "kind", "metadata", "spec"}
    spec = schema["$defs"]["WorkloadSpec"]["properties"]
    assert {"serviceAccount", "deletionPolicy"} <= set(spec)
    names = [name for model in schema["$defs"].values() for name in model.get("properties", {})]
    assert names and not [name for name in names if "_" in name]


# ---- the temporal CLI ----------------------------------------------------------------------


async def test_the_temporal_cli_drives_the_workflow_with_plain_json(
    cli: Cli, worker: None, client: Client, repo: Path, queue: str, system: str, tmp_path: Path
) -> None:
    workflow_id = f"workload/{system}/hello"
    document = json.loads((EXAMPLES / "hello.json").read_text())
    document["workload"]["metadata"]["system"] = system
    start_file = tmp_path / "hello.json"
    start_file.write_text(json.dumps(document))
    target = ("--workflow-id", workflow_id)

    started = await cli.temporal(
        "workflow", "start", "--type", "WorkloadWorkflow", "--task-queue", queue,
        *target, "--input-file", str(start_file),
    )  # fmt: skip
    assert started.code == 0, started

    ready = await cli.temporal(
        "workflow", "update", "execute", *target, "--name", "wait_ready",
        "--input", '{"generation": 1}', "-o", "json",
    )  # fmt: skip
    assert ready.code == 0, ready
    assert ready.json["result"]["phase"] == "Ready"
    assert ready.json["result"]["observedGeneration"] == 1
    # The CLI sends json/plain payloads; the pydantic data converter reads them as they are.
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    start_event = history.events[0]
    assert start_event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
    payload = start_event.workflow_execution_started_event_attributes.input.payloads[0]
    assert payload.metadata["encoding"] == b"json/plain"

    queried = await cli.temporal(
        "workflow", "query", *target, "--name", "status", "-o", "json"
    )  # fmt: skip
    assert queried.code == 0, queried
    (status,) = queried.json["queryResult"]
    assert (status["phase"], status["system"], status["generation"]) == ("Ready", system, 1)

    signalled = await cli.temporal("workflow", "signal", *target, "--name", "reconcile")
    assert signalled.code == 0, signalled

    async def apply(name: str) -> Result:
        """`apply` with `document` as it is now, from a file as a person would send it."""
        path = tmp_path / name
        path.write_text(json.dumps(document))
        return await cli.temporal(
            "workflow", "update", "execute", *target, "--name", "apply",
            "--input-file", str(path), "-o", "json",
        )  # fmt: skip

    document["workload"]["spec"]["serviceAccount"] = "hello-sa"
    applied = await apply("changed.json")
    assert applied.code == 0, applied
    assert applied.json["result"] == {"generation": 2, "changed": True}

    ready = await cli.temporal(
        "workflow", "update", "execute", *target, "--name", "wait_ready",
        "--input", '{"generation": 2}', "-o", "json",
    )  # fmt: skip
    assert ready.code == 0, ready
    assert (ready.json["result"]["phase"], ready.json["result"]["observedGeneration"]) == (
        "Ready",
        2,
    )
    manifest = yaml.safe_load(read(repo, SA_PATH.format(name="hello")) or "")
    assert manifest["metadata"]["name"] == "hello-sa"

    # One update that answers once the new generation is Ready, where the two above were two.
    document["workload"]["spec"]["serviceAccount"] = "hello-runner"
    document["waitSeconds"] = 120
    waited = await apply("waited.json")
    assert waited.code == 0, waited
    assert (waited.json["result"]["generation"], waited.json["result"]["changed"]) == (3, True)
    status = waited.json["result"]["status"]
    assert (status["phase"], status["observedGeneration"]) == ("Ready", 3)
    manifest = yaml.safe_load(read(repo, SA_PATH.format(name="hello")) or "")
    assert manifest["metadata"]["name"] == "hello-runner"

    document["workload"]["spec"]["namespace"] = "elsewhere"
    rejected = await apply("moved.json")
    assert rejected.code != 0, rejected
    assert "spec.namespace cannot change on a live workload" in rejected.stderr
    assert "InvalidApply" in rejected.stderr

    # idpctl reads a workflow the temporal CLI started like any other.
    described = await cli.idpctl("describe", "workload", f"{system}/hello", "-o", "json")
    assert described.code == 0, described
    assert (described.json["generation"], described.json["phase"]) == (3, "Ready")
    assert described.json["workload"]["spec"]["namespace"] == "demo"


# ---- ApiAggregators --------------------------------------------------------------------------


async def test_apply_get_describe_and_delete_an_api_aggregator(
    cli: Cli, worker: None, repo: Path, system: str, tmp_path: Path
) -> None:
    hostname = f"{system}.example.com"
    aggregator = {
        "apiVersion": "idp.dev/v1alpha1",
        "kind": "ApiAggregator",
        "metadata": {"name": "public"},
        "spec": {
            "hostname": hostname,
            "gateway": {"name": "edge", "namespace": "gateways"},
            "destination": "dev",
            "namespace": "platform",
        },
    }
    api = [{"aggregator": hostname, "paths": ["/hello"], "service": {"name": "hello", "port": 80}}]
    file = write_yaml(tmp_path / "api.yaml", workload_doc(system, api=api), aggregator)

    applied = await cli.idpctl("apply", "-f", file, "--wait", "--timeout", "30")
    assert applied.code == 0, applied
    lines = applied.stdout.splitlines()
    assert lines[0] == f"api-aggregator/{hostname} created (generation 1)"
    assert read(repo, "dev/platform/api-public/httproute-demo-hello-public.yaml") is not None

    listed = await cli.idpctl("get", "apiaggregators")
    assert listed.code == 0, listed
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith(hostname))
    assert row[:-1] == [hostname, "public", "Ready", "dev", "1", "0"]

    described = await cli.idpctl("describe", "apiaggregator", hostname)
    assert described.code == 0, described
    assert f"{system}/hello" in described.stdout and "/hello → demo/hello:80" in described.stdout
    # The platform file says nothing about the Gateway, so its listener cannot be checked.
    assert (
        "Warning: the platform configuration does not describe Gateway gateways/edge on "
        "destination dev; make sure its listener's allowedRoutes.namespaces.from admits the "
        "route namespaces (demo)"
    ) in described.stdout

    refused = await cli.idpctl("delete", "apiaggregator", hostname)
    assert refused.code == 1, refused
    assert stderr_lines(refused) == [
        f"api-aggregator/{hostname}: rejected: {hostname} still routes to {system}/hello; "
        "remove their spec.api entries for it first"
    ]
