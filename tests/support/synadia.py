"""Test helpers for the Synadia client and emulator: an OpenAPI contract checker, a recording
HTTP transport, and NATS connections made with downloaded .creds files."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import yaml
from jsonschema import Draft7Validator
from nats.aio.client import Client as NatsClient
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7
from support.conformance import conformance_file

from emulators.synadia import SynadiaEmulator

SPEC_FILE = "synadia/control-plane-openapi.yaml"
_SPEC_URI = "urn:synadia-control-plane-openapi"


# ---------------------------------------------------------------- OpenAPI contract


def openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0 schemas are JSON Schema but for `nullable`; turn it into a null alternative.

    Wrapping in anyOf (rather than adding "null" to `type`) keeps it right for nullable schemas
    built from allOf/$ref, whose inner parts would still refuse null.
    """
    if isinstance(node, list):
        return [openapi_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: openapi_to_jsonschema(value) for key, value in node.items()}
    if converted.pop("nullable", False) is True:
        return {"anyOf": [{"type": "null"}, converted]}
    return converted


@dataclass
class Exchange:
    method: str
    path: str
    request_body: Any
    status: int
    content_type: str
    response_body: bytes


class OpenApiContract:
    """Checks requests and responses against the operations of the Synadia OpenAPI spec."""

    def __init__(self, spec_path: Path) -> None:
        spec = yaml.safe_load(spec_path.read_text())
        self.spec = openapi_to_jsonschema(spec)
        prefix = "/api"  # servers: url: "{baseUrl}/api"
        self._registry: Registry = Registry().with_resource(
            _SPEC_URI, Resource.from_contents(self.spec, default_specification=DRAFT7)
        )
        routes = []
        for template, operations in self.spec["paths"].items():
            pattern = re.sub(r"\{[^}]+\}", "[^/]+", prefix + template)
            routes.append((template.count("{"), re.compile(f"^{pattern}$"), template, operations))
        # A literal segment beats a parameter where two templates could match one path.
        self._routes = sorted(routes, key=lambda route: route[0])

    @classmethod
    def load(cls) -> OpenApiContract:
        """From the shared conformance data; skips the calling test when it is absent."""
        return cls(conformance_file(SPEC_FILE))

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]] | None:
        for _, pattern, template, operations in self._routes:
            if pattern.match(path) and method.lower() in operations:
                return template, operations[method.lower()]
        return None

    def _errors(self, schema: dict[str, Any], instance: Any) -> list[str]:
        if "$ref" in schema:
            schema = {"$ref": _SPEC_URI + schema["$ref"]}
        validator = Draft7Validator(schema, registry=self._registry)
        return [
            f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
            for error in validator.iter_errors(instance)
        ]

    def check_request(self, exchange: Exchange) -> list[str]:
        found = self.operation(exchange.method, exchange.path)
        if found is None:
            return [f"{exchange.method} {exchange.path} is not an operation of the spec"]
        template, operation = found
        body_spec = operation.get("requestBody")
        if body_spec is None:
            if exchange.request_body is not None:
                return [f"{exchange.method} {template} takes no request body"]
            return []
        if exchange.request_body is None:
            return [f"{exchange.method} {template} was sent without its request body"]
        schema = body_spec["content"]["application/json"]["schema"]
        where = f"request {exchange.method} {template}"
        return [f"{where}: {e}" for e in self._errors(schema, exchange.request_body)]

    def check_response(self, exchange: Exchange) -> list[str]:
        found = self.operation(exchange.method, exchange.path)
        if found is None:
            return [f"{exchange.method} {exchange.path} is not an operation of the spec"]
        template, operation = found
        where = f"response {exchange.status} to {exchange.method} {template}"
        documented = operation.get("responses", {}).get(str(exchange.status))
        if exchange.status >= 300:
            # The spec gives error answers no body schema, and 429/5xx are never listed.
            return []
        if documented is None:
            return [f"{where}: status not in the spec ({sorted(operation['responses'])})"]
        content = documented.get("content")
        if content is None:
            return [f"{where}: expected no body"] if exchange.response_body else []
        media = exchange.content_type.split(";")[0].strip()
        if media not in content:
            return [f"{where}: content type {media!r} not in {sorted(content)}"]
        if media == "application/json":
            instance = json.loads(exchange.response_body)
        else:
            instance = exchange.response_body.decode()
        return [f"{where}: {e}" for e in self._errors(content[media]["schema"], instance)]


