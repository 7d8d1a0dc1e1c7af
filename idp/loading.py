"""Reading resource files: YAML documents in, validated resources or one line per problem out.

Everything is checked before anything is returned, so a caller either gets a complete, valid set
or changes nothing.
"""

import re
import types
import typing
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from idp.models import API_VERSION, KINDS, Resource, Workload
from idp.routes import RouteTarget, conflicts

MAX_FILE_BYTES = 1024 * 1024
SUFFIXES = (".yaml", ".yml")

# Credentials belong in the secret stores the reconciler manages, never in a spec that is kept in
# git and carried in workflow history.
_SECRET_PATTERNS = {
    "an NATS nkey seed": re.compile(r"\bS[UAOC][A-Z2-7]{56}\b"),
    "an AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "a NATS user JWT": re.compile(r"-----BEGIN NATS USER JWT-----"),
}


class YamlLoader(yaml.SafeLoader):
    """Safe loading that rejects a key given twice in one mapping.

    PyYAML silently keeps the last value, so a pasted second `owner:` would replace the first
    without a word; like unknown fields, that is an error here.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<:` merges may be overridden; that is their point
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # SafeLoader reports unhashable keys itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def yaml_problem(error: yaml.YAMLError, text: str) -> str:
    """`line L, column C: not valid YAML (what)` on one line, without PyYAML's excerpt."""
    if isinstance(error, yaml.reader.ReaderError):
        # Control characters: the reader reports an offset, not a mark, and a multi-line message.
        line = text.count("\n", 0, error.position) + 1
        column = error.position - text.rfind("\n", 0, error.position)
        return (
            f"line {line}, column {column}: not valid YAML "
            f"(character #x{error.character:04x} is not allowed)"
        )
    mark = getattr(error, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = getattr(error, "problem", None) or " ".join(str(error).split())
    return f"{where}not valid YAML ({problem})"


@dataclass(frozen=True)
class Loaded:
    source: str
    index: int
    resource: Resource


class InputError(Exception):
    """Every problem found in the input, one line each; nothing was started or changed."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def resource_files(path: Path) -> list[Path]:
    """The files `apply -f` reads: the file itself, or a directory's YAML files (not recursive)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in SUFFIXES)
    return [path]


def load(paths: list[Path]) -> list[Loaded]:
    problems: list[str] = []
    loaded: list[Loaded] = []
    for path in paths:
        files = resource_files(path) if path.exists() else []
        if not files:
            problems.append(f"{path}: no such file, or a directory with no .yaml/.yml files")
        for file in files:
            loaded += _load_file(file, problems)
    _check_duplicates(loaded, problems)
    _check_path_conflicts(loaded, problems)
    if not loaded and not problems:
        # Like kubectl: an apply that would silently do nothing is more likely a mistake.
        problems.append(f"{', '.join(map(str, paths))}: no resources found (empty documents only)")
    if problems:
        raise InputError(problems)
    return loaded


def _load_file(file: Path, problems: list[str]) -> list[Loaded]:
    size = file.stat().st_size
    if size > MAX_FILE_BYTES:
        problems.append(f"{file}: is {size} bytes; at most {MAX_FILE_BYTES} bytes are allowed")
        return []
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        problems.append(f"{file}: is not UTF-8 text")
        return []
    try:
        documents = list(yaml.load_all(text, Loader=YamlLoader))
    except yaml.YAMLError as error:
        problems.append(f"{file}: {yaml_problem(error, text)}")
        return []
    except RecursionError:
        problems.append(f"{file}: nests too deeply to read; no resource is shaped like that")
        return []
    loaded = []
    for index, document in enumerate(documents, start=1):
        if document is None:
            continue
        where = f"{file}: document {index}"
        try:
            resource = parse_document(document, where, problems)
        except RecursionError:
            # A YAML alias can make a document contain itself, which every walk follows forever.
            problems.append(f"{where}: contains itself through a YAML alias (*name)")
            continue
        if resource is not None:
            loaded.append(Loaded(str(file), index, resource))
    return loaded


def parse_document(document: Any, where: str, problems: list[str]) -> Resource | None:
    """Validate one decoded document; append a line per problem to `problems`."""
    if not isinstance(document, dict):
        problems.append(f"{where}: must be a mapping with apiVersion, kind, metadata and spec")
        return None
    kind = document.get("kind")
    if kind not in KINDS:
        allowed = ", ".join(KINDS)
        problems.append(f"{where}: kind: must be one of {allowed}; got {kind!r}")
        return None
    if document.get("apiVersion") != API_VERSION:
        got = document.get("apiVersion")
        problems.append(f"{where}: apiVersion: must be {API_VERSION}; got {got!r}")
        return None
    before = len(problems)
    _check_no_secrets(document, "", where, problems)
    if len(problems) > before:
        return None
    model = KINDS[kind]
    try:
        return model.model_validate(document)
    except ValidationError as error:
        problems.extend(f"{where}: {line}" for line in describe_errors(error, model))
        return None


def describe_errors(error: ValidationError, model: type[BaseModel]) -> list[str]:
    """One `field.path: what is allowed` line per pydantic error."""
    lines = []
    for item in error.errors():
        loc = item["loc"]
        field = _field_path(loc) or "(document)"
        lines.append(f"{field}: {_message(item, model)}")
    return lines


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _message(item: Any, model: type[BaseModel]) -> str:
    kind = item["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_fields(model, item["loc"][:-1])
        return f"unknown field; allowed fields are {', '.join(allowed)}"
    if kind == "missing":
        return "required field is missing"
    message = str(item["msg"])
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind not in ("value_error", "assertion_error") and "input" in item:
        message += f"; got {item['input']!r}"
    return message


def _allowed_fields(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """Walk the model along the error's location to list the fields allowed there."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, str) and isinstance(current, type) and issubclass(current, BaseModel):
            field = next(
                (f for name, f in current.model_fields.items() if part in (name, f.alias)), None
            )
            current = field.annotation if field else None
        elif isinstance(part, int):
            args = typing.get_args(current)
            current = args[0] if args else None
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or name for name, f in current.model_fields.items()]
    return []


def _unwrap(annotation: Any) -> Any:
    """Strip Optional/Annotated so the walk reaches the model."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            models = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = models[0] if len(models) == 1 else annotation
            if len(models) != 1:
                return annotation
        else:
            return annotation


def _check_no_secrets(value: Any, field: str, where: str, problems: list[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _check_no_secrets(item, f"{field}.{key}" if field else str(key), where, problems)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_no_secrets(item, f"{field}[{index}]", where, problems)
    elif isinstance(value, str):
        for what, pattern in _SECRET_PATTERNS.items():
            if pattern.search(value):
                problems.append(
                    f"{where}: {field or '(document)'}: looks like {what}; specs must not hold "
                    "credentials (the reconciler issues and delivers them)"
                )
                return


def _check_duplicates(loaded: list[Loaded], problems: list[str]) -> None:
    seen: dict[tuple[str, str], Loaded] = {}
    for item in loaded:
        key = (item.resource.kind, item.resource.workflow_id)
        if key in seen:
            first = seen[key]
            problems.append(
                f"{item.source}: document {item.index}: metadata.name: {item.resource.kind} "
                f"{item.resource.workflow_id.split('/', 1)[1]!r} is already declared in "
                f"{first.source} document {first.index}; each resource may appear once per apply"
            )
        else:
            seen[key] = item


def _check_path_conflicts(loaded: list[Loaded], problems: list[str]) -> None:
    """Workloads of one apply whose paths overlap on one hostname: the aggregator would accept
    whichever registered first and refuse the other, so the apply is refused instead, naming the
    document that claimed the path first."""
    held: dict[str, list[tuple[Loaded, RouteTarget]]] = {}
    for item in loaded:
        if not isinstance(item.resource, Workload):
            continue
        metadata, spec = item.resource.metadata, item.resource.spec
        for index, target in enumerate(spec.api):
            claim = RouteTarget.of(metadata.system, metadata.name, spec.namespace, index, target)
            claimed = held.setdefault(target.aggregator, [])
            clash = next(
                ((first, c) for first, other in claimed for c in conflicts(claim, [other])), None
            )
            if clash is None:
                claimed.append((item, claim))
                continue
            first, conflict = clash
            problems.append(
                f"{item.source}: document {item.index}: spec.api[{index}].paths: "
                f"{conflict.message(target.aggregator)}, declared in {first.source} document "
                f"{first.index}; split the paths or put them under one workload"
            )
            break
