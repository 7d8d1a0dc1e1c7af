"""idpctl: declare platform resources and watch the workflows that keep them right.

Exit codes: 0 success, 1 failure (one sentence on stderr), 2 bad usage or invalid input; `diff`
exits 0 when nothing would change, 1 when something would, 2 on invalid input or any failure.
"""

import argparse
import asyncio
import json
import math
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import TypeAdapter, ValidationError
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowUpdateFailedError,
    WorkflowUpdateStage,
)
from temporalio.service import RPCError, RPCStatusCode

from activities.capabilities import settings_of
from idp import argocd, ids, links
from idp.capability import by_name, check_sections, plugin_sections
from idp.loading import InputError, load
from idp.models import (
    KINDS,
    ApiAggregator,
    Workload,
    WorkloadSpec,
    disallowed_aggregator_changes,
)
from idp.platform import Destination, Platform, PlatformError, load_platform, platform_path
from idp.sections import add_to_schema
from idp.yamltext import dump
from starter import (
    codec_server,
    dev,
    operations,
    port_setup,
    preview,
    replay,
    temporal,
    upgrade,
)
from workflows import search_attributes
from workflows.messages import (
    MAX_WAIT_SECONDS,
    ApplyResult,
    RotateRequest,
    SignalRequest,
    WorkloadApplyResult,
    WorkloadStatus,
)
from workflows.routetable import AggregatorStatus, TargetState
from workflows.state import ConditionStatus, Phase, blocking


class UsageError(Exception):
    """Bad usage or invalid input: exit code 2."""


class Failure(Exception):
    """The command could not do what was asked: exit code 1."""


def _out(line: str = "") -> None:
    print(line, flush=True)


# ---- apply ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checked:
    """Resources that `apply` would accept, and where they would go."""

    client: Client
    settings: temporal.TemporalSettings
    workloads: list[Workload]
    aggregators: list[ApiAggregator]
    existing: set[str]  # workloads already running
    live: set[str]  # aggregators whose spec is already applied


async def _checked(args: argparse.Namespace) -> Checked:
    """Load `args.filename` and refuse, all at once and before anything starts, what apply
    would refuse (UsageError): invalid files, what the platform file tells is wrong, and what
    the live workflows' validators would reject."""
    try:
        loaded = load([Path(p) for p in args.filename])
    except InputError as error:
        raise UsageError(str(error)) from None
    platform = _platform(args, required=False)
    workloads = [item.resource for item in loaded if isinstance(item.resource, Workload)]
    aggregators = [i.resource for i in loaded if isinstance(i.resource, ApiAggregator)]
    if platform is not None:
        _check_platform(platform, loaded)
    client, settings = await _connect(args, platform)
    problems, existing = await operations.check_apply(client, workloads)
    aggregator_problems, live = await _check_aggregators(client, aggregators)
    problems += aggregator_problems
    if problems:
        raise UsageError("\n".join(problems))
    return Checked(client, settings, workloads, aggregators, existing, live)


async def cmd_apply(args: argparse.Namespace) -> None:
    checked = await _checked(args)
    client, task_queue = checked.client, checked.settings.task_queue
    # Aggregators first: the workloads' targets then find their hostname's spec in place.
    for aggregator in checked.aggregators:
        try:
            result = await operations.apply_aggregator(client, task_queue, aggregator)
        except WorkflowUpdateFailedError as error:
            raise Failure(
                f"{aggregator.workflow_id}: rejected: {operations.cause(error)}"
            ) from None
        _out(_applied(aggregator.workflow_id, result, checked.live))
    if args.wait:
        await _apply_and_wait(checked, args.timeout)
        return
    for workload in checked.workloads:
        try:
            result = await operations.apply_workload(client, task_queue, workload)
        except WorkflowUpdateFailedError as error:
            raise Failure(f"{workload.workflow_id}: rejected: {operations.cause(error)}") from None
        _out(_applied(workload.workflow_id, result, checked.existing))


def _applied(workflow_id: str, result: ApplyResult, existing: set[str]) -> str:
    """What apply did to one resource; `existing`, the ids of those that ran before."""
    verb = "configured" if result.changed else "unchanged"
    if workflow_id not in existing:
        verb = "created"
    return f"{workflow_id} {verb} (generation {result.generation})"


