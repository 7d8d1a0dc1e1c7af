"""The HTTP face of the Port emulator: Port's `/v1` routes and an `/_emulator` admin API.

Every `/v1` route passes through one wrapper that counts the call, injects the configured
faults, checks the bearer token and turns `ApiError` into `{ok: false, error, message}`. Faults
are latency, spikes and a share of 5xx and 429 answers drawn call by call (emulators/faults.py,
as the Synadia emulator's), and an outage: every call answering 503, or 429 with Port's
rate-limit headers, for a number of calls or seconds. Injected failures are answered before the
handler runs, so a failed call changed nothing.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from emulators.faults import FaultDice, RandomFaults
from emulators.port.store import ApiError
from emulators.port.webhooks import MODES, TemplateError

if TYPE_CHECKING:
    from emulators.port.emulator import PortEmulator

Handler = Callable[[Request], Awaitable[Response]]
RATE_LIMIT_PERIOD = 60


class Faults(RandomFaults):
    """Latency and a share of failing calls (RandomFaults), and an outage, to inject into `/v1`
    calls (admin routes are never affected). With neither `calls` nor `seconds`, the outage
    lasts until cleared; when it ends, the latency and the failure rates stay."""

    status: int | None = Field(None, description="The outage's answer: 429, or a 5xx; None: none.")
    calls: int | None = Field(None, ge=1, description="Answer this many calls, then heal.")
    seconds: float | None = Field(None, gt=0, description="Answer for this long, then heal.")
    ratelimit_reset: int = Field(1, ge=0, description="x-ratelimit-reset on 429s.")
    retry_after: int | None = Field(None, ge=0, description="Retry-After, if any.")
    include_token: bool = Field(True, description="The token route fails too (either way).")

    @field_validator("status")
    @classmethod
    def _failure_status(cls, value: int | None) -> int | None:
        if value is not None and value != 429 and not 500 <= value <= 599:
            raise ValueError("status must be 429 or a 5xx")
        return value


class Counters:
    """Calls per route ('POST /v1/actions/runs/{run_id}/logs') and their answers."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()

    def snapshot(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "statuses": dict(self.statuses),
            "injected": dict(self.injected),
        }


def ok(body: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse({"ok": True, **body}, status_code=status)


def error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"ok": False, "error": code, "message": message}, status_code=status, headers=headers
    )


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise ApiError(400, "invalid_json", "The request body is not valid JSON") from None


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "false").lower() == "true"


