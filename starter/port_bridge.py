"""idp-port-bridge: Port.io self-service actions in, workflow messages out, reports back.

    PORT_CLIENT_ID=... PORT_CLIENT_SECRET=... IDP_CODEC_KEYS=... \\
        idp-port-bridge --platform platform.yaml [--host 127.0.0.1] [--port 8235]

`POST /port/webhook` takes the body the actions under starter/port/actions send (see their README):
`{action, runId, inputs, entity, triggeredBy}`. The signature (x-port-timestamp,
x-port-signature) is checked on the raw body first; then the action becomes update-with-start
`apply` (create, update) or the update of the same name (reconcile, rotate credentials, pause,
resume, delete), with the Port run id as request id, and PortRunWorkflow (`port-run/<run id>`)
is started to report the outcome. The answer is 202 as soon as Temporal has accepted both.
Preview changes (idp_preview_workload) is checked as a create is, answered 202, then diffed
(starter/preview.py, what `idpctl diff` shows) and reported by the bridge itself: no workflow is
started, and the diff's lines become the run's logs.

Answers: 202 accepted (also for a re-delivery of an accepted run, with `duplicate: true`;
PortRunWorkflow reports the outcome); 401 for a missing, wrong, stale or future signature (the
run is left alone: the sender is unknown); 400 for a body that is not JSON or not the template's
shape, an unknown action, invalid inputs or spec; 404 when the entity's workload does not exist;
409 when the workflow refuses (its updates' validators, the same rule every entry point meets:
workflows/requests.py), e.g. the workload is paused, being deleted, deleted or has no NATS user
to rotate; 503 when Temporal cannot be reached. Every answer but 202 and 401
marks the run FAILURE with the reason, when its run id can be read. A body over 1 MiB gets 413
before anything else, and its run is left alone (nothing about the sender is known yet).

Rejections are reported from the bridge (best effort, the client's retries), not through
Temporal: a request that was not accepted leaves nothing behind in Temporal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import uvicorn
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.capabilities import settings_of
from activities.port import Target
from idp import ids, links
from idp.capability import by_name, check_sections
from idp.errors import IdpError
from idp.keyring import KeyRingError
from idp.loading import YamlLoader, parse_document, yaml_problem
from idp.models import API_VERSION, Workload
from idp.names import dns1123_label
from idp.platform import PlatformError, load_platform, platform_path
from idp.port import PortClient, client_from_config, port_credentials
from idp.portwebhook import SignatureError, verify
from starter import operations, preview, temporal
from workflows.messages import RotateRequest, SignalRequest, WorkloadStatus
from workflows.portrun import PortRunInput, PortRunWorkflow

log = logging.getLogger("idp.port_bridge")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

WEBHOOK_PATH = "/port/webhook"
DEFAULT_PORT = 8235
MAX_BODY_BYTES = 1024 * 1024  # Port's own request limit
# A preview's diff goes to Port in log lines of at most this many characters: Port refuses a
# request body over 1 MiB, and JSON may spell one character in up to six bytes.
LOG_CHARS = 128 * 1024
BRIDGE_FAILED = "the bridge failed on this request; see its log"
PREVIEW_FAILED = "Preview failed"
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

# Action identifier (starter/port/actions/*.json) → what it does to the workload.
ACTIONS = {
    "idp_create_workload": "create",
    "idp_update_workload": "update",
    "idp_reconcile_workload": "reconcile",
    "idp_rotate_workload_credentials": "rotate_credentials",
    "idp_pause_workload": "pause",
    "idp_resume_workload": "resume",
    "idp_delete_workload": "delete",
    "idp_preview_workload": "preview",
}


class Rejected(Exception):
    """The webhook is answered `status` and, when its run id is readable, the run FAILUREs."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ---------------------------------------------------------------- request bodies


class _Body(BaseModel):
    # The template is ours (starter/port/actions): anything else in it is a misconfigured action.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class WebhookBody(_Body):
    action: str = Field(min_length=1)
    run_id: str = Field(alias="runId", pattern=_RUN_ID.pattern)
    inputs: dict[str, Any] | None = None
    entity: str | None = None
    triggered_by: str | None = Field(None, alias="triggeredBy")