async def cmd_diff(args: argparse.Namespace) -> int:
    """What apply would change, 0 when nothing and 1 when something would (as kubectl diff);
    nothing is started, signalled or written."""
    checked = await _checked(args)
    try:
        found = await preview.diff(
            checked.client, checked.settings.task_queue, checked.workloads, checked.aggregators
        )
    except preview.PreviewError as error:
        raise Failure(str(error)) from None
    if args.output == "json":
        _out(found.model_dump_json(indent=2))
    else:
        for line in found.lines():
            _out(line)
    if found.problems:
        raise Failure("; ".join(found.problems))
    return 1 if found.changed else 0


async def _check_aggregators(
    client: Client, aggregators: list[ApiAggregator]
) -> tuple[list[str], set[str]]:
    """The aggregator validator's refusals, found before anything is applied; and the ids of
    the aggregators whose spec is already applied."""
    problems, live = [], set()
    for aggregator in aggregators:
        try:
            current = await operations.aggregator_status(client, aggregator.spec.hostname)
        except operations.NotFound:
            continue
        if current.aggregator is not None:
            live.add(aggregator.workflow_id)
            changes = disallowed_aggregator_changes(current.aggregator, aggregator)
            problems += [f"{aggregator.workflow_id}: {change}" for change in changes]
    return problems, live


def _check_platform(platform: Platform, loaded: list) -> None:
    """Refuse, all at once and before anything starts, what only the platform file tells is
    wrong: an unknown destination, and what the capabilities' own checks find."""
    known = [d.name for d in platform.destinations]
    settings = {name: settings_of(c, platform) for name, c in by_name().items()}
    problems: list[str] = []
    for item in loaded:
        resource = item.resource
        found = []
        if resource.spec.destination not in known:
            found.append(
                f"spec.destination: {resource.spec.destination!r} is not a destination of the "
                f"platform configuration; allowed: {', '.join(known)}"
            )
        if isinstance(resource, Workload):
            found += check_sections(resource, settings)
        problems += [f"{item.source}: document {item.index}: {problem}" for problem in found]
    if problems:
        raise UsageError("\n".join(problems))


# Applies awaiting the workflow's acceptance at once; each then waits on its own.
APPLYING_AT_ONCE = 100
# How often a long wait says which workloads it still waits for.
STILL_WAITING_EVERY = 10.0


async def _apply_and_wait(checked: Checked, timeout: float) -> None:
    """Apply every workload side by side, each in one update that its workflow answers once the
    generation settles (`apply`'s waitSeconds), and print each as it answers; fail once one is
    held by something waiting cannot fix (the workflow's `permanent`), paused or deleted, or
    not Ready after `timeout`. Nothing polls: a status query each time would be a billable
    action on Temporal Cloud."""
    client, task_queue = checked.client, checked.settings.task_queue
    admitting = asyncio.Semaphore(APPLYING_AT_ONCE)
    pending = {w.workflow_id for w in checked.workloads}

    async def apply(workload: Workload) -> WorkloadApplyResult:
        try:
            async with admitting:
                handle = await operations.start_apply_workload(
                    client,
                    task_queue,
                    workload,
                    wait_seconds=math.ceil(timeout),
                    stage=WorkflowUpdateStage.ACCEPTED,
                )
            result = await operations.outcome(handle)
        except WorkflowUpdateFailedError as error:
            raise Failure(f"{workload.workflow_id}: rejected: {operations.cause(error)}") from None
        pending.discard(workload.workflow_id)
        _out(_applied(workload.workflow_id, result, checked.existing))
        if result.status is not None:  # always, asked with a wait
            _out(f"  {ids.workload_reference(workload.workflow_id)}: {_progress(result.status)}")
        return result

    async def still_waiting() -> None:
        while True:
            await asyncio.sleep(STILL_WAITING_EVERY)
            names = [ids.workload_reference(w) for w in sorted(pending)]
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            _out(f"  waiting for {', '.join(names[:3])}{more}")

    ticker = asyncio.create_task(still_waiting())
    try:
        results = await asyncio.gather(*(apply(w) for w in checked.workloads))
    finally:
        ticker.cancel()
    late: list[tuple[str, WorkloadStatus]] = []
    problems: list[str] = []
    for workload, result in zip(checked.workloads, results, strict=True):
        status, name = result.status, ids.workload_reference(workload.workflow_id)
        if status is None:
            continue  # never: asked with a wait
        applied = status.observed_generation >= result.generation
        if applied and status.phase == Phase.READY:
            continue
        held = blocking(status.conditions) if applied and status.phase == Phase.DEGRADED else []
        if held:
            problems += [f"{name}: {c.type}: {c.message}" for c in held]
        elif status.phase in (Phase.PAUSED, Phase.DELETED):
            problems.append(f"{name} is {status.phase.value}, not Ready")
        else:
            late.append((name, status))  # the workflow answered at the wait's end
    if late:
        names = ", ".join(name for name, _ in late)
        raise Failure(
            f"timed out after {timeout:g}s waiting for {names} to be Ready; "
            f"last seen: {_progress(late[0][1])}"
        )
    if problems:
        raise Failure("; ".join(problems))
    _out(f"{len(results)} workload(s) Ready")