class PortApp:
    def __init__(self, emulator: PortEmulator) -> None:
        self.emu = emulator
        self.state = emulator.state
        self.counters = Counters()
        self.faults = Faults()
        self._dice = FaultDice(self.faults)
        self._fault_calls_left: int | None = None
        self._fault_until: float | None = None

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults
        self._dice = FaultDice(faults)
        self._fault_calls_left = faults.calls
        self._fault_until = time.monotonic() + faults.seconds if faults.seconds else None

    # -- the common wrapper

    def _end_outage(self) -> None:
        # Not set_faults: that would also reseed the dice of the faults that stay.
        healed = {"status": None, "calls": None, "seconds": None}
        self.faults = self.faults.model_copy(update=healed)
        self._fault_calls_left = self._fault_until = None

    def _outage(self) -> int | None:
        """The outage's status for this call, or None when there is none (any more)."""
        if self.faults.status is None:
            return None
        if self._fault_until is not None and time.monotonic() >= self._fault_until:
            self._end_outage()
            return None
        if self._fault_calls_left is not None:
            if self._fault_calls_left <= 0:
                self._end_outage()
                return None
            self._fault_calls_left -= 1
        return self.faults.status

    def _injected(self, route: str) -> Response | None:
        faults = self.faults
        if route.endswith("access_token") and not faults.include_token:
            return None
        status = self._outage() or self._dice.failure()
        if status is None:
            return None
        self.counters.injected[f"{route} {status}"] += 1
        headers: dict[str, str] = {}
        if faults.retry_after is not None:
            headers["retry-after"] = str(faults.retry_after)
        if status == 429:
            headers |= {
                "x-ratelimit-limit": "1000",
                "x-ratelimit-period": str(RATE_LIMIT_PERIOD),
                "x-ratelimit-remaining": "0",
                "x-ratelimit-reset": str(faults.ratelimit_reset),
            }
            return error(429, "rate_limit", "Too many requests, slow down", headers)
        return error(status, "internal_error", "An internal error occurred", headers)

    def api(self, method: str, template: str, handler: Handler, *, auth: bool = True) -> Route:
        route = f"{method} {template}"

        async def endpoint(request: Request) -> Response:
            self.counters.calls[route] += 1
            await self._dice.delay(route, self.counters.injected)
            response = self._injected(route)
            if response is None:
                try:
                    if auth:
                        self.state.check_token(request.headers.get("authorization", ""))
                    response = await handler(request)
                except ApiError as exc:
                    response = error(exc.status, exc.error, exc.message)
            self.counters.statuses[f"{route} {response.status_code}"] += 1
            self.emu.notify()
            return response

        return Route(template, endpoint, methods=[method])

    # -- auth

    async def access_token(self, request: Request) -> Response:
        return ok(self.state.issue_token(await _json_body(request)))

    # -- runs

    async def get_run(self, request: Request) -> Response:
        return ok({"run": self.state.run(request.path_params["run_id"]).view()})

    async def patch_run(self, request: Request) -> Response:
        run = self.state.patch_run(request.path_params["run_id"], await _json_body(request))
        return ok({"run": run.view()})

    async def add_log(self, request: Request) -> Response:
        log = self.state.add_log(request.path_params["run_id"], await _json_body(request))
        body = {
            "message": log.message,
            "terminationStatus": log.termination_status,
            "statusLabel": log.status_label,
            "createdAt": log.created_at,
        }
        return ok({"runLog": body}, 201)

    async def list_logs(self, request: Request) -> Response:
        run = self.state.run(request.path_params["run_id"])
        logs = [
            {
                "message": log.message,
                "terminationStatus": log.termination_status,
                "statusLabel": log.status_label,
                "createdAt": log.created_at,
            }
            for log in run.logs
        ]
        return ok({"runLogs": logs})

    # -- blueprints, actions, entities

    async def create_blueprint(self, request: Request) -> Response:
        return ok({"blueprint": self.state.create_blueprint(await _json_body(request))}, 201)

    async def get_blueprint(self, request: Request) -> Response:
        return ok({"blueprint": self.state.blueprint(request.path_params["identifier"])})

    async def put_blueprint(self, request: Request) -> Response:
        body = await _json_body(request)
        blueprint = self.state.replace_blueprint(request.path_params["identifier"], body)
        return ok({"blueprint": blueprint})

    async def create_action(self, request: Request) -> Response:
        return ok({"action": self.state.create_action(await _json_body(request))}, 201)

    async def get_action(self, request: Request) -> Response:
        return ok({"action": self.state.action(request.path_params["identifier"])})

    async def put_action(self, request: Request) -> Response:
        body = await _json_body(request)
        action = self.state.replace_action(request.path_params["identifier"], body)
        return ok({"action": action})

    async def upsert_entity(self, request: Request) -> Response:
        entity, created = self.state.upsert_entity(
            request.path_params["blueprint"],
            await _json_body(request),
            upsert=_flag(request, "upsert"),
            merge=_flag(request, "merge"),
            run_id=request.query_params.get("run_id"),
        )
        return ok({"entity": entity}, 201 if created else 200)

    async def get_entity(self, request: Request) -> Response:
        params = request.path_params
        return ok({"entity": self.state.entity(params["blueprint"], params["entity"])})

    async def list_entities(self, request: Request) -> Response:
        return ok({"entities": self.state.list_entities(request.path_params["blueprint"])})

    # -- admin API (no auth, no faults: it is the test's and the developer's handle)

    async def admin_info(self, request: Request) -> Response:
        return JSONResponse(self.emu.info())

    async def admin_counters(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.counters = Counters()
        return JSONResponse(self.counters.snapshot())

    async def admin_faults(self, request: Request) -> Response:
        if request.method == "PUT":
            try:
                self.set_faults(Faults.model_validate(await request.json()))
            except (ValidationError, json.JSONDecodeError) as exc:
                return error(400, "invalid_request", f"invalid faults: {exc}")
        elif request.method == "DELETE":
            self.set_faults(Faults())
        return JSONResponse(self.faults.model_dump())

    async def admin_expire_tokens(self, request: Request) -> Response:
        return JSONResponse({"expired": self.state.expire_tokens()})

    async def admin_state(self, request: Request) -> Response:
        return JSONResponse(
            {
                "runs": {run_id: run.model_dump() for run_id, run in self.state.runs.items()},
                "entities": list(self.state.entities.values()),
                "blueprints": sorted(self.state.blueprints),
                "actions": sorted(self.state.actions),
            }
        )

    async def admin_invoke(self, request: Request) -> Response:
        """Press an action's button: `{inputs, entity, user, mode}` → the run and the answer."""
        try:
            body = await _json_body(request)
            mode = body.get("mode", "signed")
            if mode not in MODES:
                raise ApiError(400, "invalid_request", f"mode must be one of {', '.join(MODES)}")
            invocation = await self.emu.invoke(
                request.path_params["identifier"],
                body.get("inputs") or {},
                entity=body.get("entity"),
                user=body.get("user") or self.emu.default_user,
                mode=mode,
            )
        except ApiError as exc:
            return error(exc.status, exc.error, exc.message)
        except TemplateError as exc:
            return error(422, "invalid_request", str(exc))
        return JSONResponse(
            {
                "runId": invocation.run_id,
                "webhookStatus": invocation.status_code,
                "webhookResponse": invocation.response,
            }
        )

    async def admin_create_run(self, request: Request) -> Response:
        """A run as Port opens it on a button press, without sending the webhook (for senders
        that sign and time their own requests, such as the benchmark)."""
        try:
            body = await _json_body(request)
            action = body.get("action")
            if not isinstance(action, str) or not action:
                raise ApiError(400, "invalid_request", "action is required")
            run = self.emu.create_run(action, body.get("inputs"), body.get("entity"))
        except ApiError as exc:
            return error(exc.status, exc.error, exc.message)
        return JSONResponse({"runId": run.id})

    async def admin_redeliver(self, request: Request) -> Response:
        try:
            invocation = await self.emu.redeliver(request.path_params["run_id"])
        except ApiError as exc:
            return error(exc.status, exc.error, exc.message)
        return JSONResponse(
            {"webhookStatus": invocation.status_code, "webhookResponse": invocation.response}
        )

    def build(self) -> Starlette:
        run = "/v1/actions/runs/{run_id}"
        entities = "/v1/blueprints/{blueprint}/entities"
        routes = [
            self.api("POST", "/v1/auth/access_token", self.access_token, auth=False),
            self.api("GET", run, self.get_run),
            self.api("PATCH", run, self.patch_run),
            self.api("POST", f"{run}/logs", self.add_log),
            self.api("GET", f"{run}/logs", self.list_logs),
            self.api("POST", "/v1/blueprints", self.create_blueprint),
            self.api("GET", "/v1/blueprints/{identifier}", self.get_blueprint),
            self.api("PUT", "/v1/blueprints/{identifier}", self.put_blueprint),
            self.api("POST", entities, self.upsert_entity),
            self.api("GET", entities, self.list_entities),
            self.api("GET", entities + "/{entity:path}", self.get_entity),
            self.api("POST", "/v1/actions", self.create_action),
            self.api("GET", "/v1/actions/{identifier}", self.get_action),
            self.api("PUT", "/v1/actions/{identifier}", self.put_action),
            Route("/_emulator/info", self.admin_info, methods=["GET"]),
            Route("/_emulator/state", self.admin_state, methods=["GET"]),
            Route("/_emulator/counters", self.admin_counters, methods=["GET", "DELETE"]),
            Route("/_emulator/faults", self.admin_faults, methods=["GET", "PUT", "DELETE"]),
            Route("/_emulator/tokens/expire", self.admin_expire_tokens, methods=["POST"]),
            Route("/_emulator/actions/{identifier}/runs", self.admin_invoke, methods=["POST"]),
            Route("/_emulator/runs", self.admin_create_run, methods=["POST"]),
            Route("/_emulator/runs/{run_id}/redeliver", self.admin_redeliver, methods=["POST"]),
        ]
        return Starlette(routes=routes)
