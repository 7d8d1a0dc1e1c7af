"""The HTTP face of the emulator: the control-plane routes under /api/core/beta and /_emulator.

Every API route passes through one wrapper that counts the call, injects the configured latency
and failures, checks the bearer token and turns `ApiError` into a JSON error. Injected failures
happen before the handler runs unless `fail_after_commit` is set, which models the nastier case
of a server that did the work and then answered 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from emulators.faults import FaultDice, RandomFaults
from emulators.synadia import views
from emulators.synadia.bodies import ApiError
from emulators.synadia.controlplane import Behaviour

if TYPE_CHECKING:
    from emulators.synadia.emulator import SynadiaEmulator

API_PREFIX = "/api/core/beta"

Handler = Callable[[Request], Awaitable[Response]]


class Faults(RandomFaults):
    """Failures and slowness to inject into API calls (admin routes are never affected)."""

    retry_after: int | None = Field(None, ge=0, description="Retry-After seconds on 429s.")
    fail_next: list[int] = Field(
        [], description="Statuses answered, in order, to the next matching calls."
    )
    fail_match: str | None = Field(
        None, description="Only calls whose 'METHOD /route' contains this take fail_next."
    )
    fail_after_commit: bool = Field(
        False, description="fail_next answers after the handler has made its change."
    )
    hold_match: str | None = Field(
        None,
        description="Calls whose 'METHOD /route' contains this are answered hold_ms after the "
        "handler made its change, or when the faults are next set: a window in which the "
        "change exists but the caller has not heard of it yet (to kill the caller in).",
    )
    hold_ms: int = Field(0, ge=0)


class Counters:
    """Calls per route ('POST /nats-users/{userId}/creds'), their answers, and the bytes those
    answers carried: a listing is one call whatever it holds, so only its size shows what it
    costs. And the connections the calls came on (each client address seen), which tells a
    client that keeps its connections from one that opens one per call."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.peers: set[tuple[str, int]] = set()

    def snapshot(self, creds_issued: dict[str, int]) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "statuses": dict(self.statuses),
            "injected": dict(self.injected),
            "bytes": dict(self.bytes),
            "connections": len(self.peers),
            "creds_issued": dict(creds_issued),
        }


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": status, "error": message}, status_code=status, headers=headers)


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise ApiError(400, "invalid request body: not JSON") from None