class WorkloadInputs(_Body):
    """Create and update: the whole document as YAML in `spec`, the fields, or both (the fields
    win)."""

    spec: str | None = None
    name: str | None = None
    system: str | None = None
    owner: str | None = None
    destination: str | None = None
    namespace: str | None = None
    registry: bool | None = None
    nats: bool | None = None
    nats_publish: list[str] | None = Field(None, alias="natsPublish")
    nats_subscribe: list[str] | None = Field(None, alias="natsSubscribe")
    deletion_policy: str | None = Field(None, alias="deletionPolicy")

    def fields(self) -> dict[str, Any]:
        return self.model_dump(exclude={"spec"}, exclude_none=True)


class ReasonInputs(_Body):
    reason: str | None = Field(None, max_length=500)


class RotateInputs(ReasonInputs):
    revoke_old: Literal["after-grace", "now"] = Field("after-grace", alias="revokeOld")


def _parse(model: type[BaseModel], payload: Any, where: str) -> Any:
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(body)"
        # pydantic's message alone: the input itself is not echoed back into Port or the log.
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        raise Rejected(400, f"{where}{field}: {message}") from None


def _given(inputs: dict[str, Any] | None) -> dict[str, Any]:
    # Port sends optional inputs left empty as "" or null; both mean "not given".
    return {key: value for key, value in (inputs or {}).items() if value not in ("", None)}


# ---------------------------------------------------------------- workloads from inputs


def document_from_yaml(text: str) -> Any:
    """The one document in `text`, or the loader's one-line message about why not."""
    try:
        documents = [d for d in yaml.load_all(text, Loader=YamlLoader) if d is not None]
    except yaml.YAMLError as error:
        raise Rejected(400, f"inputs.spec: {yaml_problem(error, text)}") from None
    if len(documents) != 1:
        raise Rejected(400, f"inputs.spec: must hold one Workload document; found {len(documents)}")
    return documents[0]


def _validated(document: Any, where: str) -> Workload:
    problems: list[str] = []
    resource = parse_document(document, where, problems)
    if problems:
        raise Rejected(400, "; ".join(problems))
    if not isinstance(resource, Workload):
        raise Rejected(400, f"{where}: kind: must be Workload for this action")
    return resource


def build_workload(inputs: WorkloadInputs, base: Any, where: str) -> Workload:
    """The Workload the inputs describe: the fields given, over `base` (the `spec` input, or the
    applied spec for an update), or over nothing for a create from fields alone. Fields win, so
    changing one field of Update workload's prefilled spec is enough."""
    given = inputs.fields()
    if base is None:
        required = ("name", "system", "owner", "destination", "namespace")
        missing = [name for name in required if name not in given]
        if missing:
            raise Rejected(
                400,
                f"inputs: {', '.join(missing)} required (or give the whole Workload as YAML in "
                "spec)",
            )
        base = {"apiVersion": API_VERSION, "kind": "Workload", "metadata": {}, "spec": {}}
    if not given or not isinstance(base, dict):
        return _validated(base, where)
    document = json.loads(json.dumps(base))
    metadata = document.setdefault("metadata", {})
    spec = document.setdefault("spec", {})
    if not isinstance(metadata, dict) or not isinstance(spec, dict):
        return _validated(document, where)
    for key in ("name", "system"):
        if key in given:
            metadata[key] = given[key]
    for key in ("owner", "destination", "namespace"):
        if key in given:
            spec[key] = given[key]
    if "deletion_policy" in given:
        spec["deletionPolicy"] = given["deletion_policy"]
    if "registry" in given:
        spec["registry"] = {**spec.get("registry", {}), "enabled": given["registry"]}
    if given.get("nats") is False:
        spec.pop("nats", None)
    elif given.get("nats") or "nats_publish" in given or "nats_subscribe" in given:
        nats = spec.setdefault("nats", {})
        permissions = nats.setdefault("permissions", {})
        for key, direction in (("nats_publish", "publish"), ("nats_subscribe", "subscribe")):
            if key in given:
                permissions[direction] = {**permissions.get(direction, {}), "allow": given[key]}
    return _validated(document, where)


