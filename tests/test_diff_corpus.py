"""`idpctl diff` against what apply then did, over a corpus of spec changes: the share of
changes whose prediction equals the pass that followed must be 100%.

One worker on the session's Temporal dev server, with every capability on real parts: moto's
server for Registry, the Synadia emulator (with its real nats-server) for Nats and Credentials,
a git state store with sealing for Manifests and the deliveries, the session's PostgreSQL server
for the Postgres plugin, and an ApiAggregator on the dev server for Api. Each change is diffed
(`starter.preview.diff`, what `idpctl diff` prints), applied (`apply_workload`) and waited for
(`wait_ready` on its generation); then what the pass did is read from the workflow's history:
each capability's `<Name>.reconcile` result (its executed plan) or failure, and its
`<Name>.teardown`. Per capability, the prediction must be exactly that:

- changes (action, subject, why) equal to the plan the reconcile activity carried out;
- released exactly where a teardown ran;
- refused with the very sentence the reconcile activity failed with, for good;
- skipped (waiting for one that is refused) exactly where the pass ran nothing;
- and for Api, each path's state as the aggregator would answer equal to its answer.

No "why" needed normalising: none of the corpus' plans carries a time (only a rotation's does,
and a rotation is a request, not a spec change).
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from support.moto import MOTO_ACCOUNT_ID
from support.postgres import admin_env, postgres_section
from support.secrets import ControllerKeys
from support.stack import bare_repo, running_worker, task_queue
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from test_preview import OIDC, REGION, TOKEN_ENV, aggregator

from emulators.synadia import DEFAULT_TOKEN, SynadiaEmulator
from idp.capability import Context, Report, installed
from idp.models import Workload
from idp.platform import Platform
from idp_postgres.local import LocalPostgres
from starter import operations
from starter.preview import WorkloadDiff, diff
from workflows.messages import WaitReadyRequest
from workflows.state import Phase
from workflows.workload import WorkloadWorkflow

# What one capability did, or was predicted to do: ("plan", changes), ("released", None),
# ("refused", sentence), ("skipped", None); anything else is a miss by construction.
Outcome = tuple[str, Any]


@pytest.fixture(scope="module")
async def emulator(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SynadiaEmulator]:
    async with SynadiaEmulator.running(tmp_path_factory.mktemp("synadia")) as emu:
        yield emu


def corpus_platform(
    repo: Path, aws_url: str, emulator: SynadiaEmulator, postgres: LocalPostgres, cert: Path
) -> Platform:
    return Platform.model_validate(
        {
            "destinations": [
                {
                    "name": "dev",
                    "stateStore": {"url": str(repo)},
                    "cluster": {"oidcProviderArn": OIDC},
                    "sealing": {"file": str(cert)},
                    "secretStore": {"name": "aws-secrets-manager", "forceDelete": True},
                }
            ],
            # A failed pass is retried only after the backoff: a long one keeps a retry from
            # running into the next change's diff, so each pass read is the apply's own.
            "reconcile": {"driftInterval": "10m", "minBackoff": "10m", "maxBackoff": "10m"},
            "aws": {
                "region": REGION,
                "accountId": MOTO_ACCOUNT_ID,
                "endpointUrl": aws_url,
                "attachablePolicies": [f"arn:aws:iam::{MOTO_ACCOUNT_ID}:policy/*"],
            },
            "synadia": {
                "url": emulator.api_url,
                "tokenEnv": TOKEN_ENV,
                "system": emulator.system_name,
                "defaultAccount": emulator.account_name,
            },
            "postgres": postgres_section(postgres, extensions=["citext", "pg_trgm"]),
        }
    )


# ---- the corpus: each step edits one workload's document, as a person edits the file ----------

Document = dict[str, Any]
Edit = Callable[[Document], None]


def put(path: str, value: Any) -> Edit:
    """Set the dotted `path`, making the mappings on the way."""

    def edit(document: Document) -> None:
        *parents, last = path.split(".")
        for key in parents:
            document = document.setdefault(key, {})
        document[last] = value

    return edit


def drop(path: str) -> Edit:
    def edit(document: Document) -> None:
        *parents, last = path.split(".")
        for key in parents:
            document = document[key]
        del document[last]

    return edit


def new(document: Document) -> Edit:
    def edit(current: Document) -> None:
        current.clear()
        current.update(copy.deepcopy(document))

    return edit


@dataclass(frozen=True)
class Step:
    change: str
    workload: str
    edit: Edit


NATS = {"permissions": {"publish": {"allow": ["orders.>"]}}}


def corpus(system: str, hostname: str, policy_arn: str) -> list[Step]:
    def workload(name: str, **spec: Any) -> Document:
        return {
            "metadata": {"name": name, "system": system},
            "spec": {"owner": "team-shop", "destination": "dev", "namespace": "shop", **spec},
        }

    def api(service: str, *paths: str) -> list[dict[str, Any]]:
        target = {"aggregator": hostname, "paths": list(paths)}
        return [{**target, "service": {"name": service, "port": 80}}]

    cart = workload("cart", nats=NATS, postgres={"server": "local"}, api=api("cart", "/shop"))
    orders = workload("orders", registry={"enabled": False}, api=api("orders", "/shop/orders"))
    return [
        Step("new workload: registry, nats, postgres, api", "cart", new(cart)),
        Step("registry lifecycle keepLast", "cart", put("spec.registry.lifecycle.keepLast", 5)),
        Step(
            "registry lifecycle expireUntaggedAfterDays",
            "cart",
            put("spec.registry.lifecycle.expireUntaggedAfterDays", 7),
        ),
        Step(
            "registry imageTagMutability",
            "cart",
            put("spec.registry.imageTagMutability", "MUTABLE"),
        ),
        Step("registry scanOnPush", "cart", put("spec.registry.scanOnPush", False)),
        Step(
            "registry managed policy attached",
            "cart",
            put("spec.registry.managedPolicyArns", [policy_arn]),
        ),
        Step(
            "registry managed policy detached", "cart", put("spec.registry.managedPolicyArns", [])
        ),
        Step(
            "nats publish permission",
            "cart",
            put("spec.nats.permissions.publish.allow", ["orders.*"]),
        ),
        Step(
            "nats subscribe permission added",
            "cart",
            put("spec.nats.permissions.subscribe.allow", ["replies.>"]),
        ),
        Step("nats allowResponses", "cart", put("spec.nats.permissions.allowResponses", True)),
        Step("nats credentials ttl", "cart", put("spec.nats.credentials.ttl", "3d")),
        Step(
            "nats credentials secretName",
            "cart",
            put("spec.nats.credentials.secretName", "cart-nats-v2"),
        ),
        Step(
            "nats credentials delivery external-secret",
            "cart",
            put("spec.nats.credentials.delivery", "external-secret"),
        ),
        Step("metadata label (manifests)", "cart", put("metadata.labels", {"tier": "web"})),
        Step("serviceAccount", "cart", put("spec.serviceAccount", "cart-sa")),
        Step("api path added", "cart", put("spec.api", api("cart", "/shop", "/cart"))),
        Step("api path removed", "cart", put("spec.api", api("cart", "/shop"))),
        Step("new workload whose path another holds (refused)", "orders", new(orders)),
        Step("its path moved to a free one", "orders", put("spec.api", api("orders", "/orders"))),
        Step("postgres extension added", "cart", put("spec.postgres.extensions", ["citext"])),
        Step("postgres connectionLimit", "cart", put("spec.postgres.connectionLimit", 50)),
        # Retained: the database stays, its logins disabled, for the section added back to find.
        Step("postgres section removed (Retain)", "cart", drop("spec.postgres")),
        Step("postgres section added back", "cart", put("spec.postgres", {"server": "local"})),
        Step(
            "deletionPolicy Delete (no outside change)",
            "cart",
            put("spec.deletionPolicy", "Delete"),
        ),
        Step("nats section removed", "cart", drop("spec.nats")),
        Step("nats section added back", "cart", put("spec.nats", NATS)),
        # Deleted this time (deletionPolicy Delete): enabled again, it is created anew.
        Step("registry disabled", "cart", put("spec.registry", {"enabled": False})),
        Step("registry enabled again", "cart", put("spec.registry", {})),
        Step("registry encryption KMS (refused)", "cart", put("spec.registry.encryption", "KMS")),
        Step("registry encryption back", "cart", drop("spec.registry.encryption")),
        Step(
            "new workload whose repository is someone else's (refused)",
            "legacy",
            new(workload("legacy")),
        ),
        Step("no-op re-apply", "cart", lambda document: None),
    ]


# ---- what the diff predicted -----------------------------------------------------------------


def predicted(found: WorkloadDiff) -> dict[str, Outcome]:
    """Each capability's predicted outcome. One waiting for a capability that cannot apply is
    skipped, as the engine skips whatever builds on a failed one, transitively."""
    stopped: set[str] = set()
    outcomes: dict[str, Outcome] = {}
    for capability in found.capabilities:
        name = capability.name
        if capability.error or capability.missing:
            outcomes[name] = ("not previewed", capability.error or "not offered")
        elif capability.release:
            outcomes[name] = ("released", None)
        elif capability.refused:
            outcomes[name] = ("refused", capability.refused)
            stopped.add(name)
        elif capability.waiting_for:
            if stopped & set(capability.waiting_for):
                outcomes[name] = ("skipped", None)
                stopped.add(name)
            else:
                outcomes[name] = ("waiting", capability.waiting_for)
        else:
            outcomes[name] = ("plan", capability.changes)
    return outcomes


def route_lines(details: list[str]) -> list[str]:
    """The paths' states Api's preview shows (not the paths an unregistration releases)."""
    return [line for line in details if not line.endswith(": released")]


# ---- what the pass did: the workflow's history after the apply ------------------------------


@dataclass(frozen=True)
class Mark:
    """Where a workflow's history stood before an apply: its run and how many events."""

    run_id: str | None
    events: int