def _progress(status: WorkloadStatus) -> str:
    """The phase and, when not Ready, what it waits for or what fails."""
    failing = [c for c in status.conditions if c.status == ConditionStatus.FALSE]
    detail = "; ".join(
        f"{c.type} {'waiting' if c.waiting else 'failing'}: {c.reason}: {c.message}"
        for c in failing
    )
    text = f"{status.phase.value} (generation {status.observed_generation}/{status.generation})"
    return f"{text} {detail}" if detail else text


# ---- get / describe ------------------------------------------------------------------------


async def cmd_get(args: argparse.Namespace) -> None:
    client, _ = await _connect(args, _platform(args, required=False))
    if args.kind.startswith("apiaggregator"):
        await _get_aggregators(client, args.output)
        return
    rows = await operations.list_workloads(client, args.system)
    if args.output == "json":
        _out(json.dumps([row.__dict__ for row in rows], default=_json_value, indent=2))
        return
    now = datetime.now(UTC)
    _table(
        ("NAME", "SYSTEM", "PHASE", "DESTINATION", "AGE"),
        [(r.name, r.system, r.phase, r.destination, _age(now - r.started)) for r in rows],
    )
    if not rows:
        print("No workloads found.", file=sys.stderr)


async def _get_aggregators(client: Client, output: str) -> None:
    rows = await operations.list_aggregators(client)
    if output == "json":
        _out(json.dumps([row.__dict__ for row in rows], default=_json_value, indent=2))
        return
    now = datetime.now(UTC)
    _table(
        ("HOSTNAME", "NAME", "PHASE", "DESTINATION", "TARGETS", "REFUSED", "AGE"),
        [
            (r.hostname, r.name, r.phase, r.destination, str(r.targets), str(r.refused),
             _age(now - r.started))
            for r in rows
        ],
    )  # fmt: skip
    if not rows:
        print("No ApiAggregators found.", file=sys.stderr)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        _out("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


async def cmd_describe(args: argparse.Namespace) -> None:
    if args.kind == "apiaggregator":
        await _describe_aggregator(args)
        return
    workflow_id = _workload_id(args.name)
    client, settings = await _connect(args, _platform(args, required=False))
    status = await _status(client, workflow_id)
    if args.output == "json":
        _out(status.model_dump_json(indent=2))
        return
    spec = status.workload.spec
    _out(f"Name:         {status.system}/{status.name}")
    _out(f"Workflow:     {workflow_id}")
    _out(f"Link:         {links.workflow_link(settings.ui_url, settings.namespace, workflow_id)}")
    _out(f"Owner:        {spec.owner}")
    _out(f"Destination:  {spec.destination} (namespace {spec.namespace})")
    _out(f"Phase:        {status.phase.value}{' (paused)' if status.paused else ''}")
    _out(f"Generation:   {status.generation} (observed {status.observed_generation})")
    if status.watched:
        own = status.next_check_at.isoformat() if status.next_check_at else "none"
        _out(f"Next check:   each fleet observer sweep (its own: {own})")
    elif status.next_check_at is not None:
        _out(f"Next check:   {status.next_check_at.isoformat()}")
    if status.conditions:
        _out("Conditions:")
    for c in status.conditions:
        _out(f"  {c.type:<12} {c.status.value:<7} {c.reason:<16} {c.message}")
        _out(f"  {'':<12} since {c.last_transition_time.isoformat()}")
    outputs = _output_lines(status)
    if outputs:
        _out("Outputs:")
    for line in outputs:
        _out(f"  {line}")
    _events(status.events)


def _output_lines(status: WorkloadStatus) -> list[str]:
    """Each capability's outputs as it describes them; those of one this CLI lacks, as JSON."""
    lines = []
    known = by_name()
    for name, outputs in status.outputs.items():
        capability = known.get(name)
        if capability is None:
            lines.append(f"{name}: {json.dumps(outputs, sort_keys=True)}")
        else:
            lines += capability.describe(outputs)
    return lines


async def _describe_aggregator(args: argparse.Namespace) -> None:
    platform = _platform(args, required=False)
    client, settings = await _connect(args, platform)
    try:
        status = await operations.aggregator_status(client, args.name)
    except operations.NotFound as error:
        raise Failure(str(error)) from None
    if args.output == "json":
        _out(status.model_dump_json(indent=2))
        return
    workflow_id = operations.aggregator_id(status.hostname)
    aggregator = status.aggregator
    _out(f"Hostname:     {status.hostname}")
    _out(f"Workflow:     {workflow_id}")
    _out(f"Link:         {links.workflow_link(settings.ui_url, settings.namespace, workflow_id)}")
    if aggregator is None:
        _out("Spec:         none applied yet: targets are held, nothing is rendered")
    else:
        spec = aggregator.spec
        gateway = f"{spec.gateway.namespace}/{spec.gateway.name}"
        if spec.gateway.section_name:
            gateway += f" (listener {spec.gateway.section_name})"
        _out(f"Name:         {aggregator.metadata.name}")
        _out(f"Destination:  {spec.destination} (namespace {spec.namespace})")
        _out(f"Gateway:      {gateway}")
        _out(f"Body limit:   {spec.max_request_body_size or '-'}")
        _out(f"Rewrite:      {spec.rewrite_prefix or '-'}")
    _out(f"Phase:        {status.phase.value}")
    _out(f"Generation:   {status.generation} (written {status.written_generation})")
    if status.output:
        _out(
            f"State store:  {status.output.directory} (commit {(status.output.commit or '-')[:12]})"
        )
    _out("Conditions:")
    for c in status.conditions:
        _out(f"  {c.type:<12} {c.status.value:<7} {c.reason:<16} {c.message}")
    _out("Targets:")
    for entry in status.entries:
        target = entry.target
        service = f"{target.service_namespace}/{target.service.name}:{target.service.port}"
        _out(f"  {target.holder:<24} {entry.state.value:<9} {', '.join(target.paths)} → {service}")
        if entry.reason:
            _out(f"  {'':<24} {entry.reason}")
    if not status.entries:
        _out("  none")
    for warning in _listener_warnings(platform, status):
        _out(f"Warning: {warning}")
    _events(status.events)


def _listener_warnings(platform: Platform | None, status: AggregatorStatus) -> list[str]:
    """Routes the Gateway's listener will not accept: HTTPRoutes live in the workloads'
    namespaces, and a listener takes routes from its own namespace unless told otherwise."""
    aggregator = status.aggregator
    if platform is None or aggregator is None:
        return []
    spec = aggregator.spec
    namespaces = sorted(
        {e.target.namespace for e in status.entries if e.state == TargetState.ACCEPTED}
    )
    destination = platform.destination(spec.destination)
    gateway = (
        destination.gateway(spec.gateway.name, spec.gateway.namespace) if destination else None
    )
    name = f"Gateway {spec.gateway.namespace}/{spec.gateway.name}"
    if gateway is None:
        return [
            f"the platform configuration does not describe {name} on destination "
            f"{spec.destination}; make sure its listener's allowedRoutes.namespaces.from admits "
            f"the route namespaces ({', '.join(namespaces) or 'none yet'})"
        ]
    if gateway.allowed_routes_from == "Same":
        foreign = [n for n in namespaces if n != gateway.namespace]
        if foreign:
            return [
                f"{name} accepts routes only from its own namespace (allowedRoutes.namespaces."
                f"from: Same), so the routes in {', '.join(foreign)} will not be attached; "
                "set it to All or Selector"
            ]
    if gateway.allowed_routes_from == "Selector" and namespaces:
        return [
            f"{name} accepts routes from namespaces matching its selector: check that "
            f"{', '.join(namespaces)} match it"
        ]
    return []


def _events(events: list) -> None:
    if events:
        _out("Events:")
    for event in events:
        _out(f"  {event.time.isoformat()}  {event.step}: {event.message}")


# ---- reconcile / pause / resume / delete ----------------------------------------------------


def _request_command(name: str) -> Callable[[argparse.Namespace], Awaitable[None]]:
    async def command(args: argparse.Namespace) -> None:
        if args.kind == "apiaggregator":
            await _delete_aggregator(args)
            return
        workflow_id = _workload_id(args.name)
        client, _ = await _connect(args, _platform(args, required=False))
        request = SignalRequest(reason=args.reason)
        if name == "rotate_credentials":
            request = RotateRequest(reason=args.reason, revoke_old=args.revoke_old)
        try:
            await operations.send_request(client, workflow_id, name, request)
        except (operations.NotFound, operations.Refused) as error:
            raise Failure(str(error)) from None
        _out(f"{workflow_id} {name.replace('_', '-')} requested")
        if name == "delete" and args.wait:
            handle = client.get_workflow_handle(workflow_id)
            try:
                await asyncio.wait_for(handle.result(), timeout=args.timeout)
            except TimeoutError:
                raise Failure(f"timed out after {args.timeout:g}s waiting for deletion") from None
            except WorkflowFailureError as error:
                raise Failure(f"deletion failed: {operations.cause(error)}") from None
            _out(f"{workflow_id} deleted")

    return command


async def _delete_aggregator(args: argparse.Namespace) -> None:
    client, _ = await _connect(args, _platform(args, required=False))
    workflow_id = operations.aggregator_id(args.name)
    try:
        await operations.delete_aggregator(client, args.name)
    except operations.NotFound as error:
        raise Failure(str(error)) from None
    except WorkflowUpdateFailedError as error:
        raise Failure(f"{workflow_id}: rejected: {operations.cause(error)}") from None
    _out(f"{workflow_id} delete requested")
    if args.wait:
        try:
            await asyncio.wait_for(
                client.get_workflow_handle(workflow_id).result(), timeout=args.timeout
            )
        except TimeoutError:
            raise Failure(f"timed out after {args.timeout:g}s waiting for deletion") from None
        _out(f"{workflow_id} deleted")


# ---- schema ----------------------------------------------------------------------------------


async def cmd_schema(args: argparse.Namespace) -> None:
    kinds = list(KINDS) if args.kind is None else [k for k in KINDS if k == args.kind]
    schemas = {kind: KINDS[kind].model_json_schema(by_alias=True) for kind in kinds}
    if "Workload" in schemas:
        # Installed plugins' sections, which the models accept but cannot declare.
        sections = plugin_sections(WorkloadSpec, "spec")
        add_to_schema(schemas["Workload"], "WorkloadSpec", sections)
    if args.kind == "Platform" or args.kind is None:
        platform = TypeAdapter(Platform).json_schema(by_alias=True)
        schemas["Platform"] = add_to_schema(platform, "", plugin_sections(Platform, "settings"))
    _out(json.dumps(schemas[args.kind] if args.kind else schemas, indent=2))


# ---- replay / platform init -------------------------------------------------------------------


async def cmd_replay(args: argparse.Namespace) -> None:
    if args.files:
        histories = replay.from_files(Path(f) for f in args.files)
    else:
        client, _ = await _connect(args, _platform(args, required=False))
        histories = replay.from_server(client, args.query, args.limit)
    outcomes = await replay.replay(histories)
    failures = [o for o in outcomes if o.error]
    for outcome in failures:
        print(f"NON-DETERMINISTIC {outcome.workflow_id}: {outcome.error}", file=sys.stderr)
    _out(f"replayed {len(outcomes)} histories, {len(failures)} failed")
    if failures:
        raise Failure(f"{len(failures)} histories do not replay with this code; see above")


async def cmd_platform_init(args: argparse.Namespace) -> None:
    client, settings = await _connect(args, _platform(args, required=False))
    added = await search_attributes.register(client, settings.namespace)
    what = ", ".join(added) if added else "nothing (all present)"
    _out(f"search attributes registered in namespace {settings.namespace}: {what}")


# ---- platform argocd / iam-policy -------------------------------------------------------------

ARGOCD_FLAGS = {
    "repo_url": "--repo-url",
    "revision": "--revision",
    "path": "--repo-path",
    "namespace": "--argocd-namespace",
}


def _platform_file(args: argparse.Namespace) -> tuple[Path, Platform]:
    path = Path(args.filename) if args.filename else platform_path(args.platform)
    if path is None:
        raise UsageError("no platform file: pass -f FILE (or --platform FILE, IDP_PLATFORM_CONFIG)")
    try:
        return path, load_platform(path)
    except PlatformError as error:
        raise UsageError(str(error)) from None


def _argocd_options(
    args: argparse.Namespace, destinations: list[Destination]
) -> argocd.BootstrapOptions:
    # By default the objects are committed beside the trees: to the one state store, on the
    # branch Argo CD already reads.
    urls = sorted({d.state_store.url for d in destinations})
    url = args.repo_url or urls[0]
    if args.repo_url is None and len(urls) > 1:
        raise UsageError(
            f"the destinations keep their trees in {len(urls)} repositories ({', '.join(urls)}); "
            "pass --repo-url with the one the Argo CD objects are committed to"
        )
    branches = sorted({d.state_store.branch for d in destinations if d.state_store.url == url})
    if args.revision is None and len(branches) > 1:
        raise UsageError(
            f"the destinations keep their trees on {len(branches)} branches of {url} "
            f"({', '.join(branches)}); pass --revision with the one the Argo CD objects are "
            "committed to"
        )
    revision = args.revision or (branches[0] if branches else "HEAD")
    try:
        return argocd.BootstrapOptions(
            repo_url=url,
            revision=revision,
            path=args.repo_path,
            namespace=args.argocd_namespace,
        )
    except ValidationError as error:
        problem = error.errors()[0]
        flag = ARGOCD_FLAGS[str(problem["loc"][0])]
        raise UsageError(f"{flag}: {problem['msg'].removeprefix('Value error, ')}") from None


async def cmd_platform_argocd(args: argparse.Namespace) -> None:
    path, platform = _platform_file(args)
    names = [d.name for d in platform.destinations]
    unknown = [n for n in args.destination or [] if n not in names]
    if unknown:
        raise UsageError(
            f"--destination: {unknown[0]!r} is not a destination of {path}; "
            f"allowed: {', '.join(names)}"
        )
    chosen = [
        d for d in platform.destinations if not args.destination or d.name in args.destination
    ]
    options = _argocd_options(args, chosen)
    try:
        bootstrap = argocd.render(platform, options, chosen)
    except argocd.ArgoCdError as error:
        where = f"{path}: {error.field}" if error.field else "--repo-path"
        raise UsageError(f"{where}: {error}") from None
    for warning in bootstrap.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.output is None:
        _out("---\n".join(dump(obj) for obj in bootstrap.files.values()).rstrip("\n"))
        return
    out = Path(args.output)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, obj in bootstrap.files.items():
            (out / name).write_text(dump(obj), encoding="utf-8")
            _out(f"wrote {out / name}: {obj['kind']} {obj['metadata']['name']}")
    except OSError as error:
        raise Failure(f"{error.filename}: cannot be written ({error.strerror})") from None
    _out(
        f"commit {out}/ to {options.repo_url} at {options.revision} as {options.path}/, then "
        f"apply {out / argocd.ROOT_FILE} by hand (kubectl apply -f {out / argocd.ROOT_FILE}); "
        "it syncs the rest"
    )


async def cmd_platform_iam_policy(args: argparse.Namespace) -> None:
    _, platform = _platform_file(args)
    # Imported on use: no other command needs the AWS policy code.
    from idp.aws.policy import PolicyError, render_policy

    try:
        policy = render_policy(platform)
    except PolicyError as error:
        raise UsageError(str(error)) from None
    # As rendered, ending in its one newline: the checked-in file is compared byte for byte.
    sys.stdout.write(policy)


# ---- helpers ---------------------------------------------------------------------------------


def _platform(args: argparse.Namespace, *, required: bool) -> Platform | None:
    path = platform_path(args.platform)
    if path is None:
        if required:
            raise UsageError(
                "no platform configuration: pass --platform FILE or set IDP_PLATFORM_CONFIG"
            )
        return None
    try:
        return load_platform(path)
    except PlatformError as error:
        raise UsageError(str(error)) from None


async def cmd_upgrade(args: argparse.Namespace) -> None:
    client, _ = await _connect(args, _platform(args, required=False))
    try:
        if args.upgrade_command == "save":
            count = await upgrade.save(client, args.file, args.query)
            _out(f"saved the status of {count} running workload(s) to {args.file}")
            return
        restarted = await upgrade.restart(client, args.file)
    except upgrade.UpgradeError as error:
        raise Failure(str(error)) from None
    for workflow_id in restarted:
        _out(f"  restarted {ids.workload_reference(workflow_id)}")
    _out(f"{len(restarted)} workload(s) restarted on this version")


async def _connect(
    args: argparse.Namespace, platform: Platform | None
) -> tuple[Client, temporal.TemporalSettings]:
    settings = temporal.settings(args, platform.temporal if platform else None)
    try:
        return await temporal.connect(settings), settings
    except temporal.ConnectError as error:
        raise Failure(str(error)) from None


async def _status(client: Client, workflow_id: str) -> WorkloadStatus:
    try:
        return await operations.workload_status(client, workflow_id)
    except operations.NotFound as error:
        raise Failure(str(error)) from None


def _wait_seconds(text: str) -> float:
    """--timeout of apply: what one update may wait (workflows/messages.py)."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 1 <= seconds <= MAX_WAIT_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{text} is not a number of seconds from 1 to {MAX_WAIT_SECONDS}"
        )
    return seconds


def _workload_id(reference: str) -> str:
    try:
        return operations.workload_id(reference)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _json_value(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _age(delta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="idpctl", description=__doc__.split("\n\n")[0])
    root.add_argument("--platform", help="platform configuration file (IDP_PLATFORM_CONFIG)")
    temporal.add_arguments(root)
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    apply = commands.add_parser("apply", help="create or update resources from YAML files")
    apply.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        help="a YAML file or a directory of them (repeatable)",
    )
    apply.add_argument("--wait", action="store_true", help="wait until every workload is Ready")
    apply.add_argument(
        "--timeout",
        type=_wait_seconds,
        default=300,
        help=f"seconds --wait waits for each workload, 1 to {MAX_WAIT_SECONDS} (300)",
    )
    apply.set_defaults(run=cmd_apply)

    diff = commands.add_parser(
        "diff",
        help="show what apply would change, changing nothing",
        description="Show what `apply` would change: each resource's spec as a diff against the "
        "live one, and each capability's plan, from its observe run on the worker as a "
        "standalone activity. Nothing is started, signalled or written. Exit 0: nothing would "
        "change; 1: something would; 2: invalid input or an error.",
    )
    diff.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        help="a YAML file or a directory of them (repeatable)",
    )
    diff.add_argument("-o", "--output", choices=["text", "json"], default="text")
    # Its 1 means "would change", as kubectl diff's does, so its failures exit 2.
    diff.set_defaults(run=cmd_diff, failure_code=2)

    get = commands.add_parser("get", help="list resources")
    get.add_argument("kind", choices=["workloads", "workload", "apiaggregators", "apiaggregator"])
    get.add_argument("--system", help="only this system")
    get.add_argument("-o", "--output", choices=["table", "json"], default="table")
    get.set_defaults(run=cmd_get)

    describe = commands.add_parser("describe", help="show a resource's status in detail")
    describe.add_argument("kind", choices=["workload", "apiaggregator"])
    describe.add_argument("name", metavar="SYSTEM/NAME|HOSTNAME")
    describe.add_argument("-o", "--output", choices=["text", "json"], default="text")
    describe.set_defaults(run=cmd_describe)

    for name, text in (
        ("reconcile", "run a reconcile pass now"),
        ("pause", "stop reconciling until resume"),
        ("resume", "reconcile again after pause"),
        ("delete", "tear the workload down and end its workflow"),
        (
            "rotate_credentials",
            "new credentials now (NATS, a database password); the old ones stop after the grace",
        ),
    ):
        command = commands.add_parser(name.replace("_", "-"), help=text)
        kinds = ["workload", "apiaggregator"] if name == "delete" else ["workload"]
        command.add_argument("kind", choices=kinds)
        command.add_argument(
            "name", metavar="SYSTEM/NAME|HOSTNAME" if name == "delete" else "SYSTEM/NAME"
        )
        command.add_argument("--reason", help="recorded with the request")
        if name == "rotate_credentials":
            command.add_argument(
                "--revoke-old",
                choices=["after-grace", "now"],
                default="after-grace",
                help="now: the old credentials stop working at once (a leak)",
            )
        if name == "delete":
            command.add_argument("--wait", action="store_true", help="wait until deleted")
            command.add_argument("--timeout", type=float, default=300)
        command.set_defaults(run=_request_command(name))

    schema = commands.add_parser("schema", help="print the JSON Schema of a kind (for editors)")
    schema.add_argument("kind", nargs="?", choices=[*KINDS, "Platform"])
    schema.set_defaults(run=cmd_schema)

    replay_ = commands.add_parser(
        "replay", help="replay workflow histories against this code (non-zero on any failure)"
    )
    replay_.add_argument("files", nargs="*", help="history JSON files (else: from the server)")
    replay_.add_argument(
        "--query",
        default=replay.DEFAULT_QUERY,
        help="visibility query selecting the histories to download (every workflow type here)",
    )
    replay_.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    replay_.set_defaults(run=cmd_replay)

    upgrade_ = commands.add_parser(
        "upgrade", help="move running 0.1 workloads onto 0.2 (README, Upgrade notes)"
    )
    upgrade_commands = upgrade_.add_subparsers(dest="upgrade_command", required=True)
    for name, text in (
        ("save", "with the 0.1 workers still running: save every running workload's status"),
        ("restart", "with 0.2 workers running: restart each saved workload from its status"),
    ):
        step = upgrade_commands.add_parser(name, help=text)
        step.add_argument("file", type=Path, help="the file `save` writes and `restart` reads")
        if name == "save":
            step.add_argument(
                "--query",
                default=upgrade.QUERY,
                help="visibility query selecting the workloads (default: every running one)",
            )
        step.set_defaults(run=cmd_upgrade)

    platform = commands.add_parser(
        "platform", help="set up idp's surroundings: the Temporal namespace, Argo CD, IAM"
    )
    platform_commands = platform.add_subparsers(dest="platform_command", required=True)
    init = platform_commands.add_parser("init", help="register the Idp* search attributes")
    init.set_defaults(run=cmd_platform_init)
    bootstrap = platform_commands.add_parser(
        "argocd",
        help="the Argo CD objects that sync each destination's state-store tree",
        description="Render the Argo CD bootstrap: a root Application to apply by hand, an "
        "AppProject, and per destination an ApplicationSet with one Application per namespace "
        "of its tree (docs/architecture.md, Argo CD). Prints them, or writes one file each "
        "with -o.",
    )
    iam_policy = platform_commands.add_parser(
        "iam-policy", help="the IAM policy the worker needs for the platform file's aws section"
    )
    for command in (bootstrap, iam_policy):
        command.add_argument(
            "-f", "--filename", help="the platform file (else --platform, IDP_PLATFORM_CONFIG)"
        )
    bootstrap.add_argument("-o", "--output", metavar="DIR", help="write one file per object")
    bootstrap.add_argument(
        "--destination",
        action="append",
        help="only this destination (repeatable), e.g. for an Argo CD on that cluster itself",
    )
    bootstrap.add_argument(
        "--repo-url", help="repository the objects are committed to (default: the state store)"
    )
    bootstrap.add_argument(
        "--revision", help="its branch (default: the state store's branch, else HEAD)"
    )
    bootstrap.add_argument(
        "--repo-path", default="argocd", help="the directory in it holding them (argocd)"
    )
    bootstrap.add_argument(
        "--argocd-namespace", default="argocd", help="the namespace Argo CD runs in (argocd)"
    )
    bootstrap.set_defaults(run=cmd_platform_argocd)
    iam_policy.set_defaults(run=cmd_platform_iam_policy)

    codec_server.add_parser(commands)
    dev.add_parser(commands)
    port_setup.add_parser(commands)
    return root


def rpc_failure(error: RPCError) -> str:
    """What a failed call to the Temporal server means for the user: only some statuses are the
    server refusing; a call that ran out of time may still have been carried out."""
    if error.status in operations.NOT_ANSWERED_IN_TIME:
        return (
            f"the Temporal server did not answer in time ({error.message}); the request may "
            "still have been carried out: look with `idpctl get` or `idpctl describe` before "
            "sending it again"
        )
    if error.status == RPCStatusCode.UNAVAILABLE:
        return f"cannot reach the Temporal server: {error.message}"
    if error.status == RPCStatusCode.RESOURCE_EXHAUSTED:
        return f"the Temporal server is limiting requests, try again later: {error.message}"
    return f"the Temporal server refused the request: {error.message}"


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    failure_code = getattr(args, "failure_code", 1)
    code = 0
    try:
        code = asyncio.run(args.run(args)) or 0
    except BrokenPipeError:
        # `idpctl ... | head`: the reader is gone, which is not an error worth a traceback. As
        # Python's "Note on SIGPIPE" advises, point stdout at devnull so that the flush on exit
        # cannot fail again, and exit the way a process killed by SIGPIPE would (141).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 128 + signal.SIGPIPE
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        code = 2
    except Failure as error:
        print(f"error: {error}", file=sys.stderr)
        code = failure_code
    except RPCError as error:
        print(f"error: {rpc_failure(error)}", file=sys.stderr)
        code = failure_code
    except KeyboardInterrupt:
        code = 130
    except SystemExit as error:
        if isinstance(error.code, str):
            print(error.code, file=sys.stderr)
        code = error.code if isinstance(error.code, int) else int(error.code is not None)
    temporal.exit_now(code)


if __name__ == "__main__":
    main()