def entity_reference(entity: str | None) -> tuple[str, str]:
    """(system, name) from an idpWorkload entity identifier `<system>.<name>`."""
    system, _, name = (entity or "").partition(".")
    try:
        dns1123_label(system)
        dns1123_label(name)
    except ValueError:
        raise Rejected(
            400, f"entity must be an idpWorkload identifier <system>.<name>; got {entity!r}"
        ) from None
    return system, name


# ---------------------------------------------------------------- the bridge


@dataclass(frozen=True)
class BridgeSettings:
    task_queue: str
    namespace: str
    ui_url: str
    secret: SecretStr
    window: timedelta
    destinations: tuple[str, ...] = ()
    # Each capability's validated platform section (None: not offered), for its `check`; one
    # missing here is not checked.
    capabilities: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Accepted:
    workflow_id: str
    request: str
    target: Target


class Bridge:
    def __init__(self, temporal: Client, port: PortClient, settings: BridgeSettings) -> None:
        self.temporal = temporal
        self.port = port
        self.settings = settings
        # Runs whose preview is under way: a delivery of the same run meanwhile adds nothing.
        self._previewing: set[str] = set()

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route(WEBHOOK_PATH, self.webhook, methods=["POST"]),
                Route("/healthz", self.healthz, methods=["GET"]),
            ]
        )

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def webhook(self, request: Request) -> Response:
        # Refused before reading or verifying it: the sender is not known yet.
        length = request.headers.get("content-length", "")
        too_large = f"the body is over {MAX_BODY_BYTES} bytes"
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            return _error(413, "too_large", too_large)
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return _error(413, "too_large", too_large)
        try:
            verify(
                self.settings.secret.get_secret_value(),
                request.headers,
                raw,
                window=self.settings.window,
            )
        except SignatureError as error:
            log.warning("webhook refused (401): %s", error)
            return _error(401, "unauthorized", f"the webhook signature was refused: {error}")
        try:
            payload = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            payload = None
        # Signed by Port, so a run id in it names a run we may report to, even if the rest is off.
        run_id = payload.get("runId") if isinstance(payload, dict) else None
        run_id = run_id if isinstance(run_id, str) and _RUN_ID.match(run_id) else None
        try:
            if payload is None:
                raise Rejected(400, "the body is not JSON")
            body: WebhookBody = _parse(WebhookBody, payload, "body.")
            answer, task = await self._accept(body)
        except Rejected as rejected:
            log.warning("run %s refused (%d): %s", run_id or "-", rejected.status, rejected.message)
            return _error(
                rejected.status, "rejected", rejected.message, self._rejection(run_id, rejected)
            )
        except Exception:
            # A bug here must still end the run, or Port shows it in progress forever.
            log.exception("run %s: the bridge failed", run_id or "-")
            failed = Rejected(500, BRIDGE_FAILED)
            return _error(500, "internal_error", failed.message, self._rejection(run_id, failed))
        return JSONResponse({"ok": True, **answer}, status_code=202, background=task)

    def _rejection(self, run_id: str | None, rejected: Rejected) -> BackgroundTask | None:
        if run_id is None:
            return None
        return BackgroundTask(self._report_failure, run_id, "Rejected", rejected.message)

    async def _accept(self, body: WebhookBody) -> tuple[dict[str, Any], BackgroundTask | None]:
        """The 202 answer's fields, and the work that follows it (a preview's diff)."""
        operation = ACTIONS.get(body.action)
        if operation is None:
            raise Rejected(
                400,
                f"unknown action {body.action!r}; this bridge runs {', '.join(sorted(ACTIONS))}",
            )
        if operation == "preview":
            # Nothing to look up first: a preview changes nothing, so a delivery of the same run
            # again can only repeat the report, which _preview prevents.
            workload = await self._workload(body, "create")
            log.info("run %s (%s): previewing %s", body.run_id, body.action, workload.workflow_id)
            answer = {"runId": body.run_id, "workflowId": workload.workflow_id}
            return answer, BackgroundTask(self._preview, body.run_id, workload)
        report_id = ids.port_run_id(body.run_id)
        # Checked first: re-applying a create whose workload was deleted since would bring it
        # back (update-with-start starts a new workflow), so an accepted run is never redone.
        if await self._exists(report_id):
            log.info("run %s (%s): accepted before, nothing to do", body.run_id, body.action)
            return {"runId": body.run_id, "duplicate": True}, None
        accepted_at = datetime.now(UTC)
        if operation in ("create", "update"):
            accepted = await self._apply(body, operation)
        else:
            accepted = await self._signal(body, operation)
        system, _ = ids.parse_workload_id(accepted.workflow_id)
        report = PortRunInput(
            run_id=body.run_id,
            request=accepted.request,
            workflow_id=accepted.workflow_id,
            target=accepted.target,
            accepted_at=accepted_at,
            workload_link=self.workflow_link(accepted.workflow_id),
            system_link=self.system_link(system),
            triggered_by=body.triggered_by,
        )
        try:
            await self.temporal.start_workflow(
                PortRunWorkflow.run,
                report,
                id=report_id,
                task_queue=self.settings.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                static_summary=f"Port run {body.run_id}: {accepted.request} of "
                f"{ids.workload_reference(accepted.workflow_id)}",
            )
            duplicate = False
        except WorkflowAlreadyStartedError:
            duplicate = True  # a concurrent delivery of the same run got there first
        except RPCError as error:
            raise _unavailable(error) from None
        log.info("run %s (%s): accepted, %s", body.run_id, body.action, accepted.request)
        answer = {
            "runId": body.run_id,
            "workflowId": accepted.workflow_id,
            "reportWorkflowId": report_id,
            "duplicate": duplicate,
        }
        return answer, None

    async def _apply(self, body: WebhookBody, operation: str) -> Accepted:
        workload = await self._workload(body, operation)
        try:
            result = await operations.apply_workload(
                self.temporal, self.settings.task_queue, workload, request_id=body.run_id
            )
        except WorkflowUpdateFailedError as error:
            raise Rejected(
                409, f"{workload.workflow_id}: rejected: {operations.cause(error)}"
            ) from None
        except RPCError as error:
            raise _unavailable(error) from None
        # `changed` cannot tell a no-op from a first start: the start records the request id,
        # so the update of the same request reports no change.
        return Accepted(
            workflow_id=workload.workflow_id,
            request=f"apply generation {result.generation}",
            target=Target(kind="generation", generation=result.generation),
        )

    async def _workload(self, body: WebhookBody, operation: str) -> Workload:
        """The Workload a create or update run's inputs describe, checked as an apply is:
        the loader, the platform's destinations and each capability's `check`."""
        inputs: WorkloadInputs = _parse(WorkloadInputs, _given(body.inputs), "inputs.")
        current: WorkloadStatus | None = None
        if operation == "update":
            system, name = entity_reference(body.entity)
            current = await self._status(ids.workload_id(system, name))
        if inputs.spec is not None:
            workload = build_workload(inputs, document_from_yaml(inputs.spec), "inputs.spec")
        elif current is not None:
            applied = current.workload.model_dump(mode="json", exclude_none=True)
            workload = build_workload(inputs, applied, "inputs")
        else:
            workload = build_workload(inputs, None, "inputs")
        if current is not None and workload.workflow_id != current.workload.workflow_id:
            raise Rejected(
                400,
                f"inputs.spec names workload {workload.metadata.system}/{workload.metadata.name}"
                f", but the action ran on {current.system}/{current.name}",
            )
        known = self.settings.destinations
        problems = (
            [
                f"spec.destination: {workload.spec.destination!r} is not a destination of the "
                f"platform configuration; allowed: {', '.join(known)}"
            ]
            if known and workload.spec.destination not in known
            else []
        )
        problems += check_sections(workload, self.settings.capabilities)
        if problems:
            raise Rejected(400, "; ".join(problems))
        return workload

    async def _signal(self, body: WebhookBody, operation: str) -> Accepted:
        system, name = entity_reference(body.entity)
        workflow_id = ids.workload_id(system, name)
        if operation == "rotate_credentials":
            rotate: RotateInputs = _parse(RotateInputs, _given(body.inputs), "inputs.")
            request: SignalRequest = RotateRequest(
                request_id=body.run_id, reason=rotate.reason, revoke_old=rotate.revoke_old
            )
        else:
            reason: ReasonInputs = _parse(ReasonInputs, _given(body.inputs), "inputs.")
            request = SignalRequest(request_id=body.run_id, reason=reason.reason)
        status = await self._status(workflow_id)
        try:
            await operations.send_request(self.temporal, workflow_id, operation, request)
        except (operations.NotFound, operations.Refused) as error:
            raise Rejected(409, str(error)) from None
        except RPCError as error:
            raise _unavailable(error) from None
        return Accepted(workflow_id, operation.replace("_", " "), _target(operation, status))

    async def _preview(self, run_id: str, workload: Workload) -> None:
        """Diff `workload` and report the run, after the webhook's answer (the diff runs
        activities, which can take seconds). uvicorn lets these tasks finish before it stops.

        Reported from here, with the Port client's retries, not through PortRunWorkflow: a
        preview starts no workflow, not even a report workflow, and a diff is true only when it
        is taken, so a report that waited days for Port would show a stale one. When Port
        stays down the run stays in progress, and running the preview again costs nothing.
        """
        if run_id in self._previewing:
            return
        self._previewing.add(run_id)
        try:
            await self._report_preview(run_id, workload)
        except IdpError as error:
            log.warning("run %s: could not report the preview to Port: %s", run_id, error)
        except Exception:
            log.exception("run %s: the preview failed", run_id)
            await self._report_failure(run_id, PREVIEW_FAILED, BRIDGE_FAILED)
        finally:
            self._previewing.discard(run_id)

    async def _report_preview(self, run_id: str, workload: Workload) -> None:
        run = await self.port.get_run(run_id)
        if run is None or run.finished:
            # A webhook delivered again after its run ended: reported already.
            log.info("run %s is not in progress in Port; nothing to preview", run_id)
            return
        try:
            found = await preview.diff(self.temporal, self.settings.task_queue, [workload], [])
        except preview.PreviewError as error:
            await self._report_failure(run_id, PREVIEW_FAILED, str(error))
            return
        for message in log_messages(found.lines()):
            await self.port.add_run_log(run_id, message)
        if found.problems:
            # The lines show what could be previewed; the run fails because the rest could not.
            await self._report_failure(run_id, PREVIEW_FAILED, "; ".join(found.problems))
            return
        summary = preview_summary(found)
        label = "Changes" if found.changed else "No changes"
        await self.port.finish_run(
            run_id, "SUCCESS", f"Preview: {summary}.", status_label=label, summary=summary
        )
        log.info("run %s: preview of %s reported: %s", run_id, workload.workflow_id, summary)

    async def _status(self, workflow_id: str) -> WorkloadStatus:
        try:
            return await operations.workload_status(self.temporal, workflow_id)
        except operations.NotFound as error:
            raise Rejected(404, str(error)) from None
        except RPCError as error:
            raise _unavailable(error) from None

    async def _exists(self, workflow_id: str) -> bool:
        try:
            await self.temporal.get_workflow_handle(workflow_id).describe()
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                return False
            raise _unavailable(error) from None
        return True

    async def _report_failure(self, run_id: str, label: str, reason: str) -> None:
        try:
            await self.port.finish_run(
                run_id, "FAILURE", f"{label}: {reason}", status_label=label, summary=reason
            )
        except IdpError as error:
            log.warning("run %s: could not report the failure to Port: %s", run_id, error)

    def workflow_link(self, workflow_id: str) -> str:
        return links.workflow_link(self.settings.ui_url, self.settings.namespace, workflow_id)

    def system_link(self, system: str) -> str:
        return links.system_link(self.settings.ui_url, self.settings.namespace, system)