async def mark(client: Client, workflow_id: str) -> Mark:
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return Mark(None, 0)
        raise
    history = await client.get_workflow_handle(
        workflow_id, run_id=description.run_id
    ).fetch_history()
    return Mark(description.run_id, len(history.events))


async def events_since(client: Client, workflow_id: str, since: Mark) -> list[HistoryEvent]:
    """The events after `since`, following the runs it continued as new into."""
    run_id = since.run_id
    if run_id is None:
        description = await client.get_workflow_handle(workflow_id).describe()
        run_id = description.raw_description.workflow_execution_info.first_run_id
    skip, events = since.events, []
    while True:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        events += history.events[skip:]
        last = history.events[-1]
        if last.event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            return events
        run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
        skip = 0


@dataclass
class Pass:
    outcomes: dict[str, Outcome]
    reports: dict[str, Report]


async def first_pass(client: Client, events: list[HistoryEvent], generation: int) -> Pass | None:
    """What each capability did the first time it was given `generation` among `events`; None
    when none was. That is the apply's pass, give or take: a retry of the old spec (a Degraded
    workload backs off and tries again) may run before it and must not count, and a pass under
    way when the apply lands gives its later waves the new spec (each wave reads the spec as it
    is then), so those capabilities act on it there, and find it done in the pass after. The
    aggregator's second pass, asked for once it has written routes, comes later still."""
    scheduled: dict[int, tuple[str, str]] = {}
    found = Pass({}, {})
    for event in events:
        if _scheduled(event):
            attributes = event.activity_task_scheduled_event_attributes
            [context] = await client.data_converter.decode(attributes.input.payloads, [Context])
            name, verb = attributes.activity_type.name.split(".")
            if context.generation == generation and name not in found.outcomes:
                scheduled[event.event_id] = (name, verb)
                # Scheduled and never finished: a miss whatever was predicted.
                found.outcomes[name] = (f"{verb} unfinished", None)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            attributes = event.activity_task_completed_event_attributes
            if (step := scheduled.get(attributes.scheduled_event_id)) is None:
                continue
            name, verb = step
            [report] = await client.data_converter.decode(attributes.result.payloads, [Report])
            found.reports[name] = report
            found.outcomes[name] = (
                ("plan", report.plan) if verb == "reconcile" else ("released", None)
            )
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
            attributes = event.activity_task_failed_event_attributes
            if (step := scheduled.get(attributes.scheduled_event_id)) is None:
                continue
            name, verb = step
            error = await client.data_converter.decode_failure(attributes.failure)
            permanent = isinstance(error, ApplicationError) and error.non_retryable
            found.outcomes[name] = ("refused" if permanent else f"{verb} failed", error.message)
    return found if found.outcomes else None


