"""PortEmulator: the emulated Port API served over HTTP, plus the webhooks Port would send.

Run it in-process for tests (`async with PortEmulator.running() as port:`) or as a process
(`python -m emulators.port --port N`). State lives in memory: a restarted emulator starts empty,
and `idpctl port install` puts the blueprints and actions back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import httpx

from emulators.port.app import Faults, PortApp
from emulators.port.store import ApiError, PortState, Run
from emulators.port.webhooks import (
    Delivery,
    Invocation,
    Mode,
    invocation_context,
    prepare,
    render,
    send,
)
from emulators.serving import AsgiServer

T = TypeVar("T")

# Fixed credentials of a local test double, not secrets; `idpctl dev` generates its own.
DEFAULT_CLIENT_ID = "emulator-client"
DEFAULT_CLIENT_SECRET = "emulator-client-secret"
DEFAULT_TOKEN_TTL = 3 * 3600  # what Port hands out
DEFAULT_USER = "developer@example.com"


class PortEmulator:
    """The emulated Port organisation. Faults, tokens and records can be changed and read here
    or through `/_emulator/...`."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        token_ttl: float = DEFAULT_TOKEN_TTL,
        default_user: str = DEFAULT_USER,
    ) -> None:
        self.state = PortState(client_id, client_secret, token_ttl)
        self.app = PortApp(self)
        self.server = AsgiServer(self.app.build(), host, port)
        self.default_user = default_user
        self._deliveries: dict[str, Delivery] = {}
        self._http: httpx.AsyncClient | None = None
        self._changed: asyncio.Event | None = None

    @property
    def url(self) -> str:
        """The base URL a Port client is configured with (it appends /v1/...)."""
        return self.server.url

    @property
    def client_id(self) -> str:
        return self.state.client_id

    @property
    def client_secret(self) -> str:
        return self.state.client_secret

    def info(self) -> dict[str, Any]:
        return {"api_url": self.url, "client_id": self.client_id}

    # -- knobs and counters

    def set_faults(self, **settings: Any) -> Faults:
        """Replace the faults (unnamed ones go back to their defaults): an outage, e.g.
        `set_faults(status=503)` or `set_faults(status=429, calls=3)`, or flakiness, e.g.
        `set_faults(error_rate=0.2, throttle_rate=0.1, latency_ms=50, seed=7)`."""
        faults = Faults.model_validate(settings)
        self.app.set_faults(faults)
        return faults

    def clear_faults(self) -> None:
        self.app.set_faults(Faults())

    def expire_tokens(self) -> None:
        """Every token handed out so far stops working now."""
        self.state.expire_tokens()

    @property
    def issued_tokens(self) -> list[str]:
        return list(self.state.issued_tokens)

    def counters(self) -> dict[str, Any]:
        return self.app.counters.snapshot()

    def calls(self, route: str) -> int:
        """Calls to one route, named like 'POST /v1/actions/runs/{run_id}/logs'."""
        return self.app.counters.calls[route]

    # -- records

    def run(self, run_id: str) -> Run | None:
        return self.state.runs.get(run_id)

    def entity(self, blueprint: str, identifier: str) -> dict[str, Any] | None:
        return self.state.entities.get((blueprint, identifier))

    def notify(self) -> None:
        """Wake everyone waiting in `until`: a call was answered or a run created."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def until(self, predicate: Callable[[], T], timeout: float = 30.0) -> T:
        """Wait until `predicate()` is truthy, checking after every call the emulator answers,
        and return its value."""
        async with asyncio.timeout(timeout):
            while not (value := predicate()):
                if self._changed is None:
                    self._changed = asyncio.Event()
                await self._changed.wait()
        return value

    # -- webhooks

    def create_run(
        self, action: str, inputs: dict[str, Any] | None = None, entity: str | None = None
    ) -> Run:
        run = self.state.create_run(action, inputs, entity)
        self.notify()
        return run

    async def invoke(
        self,
        action: str,
        inputs: dict[str, Any] | None = None,
        *,
        entity: str | None = None,
        user: str | None = None,
        mode: Mode = "signed",
    ) -> Invocation:
        """Run a self-service action as a user pressing its button would: a new run, the
        action's body template rendered, signed and POSTed to its webhook URL."""
        definition = self.state.action(action)
        trigger = definition["trigger"]
        record = None
        if trigger["operation"] != "CREATE":
            if entity is None:
                raise ApiError(422, "invalid_request", f"{action} runs on an entity; name one")
            record = self.state.entity(trigger["blueprintIdentifier"], entity)
        run = self.create_run(action, inputs, entity)
        context = invocation_context(
            definition, run.id, inputs or {}, record, user or self.default_user
        )
        body = render(definition["invocationMethod"].get("body"), context)
        url = definition["invocationMethod"]["url"]
        return await self.deliver(url, body, run_id=run.id, mode=mode)

    async def deliver(
        self, url: str, payload: Any, *, run_id: str | None = None, mode: Mode = "signed"
    ) -> Invocation:
        """POST `payload` (JSON-encoded unless bytes) signed as `mode` says; kept for replay."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        delivery = prepare(url, body, self.client_secret, mode)
        if run_id is not None:
            self._deliveries[run_id] = delivery
        return await send(self._client(), delivery, run_id)

    async def redeliver(self, run_id: str) -> Invocation:
        """Send a run's webhook again, byte for byte: what a replay attacker (or a Port retry)
        does."""
        delivery = self._deliveries.get(run_id)
        if delivery is None:
            raise ApiError(404, "not_found", f"No webhook was delivered for run {run_id!r}")
        return await send(self._client(), delivery, run_id)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=30.0)
        return self._http

    # -- lifecycle

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, **kwargs: Any) -> AsyncIterator[PortEmulator]:
        """Start on a free port of 127.0.0.1 and stop on exit."""
        emulator = cls(**kwargs)
        await emulator.start()
        try:
            yield emulator
        finally:
            await emulator.stop()
