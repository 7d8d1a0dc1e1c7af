"""The codec server: lets authorised people read encrypted payloads in the Temporal UI and CLI.

    IDP_CODEC_KEYS=... IDP_CODEC_SERVER_TOKEN=... \\
        python -m starter.codec_server --ui-origin https://temporal.example.com [--port 8234]
    (or: idpctl codec-server ...)

    temporal workflow show -w ID --codec-endpoint http://127.0.0.1:8234 \\
        --codec-auth "Bearer $IDP_CODEC_SERVER_TOKEN"

`POST /encode` and `POST /decode` take and return `{"payloads": [...]}`, the protobuf JSON of
`temporal.api.common.v1.Payloads` (bytes as base64), which is what the UI and the CLI send.
Every request needs `Authorization: Bearer <token>`. Browsers may call it only from the
configured UI origins (CORS).

The Temporal UI cannot send that token: it only ever forwards its own login's access token, and
only to an https endpoint. For the local dev stack (`idpctl dev`: loopback UI, no login) the
server can instead accept token-less requests that come from the configured UI origin
(`--allow-loopback-ui-without-token`). That is only allowed when both the server and the UI are
on loopback, where anyone able to send such a request can already open the UI itself.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import uvicorn
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payloads

from idp.keyring import KeyRing, KeyRingError
from starter.codec import EncryptionCodec

log = logging.getLogger("idp.codec_server")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

TOKEN_ENV = "IDP_CODEC_SERVER_TOKEN"
KEYS_ENV = "IDP_CODEC_KEYS"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8234
MIN_TOKEN_LENGTH = 16
# Temporal caps one payload at 2 MiB by default and the UI sends one event field at a time.
MAX_BODY_BYTES = 8 * 1024 * 1024
# What the UI sends: X-Namespace always; Authorization(-Extras) when passing its access token.
ALLOWED_HEADERS = ("Authorization", "Authorization-Extras", "Content-Type", "X-Namespace")


class CodecServerError(Exception):
    """Unusable configuration; the message says which setting and what is allowed."""


@dataclass(frozen=True)
class CodecServerConfig:
    keyring: KeyRing
    token: str = field(repr=False)
    ui_origins: tuple[str, ...] = ()
    ui_without_token: bool = False

    def __post_init__(self) -> None:
        if len(self.token) < MIN_TOKEN_LENGTH:
            raise CodecServerError(
                f"{TOKEN_ENV} is too short: use at least {MIN_TOKEN_LENGTH} random characters "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)."
            )
        if self.ui_without_token and not self.ui_origins:
            raise CodecServerError("--allow-loopback-ui-without-token needs --ui-origin.")
        if self.ui_without_token:
            for origin in self.ui_origins:
                if not is_loopback(urlsplit(origin).hostname or ""):
                    raise CodecServerError(
                        f"--allow-loopback-ui-without-token is only for a UI on loopback; "
                        f"{origin} is not. Remote UIs must pass an access token over https."
                    )


class _Rejected(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_origin(value: str) -> str:
    """A browser origin exactly as the browser sends it: scheme://host[:port], nothing else."""
    parts = urlsplit(value.strip())
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username
        or parts.password
        or "*" in value
    ):
        raise CodecServerError(
            f"--ui-origin {value!r} is not an origin: use scheme://host[:port] exactly as the "
            "browser shows the UI, e.g. http://127.0.0.1:8233 (no path, no wildcard)."
        )
    try:
        port = parts.port
    except ValueError:
        raise CodecServerError(f"--ui-origin {value!r} has an invalid port.") from None
    default_port = {"http": 80, "https": 443}[parts.scheme]
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    suffix = f":{port}" if port is not None and port != default_port else ""
    return f"{parts.scheme}://{host}{suffix}"