def _scheduled(event: HistoryEvent) -> bool:
    return event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED


# ---- the table -------------------------------------------------------------------------------


def brief(outcome: Outcome | None) -> str:
    """One cell of the table: a capability's outcome, briefly."""
    if outcome is None:
        return "-"
    kind, value = outcome
    if kind == "plan":
        return f"{len(value)} change" + ("s" if len(value) > 1 else "") if value else "in sync"
    return kind


def full(outcomes: dict[str, Outcome] | None) -> str:
    """Everything of the outcomes, for a miss."""
    if outcomes is None:
        return "no pass"
    lines = []
    for name, (kind, value) in outcomes.items():
        if kind == "plan":
            value = [f"{c.action} {c.subject} ({c.why})" for c in value] or "in sync"
        lines.append(f"    {name}: {kind} {json.dumps(value)}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Row:
    change: str
    predicted: dict[str, Outcome]
    # None when the apply changed nothing, so no pass ran.
    applied: dict[str, Outcome] | None
    match: bool
    note: str = ""
    routes: list[str] = field(default_factory=list)


def table(rows: list[Row]) -> str:
    """A column per capability: its predicted outcome, and `≠` what the pass did instead."""
    names = [c.name for c in installed() if any(c.name in r.predicted for r in rows)]
    width = max(len(r.change) for r in rows)
    cells: list[list[str]] = []
    for row in rows:
        line = []
        for name in names:
            said = brief(row.predicted.get(name))
            did = said if row.applied is None else brief(row.applied.get(name))
            line.append(said if did == said else f"{said} ≠ {did}")
        cells.append(line)
    widths = [max(len(n), *(len(c[i]) for c in cells)) for i, n in enumerate(names)]
    header = [
        f"{'#':>2}",
        f"{'change':<{width}}",
        *(f"{n:<{w}}" for n, w in zip(names, widths, strict=True)),
    ]
    lines = ["  ".join([*header, "match"])]
    for i, (row, line) in enumerate(zip(rows, cells, strict=True), 1):
        shown = [f"{c:<{w}}" for c, w in zip(line, widths, strict=True)]
        match = "yes" if row.match else "NO"
        if row.applied is None:
            match += " (apply unchanged, no pass ran)"
        lines.append("  ".join([f"{i:>2}", f"{row.change:<{width}}", *shown, match]))
        lines += [f"{'':>4}Api, predicted and answered: {route}" for route in row.routes]
    matched = sum(r.match for r in rows)
    lines.append(
        f"share where the diff equals what apply did: {matched}/{len(rows)} = "
        f"{matched / len(rows):.0%}"
    )
    return "\n".join(lines)


# ---- the test --------------------------------------------------------------------------------


async def test_every_diff_of_the_corpus_is_what_apply_then_did(
    client: Client,
    aws_url: str,
    emulator: SynadiaEmulator,
    postgres_server: LocalPostgres,
    keys: ControllerKeys,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOKEN_ENV, DEFAULT_TOKEN)
    for name, value in admin_env(postgres_server).items():
        monkeypatch.setenv(name, value)
    queue = task_queue()
    # The system names the workflows, repositories, roles, NATS users and databases: its own
    # keeps this test apart from the others on the shared servers.
    system, hostname = queue, f"{queue}.example.com"
    repo = bare_repo(tmp_path / "state.git")
    platform = corpus_platform(repo, aws_url, emulator, postgres_server, keys.cert_file)
    iam = boto3.client("iam", region_name=REGION, endpoint_url=aws_url)
    statement = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}
    document = {"Version": "2012-10-17", "Statement": [statement]}
    policy = iam.create_policy(PolicyName=f"{queue}-read", PolicyDocument=json.dumps(document))
    policy_arn = policy["Policy"]["Arn"]
    # Someone else's repository, with the name a workload's would have.
    boto3.client("ecr", region_name=REGION, endpoint_url=aws_url).create_repository(
        repositoryName=f"{system}/legacy"
    )
    documents: dict[str, Document] = {}
    rows: list[Row] = []
    misses: list[str] = []
    async with running_worker(client, platform, queue, tmp_path / "cache"):
        await operations.apply_aggregator(client, queue, aggregator(hostname))
        for step in corpus(system, hostname, policy_arn):
            document = copy.deepcopy(documents.get(step.workload, {}))
            step.edit(document)
            documents[step.workload] = document
            workload = Workload.model_validate(document)
            row = await diffed_and_applied(client, queue, step.change, workload)
            rows.append(row)
            if not row.match:
                misses.append(
                    f"{step.change}:{row.note}\n  predicted:\n{full(row.predicted)}\n"
                    f"  applied:\n{full(row.applied)}"
                )
    print(f"\n{table(rows)}")
    assert len(rows) >= 20
    assert not misses, "\n".join(misses)


