"""Typed async client of Port.io's REST API: the parts the bridge and `idpctl port` use.

Port answers `{ok: true, ...}` on success and `{ok: false, error, message}` otherwise. Access
tokens come from `POST /v1/auth/access_token` (client id and secret), are cached until shortly
before `expiresIn` and fetched again once when Port answers 401 (a token revoked or expired
early). 429, 5xx and network failures are retried here a few times with capped, jittered
backoff that honours `retry-after` and, on 429, `x-ratelimit-reset`; a wait longer than
`max_wait` is not slept here but handed to the caller as `PortUnavailable.retry_after`, so an
activity can let Temporal schedule the retry. Every other 4xx is a `PortApiError` naming the
operation, the endpoint, the status and Port's own error. The client secret and the tokens never
appear in a message, a log line or a repr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from http import HTTPStatus
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from idp.errors import PermanentError, TransientError
from idp.httpapi import ApiClient
from idp.platform import PortConfig

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

TOKEN_PATH = "/v1/auth/access_token"
TERMINAL = frozenset({"SUCCESS", "FAILURE"})
RunStatus = Literal["SUCCESS", "FAILURE"]
_MESSAGE_MAX = 300
# A token is dropped this long before Port says it expires (a tenth of its life when shorter),
# so a request never leaves with a token that dies on the way.
_EXPIRY_MARGIN = 60.0


# ---------------------------------------------------------------- errors


class PortApiError(PermanentError):
    """A 4xx answer other than 401 and 429: retrying the same request will not help."""

    def __init__(self, message: str, *, status: int, error: str) -> None:
        super().__init__(message, reason=f"PortHTTP{status}")
        self.status = status
        self.error = error


class PortUnavailable(TransientError):
    """Port is down, slow or rate limiting; `retry_after` is how long Port asked us to wait."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, reason="PortUnavailable")
        self.retry_after = retry_after


# ---------------------------------------------------------------- models


class _Response(BaseModel):
    # Port adds fields over time; unknown ones must not break reads.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class PortEntity(_Response):
    identifier: str
    title: str | None = None
    properties: dict[str, Any] = {}
    relations: dict[str, str | list[str] | None] = {}

    def body(self) -> dict[str, Any]:
        return {
            "identifier": self.identifier,
            "title": self.title,
            "properties": self.properties,
            "relations": self.relations,
        }


class PortRun(_Response):
    id: str
    status: str
    status_label: str | None = Field(None, alias="statusLabel")
    summary: str | None = None
    link: list[str] = []

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


# ---------------------------------------------------------------- comparisons


def entity_differs(current: PortEntity | None, desired: PortEntity) -> bool:
    """Whether upserting `desired` (merge) would change what Port shows.

    Only what we set is compared: properties others added to the entity are theirs. Port
    normalises dates, so two strings naming the same instant are equal here.
    """
    if current is None or (desired.title is not None and current.title != desired.title):
        return True
    for key, value in desired.properties.items():
        if not _same_value(current.properties.get(key), value):
            return True
    for key, value in desired.relations.items():
        if _relation_set(current.relations.get(key)) != _relation_set(value):
            return True
    return False


def covers(current: Any, desired: Any) -> bool:
    """Whether `current` already holds everything in `desired` (extra keys in `current`, such as
    the defaults and timestamps Port adds to a stored definition, do not count)."""
    if isinstance(desired, dict):
        return isinstance(current, dict) and all(
            key in current and covers(current[key], value) for key, value in desired.items()
        )
    return _same_value(current, desired)


def _same_value(current: Any, desired: Any) -> bool:
    if current == desired:
        return True
    if isinstance(current, str) and isinstance(desired, str):
        try:
            return datetime.fromisoformat(current) == datetime.fromisoformat(desired)
        except ValueError:
            return False
    return False


def _relation_set(value: str | list[str] | None) -> frozenset[str]:
    if value is None:
        return frozenset()
    return frozenset([value] if isinstance(value, str) else value)


# ---------------------------------------------------------------- the client


