"""Typed async client of the Synadia Cloud control-plane API (`/api/core/beta`).

Shaped by the published OpenAPI spec (synadia-io/control-plane-sdk-go, syncp/api/openapi.yaml).
Errors are judged by status code only, because the spec documents no error body: 404 on a read or
a delete means the thing is gone, 408/429/5xx and network failures are retried here with capped
exponential backoff (but what must not happen twice is sent again only after a 429: a user's
creation; or never: a download) and then raised as `TransientError`, every other 4xx is a
`PermanentError` naming the operation, the status and whatever message the API gave. Credentials
come back as `NatsCreds`, whose text never prints; neither it nor the token is ever logged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from idp.errors import PermanentError, TransientError
from idp.httpapi import ApiClient

logger = logging.getLogger(__name__)

API_PREFIX = "/api/core/beta"
M = TypeVar("M", bound=BaseModel)
_MESSAGE_MAX = 300
_REDACTIONS = (
    re.compile(r"S[OAU][A-Z2-7]{50,}"),  # nkey seeds
    re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+"),  # JWTs
)
_CREDS_BLOCK = re.compile(r"-{3,}\s*BEGIN ([A-Z ]+?)\s*-{3,}\s*\n\s*(\S+)\s*\n\s*-{3,}\s*END")


# ---------------------------------------------------------------- errors


class SynadiaApiError(PermanentError):
    """A 4xx answer; `status` tells callers such as the reconciler what the API refused."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message, reason=f"SynadiaHTTP{status}")
        self.status = status


class SynadiaNotFoundError(SynadiaApiError):
    """404 on a write: the user or account the caller remembered no longer exists."""


# ---------------------------------------------------------------- models


class _Response(BaseModel):
    # The API adds fields over time; unknown ones must not break reads.
    model_config = ConfigDict(extra="ignore")


class _Request(BaseModel):
    # Request bodies are built by our own code; a misspelt field is a bug to catch early.
    model_config = ConfigDict(extra="forbid")


class Permission(BaseModel):
    """Subjects a user may (allow) or may not (deny) publish or subscribe to."""

    model_config = ConfigDict(extra="ignore")

    allow: list[str] | None = None
    deny: list[str] | None = None


class ResponsePermission(BaseModel):
    """Lets a user reply to requests it received; `ttl` is a Go duration in nanoseconds."""

    model_config = ConfigDict(extra="ignore")

    max: int = 1
    ttl: int = 0


class TimeRange(BaseModel):
    model_config = ConfigDict(extra="ignore")

    start: str | None = None
    end: str | None = None


class JwtSettings(BaseModel):
    """`jwt_settings` of a NATS user: permissions and limits that go into its user JWT.

    Used in create bodies (unset fields omitted), patch bodies (fields that were set are sent,
    an explicit None sends null, which resets that field) and responses.
    """

    model_config = ConfigDict(extra="ignore")

    pub: Permission | None = None
    sub: Permission | None = None
    resp: ResponsePermission | None = None
    subs: int | None = Field(None, ge=-1)
    data: int | None = Field(None, ge=-1)
    payload: int | None = Field(None, ge=-1)
    tags: list[str] | None = None
    bearer_token: bool | None = None
    allowed_connection_types: list[str] | None = None
    src: list[str] | None = None
    times: list[TimeRange] | None = None
    times_location: str | None = None


class Team(_Response):
    id: str
    name: str
    created: datetime | None = None


class SystemInfo(_Response):
    id: str
    name: str
    server_urls: str | None = None
    jetstream_enabled: bool = False


class System(_Response):
    id: str
    name: str
    created: datetime | None = None
    state: str | None = None
    jetstream_enabled: bool = False
    user_jwt_expires_in_secs: int = 0
    team: Team | None = None


class AccountJwtSettings(_Response):
    revocations: dict[str, int] = {}


class Account(_Response):
    id: str
    name: str
    account_public_key: str | None = None
    is_system_account: bool = False
    user_jwt_expires_in_secs: int = 0
    created: datetime | None = None
    system: SystemInfo | None = None
    jwt_settings: AccountJwtSettings = AccountJwtSettings()