def _unavailable(error: RPCError) -> Rejected:
    return Rejected(
        503, f"Temporal did not take the request ({error.message}); run the action again later"
    )


# Request → what PortRunWorkflow waits for the workload to show.
_TARGET_KINDS = {
    "reconcile": "reconciled",
    "rotate_credentials": "rotated",
    "pause": "paused",
    "resume": "resumed",
    "delete": "deleted",
}


def preview_summary(found: preview.Diff) -> str:
    """One line for the run: how many changes applying would make, and what would stop it."""
    capabilities = [c for w in found.workloads for c in w.capabilities]
    count = sum(len(c.changes) + c.release for c in capabilities)
    parts = [f"{count} change{'' if count == 1 else 's'} would be made"] if count else []
    parts += [
        f"{ids.workload_reference(w.workflow_id)} is being deleted, so apply would be refused"
        for w in found.workloads
        if w.deleting
    ]
    parts += [f"{c.name} would be refused" for c in capabilities if c.refused]
    parts += [
        f"{c.name} is planned once {' and '.join(c.waiting_for)} applied"
        for c in capabilities
        if c.waiting_for
    ]
    if parts:
        return "; ".join(parts)
    # A paused workload, or a change no capability acts on (its owner, say).
    return "only the spec would change" if found.changed else "nothing would change"


