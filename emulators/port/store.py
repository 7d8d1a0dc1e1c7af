"""The emulated Port organisation: blueprints, entities, self-service actions, their runs, and
the access tokens handed out. State and rules, no HTTP: handlers turn `ApiError` into
`{ok: false, error, message}` and the records into Port's response bodies.

Port's rules kept here because clients must live with them: request bodies are checked like
Port's route schemas (`additionalProperties: false`, 422 `invalid_request`); a run reaches a
terminal status once, whether through PATCH or a log's `terminationStatus`; entities must fit
their blueprint's properties and relations, and relations must point at existing entities.
"""

from __future__ import annotations

import re
import secrets
import string
import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

IDENTIFIER = re.compile(r"^[A-Za-z0-9@_.+:\\/=-]+$")
TERMINAL = ("SUCCESS", "FAILURE")
_RUN_ID_ALPHABET = string.ascii_lowercase + string.digits


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------- request bodies


class _Body(BaseModel):
    # Port's route schemas say additionalProperties: false.
    model_config = ConfigDict(extra="forbid")


class TokenIn(_Body):
    client_id: str = Field(alias="clientId", min_length=1)
    client_secret: str = Field(alias="clientSecret", min_length=1)


Links = str | list[str]


class RunPatchIn(_Body):
    status: Literal["SUCCESS", "FAILURE"] | None = None
    status_label: str | None = Field(None, alias="statusLabel")
    summary: str | None = None
    link: Links | None = None
    external_run_id: str | None = Field(None, alias="externalRunId")


class RunLogIn(_Body):
    message: str = Field(min_length=1)
    termination_status: Literal["SUCCESS", "FAILURE"] | None = Field(
        None, alias="terminationStatus"
    )
    status_label: str | None = Field(None, alias="statusLabel")
    link: Links | None = None


class EntityIn(_Body):
    identifier: str
    title: str | None = None
    icon: str | None = None
    team: str | list[str] | None = None
    properties: dict[str, Any] = {}
    relations: dict[str, str | list[str] | None] = {}


class SchemaIn(_Body):
    properties: dict[str, dict[str, Any]] = {}
    required: list[str] = []


class RelationIn(_Body):
    target: str
    title: str | None = None
    description: str | None = None
    required: bool = False
    many: bool = False


class BlueprintIn(_Body):
    identifier: str
    title: str = Field(min_length=1)
    icon: str | None = None
    description: str | None = None
    schema_: SchemaIn = Field(alias="schema")
    relations: dict[str, RelationIn] = {}
    calculation_properties: dict[str, Any] = Field({}, alias="calculationProperties")
    mirror_properties: dict[str, Any] = Field({}, alias="mirrorProperties")


class UserInputsIn(_Body):
    properties: dict[str, dict[str, Any]] = {}
    required: list[str] = []
    order: list[str] = []


class TriggerIn(_Body):
    type: Literal["self-service"]
    operation: Literal["CREATE", "DAY-2", "DELETE"]
    blueprint_identifier: str | None = Field(None, alias="blueprintIdentifier")
    user_inputs: UserInputsIn = Field(UserInputsIn(), alias="userInputs")


class InvocationIn(_Body):
    type: Literal["WEBHOOK"]
    url: str = Field(pattern=r"^https?://")
    agent: bool = False
    synchronized: bool = False
    method: Literal["POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: dict[str, str] = {}
    body: Any = None


class ActionIn(_Body):
    identifier: str
    title: str = Field(min_length=1)
    icon: str | None = None
    description: str | None = None
    trigger: TriggerIn
    invocation_method: InvocationIn = Field(alias="invocationMethod")
    required_approval: bool = Field(False, alias="requiredApproval")
    publish: bool = True


def parse(model: type[_Body], payload: Any) -> Any:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "/".join(str(p) for p in first["loc"]) or "body"
        if first["type"] == "extra_forbidden":
            message = f"body/{where} must NOT have additional properties"
        else:
            message = f"body/{where} {first['msg']}"
        raise ApiError(422, "invalid_request", message) from None


def check_identifier(value: str, what: str) -> None:
    if not value or len(value) > 1000 or not IDENTIFIER.match(value):
        raise ApiError(422, "invalid_request", f"{what} {value!r} must match {IDENTIFIER.pattern}")


# ---------------------------------------------------------------- records


class RunLog(BaseModel):
    message: str
    termination_status: str | None = None
    status_label: str | None = None
    link: list[str] = []
    created_at: str


class Run(BaseModel):
    id: str
    action: str
    status: str = "IN_PROGRESS"
    status_label: str | None = None
    summary: str | None = None
    link: list[str] = []
    external_run_id: str | None = None
    inputs: dict[str, Any] = {}
    entity: str | None = None
    created_at: str
    updated_at: str
    ended_at: str | None = None
    logs: list[RunLog] = []

    @property
    def terminations(self) -> list[str]:
        """Every terminationStatus its logs carried (Port allows exactly one)."""
        return [log.termination_status for log in self.logs if log.termination_status]

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "statusLabel": self.status_label,
            "summary": self.summary,
            "link": self.link,
            "externalRunId": self.external_run_id,
            "action": {"identifier": self.action},
            "properties": self.inputs,
            "entity": {"identifier": self.entity} if self.entity else None,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "endedAt": self.ended_at,
        }