class SigningKeyGroup(_Response):
    id: str
    name: str
    created: datetime | None = None
    disabled: bool = False
    is_scoped: bool = False


class AccountRef(_Response):
    id: str
    name: str
    account_public_key: str | None = None


class NatsUser(_Response):
    id: str
    name: str
    sk_group_id: str | None = None
    user_public_key: str
    created: datetime
    # A bearer-token user's JWT alone lets one connect, so it is kept out of reprs and logs.
    jwt: SecretStr
    jwt_expires_in_secs: int
    jwt_expires_at_max: int = 0
    jwt_settings: JwtSettings = JwtSettings()
    account: AccountRef
    system: SystemInfo | None = None
    claims: dict[str, Any] = {}


class NatsUserIssuance(_Response):
    """One set of user JWT claims Synadia issued (downloads of identical claims share one),
    with its status: Active, Revoked, Partially Revoked, Expired, SK Disabled, ..."""

    id: str
    sub: str = Field(description="The user public key the JWTs were issued for.")
    iat_min: int
    iat_max: int
    exp_max: int | None = None
    events_count: int = 0
    status: str


class NatsUserRevocation(_Response):
    account_id: str
    user_nkey_public: str
    before: int
    created: datetime
    account_sk_id: str | None = None


class NatsCreds(BaseModel):
    """A downloaded .creds file: the text stays hidden, the rest is public metadata."""

    model_config = ConfigDict(frozen=True)

    text: SecretStr
    user_public_key: str
    jwt_id: str
    issued_at: datetime
    expires_at: datetime | None
    fingerprint: str = Field(description="sha256 of the .creds text, to tell versions apart")

    def reveal(self) -> str:
        return self.text.get_secret_value()

    def __str__(self) -> str:
        return f"NATS creds of {self.user_public_key} ({self.fingerprint[:12]})"


class _CreateUserBody(_Request):
    name: str
    sk_group_id: str
    jwt_expires_in_secs: int | None = None
    jwt_settings: dict[str, Any] | None = None


class _RevocationBody(_Request):
    before: int


# ---------------------------------------------------------------- helpers


def _redact(text: str) -> str:
    for pattern in _REDACTIONS:
        text = pattern.sub("[redacted]", text)
    text = " ".join(text.split())
    return text[:_MESSAGE_MAX] + ("..." if len(text) > _MESSAGE_MAX else "")