def _digest(value: str) -> bytes:
    # Hashing first makes the comparison's time independent of the token's length as well.
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def create_app(config: CodecServerConfig) -> Starlette:
    codec = EncryptionCodec(config.keyring)
    token_digest = _digest(config.token)
    origins = frozenset(config.ui_origins)

    def authorize(request: Request) -> str:
        """How the request proved it may use the keys ("token" or "ui"), else _Rejected."""
        origin = request.headers.get("origin")
        if origin is not None and origin not in origins:
            # Browsers always send Origin on these requests: one from anywhere else is a page
            # we do not serve, whatever credentials it carries.
            raise _Rejected(403, "this origin may not use the codec server")
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, credentials = header.strip().partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                _digest(credentials.strip()), token_digest
            ):
                return "token"
            # A wrong token never falls back to the origin rule below.
            raise _Rejected(
                401, "invalid token", {"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )
        if config.ui_without_token and origin is not None:
            return "ui"
        raise _Rejected(
            401, "an Authorization: Bearer token is required", {"WWW-Authenticate": "Bearer"}
        )

    async def read_payloads(request: Request) -> Payloads:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise _Rejected(413, f"body larger than {MAX_BODY_BYTES} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise _Rejected(413, f"body larger than {MAX_BODY_BYTES} bytes")
        try:
            # Newer UIs may send payload fields this SDK's protos do not know; they do not
            # matter to decryption, so tolerate them rather than break the UI.
            return json_format.Parse(bytes(body), Payloads(), ignore_unknown_fields=True)
        except (json_format.ParseError, UnicodeDecodeError, ValueError):
            # The parser's message can quote the body, which may be plaintext: say nothing of it.
            raise _Rejected(
                400, 'body must be JSON {"payloads": [...]}: temporal.api.common.v1.Payloads'
            ) from None

    def endpoint(action: str):
        async def handle(request: Request) -> Response:
            try:
                via = authorize(request)
                payloads = await read_payloads(request)
                if action == "encode":
                    result = await codec.encode(payloads.payloads)
                else:
                    result = await codec.decode(payloads.payloads)
            except _Rejected as rejected:
                log.warning(
                    "%s refused (%d %s) for namespace %s",
                    action,
                    rejected.status,
                    rejected.message,
                    _namespace(request),
                )
                return JSONResponse(
                    {"error": rejected.message}, rejected.status, headers=rejected.headers
                )
            except KeyRingError as error:
                # Key ids and positions only: KeyRingError never carries keys or plaintext.
                log.warning("%s failed for namespace %s: %s", action, _namespace(request), error)
                return JSONResponse({"error": str(error)}, 422)
            log.info(
                "%sd %d payload(s) for namespace %s (authorised by %s)",
                action,
                len(result),
                _namespace(request),
                via,
            )
            body = {"payloads": [json_format.MessageToDict(p) for p in result]}
            return Response(json.dumps(body), media_type="application/json")

        return handle

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    middleware = []
    if origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=sorted(origins),
                allow_methods=["POST"],
                allow_headers=list(ALLOWED_HEADERS),
                # Lets a UI on a public origin (Temporal Cloud) reach a codec server on a private
                # network or localhost in Chromium browsers; still only the listed origins.
                allow_private_network=True,
                max_age=600,
            )
        )
    return Starlette(
        routes=[
            Route("/encode", endpoint("encode"), methods=["POST"]),
            Route("/decode", endpoint("decode"), methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        middleware=middleware,
    )


def _namespace(request: Request) -> str:
    # Only for logs: bounded and quoted so a crafted header cannot forge log lines.
    return repr(request.headers.get("x-namespace", "-")[:100])


# ---- command line ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind ({DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT})")
    parser.add_argument(
        "--ui-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="origin of the Temporal UI allowed to call from a browser, e.g. "
        "http://127.0.0.1:8233 (repeatable; none: CLI only)",
    )
    parser.add_argument(
        "--allow-loopback-ui-without-token",
        action="store_true",
        help="accept requests without a token from the --ui-origin browser page; only with the "
        "server and the UI on loopback (the local dev stack, whose UI has no login)",
    )


def load_config(
    args: argparse.Namespace, environ: Mapping[str, str] = os.environ
) -> CodecServerConfig:
    keys = environ.get(KEYS_ENV)
    if keys is None:
        raise CodecServerError(f"{KEYS_ENV} is not set; the codec server needs the payload keys.")
    token = environ.get(TOKEN_ENV)
    if not token:
        raise CodecServerError(
            f"{TOKEN_ENV} is not set; the codec server only serves clients presenting that "
            "bearer token."
        )
    if args.allow_loopback_ui_without_token and not is_loopback(args.host):
        raise CodecServerError(
            f"--allow-loopback-ui-without-token needs --host on loopback, not {args.host!r}."
        )
    try:
        keyring = KeyRing.from_env(keys, variable=KEYS_ENV)
    except KeyRingError as error:
        raise CodecServerError(str(error)) from None
    return CodecServerConfig(
        keyring=keyring,
        token=token,
        ui_origins=tuple(dict.fromkeys(parse_origin(o) for o in args.ui_origin)),
        ui_without_token=args.allow_loopback_ui_without_token,
    )


async def serve(args: argparse.Namespace) -> int:
    # A no-op when the caller configured logging already; uvicorn sets up only its own loggers.
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        config = load_config(args)
    except CodecServerError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    if not is_loopback(args.host):
        log.warning(
            "listening on %s: bearer tokens and decoded payloads cross the network, so put TLS "
            "in front of this server",
            args.host,
        )
    log.info(
        "codec server on http://%s:%d; keys %s (encrypting with %r); browser origins: %s%s",
        args.host,
        args.port,
        ", ".join(config.keyring.key_ids),
        config.keyring.current_key_id,
        ", ".join(config.ui_origins) or "none (CLI only)",
        "; that UI needs no token" if config.ui_without_token else "",
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host=args.host,
            port=args.port,
            log_level="info",
            server_header=False,
            # Behind a proxy the client address is not used for anything: no need to trust it.
            proxy_headers=False,
        )
    )
    await server.serve()
    return 0 if server.started else 1


async def _idpctl_run(args: argparse.Namespace) -> None:
    code = await serve(args)
    if code:
        raise SystemExit(code)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """`idpctl codec-server`."""
    command = commands.add_parser(
        "codec-server",
        help="serve /encode and /decode for the Temporal UI and CLI (needs IDP_CODEC_KEYS and "
        "IDP_CODEC_SERVER_TOKEN)",
    )
    add_arguments(command)
    command.set_defaults(run=_idpctl_run)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m starter.codec_server", description=__doc__.split("\n\n")[0]
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        sys.exit(asyncio.run(serve(args)))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