async def diffed_and_applied(client: Client, queue: str, change: str, workload: Workload) -> Row:
    """Diff `workload`, apply it, wait for its pass, and compare what the pass did."""
    workflow_id = workload.workflow_id
    previewed = await diff(client, queue, [workload], [])
    [found] = previewed.workloads
    before = await mark(client, workflow_id)
    result = await operations.apply_workload(client, queue, workload)
    status = await client.get_workflow_handle(workflow_id).execute_update(
        WorkloadWorkflow.wait_ready,
        WaitReadyRequest(generation=result.generation, timeout_seconds=60),
    )
    assert status.observed_generation >= result.generation, status
    assert status.phase in (Phase.READY, Phase.DEGRADED), status
    events = await events_since(client, workflow_id, before)
    done = await first_pass(client, events, result.generation)
    notes = []
    if result.generation != found.next_generation:
        notes.append(f" generation {result.generation}, predicted {found.next_generation}")
    if before.run_id is not None and not result.changed:
        # Nothing to apply: no pass runs, which the diff must have said (idpctl diff exits 0).
        # (A new workload's apply is unchanged too: the workflow starts with its spec.)
        if found.changed:
            notes.append(" diff shows a change")
        if done is not None:
            notes.append(" a pass ran")
        return Row(change, predicted(found), done and done.outcomes, not notes, "".join(notes))
    expected = predicted(found)
    applied = {} if done is None else dict(done.outcomes)
    for name, (kind, _) in expected.items():
        if kind == "skipped":
            applied.setdefault(name, ("skipped", None))
    if expected != applied:
        notes.append(" outcomes differ")
    # What a person reads must say so too, not that it runs once the one it waits for applies.
    printed = previewed.lines()
    for name, (kind, _) in expected.items():
        says = [line for line in printed if line.startswith(f"  {name}: ")]
        if kind == "skipped" and not all(line.startswith(f"  {name}: skipped ") for line in says):
            notes.append(f" printed {says}, not skipped")
    routes: list[str] = []
    api = next((c for c in found.capabilities if c.name == "Api"), None)
    report = done.reports.get("Api") if done else None
    if api is not None and api.changes and report is not None:
        answered = [
            f"{', '.join(route['paths'])} on {route['hostname']}: {route['state']}"
            + (f" ({route['reason']})" if route.get("reason") else "")
            for route in (report.outputs or {}).get("routes", [])
        ]
        if route_lines(api.details) != answered:
            notes.append(f" routes: predicted {route_lines(api.details)}, answered {answered}")
        routes = answered
    return Row(change, expected, applied, not notes, "".join(notes), routes)