def log_messages(lines: list[str]) -> list[str]:
    """`lines` joined into as few run log messages as Port takes, each within LOG_CHARS."""
    messages: list[list[str]] = []
    size = 0
    for line in lines:
        if not messages or size + len(line) > LOG_CHARS:
            messages.append([])
            size = 0
        messages[-1].append(line)
        size += len(line) + 1
    return ["\n".join(message) for message in messages]


def _target(operation: str, status: WorkloadStatus) -> Target:
    """What an accepted request must bring about, measured from the status before it."""
    return Target(
        kind=_TARGET_KINDS[operation],
        generation=status.generation,
        baseline_next_check_at=status.next_check_at,
    )


def _error(
    status: int, code: str, message: str, background: BackgroundTask | None = None
) -> JSONResponse:
    return JSONResponse(
        {"ok": False, "error": code, "message": message}, status_code=status, background=background
    )


# ---------------------------------------------------------------- the process


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="idp-port-bridge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", help="platform configuration file (IDP_PLATFORM_CONFIG)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"({DEFAULT_PORT})")
    parser.add_argument(
        "--insecure-no-encryption",
        action="store_true",
        help=f"run without {temporal.CODEC_KEYS_ENV}: the payloads it writes are plaintext",
    )
    temporal.add_arguments(parser)
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> int:
    path = platform_path(args.platform)
    if path is None:
        log.error("no platform configuration: pass --platform FILE or set IDP_PLATFORM_CONFIG")
        return 2
    try:
        platform = load_platform(path)
        if platform.port is None:
            raise PlatformError(f"{path}: has no port section, so there is no Port to bridge")
        client_id_and_secret = port_credentials(platform.port, os.environ)
        temporal.required_keyring(args.insecure_no_encryption, log)
    except (PlatformError, IdpError, KeyRingError) as error:
        log.error("%s", error)
        return 2
    settings = temporal.settings(args, platform.temporal)
    try:
        client = await temporal.connect(settings)
    except temporal.ConnectError as error:
        log.error("%s", error)
        return 1
    bridge_settings = BridgeSettings(
        task_queue=settings.task_queue,
        namespace=settings.namespace,
        ui_url=platform.port.ui_url or settings.ui_url,
        secret=client_id_and_secret[1],
        window=platform.port.webhook_window,
        destinations=tuple(d.name for d in platform.destinations),
        capabilities={name: settings_of(c, platform) for name, c in by_name().items()},
    )
    async with client_from_config(platform.port) as port:
        bridge = Bridge(client, port, bridge_settings)
        server = uvicorn.Server(
            uvicorn.Config(
                bridge.app(),
                host=args.host,
                port=args.port,
                log_level="info",
                server_header=False,
                proxy_headers=False,
            )
        )
        log.info(
            "Port bridge on http://%s:%d%s → task queue %r on %s (namespace %s); Port at %s",
            args.host,
            args.port,
            WEBHOOK_PATH,
            settings.task_queue,
            settings.address,
            settings.namespace,
            platform.port.api_url,
        )
        await server.serve()
    return 0 if server.started else 1


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    temporal.exit_now(asyncio.run(serve(parse_args(argv))))


if __name__ == "__main__":
    main()