class EmulatorApp:
    """Routes bound to one emulator instance."""

    def __init__(self, emulator: SynadiaEmulator) -> None:
        self.emu = emulator
        self.plane = emulator.plane
        self.counters = Counters()
        self.faults = Faults()
        self.routes: list[str] = []
        self._dice = FaultDice(self.faults)
        self._release = asyncio.Event()

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults
        self._dice = FaultDice(faults)
        # Held answers go out once the faults that held them are gone.
        self._release.set()
        self._release = asyncio.Event()

    # -- fault injection and the common wrapper

    def _take_injected(self, route: str) -> tuple[int | None, bool]:
        """(status to answer instead, whether to run the handler first)."""
        faults = self.faults
        if faults.fail_next and (faults.fail_match is None or faults.fail_match in route):
            return faults.fail_next.pop(0), faults.fail_after_commit
        return self._dice.failure(), False

    def _injected_response(self, route: str, status: int) -> Response:
        self.counters.injected[f"{route} {status}"] += 1
        headers = None
        if status == 429 and self.faults.retry_after is not None:
            headers = {"Retry-After": str(self.faults.retry_after)}
        message = "rate limit exceeded" if status == 429 else "injected server error"
        return _error(status, message, headers)

    def api(self, method: str, template: str, handler: Handler) -> Route:
        route = f"{method} {template}"
        self.routes.append(route)

        async def endpoint(request: Request) -> Response:
            self.counters.calls[route] += 1
            if request.client is not None:
                self.counters.peers.add((request.client.host, request.client.port))
            response = await self._run(route, request, handler)
            self.counters.statuses[f"{route} {response.status_code}"] += 1
            self.counters.bytes[route] += len(response.body)
            return response

        return Route(template, endpoint, methods=[method])

    async def _run(self, route: str, request: Request, handler: Handler) -> Response:
        await self._dice.delay(route, self.counters.injected)
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token, self.emu.token):
            return _error(401, "missing or invalid bearer token")
        injected, after_commit = self._take_injected(route)
        if injected is not None and not after_commit:
            return self._injected_response(route, injected)
        try:
            response = await handler(request)
        except ApiError as exc:
            response = _error(exc.status, exc.message)
        if self.plane.take_accounts_dirty():
            try:
                await self.emu.push_accounts()
            except RuntimeError as exc:
                return _error(500, f"the account update did not reach nats-server: {exc}")
        if injected is not None:
            return self._injected_response(route, injected)
        if self.faults.hold_match is not None and self.faults.hold_match in route:
            self.counters.injected[f"{route} hold"] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), self.faults.hold_ms / 1000)
        return response

    # -- teams, systems, accounts

    async def list_teams(self, request: Request) -> Response:
        return JSONResponse(views.items([views.team(self.plane)]))

    async def get_team(self, request: Request) -> Response:
        self.plane.require_team(request.path_params["teamId"])
        return JSONResponse(views.team(self.plane))

    async def list_systems(self, request: Request) -> Response:
        self.plane.require_team(request.path_params["teamId"])
        return JSONResponse(views.items([views.system(self.plane)]))

    async def get_system(self, request: Request) -> Response:
        self.plane.require_system(request.path_params["systemId"])
        return JSONResponse(views.system(self.plane))

    async def list_accounts(self, request: Request) -> Response:
        accounts = self.plane.accounts(request.path_params["systemId"])
        return JSONResponse(views.items([views.account(self.plane, a) for a in accounts]))

    async def get_account(self, request: Request) -> Response:
        account = self.plane.account(request.path_params["accountId"])
        return JSONResponse(views.account(self.plane, account))

    async def list_sk_groups(self, request: Request) -> Response:
        account = self.plane.account(request.path_params["accountId"])
        return JSONResponse(views.items([views.sk_group(g) for g in account.sk_groups]))

    # -- NATS users

    async def list_users(self, request: Request) -> Response:
        users = self.plane.users(request.path_params["accountId"])
        return JSONResponse(views.items([views.user(self.plane, u) for u in users]))

    async def create_user(self, request: Request) -> Response:
        account_id = request.path_params["accountId"]
        self.plane.account(account_id)
        user = self.plane.create_user(account_id, await _json_body(request))
        return JSONResponse(views.user(self.plane, user), status_code=201)

    async def get_user(self, request: Request) -> Response:
        user = self.plane.user(request.path_params["userId"])
        return JSONResponse(views.user(self.plane, user))

    async def patch_user(self, request: Request) -> Response:
        user_id = request.path_params["userId"]
        self.plane.user(user_id)
        user = self.plane.patch_user(user_id, await _json_body(request))
        return JSONResponse(views.user(self.plane, user))

    async def delete_user(self, request: Request) -> Response:
        self.plane.delete_user(request.path_params["userId"])
        return Response(status_code=204)

    async def user_creds(self, request: Request) -> Response:
        creds = self.plane.issue_creds(request.path_params["userId"])
        return PlainTextResponse(creds)

    async def rotate_user(self, request: Request) -> Response:
        user = self.plane.rotate_user(request.path_params["userId"])
        return JSONResponse(views.user(self.plane, user))

    async def list_issuances(self, request: Request) -> Response:
        user = self.plane.user(request.path_params["userId"])
        return JSONResponse(
            views.items([views.issuance(self.plane, user, i) for i in user.issuances])
        )

    # -- revocations

    async def get_revocation(self, request: Request) -> Response:
        account_id, nkey = request.path_params["accountId"], request.path_params["userNkeyPublic"]
        record = self.plane.revocation(account_id, nkey)
        return JSONResponse(views.revocation(account_id, nkey, record))

    async def put_revocation(self, request: Request) -> Response:
        account_id, nkey = request.path_params["accountId"], request.path_params["userNkeyPublic"]
        self.plane.account(account_id)
        created, _ = self.plane.put_revocation(account_id, nkey, await _json_body(request))
        record = self.plane.revocation(account_id, nkey)
        body = views.revocation(account_id, nkey, record)
        return JSONResponse(body, status_code=201 if created else 200)

    async def delete_revocation(self, request: Request) -> Response:
        account_id, nkey = request.path_params["accountId"], request.path_params["userNkeyPublic"]
        self.plane.delete_revocation(account_id, nkey)
        return Response(status_code=204)

    # -- admin API for tests

    async def admin_info(self, request: Request) -> Response:
        return JSONResponse(self.emu.info())

    async def admin_counters(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.reset_counters()
        return JSONResponse(self.counters.snapshot(self.plane.creds_issued))

    def reset_counters(self) -> None:
        self.counters = Counters()
        self.plane.creds_issued.clear()

    async def admin_faults(self, request: Request) -> Response:
        if request.method == "PUT":
            try:
                self.set_faults(Faults.model_validate(await request.json()))
            except (ValidationError, json.JSONDecodeError) as exc:
                return _error(400, f"invalid faults: {exc}")
        return JSONResponse(self.faults.model_dump())

    async def admin_behaviour(self, request: Request) -> Response:
        if request.method == "PUT":
            try:
                self.plane.behaviour = Behaviour.model_validate(await request.json())
            except (ValidationError, json.JSONDecodeError) as exc:
                return _error(400, f"invalid behaviour: {exc}")
        return JSONResponse(self.plane.behaviour.model_dump())

    # -- assembly

    def build(self) -> Starlette:
        api = [
            self.api("GET", "/teams", self.list_teams),
            self.api("GET", "/teams/{teamId}", self.get_team),
            self.api("GET", "/teams/{teamId}/systems", self.list_systems),
            self.api("GET", "/systems/{systemId}", self.get_system),
            self.api("GET", "/systems/{systemId}/accounts", self.list_accounts),
            self.api("GET", "/accounts/{accountId}", self.get_account),
            self.api("GET", "/accounts/{accountId}/account-sk-groups", self.list_sk_groups),
            self.api("GET", "/accounts/{accountId}/nats-users", self.list_users),
            self.api("POST", "/accounts/{accountId}/nats-users", self.create_user),
            self.api("GET", "/nats-users/{userId}", self.get_user),
            self.api("PATCH", "/nats-users/{userId}", self.patch_user),
            self.api("DELETE", "/nats-users/{userId}", self.delete_user),
            self.api("POST", "/nats-users/{userId}/creds", self.user_creds),
            self.api("POST", "/nats-users/{userId}/rotate", self.rotate_user),
            self.api("GET", "/nats-users/{userId}/issuances", self.list_issuances),
        ]
        revocation = "/accounts/{accountId}/nats-user-revocations/{userNkeyPublic}"
        api += [
            self.api("GET", revocation, self.get_revocation),
            self.api("PUT", revocation, self.put_revocation),
            self.api("DELETE", revocation, self.delete_revocation),
        ]
        admin = [
            Route("/info", self.admin_info, methods=["GET"]),
            Route("/counters", self.admin_counters, methods=["GET", "DELETE"]),
            Route("/faults", self.admin_faults, methods=["GET", "PUT"]),
            Route("/behaviour", self.admin_behaviour, methods=["GET", "PUT"]),
        ]
        return Starlette(routes=[Mount(API_PREFIX, routes=api), Mount("/_emulator", routes=admin)])
