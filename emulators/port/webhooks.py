"""Invoking self-service actions the way Port does: render the action's body template, sign it
with the client secret, POST it to the action's webhook URL.

Port evaluates jq between `{{ }}`; the emulator evaluates the subset action definitions in this
repository use, paths such as `.run.id` or `.entity.identifier` (a missing step gives null, as in
jq). A string that is one expression keeps the value's JSON type; expressions embedded in longer
text are substituted as text. Anything else is refused, so a definition that would need real jq
fails here loudly rather than sending something Port would not.

Deliveries can be spoiled on purpose to test a receiver: a wrong signature, a stale or future
timestamp, no signature at all, or the very same request sent again (a replay).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from idp.portwebhook import SIGNATURE_HEADER, signed_headers

Mode = Literal["signed", "bad-signature", "stale", "future", "unsigned"]
MODES: tuple[Mode, ...] = ("signed", "bad-signature", "stale", "future", "unsigned")
# Far enough outside any sensible window (Port's receivers default to 5 minutes).
SKEW_SECONDS = 3600

_WHOLE = re.compile(r"^\{\{\s*(.*?)\s*\}\}$", re.DOTALL)
_EMBEDDED = re.compile(r"\{\{\s*(.*?)\s*\}\}", re.DOTALL)
_PATH = re.compile(r"^(\.[A-Za-z_][A-Za-z0-9_]*)+$")


class TemplateError(ValueError):
    """The body template uses jq the emulator does not evaluate."""


def render(template: Any, context: dict[str, Any]) -> Any:
    if isinstance(template, dict):
        return {key: render(value, context) for key, value in template.items()}
    if isinstance(template, list):
        return [render(item, context) for item in template]
    if not isinstance(template, str):
        return template
    whole = _WHOLE.match(template)
    if whole and "{{" not in whole.group(1):
        return _evaluate(whole.group(1), context)

    def text(match: re.Match[str]) -> str:
        value = _evaluate(match.group(1), context)
        return value if isinstance(value, str) else json.dumps(value)

    return _EMBEDDED.sub(text, template)


def _evaluate(expression: str, context: dict[str, Any]) -> Any:
    if expression == ".":
        return context
    if not _PATH.match(expression):
        raise TemplateError(
            f"the emulator evaluates only path expressions such as .run.id; got {expression!r}"
        )
    value: Any = context
    for step in expression.split(".")[1:]:
        value = value.get(step) if isinstance(value, dict) else None
    return value


def invocation_context(
    action: dict[str, Any],
    run_id: str,
    inputs: dict[str, Any],
    entity: dict[str, Any] | None,
    user: str,
) -> dict[str, Any]:
    """What Port exposes to an action's body template."""
    trigger = action["trigger"]
    return {
        "action": {
            "identifier": action["identifier"],
            "title": action["title"],
            "blueprint": trigger.get("blueprintIdentifier"),
        },
        "run": {"id": run_id},
        "inputs": inputs,
        "entity": entity or {},
        "trigger": {
            "by": {"user": {"email": user}},
            "origin": "UI",
            "operation": trigger["operation"],
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    }


@dataclass(frozen=True)
class Delivery:
    """One request as sent, kept so it can be replayed byte for byte."""

    url: str
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class Invocation:
    run_id: str | None
    status_code: int
    response: Any


def prepare(url: str, body: bytes, secret: str, mode: Mode) -> Delivery:
    headers = {"content-type": "application/json"}
    moment = int(time.time())
    if mode == "stale":
        moment -= SKEW_SECONDS
    elif mode == "future":
        moment += SKEW_SECONDS
    if mode != "unsigned":
        headers |= signed_headers(secret, body, moment)
    if mode == "bad-signature":
        headers[SIGNATURE_HEADER] = signed_headers("not-" + secret, body, moment)[SIGNATURE_HEADER]
    return Delivery(url=url, body=body, headers=headers)


async def send(client: httpx.AsyncClient, delivery: Delivery, run_id: str | None) -> Invocation:
    response = await client.post(delivery.url, content=delivery.body, headers=delivery.headers)
    try:
        answer: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        answer = response.text
    return Invocation(run_id=run_id, status_code=response.status_code, response=answer)
