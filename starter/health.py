"""The worker's Kubernetes probes: `GET /livez` and `GET /readyz` over plain HTTP.

    idp-worker --health-address 0.0.0.0:8080   (or IDP_HEALTH_ADDRESS)

`/livez` answers 200 while the worker has not stopped. It is served by the event loop the worker
polls and runs its activities on, so an answer at all shows that loop is not stuck.
`/readyz` answers 200 only while the worker polls and the Temporal server answers a health check,
else 503 with one line saying why. The server's answer is kept for a few seconds, so probes from
every kubelet cost at most one small gRPC call every few seconds.

Served with uvicorn and Starlette, as the codec server is, on the worker's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.worker import Worker

HEALTH_ADDRESS_ENV = "IDP_HEALTH_ADDRESS"
# Kubelets probe every 10 s by default; an answer a few seconds old is as good as a fresh one.
SERVER_CHECK_TTL = timedelta(seconds=5)
# Within Kubernetes' default probe timeout (1 s): a server this slow is as good as unreachable.
SERVER_CHECK_TIMEOUT = timedelta(seconds=0.8)


class HealthError(Exception):
    """The probes cannot be served where asked; the message says why."""


def parse_address(value: str) -> tuple[str, int]:
    """(host, port) from `HOST:PORT` (an IPv6 host in brackets)."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise HealthError(
            f"health address {value!r} is not HOST:PORT, e.g. 0.0.0.0:8080 or 127.0.0.1:8080 "
            f"(--health-address or {HEALTH_ADDRESS_ENV})"
        )
    return host, int(port)


def listen(address: tuple[str, int]) -> socket.socket:
    """A listening socket on `address`, bound before serving so that a taken port is one error
    sentence (uvicorn would exit the whole process from inside its task)."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server(address, family=family)
    except OSError as error:
        raise HealthError(
            f"cannot serve health probes on {host}:{port}: {error.strerror or error}"
        ) from None


class Probes:
    """What the probes read: the worker's state and the Temporal server's last health check."""

    def __init__(
        self,
        worker: Worker,
        client: Client,
        server_address: str,
        *,
        ttl: timedelta = SERVER_CHECK_TTL,
        timeout: timedelta = SERVER_CHECK_TIMEOUT,
    ) -> None:
        self.worker = worker
        self.client = client
        self.server_address = server_address
        self.ttl = ttl.total_seconds()
        self.timeout = timeout
        # Set when shutdown is asked for: the SDK says nothing until the pollers have stopped.
        self.stopping = False
        self._checked_at: float | None = None
        self._server_problem: str | None = None
        # Concurrent probes share one check instead of each sending their own.
        self._checking = asyncio.Lock()

    def live(self) -> str | None:
        """None while live, else why not."""
        return "the worker has stopped" if self.worker.is_shutdown else None

    async def ready(self) -> str | None:
        """None while ready, else why not."""
        if self.worker.is_shutdown:
            return "the worker has stopped"
        if self.stopping:
            return "the worker is shutting down"
        if not self.worker.is_running:
            return "the worker is not polling yet"
        return await self._server()

    async def _server(self) -> str | None:
        async with self._checking:
            now = asyncio.get_running_loop().time()
            if self._checked_at is None or now - self._checked_at >= self.ttl:
                self._server_problem = await self._check_server()
                self._checked_at = asyncio.get_running_loop().time()
            return self._server_problem

    async def _check_server(self) -> str | None:
        try:
            serving = await self.client.service_client.check_health(timeout=self.timeout)
        except RPCError as error:
            first_line = str(error).splitlines()[0] if str(error) else error.status.name
            return (
                f"the Temporal server at {self.server_address} does not answer a health check: "
                f"{first_line}"
            )
        if not serving:
            return f"the Temporal server at {self.server_address} reports it is not serving"
        return None


def app(probes: Probes) -> Starlette:
    async def livez(request: Request) -> PlainTextResponse:
        return _answer(probes.live())

    async def readyz(request: Request) -> PlainTextResponse:
        return _answer(await probes.ready())

    return Starlette(
        routes=[Route("/livez", livez, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])]
    )


def _answer(problem: str | None) -> PlainTextResponse:
    if problem is None:
        return PlainTextResponse("ok\n")
    return PlainTextResponse(f"{problem}\n", status_code=503)


class _Server(uvicorn.Server):
    """uvicorn without its signal handling: SIGTERM and Ctrl-C belong to the worker, whose
    graceful shutdown (running activities finish) must run. uvicorn would take them over with
    signal.signal and only stop itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving(probes: Probes, listener: socket.socket) -> AsyncIterator[None]:
    """Serve the probes on `listener` (from `listen`) for as long as the block runs."""
    server = _Server(
        uvicorn.Config(
            app(probes),
            lifespan="off",
            # The worker's logging stays as it is, and a probe every few seconds is not news.
            log_config=None,
            log_level="warning",
            access_log=False,
            server_header=False,
            proxy_headers=False,
        )
    )
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        yield
    finally:
        server.should_exit = True
        await task