def _links(value: Links | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class PortState:
    """One organisation. Callers serialise access (one event loop)."""

    def __init__(self, client_id: str, client_secret: str, token_ttl: float) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl = token_ttl
        self.tokens: dict[str, float] = {}
        self.issued_tokens: list[str] = []
        self.blueprints: dict[str, dict[str, Any]] = {}
        self.actions: dict[str, dict[str, Any]] = {}
        self.entities: dict[tuple[str, str], dict[str, Any]] = {}
        self.runs: dict[str, Run] = {}

    # -- tokens

    def issue_token(self, body: Any) -> dict[str, Any]:
        request = parse(TokenIn, body)
        id_ok = secrets.compare_digest(request.client_id.encode(), self.client_id.encode())
        secret_ok = secrets.compare_digest(
            request.client_secret.encode(), self.client_secret.encode()
        )
        if not (id_ok and secret_ok):
            raise ApiError(401, "unauthorized", "The client id or client secret is incorrect")
        token = "pat_" + secrets.token_urlsafe(32)
        self.tokens[token] = time.monotonic() + self.token_ttl
        self.issued_tokens.append(token)
        ttl = int(self.token_ttl) if float(self.token_ttl).is_integer() else self.token_ttl
        return {"accessToken": token, "expiresIn": ttl, "tokenType": "Bearer"}

    def check_token(self, authorization: str) -> None:
        scheme, _, token = authorization.partition(" ")
        expires = self.tokens.get(token) if scheme.lower() == "bearer" else None
        if expires is None:
            raise ApiError(401, "unauthorized", "Missing or unknown access token")
        if time.monotonic() >= expires:
            raise ApiError(401, "unauthorized", "The access token has expired")

    def expire_tokens(self) -> int:
        expired = time.monotonic()
        for token in self.tokens:
            self.tokens[token] = min(self.tokens[token], expired)
        return len(self.tokens)

    # -- blueprints and actions

    def create_blueprint(self, body: Any) -> dict[str, Any]:
        blueprint = self._valid_blueprint(body)
        if blueprint["identifier"] in self.blueprints:
            raise ApiError(
                409, "identifier_taken", f"A blueprint {blueprint['identifier']!r} exists already"
            )
        return self._store_blueprint(blueprint, created=True)

    def replace_blueprint(self, identifier: str, body: Any) -> dict[str, Any]:
        blueprint = self._valid_blueprint(body)
        if identifier not in self.blueprints:
            raise ApiError(404, "not_found", f"Blueprint {identifier!r} was not found")
        if blueprint["identifier"] != identifier:
            raise ApiError(422, "invalid_request", "body/identifier must match the URL")
        return self._store_blueprint(blueprint, created=False)

    def blueprint(self, identifier: str) -> dict[str, Any]:
        found = self.blueprints.get(identifier)
        if found is None:
            raise ApiError(404, "not_found", f"Blueprint {identifier!r} was not found")
        return found

    def _valid_blueprint(self, body: Any) -> dict[str, Any]:
        parsed = parse(BlueprintIn, body)
        check_identifier(parsed.identifier, "blueprint identifier")
        for name, relation in parsed.relations.items():
            if relation.target not in self.blueprints and relation.target != parsed.identifier:
                raise ApiError(
                    404,
                    "not_found",
                    f"Relation {name!r} targets blueprint {relation.target!r}, which does not "
                    "exist",
                )
        for name, prop in parsed.schema_.properties.items():
            if prop.get("type") not in ("string", "number", "boolean", "object", "array"):
                raise ApiError(
                    422, "invalid_request", f"body/schema/properties/{name}/type is not valid"
                )
        return parsed.model_dump(by_alias=True, exclude_none=True)

    def _store_blueprint(self, blueprint: dict[str, Any], *, created: bool) -> dict[str, Any]:
        stamp = now()
        previous = self.blueprints.get(blueprint["identifier"], {})
        stored = {
            **blueprint,
            "createdAt": previous.get("createdAt", stamp) if not created else stamp,
            "updatedAt": stamp,
        }
        self.blueprints[blueprint["identifier"]] = stored
        return stored

    def create_action(self, body: Any) -> dict[str, Any]:
        action = self._valid_action(body)
        if action["identifier"] in self.actions:
            raise ApiError(
                409, "identifier_taken", f"An action {action['identifier']!r} exists already"
            )
        return self._store_action(action)

    def replace_action(self, identifier: str, body: Any) -> dict[str, Any]:
        action = self._valid_action(body)
        if identifier not in self.actions:
            raise ApiError(404, "not_found", f"Action {identifier!r} was not found")
        if action["identifier"] != identifier:
            raise ApiError(422, "invalid_request", "body/identifier must match the URL")
        return self._store_action(action)

    def action(self, identifier: str) -> dict[str, Any]:
        found = self.actions.get(identifier)
        if found is None:
            raise ApiError(404, "not_found", f"Action {identifier!r} was not found")
        return found

    def _valid_action(self, body: Any) -> dict[str, Any]:
        parsed = parse(ActionIn, body)
        check_identifier(parsed.identifier, "action identifier")
        target = parsed.trigger.blueprint_identifier
        if target is not None and target not in self.blueprints:
            raise ApiError(404, "not_found", f"Blueprint {target!r} was not found")
        if parsed.trigger.operation != "CREATE" and target is None:
            raise ApiError(
                422,
                "invalid_request",
                f"a {parsed.trigger.operation} action needs trigger.blueprintIdentifier",
            )
        inputs = parsed.trigger.user_inputs
        unknown = [name for name in inputs.required if name not in inputs.properties]
        if unknown:
            raise ApiError(
                422, "invalid_request", f"required inputs {unknown} are not defined properties"
            )
        return parsed.model_dump(by_alias=True, exclude_none=True)

    def _store_action(self, action: dict[str, Any]) -> dict[str, Any]:
        stored = {**action, "updatedAt": now()}
        self.actions[action["identifier"]] = stored
        return stored

    # -- entities

    def entity(self, blueprint: str, identifier: str) -> dict[str, Any]:
        self.blueprint(blueprint)
        found = self.entities.get((blueprint, identifier))
        if found is None:
            raise ApiError(
                404, "not_found", f"Entity {identifier!r} of blueprint {blueprint!r} not found"
            )
        return found

    def upsert_entity(
        self, blueprint: str, body: Any, *, upsert: bool, merge: bool, run_id: str | None
    ) -> tuple[dict[str, Any], bool]:
        definition = self.blueprint(blueprint)
        request = parse(EntityIn, body)
        check_identifier(request.identifier, "entity identifier")
        if run_id is not None:
            self.run(run_id)
        key = (blueprint, request.identifier)
        current = self.entities.get(key)
        if current is not None and not upsert:
            raise ApiError(409, "identifier_taken", f"Entity {request.identifier!r} exists already")
        properties = dict(request.properties)
        relations = dict(request.relations)
        if current is not None and merge:
            properties = {**current["properties"], **properties}
            relations = {**current["relations"], **relations}
        self._check_properties(blueprint, definition, properties)
        self._check_relations(blueprint, definition, relations)
        stamp = now()
        entity = {
            "identifier": request.identifier,
            "title": request.title if request.title is not None else (current or {}).get("title"),
            "blueprint": blueprint,
            "properties": properties,
            "relations": relations,
            "createdAt": (current or {}).get("createdAt", stamp),
            "updatedAt": stamp,
            "runIds": [*(current or {}).get("runIds", []), *([run_id] if run_id else [])],
        }
        self.entities[key] = entity
        return entity, current is None

    def list_entities(self, blueprint: str) -> list[dict[str, Any]]:
        self.blueprint(blueprint)
        return [e for (bp, _), e in self.entities.items() if bp == blueprint]

    def _check_properties(
        self, blueprint: str, definition: dict[str, Any], properties: dict[str, Any]
    ) -> None:
        schema = definition["schema"]
        for name, value in properties.items():
            spec = schema["properties"].get(name)
            if spec is None:
                raise ApiError(
                    422,
                    "invalid_request",
                    f"property {name!r} is not defined in blueprint {blueprint!r}",
                )
            if value is not None and not _fits(spec, value):
                raise ApiError(
                    422,
                    "invalid_request",
                    f"property {name!r} of blueprint {blueprint!r} must be "
                    f"{spec.get('format') or spec['type']}; got {value!r}",
                )
        missing = [name for name in schema.get("required", []) if properties.get(name) is None]
        if missing:
            raise ApiError(
                422, "invalid_request", f"required properties {missing} of {blueprint!r} missing"
            )

    def _check_relations(
        self, blueprint: str, definition: dict[str, Any], relations: dict[str, Any]
    ) -> None:
        declared = definition.get("relations", {})
        for name, value in relations.items():
            relation = declared.get(name)
            if relation is None:
                raise ApiError(
                    422,
                    "invalid_request",
                    f"relation {name!r} is not defined in blueprint {blueprint!r}",
                )
            targets = [] if value is None else [value] if isinstance(value, str) else value
            if isinstance(value, list) and not relation.get("many"):
                raise ApiError(422, "invalid_request", f"relation {name!r} takes one identifier")
            for target in targets:
                if (relation["target"], target) not in self.entities:
                    raise ApiError(
                        404,
                        "not_found",
                        f"relation {name!r} points at {relation['target']} entity {target!r}, "
                        "which does not exist",
                    )

    # -- runs

    def create_run(
        self, action: str, inputs: dict[str, Any] | None = None, entity: str | None = None
    ) -> Run:
        stamp = now()
        run_id = "r_" + "".join(secrets.choice(_RUN_ID_ALPHABET) for _ in range(16))
        run = Run(
            id=run_id,
            action=action,
            inputs=inputs or {},
            entity=entity,
            created_at=stamp,
            updated_at=stamp,
        )
        self.runs[run_id] = run
        return run

    def run(self, run_id: str) -> Run:
        found = self.runs.get(run_id)
        if found is None:
            raise ApiError(404, "not_found", f"Action run {run_id!r} was not found")
        return found

    def patch_run(self, run_id: str, body: Any) -> Run:
        run = self.run(run_id)
        patch = parse(RunPatchIn, body)
        if patch.status is not None:
            self._terminate(run, patch.status)
        if patch.status_label is not None:
            run.status_label = patch.status_label
        if patch.summary is not None:
            run.summary = patch.summary
        if patch.external_run_id is not None:
            run.external_run_id = patch.external_run_id
        run.link = _merge_links(run.link, _links(patch.link))
        run.updated_at = now()
        return run

    def add_log(self, run_id: str, body: Any) -> RunLog:
        run = self.run(run_id)
        request = parse(RunLogIn, body)
        if request.termination_status is not None:
            self._terminate(run, request.termination_status)
        if request.status_label is not None:
            run.status_label = request.status_label
        links = _links(request.link)
        run.link = _merge_links(run.link, links)
        log = RunLog(
            message=request.message,
            termination_status=request.termination_status,
            status_label=request.status_label,
            link=links,
            created_at=now(),
        )
        run.logs.append(log)
        run.updated_at = log.created_at
        return log

    @staticmethod
    def _terminate(run: Run, status: str) -> None:
        if run.status in TERMINAL:
            raise ApiError(
                422,
                "run_already_terminated",
                f"Action run {run.id} already finished with status {run.status}; its status "
                "cannot change",
            )
        run.status = status
        run.ended_at = now()


def _merge_links(current: list[str], new: list[str]) -> list[str]:
    return [*current, *(link for link in new if link not in current)]


def _fits(spec: dict[str, Any], value: Any) -> bool:
    kind = spec.get("type")
    if kind == "string":
        if not isinstance(value, str):
            return False
        if "enum" in spec and value not in spec["enum"]:
            return False
        if spec.get("format") == "date-time":
            try:
                datetime.fromisoformat(value)
            except ValueError:
                return False
        if spec.get("format") == "url":
            return value.startswith(("http://", "https://"))
        return True
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    return isinstance(value, list)
