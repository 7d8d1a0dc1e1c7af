"""idp-port-bridge: Port.io self-service actions in, workflow messages out, reports back.

    PORT_CLIENT_ID=... PORT_CLIENT_SECRET=... IDP_CODEC_KEYS=... \\
        idp-port-bridge --platform platform.yaml [--host 127.0.0.1] [--port 8235]

`POST /port/webhook` takes the body the actions under starter/port/actions send (see their README):
`{action, runId, inputs, entity, triggeredBy}`. The signature (x-port-timestamp,
x-port-signature) is checked on the raw body first; then the action becomes update-with-start
`apply` (create, update) or the update of the same name (reconcile, rotate credentials, pause,
resume, delete), with the Port run id as request id, and PortRunWorkflow (`port-run/<run id>`)
is started to report the outcome. The answer is 202 as soon as Temporal has accepted both.

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
from starter import operations, temporal
from workflows.messages import RotateRequest, SignalRequest, WorkloadStatus
from workflows.portrun import PortRunInput, PortRunWorkflow

log = logging.getLogger("idp.port_bridge")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

WEBHOOK_PATH = "/port/webhook"
DEFAULT_PORT = 8235
MAX_BODY_BYTES = 1024 * 1024  # Port's own request limit
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
            answer = await self._accept(body)
        except Rejected as rejected:
            log.warning("run %s refused (%d): %s", run_id or "-", rejected.status, rejected.message)
            task = BackgroundTask(self._report_rejection, run_id, rejected) if run_id else None
            return _error(rejected.status, "rejected", rejected.message, task)
        except Exception:
            # A bug here must still end the run, or Port shows it in progress forever.
            log.exception("run %s: the bridge failed", run_id or "-")
            failed = Rejected(500, "the bridge failed on this request; see its log")
            task = BackgroundTask(self._report_rejection, run_id, failed) if run_id else None
            return _error(500, "internal_error", failed.message, task)
        return JSONResponse({"ok": True, **answer}, status_code=202)

    async def _accept(self, body: WebhookBody) -> dict[str, Any]:
        operation = ACTIONS.get(body.action)
        if operation is None:
            raise Rejected(
                400,
                f"unknown action {body.action!r}; this bridge runs {', '.join(sorted(ACTIONS))}",
            )
        report_id = ids.port_run_id(body.run_id)
        # Checked first: re-applying a create whose workload was deleted since would bring it
        # back (update-with-start starts a new workflow), so an accepted run is never redone.
        if await self._exists(report_id):
            log.info("run %s (%s): accepted before, nothing to do", body.run_id, body.action)
            return {"runId": body.run_id, "duplicate": True}
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
        return {
            "runId": body.run_id,
            "workflowId": accepted.workflow_id,
            "reportWorkflowId": report_id,
            "duplicate": duplicate,
        }

    async def _apply(self, body: WebhookBody, operation: str) -> Accepted:
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

    async def _report_rejection(self, run_id: str, rejected: Rejected) -> None:
        try:
            await self.port.finish_run(
                run_id,
                "FAILURE",
                f"Rejected: {rejected.message}",
                status_label="Rejected",
                summary=rejected.message,
            )
        except IdpError as error:
            log.warning("run %s: could not report the rejection to Port: %s", run_id, error)

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
