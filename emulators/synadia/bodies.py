"""Request bodies of the emulated API and the rules the emulator enforces on them.

Type errors answer 400 (the Go service's JSON decoding fails), rule violations 422. Unknown
fields are ignored, as Go's decoder ignores them.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

_NAME_MAX = 128
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class ApiError(Exception):
    """A refusal the HTTP layer answers with `status` and `{"code", "error"}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ---------------------------------------------------------------- request bodies


class _Body(BaseModel):
    # Like the Go server's JSON decoder: unknown fields are ignored, wrong types refused.
    model_config = ConfigDict(extra="ignore", strict=False)


class PermissionIn(_Body):
    allow: list[str] | None = None
    deny: list[str] | None = None


class ResponsePermissionIn(_Body):
    max: int
    ttl: int


class TimeRangeIn(_Body):
    start: str | None = None
    end: str | None = None


class JwtSettingsIn(_Body):
    pub: PermissionIn | None = None
    sub: PermissionIn | None = None
    resp: ResponsePermissionIn | None = None
    subs: int | None = Field(None, ge=-1)
    data: int | None = Field(None, ge=-1)
    payload: int | None = Field(None, ge=-1)
    tags: list[str] | None = None
    bearer_token: bool | None = None
    allowed_connection_types: list[str] | None = None
    src: list[str] | None = None
    times: list[TimeRangeIn] | None = None
    times_location: str | None = None


class ResponsePermissionPatchIn(_Body):
    max: int | None = None
    ttl: int | None = None


class JwtSettingsPatchIn(JwtSettingsIn):
    resp: ResponsePermissionPatchIn | None = None  # type: ignore[assignment]


class CreateUserIn(_Body):
    name: str
    sk_group_id: str
    jwt_expires_in_secs: int | None = None
    jwt_settings: JwtSettingsIn | None = None


class RevocationIn(_Body):
    before: int


def parse_body(model: type[_Body], payload: Any) -> Any:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(400, f"invalid request body: {where}: {first['msg']}") from None


# ---------------------------------------------------------------- validation helpers


def check_name(name: str, what: str) -> None:
    if not name or name != name.strip() or len(name) > _NAME_MAX or _CONTROL_CHARS.search(name):
        raise ApiError(
            422,
            f"{what} must be 1 to {_NAME_MAX} printable characters without surrounding spaces",
        )


def _valid_subject(subject: str, *, queue_allowed: bool) -> bool:
    parts = subject.split(" ")
    if len(parts) == 2 and queue_allowed:
        subject, queue = parts
        if not queue or any(c in queue for c in ".*>"):
            return False
    elif len(parts) != 1:
        return False
    tokens = subject.split(".")
    for index, token in enumerate(tokens):
        if not token or _CONTROL_CHARS.search(token):
            return False
        if ">" in token and (token != ">" or index != len(tokens) - 1):
            return False
        if "*" in token and token != "*":
            return False
    return True


def check_settings(settings: dict[str, Any]) -> None:
    for direction in ("pub", "sub"):
        for rule in ("allow", "deny"):
            for subject in settings.get(direction, {}).get(rule, []):
                if not _valid_subject(subject, queue_allowed=direction == "sub"):
                    raise ApiError(
                        422, f"jwt_settings.{direction}.{rule} has an invalid subject {subject!r}"
                    )
    resp = settings.get("resp")
    if resp is not None and (resp["max"] < 0 or resp["ttl"] < 0):
        raise ApiError(422, "jwt_settings.resp max and ttl must not be negative")


def settings_from_create(body: JwtSettingsIn | None) -> dict[str, Any]:
    if body is None:
        return {}
    settings = body.model_dump(exclude_none=True)
    for direction in ("pub", "sub"):
        if direction in settings and not settings[direction]:
            del settings[direction]
    return settings


def apply_settings_patch(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Merge-patch semantics: absent keys stay, null resets to the default, values replace."""
    checked = parse_body(JwtSettingsPatchIn, {k: v for k, v in patch.items() if v is not None})
    values = checked.model_dump(exclude_none=True)
    merged = dict(current)
    for key, value in patch.items():
        if key not in JwtSettingsPatchIn.model_fields:
            continue
        if value is None:
            merged.pop(key, None)
        elif key in ("pub", "sub"):
            rules = dict(merged.get(key, {}))
            for rule in ("allow", "deny"):
                if rule in value:
                    if value[rule] is None:
                        rules.pop(rule, None)
                    else:
                        rules[rule] = list(value[rule])
            if rules:
                merged[key] = rules
            else:
                merged.pop(key, None)
        elif key == "resp":
            resp = {"max": 1, "ttl": 0, **merged.get("resp", {})}
            resp.update(values["resp"])
            merged["resp"] = resp
        else:
            merged[key] = values[key]
    return merged