class PortClient(ApiClient):
    """One connection pool and one cached token; use as `async with PortClient(...) as port`.

    `clock` (monotonic seconds) decides token expiry; tests move it.
    """

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str | SecretStr,
        *,
        credentials_source: str = "the configured client id and secret",
        timeout: float = 15.0,
        max_attempts: int = 4,
        backoff_base: float = 0.25,
        backoff_cap: float = 4.0,
        max_wait: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            base_url.rstrip("/"),
            timeout=timeout,
            max_attempts=max_attempts,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            transport=transport,
        )
        self._client_id = client_id
        self._secret = (
            client_secret if isinstance(client_secret, SecretStr) else SecretStr(client_secret)
        )
        self._credentials_source = credentials_source
        self.max_wait = max_wait
        self._clock = clock
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = asyncio.Lock()

    # -- action runs

    async def add_run_log(
        self,
        run_id: str,
        message: str,
        termination_status: RunStatus | None = None,
        status_label: str | None = None,
    ) -> None:
        body: dict[str, Any] = {"message": message}
        if termination_status is not None:
            body["terminationStatus"] = termination_status
        if status_label is not None:
            body["statusLabel"] = status_label
        await self._call(
            f"log to run {run_id}", "POST", f"/v1/actions/runs/{_seg(run_id)}/logs", body
        )

    async def update_run(
        self,
        run_id: str,
        *,
        status: RunStatus | None = None,
        status_label: str | None = None,
        summary: str | None = None,
        link: str | None = None,
    ) -> PortRun:
        fields = {"status": status, "statusLabel": status_label, "summary": summary}
        body: dict[str, Any] = {key: value for key, value in fields.items() if value is not None}
        if link is not None:
            body["link"] = [link]
        answer = await self._call(
            f"update run {run_id}", "PATCH", f"/v1/actions/runs/{_seg(run_id)}", body
        )
        return self._model(PortRun, f"update run {run_id}", (answer or {}).get("run"))

    async def get_run(self, run_id: str) -> PortRun | None:
        operation = f"read run {run_id}"
        answer = await self._call(
            operation, "GET", f"/v1/actions/runs/{_seg(run_id)}", missing_ok=True
        )
        return None if answer is None else self._model(PortRun, operation, answer.get("run"))

    async def get_run_logs(self, run_id: str) -> list[dict[str, Any]]:
        operation = f"read the logs of run {run_id}"
        answer = await self._call(operation, "GET", f"/v1/actions/runs/{_seg(run_id)}/logs")
        logs = (answer or {}).get("runLogs")
        return logs if isinstance(logs, list) else []

    async def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        message: str,
        *,
        status_label: str,
        summary: str | None = None,
        link: str | None = None,
    ) -> bool:
        """Report a run's outcome once: label, summary and link, then the last log line with the
        termination status. False (and nothing sent) when the run has finished already, which
        makes a retried report harmless: Port refuses a second terminal status."""
        run = await self.get_run(run_id)
        if run is None:
            raise PortApiError(
                f"Port has no action run {run_id} to report to.", status=404, error="not_found"
            )
        if run.finished:
            return False
        await self.update_run(run_id, status_label=status_label, summary=summary, link=link)
        await self.add_run_log(
            run_id, message, termination_status=status, status_label=status_label
        )
        return True

    # -- entities

    async def get_entity(self, blueprint: str, identifier: str) -> PortEntity | None:
        operation = f"read {blueprint} entity {identifier!r}"
        path = f"/v1/blueprints/{_seg(blueprint)}/entities/{_seg(identifier)}"
        answer = await self._call(operation, "GET", path, missing_ok=True)
        return None if answer is None else self._model(PortEntity, operation, answer.get("entity"))

    async def upsert_entity(
        self, blueprint: str, entity: PortEntity, run_id: str | None = None
    ) -> PortEntity:
        """Create or merge (properties and relations not named are kept); `run_id` links the
        change to an action run in progress."""
        operation = f"upsert {blueprint} entity {entity.identifier!r}"
        params = {"upsert": "true", "merge": "true"}
        if run_id is not None:
            params["run_id"] = run_id
        answer = await self._call(
            operation,
            "POST",
            f"/v1/blueprints/{_seg(blueprint)}/entities",
            entity.body(),
            params=params,
        )
        return self._model(PortEntity, operation, (answer or {}).get("entity"))

    # -- blueprints and self-service actions

    async def upsert_blueprint(self, definition: Mapping[str, Any]) -> str:
        """Create or update a blueprint by identifier: "created", "updated" or "unchanged"."""
        return await self._upsert_definition("blueprint", "/v1/blueprints", definition)

    async def upsert_action(self, definition: Mapping[str, Any]) -> str:
        """Create or update a self-service action by identifier, like `upsert_blueprint`."""
        return await self._upsert_definition("action", "/v1/actions", definition)

    async def _upsert_definition(
        self, kind: str, collection: str, definition: Mapping[str, Any]
    ) -> str:
        identifier = str(definition.get("identifier", ""))
        if not identifier:
            raise PermanentError(f"a Port {kind} definition needs an identifier")
        path = f"{collection}/{_seg(identifier)}"
        current = await self._call(f"read {kind} {identifier}", "GET", path, missing_ok=True)
        if current is None:
            await self._call(f"create {kind} {identifier}", "POST", collection, dict(definition))
            return "created"
        if covers(current.get(kind), dict(definition)):
            return "unchanged"
        await self._call(f"update {kind} {identifier}", "PUT", path, dict(definition))
        return "updated"

    # -- tokens

    async def _access_token(self) -> str:
        async with self._token_lock:
            if self._token is not None and self._clock() < self._token_expires:
                return self._token
            body = {"clientId": self._client_id, "clientSecret": self._secret.get_secret_value()}
            answer = await self._exchange("obtain an access token", "POST", TOKEN_PATH, body, None)
            token, expires_in = (answer or {}).get("accessToken"), (answer or {}).get("expiresIn")
            if not isinstance(token, str) or not isinstance(expires_in, int | float):
                raise PermanentError(
                    "Port answered the token request without accessToken and expiresIn."
                )
            self._token = token
            margin = min(_EXPIRY_MARGIN, expires_in / 10)
            self._token_expires = self._clock() + expires_in - margin
            return token

    def _forget_token(self, token: str) -> None:
        if self._token == token:
            self._token = None

    # -- transport with retries

    async def _call(
        self,
        operation: str,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        params: Mapping[str, str] | None = None,
        missing_ok: bool = False,
    ) -> dict[str, Any] | None:
        return await self._exchange(
            operation, method, path, body, params, authorised=True, missing_ok=missing_ok
        )

    async def _exchange(
        self,
        operation: str,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        params: Mapping[str, str] | None,
        *,
        authorised: bool = False,
        missing_ok: bool = False,
    ) -> dict[str, Any] | None:
        """The JSON body of a 2xx answer; None for a 404 when `missing_ok`; raises otherwise."""
        endpoint = f"{method} {path}"
        refreshed = False
        attempt = 0
        while True:
            headers = {}
            token = None
            if authorised:
                token = await self._access_token()
                headers["Authorization"] = f"Bearer {token}"
            retry_after: float | None = None
            try:
                response = await self._http.request(
                    method, path, json=body, params=params, headers=headers
                )
            except httpx.TransportError as exc:
                # Never chain httpx errors: they hold the request, whose headers hold the token.
                problem = f"{type(exc).__name__} talking to {self.base_url}"
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return self._json(operation, response)
                if status == 404 and missing_ok:
                    return None
                error, message = self._port_error(response)
                if status == 401 and token is not None and not refreshed:
                    refreshed = True
                    self._forget_token(token)
                    continue
                if status in (401, 403) and not authorised:
                    raise PortApiError(
                        f"Port refused {self._credentials_source} (HTTP {_status_text(status)}: "
                        f"{error}: {message}).",
                        status=status,
                        error=error,
                    )
                if status not in (408, 429) and status < 500:
                    raise PortApiError(
                        f"Port {operation} ({endpoint}) failed with HTTP {_status_text(status)}: "
                        f"{error}: {message}.",
                        status=status,
                        error=error,
                    )
                problem = f"HTTP {_status_text(status)} ({error}: {message})"
                retry_after = _wait_hint(response)
            attempt += 1
            delay = self._delay(attempt, retry_after)
            if attempt >= self.max_attempts or delay > self.max_wait:
                raise PortUnavailable(
                    f"Port {operation} ({endpoint}) failed after {attempt} attempt(s), last with "
                    f"{problem}.",
                    retry_after=retry_after,
                )
            logger.info(
                "Port %s: %s; retry %d/%d in %.2fs",
                operation,
                problem,
                attempt,
                self.max_attempts - 1,
                delay,
            )
            await asyncio.sleep(delay)

    def _delay(self, attempt: int, hint: float | None) -> float:
        delay = self.backoff(attempt)
        return max(delay, hint) if hint is not None else delay

    def _redact(self, text: str) -> str:
        for secret in (self._secret.get_secret_value(), self._token):
            if secret:
                text = text.replace(secret, "[redacted]")
        text = " ".join(text.split())
        return text[:_MESSAGE_MAX] + ("..." if len(text) > _MESSAGE_MAX else "")

    def _port_error(self, response: httpx.Response) -> tuple[str, str]:
        """Port's `error` code and `message`, whatever else the body holds."""
        try:
            payload = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "no_error_code", self._redact(response.text) or "no message"
        if not isinstance(payload, dict):
            return "no_error_code", self._redact(json.dumps(payload))
        error = payload.get("error")
        message = payload.get("message")
        return (
            self._redact(str(error)) if error else "no_error_code",
            self._redact(str(message)).rstrip(" .") if message else "no message",
        )

    def _json(self, operation: str, response: httpx.Response) -> dict[str, Any]:
        try:
            payload = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise PermanentError(f"Port {operation} returned a body that is not JSON.") from None
        if not isinstance(payload, dict) or payload.get("ok") is not True:
            raise PermanentError(f"Port {operation} answered {response.status_code} without ok.")
        return payload

    @staticmethod
    def _model(model: type[M], operation: str, payload: Any) -> M:
        try:
            return model.model_validate(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            raise PermanentError(
                f"Port {operation} returned an unexpected {model.__name__}: {where}: "
                f"{first['msg']}."
            ) from None


def client_from_config(
    config: PortConfig, environ: Mapping[str, str] | None = None, **options: Any
) -> PortClient:
    """A client for the configured region or URL, with the id and secret from the environment
    variables the configuration names; PermanentError naming the variable when one is unset."""
    env = os.environ if environ is None else environ
    client_id, secret = port_credentials(config, env)
    return PortClient(
        config.api_url,
        client_id,
        secret,
        credentials_source=f"the client id and secret in ${config.client_id_env} and "
        f"${config.client_secret_env}",
        **options,
    )


def port_credentials(config: PortConfig, environ: Mapping[str, str]) -> tuple[str, SecretStr]:
    missing = [
        name for name in (config.client_id_env, config.client_secret_env) if not environ.get(name)
    ]
    if missing:
        raise PermanentError(
            f"{' and '.join(missing)} must be set to Port's client id and secret (the platform "
            "file's port section names these variables)",
            reason="PortCredentialsMissing",
        )
    return environ[config.client_id_env], SecretStr(environ[config.client_secret_env])


def _seg(value: str) -> str:
    """One path segment: identifiers may hold '/' and other reserved characters."""
    return quote(value, safe="")


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _wait_hint(response: httpx.Response) -> float | None:
    """How long Port asked us to wait: Retry-After, or on 429 the rate-limit window's reset."""
    hint = _seconds(response.headers.get("retry-after"))
    if hint is None and response.status_code == 429:
        hint = _seconds(response.headers.get("x-ratelimit-reset"))
    return hint


def _status_text(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)
