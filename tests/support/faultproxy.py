"""A fault-injecting reverse proxy in front of moto's server, so AWS misbehaves like AWS.

moto answers every call at once and never fails by itself. Pointing the platform's
`aws.endpointUrl` at this proxy instead adds, per call and from a seeded RNG: 503
`ServiceUnavailable`, 429 throttling answers, latency spikes, and a permanent 403 `AccessDenied`
for chosen operations. Error bodies have the shape of each protocol's real answers (JSON for ECR,
XML for IAM's query protocol), so botocore's own retries and idp's error mapping see what they
would see from AWS. Everything else is forwarded to moto unchanged.

    async with FaultProxy.running(aws_url) as proxy:
        proxy.set_faults(AwsFaults(error_rate=0.2, throttle_rate=0.1, seed=7))
        ... boto3 with endpoint_url=proxy.url ...
        proxy.calls["iam:CreateRole"]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import socket
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from support.moto import MOTO_ACCOUNT_ID

_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")
# Per-hop headers and those httpx recomputes: forwarding them would corrupt the exchange.
_HOP = {"host", "connection", "content-length", "transfer-encoding", "keep-alive", "upgrade"}
# Error codes per protocol: JSON services (ECR) and the query protocol (IAM) name them differently.
_CODES = {
    503: ("ServiceUnavailableException", "ServiceUnavailable", "Service is unavailable"),
    429: ("ThrottlingException", "Throttling", "Rate exceeded"),
    403: (
        "AccessDeniedException",
        "AccessDenied",
        "User: {user} is not authorized to perform: {op}",
    ),
}


@dataclass(frozen=True)
class AwsFaults:
    error_rate: float = 0.0  # share of calls answered 503
    throttle_rate: float = 0.0  # share of calls answered 429 with a throttling error code
    spike_rate: float = 0.0  # share of calls delayed by spike_ms before they are forwarded
    spike_ms: int = 2000
    deny: frozenset[str] = frozenset()  # operations ("iam:CreateRole") always answered 403
    seed: int | None = None


class FaultProxy:
    """Counts calls per operation ("ecr:CreateRepository") and what it injected into them."""

    def __init__(self, upstream: str, host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self.host = host
        self.port = 0
        self.calls: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.faults = AwsFaults()
        self._rng = random.Random()
        self._http = httpx.AsyncClient(base_url=upstream, timeout=60.0)
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def set_faults(self, faults: AwsFaults) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed)

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        service, operation = _operation(request, body)
        name = f"{service}:{operation}"
        self.calls[name] += 1
        faults = self.faults
        if faults.spike_rate and self._rng.random() < faults.spike_rate:
            self.injected[f"{name} spike"] += 1
            await asyncio.sleep(faults.spike_ms / 1000)
        status = None
        if name in faults.deny:
            status = 403
        elif faults.throttle_rate and self._rng.random() < faults.throttle_rate:
            status = 429
        elif faults.error_rate and self._rng.random() < faults.error_rate:
            status = 503
        if status is not None:
            self.injected[f"{name} {status}"] += 1
            return _error(status, name, json_protocol="x-amz-target" in request.headers)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        answer = await self._http.request(
            request.method,
            request.url.path,
            params=request.url.query,
            headers=headers,
            content=body,
        )
        headers = {
            k: v for k, v in answer.headers.items() if k.lower() not in _HOP | {"content-encoding"}
        }
        return Response(answer.content, status_code=answer.status_code, headers=headers)

    async def start(self) -> None:
        # Binding first and handing uvicorn the socket makes port 0 race-free.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.host, self.port))
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST"])])
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = _QuietServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the fault proxy stopped during startup")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        await self._http.aclose()

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, upstream: str) -> AsyncIterator[FaultProxy]:
        proxy = cls(upstream)
        await proxy.start()
        try:
            yield proxy
        finally:
            await proxy.stop()


class _QuietServer(uvicorn.Server):
    # The test runner owns SIGINT/SIGTERM.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _operation(request: Request, body: bytes) -> tuple[str, str]:
    """("iam", "CreateRole") from the signature's scope and the JSON target or query action."""
    scope = _SCOPE.search(request.headers.get("authorization", ""))
    service = scope.group(1) if scope else "unknown"
    target = request.headers.get("x-amz-target")
    if target:
        return service, target.rsplit(".", 1)[-1]
    action = parse_qs(body.decode(errors="replace")).get("Action") or [
        request.query_params.get("Action", "unknown")
    ]
    return service, action[0]


def _error(status: int, name: str, *, json_protocol: bool) -> Response:
    json_code, query_code, message = _CODES[status]
    message = message.format(op=name, user=f"arn:aws:iam::{MOTO_ACCOUNT_ID}:user/idp-worker")
    request_id = str(uuid.uuid4())
    if json_protocol:
        body = json.dumps({"__type": json_code, "message": message})
        headers = {"x-amzn-RequestId": request_id}
        return Response(body, status, headers, media_type="application/x-amz-json-1.1")
    kind = "Sender" if status < 500 else "Receiver"
    body = (
        "<ErrorResponse><Error>"
        f"<Type>{kind}</Type><Code>{query_code}</Code><Message>{message}</Message>"
        f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>"
    )
    return Response(body, status, {"x-amzn-RequestId": request_id}, media_type="text/xml")