def _api_message(response: httpx.Response) -> str:
    """The API's own explanation, wherever in the body it put it (the spec shows no schema)."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _redact(response.text) or "no message"
    if isinstance(body, dict):
        for key in ("message", "error", "detail", "title", "errors"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value.get("error")
            if isinstance(value, list) and value:
                value = value[0].get("message") if isinstance(value[0], dict) else value[0]
            if isinstance(value, str) and value.strip():
                return _redact(value)
    return _redact(json.dumps(body)) or "no message"


def _sentence(text: str) -> str:
    return text.rstrip(" .")


def _status_text(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def _b64url_json(segment: str) -> dict[str, Any]:
    data = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    if not isinstance(data, dict):
        raise ValueError("claims are not an object")
    return data


def parse_creds(text: str) -> NatsCreds:
    """Metadata of a .creds text; raises ValueError (without echoing it) when it is not one."""
    blocks = {label.strip(): value for label, value in _CREDS_BLOCK.findall(text)}
    jwt, seed = blocks.get("NATS USER JWT"), blocks.get("USER NKEY SEED")
    if not jwt or not seed or not seed.startswith("SU"):
        raise ValueError("not a NATS user .creds text")
    try:
        claims = _b64url_json(jwt.split(".")[1])
        expires = claims.get("exp")
        return NatsCreds(
            text=SecretStr(text),
            user_public_key=str(claims["sub"]),
            jwt_id=str(claims.get("jti", "")),
            issued_at=datetime.fromtimestamp(int(claims["iat"]), UTC),
            expires_at=datetime.fromtimestamp(int(expires), UTC) if expires else None,
            fingerprint=hashlib.sha256(text.encode()).hexdigest(),
        )
    except (IndexError, KeyError, TypeError, ValueError) as exc:
        raise ValueError("the user JWT in the .creds text is malformed") from exc


def _api_base(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith(API_PREFIX) else url + API_PREFIX


# ---------------------------------------------------------------- the client


class SynadiaClient(ApiClient):
    """One connection pool to the control plane; use as `async with SynadiaClient(...) as c`."""

    def __init__(
        self,
        base_url: str,
        token: str | SecretStr,
        *,
        timeout: float = 15.0,
        max_attempts: int = 4,
        backoff_base: float = 0.25,
        backoff_cap: float = 4.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        secret = token.get_secret_value() if isinstance(token, SecretStr) else token
        super().__init__(
            _api_base(base_url),
            headers={"Authorization": f"Bearer {secret}"},
            timeout=timeout,
            max_attempts=max_attempts,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            transport=transport,
        )

    # -- transport with retries

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = self.backoff(attempt)
        if retry_after and retry_after.strip().isdigit():
            delay = max(delay, min(float(retry_after), self.backoff_cap))
        return delay

    async def _request(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        missing_ok: bool = False,
        attempts: int | None = None,
        resend: bool = True,
    ) -> httpx.Response | None:
        """The 2xx response; None for a 404 when `missing_ok`; raises for everything else.

        Without `resend`, for a request that must not be carried out twice, only a 429 is
        retried: it says the request was turned away unserved, where a 5xx or a lost answer
        may come after the work was done."""
        problem = ""
        attempts = attempts or self.max_attempts
        for attempt in range(1, attempts + 1):
            retry_after: str | None = None
            unserved = False
            try:
                response = await self._http.request(method, path, json=body)
            except httpx.TransportError as exc:
                # Never chain httpx errors: they hold the request, whose headers hold the token.
                problem = f"{type(exc).__name__} talking to {self.base_url}"
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return response
                if status == 404 and missing_ok:
                    return None
                if status not in (408, 429) and status < 500:
                    error_cls = SynadiaNotFoundError if status == 404 else SynadiaApiError
                    raise error_cls(
                        f"Synadia {operation} failed with HTTP {_status_text(status)}: "
                        f"{_sentence(_api_message(response))}.",
                        status=status,
                    )
                problem = f"HTTP {_status_text(status)}: {_sentence(_api_message(response))}"
                retry_after = response.headers.get("retry-after")
                unserved = status == 429
            if attempt == attempts or not (resend or unserved):
                break
            delay = self._delay(attempt, retry_after)
            logger.info(
                "Synadia %s: %s; retry %d/%d in %.2fs",
                operation,
                problem,
                attempt,
                attempts - 1,
                delay,
            )
            await asyncio.sleep(delay)
        tries = f"after {attempt} attempts, last" if attempt > 1 else "(not retried)"
        raise TransientError(
            f"Synadia {operation} failed {tries} with {problem}.",
            reason="SynadiaUnavailable",
        )

    async def _get_model(self, model: type[M], operation: str, path: str) -> M | None:
        response = await self._request(operation, "GET", path, missing_ok=True)
        return None if response is None else self._parse(model, operation, response)

    async def _list(self, model: type[M], operation: str, path: str) -> list[M]:
        response = await self._request(operation, "GET", path)
        assert response is not None
        payload = self._json(operation, response)
        items = payload.get("items") if isinstance(payload, dict) else None
        if not isinstance(items, list):
            raise PermanentError(f"Synadia {operation} returned a body without an items list.")
        return [self._validate(model, operation, item) for item in items]

    @staticmethod
    def _json(operation: str, response: httpx.Response) -> Any:
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise PermanentError(f"Synadia {operation} returned a body that is not JSON.") from None

    @classmethod
    def _parse(cls, model: type[M], operation: str, response: httpx.Response) -> M:
        return cls._validate(model, operation, cls._json(operation, response))

    @staticmethod
    def _validate(model: type[M], operation: str, payload: Any) -> M:
        try:
            return model.model_validate(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise PermanentError(
                f"Synadia {operation} returned an unexpected {model.__name__}: "
                f"{where}: {first['msg']}."
            ) from None

    # -- teams, systems, accounts, signing key groups

    async def list_teams(self) -> list[Team]:
        return await self._list(Team, "list teams", "/teams")

    async def list_systems(self, team_id: str) -> list[System]:
        return await self._list(
            System, f"list systems of team {team_id}", f"/teams/{team_id}/systems"
        )

    async def get_system(self, system_id: str) -> System | None:
        return await self._get_model(System, f"get system {system_id}", f"/systems/{system_id}")

    async def find_system(self, name: str) -> System | None:
        """The system called `name` in any team the token can see (names are per team)."""
        matches = [
            system
            for team in await self.list_teams()
            for system in await self.list_systems(team.id)
            if system.name == name or system.id == name
        ]
        if len(matches) > 1:
            raise PermanentError(
                f"Synadia has {len(matches)} systems named {name!r}; configure the system by id."
            )
        return matches[0] if matches else None

    async def list_accounts(self, system_id: str) -> list[Account]:
        return await self._list(
            Account, f"list accounts of system {system_id}", f"/systems/{system_id}/accounts"
        )

    async def get_account(self, account_id: str) -> Account | None:
        return await self._get_model(
            Account, f"get account {account_id}", f"/accounts/{account_id}"
        )

    async def find_account(self, system_id: str, name: str) -> Account | None:
        for account in await self.list_accounts(system_id):
            if account.name == name or account.id == name:
                return account
        return None

    async def list_sk_groups(self, account_id: str) -> list[SigningKeyGroup]:
        return await self._list(
            SigningKeyGroup,
            f"list signing key groups of account {account_id}",
            f"/accounts/{account_id}/account-sk-groups",
        )

    # -- NATS users

    async def list_nats_users(self, account_id: str) -> list[NatsUser]:
        return await self._list(
            NatsUser,
            f"list NATS users of account {account_id}",
            f"/accounts/{account_id}/nats-users",
        )

    async def find_nats_user(self, account_id: str, name: str) -> NatsUser | None:
        """The user with this (deterministic) name, so a retried create finds its first try."""
        matches = [u for u in await self.list_nats_users(account_id) if u.name == name]
        if len(matches) > 1:
            raise PermanentError(
                f"Synadia account {account_id} has {len(matches)} NATS users named {name!r}; "
                "delete the extra ones so the reconciler can tell which is its own."
            )
        return matches[0] if matches else None

    async def create_nats_user(
        self,
        account_id: str,
        name: str,
        *,
        sk_group_id: str,
        jwt_expires_in_secs: int | None = None,
        jwt_settings: JwtSettings | None = None,
    ) -> NatsUser:
        """Create a user, resending the POST only after a 429: the published API documents no
        409 for a name the account holds already, so resending after a lost answer or a 5xx
        that came after the work could make a second user of the name. A caller that tries
        again looks the user up by name first (`find_nats_user`) instead; so does one that a
        stricter service answers with an error for a name it holds."""
        operation = f"create NATS user {name!r} in account {account_id}"
        body = _CreateUserBody(
            name=name,
            sk_group_id=sk_group_id,
            jwt_expires_in_secs=jwt_expires_in_secs,
            jwt_settings=(
                jwt_settings.model_dump(mode="json", exclude_none=True) if jwt_settings else None
            ),
        ).model_dump(mode="json", exclude_none=True)
        response = await self._request(
            operation, "POST", f"/accounts/{account_id}/nats-users", body=body, resend=False
        )
        assert response is not None
        return self._parse(NatsUser, operation, response)

    async def get_nats_user(self, user_id: str) -> NatsUser | None:
        return await self._get_model(NatsUser, f"get NATS user {user_id}", f"/nats-users/{user_id}")

    async def update_nats_user(
        self,
        user_id: str,
        *,
        name: str | None = None,
        jwt_expires_in_secs: int | None = None,
        jwt_settings: JwtSettings | None = None,
    ) -> NatsUser:
        """PATCH: only what is given changes; within `jwt_settings` only the fields that were
        set (an explicit None resets that field)."""
        operation = f"update NATS user {user_id}"
        body: dict[str, Any] = {}
        if name is not None:
            body["name"] = name
        if jwt_expires_in_secs is not None:
            body["jwt_expires_in_secs"] = jwt_expires_in_secs
        if jwt_settings is not None:
            body["jwt_settings"] = jwt_settings.model_dump(mode="json", exclude_unset=True)
        response = await self._request(operation, "PATCH", f"/nats-users/{user_id}", body=body)
        assert response is not None
        return self._parse(NatsUser, operation, response)

    async def delete_nats_user(self, user_id: str) -> bool:
        """True if this call deleted it, False if it was already gone."""
        response = await self._request(
            f"delete NATS user {user_id}", "DELETE", f"/nats-users/{user_id}", missing_ok=True
        )
        return response is not None

    async def download_creds(self, user_id: str) -> NatsCreds:
        """Issue a fresh user JWT and return it with the user's seed as a .creds text.

        Every call is an issuance Synadia records, so callers issue only when policy says so.
        Tried once: a failed call may still have issued (a 5xx after the work, an answer lost
        on the way), and a blind retry would issue a second JWT on the same key; the caller
        looks at the issuances before it downloads again."""
        operation = f"download creds of NATS user {user_id}"
        response = await self._request(
            operation, "POST", f"/nats-users/{user_id}/creds", attempts=1
        )
        assert response is not None
        try:
            return parse_creds(response.text)
        except ValueError as exc:
            raise PermanentError(f"Synadia {operation} returned {exc}.") from None

    async def list_nats_user_issuances(self, user_id: str) -> list[NatsUserIssuance]:
        return await self._list(
            NatsUserIssuance,
            f"list issuances of NATS user {user_id}",
            f"/nats-users/{user_id}/issuances",
        )

    async def rotate_nats_user(self, user_id: str) -> NatsUser:
        """Give the user a new nkey. Creds of the old key stay valid until revoked or expired."""
        operation = f"rotate NATS user {user_id}"
        response = await self._request(operation, "POST", f"/nats-users/{user_id}/rotate")
        assert response is not None
        return self._parse(NatsUser, operation, response)

    # -- revocations

    @staticmethod
    def _revocation_path(account_id: str, user_public_key: str) -> str:
        return f"/accounts/{account_id}/nats-user-revocations/{user_public_key}"

    async def revoke_nats_user_key(
        self, account_id: str, user_public_key: str, *, before: int | datetime = 0
    ) -> NatsUserRevocation:
        """Refuse every JWT of this nkey issued up to `before` (0: now), live connections too."""
        if isinstance(before, datetime):
            before = int(before.timestamp())
        operation = f"revoke NATS user key {user_public_key} in account {account_id}"
        response = await self._request(
            operation,
            "PUT",
            self._revocation_path(account_id, user_public_key),
            body=_RevocationBody(before=before).model_dump(),
        )
        assert response is not None
        return self._parse(NatsUserRevocation, operation, response)

    async def get_revocation(
        self, account_id: str, user_public_key: str
    ) -> NatsUserRevocation | None:
        return await self._get_model(
            NatsUserRevocation,
            f"get revocation of NATS user key {user_public_key} in account {account_id}",
            self._revocation_path(account_id, user_public_key),
        )

    async def delete_revocation(self, account_id: str, user_public_key: str) -> bool:
        response = await self._request(
            f"delete revocation of NATS user key {user_public_key} in account {account_id}",
            "DELETE",
            self._revocation_path(account_id, user_public_key),
            missing_ok=True,
        )
        return response is not None