class RecordingTransport(httpx.AsyncBaseTransport):
    """Passes requests on to the network and keeps a copy of each request and answer."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.exchanges: list[Exchange] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raw = request.content
        body = json.loads(raw) if raw else None
        response = await self._inner.handle_async_request(request)
        content = await response.aread()
        self.exchanges.append(
            Exchange(
                method=request.method,
                path=request.url.path,
                request_body=body,
                status=response.status_code,
                content_type=response.headers.get("content-type", ""),
                response_body=content,
            )
        )
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            content=content,
            request=request,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


# ---------------------------------------------------------------- platform files


def write_local_platform(
    path: Path, url: str, accounts: list[dict[str, Any]], default_account: str = "platform"
) -> Path:
    """A platform file whose synadia section is the local emulator's, listing `accounts`
    (`{"name": ..., "signingKeyGroups": [...]}`) as idpctl dev writes them."""
    platform = {
        "apiVersion": "idp.dev/v1alpha1",
        "kind": "Platform",
        "destinations": [
            {
                "name": "dev",
                "stateStore": {"url": str(path.parent / "state-store.git")},
                "defaultDelivery": "kubernetes",
            }
        ],
        "synadia": {
            "url": url,
            "system": "emulated-system",
            "defaultAccount": default_account,
            "local": {"accounts": accounts},
        },
    }
    path.write_text(yaml.safe_dump(platform, sort_keys=False))
    return path


# ---------------------------------------------------------------- NATS with .creds


@dataclass
class NatsProbe:
    """A NATS connection that remembers the errors the server sent and whether it closed."""

    nc: NatsClient
    errors: list[Exception] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for_error(self, text: str, timeout: float = 3.0) -> str:
        async with asyncio.timeout(timeout):
            while True:
                for error in self.errors:
                    if text.lower() in str(error).lower():
                        return str(error)
                await asyncio.sleep(0.02)

    async def close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.close()


def write_creds(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.creds"
    path.write_text(text)
    path.chmod(0o600)
    return path


async def connect_with_creds(url: str, creds: Path) -> NatsProbe:
    """Connect without reconnecting, so a revoked or expired user shows up as a closed client."""
    probe: NatsProbe | None = None
    pending: list[Exception] = []

    async def on_error(error: Exception) -> None:
        (probe.errors if probe else pending).append(error)

    async def on_closed() -> None:
        if probe:
            probe.closed.set()

    nc = await nats.connect(
        url,
        user_credentials=str(creds),
        allow_reconnect=False,
        connect_timeout=3,
        error_cb=on_error,
        closed_cb=on_closed,
    )
    probe = NatsProbe(nc=nc, errors=pending)
    return probe


async def connect_refusal(url: str, creds: Path) -> str:
    """The error with which the server refuses these creds; fails the test if it accepts them."""

    async def quiet(_: Exception) -> None:
        return None

    try:
        nc = await nats.connect(
            url,
            user_credentials=str(creds),
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=3,
            error_cb=quiet,
        )
    except Exception as exc:  # nats-py raises its own Error types as well as OSError
        return str(exc)
    await nc.close()
    raise AssertionError(f"nats-server accepted {creds.name}, expected a refusal")


def users_named(emulator: SynadiaEmulator, name: str) -> list[str]:
    """The ids of the emulator's users of that name (the published API lets there be several)."""
    return [u.id for u in emulator.plane.state.users.values() if u.name == name]
