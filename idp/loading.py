"""Reading resource files: YAML documents in, validated resources or one line per problem out.

Everything is checked before anything is returned, so a caller either gets a complete, valid set
or changes nothing.
"""

import difflib
import re
import types
import typing
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import annotated_types
import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from idp.models import API_VERSION, KINDS, Resource, Workload
from idp.names import shown
from idp.routes import RouteTarget, conflicts

MAX_FILE_BYTES = 1024 * 1024
SUFFIXES = (".yaml", ".yml")
# Values YAML aliases (*name) may add to one document by repeating what their anchors hold. A
# resource repeats a subject list or two; a "billion laughs" file repeats aliases of aliases
# until expanding them takes all memory and every walk over the document takes forever.
MAX_ALIASED_VALUES = 10_000

# Credentials belong in the secret stores the reconciler manages, never in a spec that is kept in
# git and carried in workflow history.
_SECRET_PATTERNS = {
    "an NATS nkey seed": re.compile(r"\bS[UAOC][A-Z2-7]{56}\b"),
    "an AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "a NATS user JWT": re.compile(r"-----BEGIN NATS USER JWT-----"),
}


class YamlRefused(yaml.MarkedYAMLError):
    """Well-formed YAML that is refused anyway: the problem says why and what is allowed."""


class YamlLoader(yaml.SafeLoader):
    """Safe loading that rejects a key given twice in one mapping, and aliases that make a
    document contain itself or expand too far.

    PyYAML silently keeps the last value, so a pasted second `owner:` would replace the first
    without a word; like unknown fields, that is an error here.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._open: list[yaml.Node | None] = []
        self._aliased = 0
        self._sizes: dict[int, int] = {}

    def compose_document(self) -> yaml.Node:
        self._aliased = 0
        self._sizes = {}
        return super().compose_document()

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._open.append(parent)
        try:
            self._check_alias()
            return super().compose_node(parent, index)
        finally:
            self._open.pop()

    def _check_alias(self) -> None:
        if not self.check_event(yaml.AliasEvent):
            return
        event = self.peek_event()
        target = self.anchors.get(event.anchor)
        if target is None:
            return  # PyYAML reports an undefined alias itself
        if any(target is node for node in self._open):
            raise YamlRefused(
                problem=f"the alias *{event.anchor} is inside the value it repeats, so the "
                "document would contain itself; an alias may only repeat a value that ends "
                "before it",
                problem_mark=event.start_mark,
            )
        self._aliased += self._expanded_size(target)
        if self._aliased > MAX_ALIASED_VALUES:
            raise YamlRefused(
                problem=f"YAML aliases expand too far: they repeat more than "
                f"{MAX_ALIASED_VALUES} values in this document, and at most "
                f"{MAX_ALIASED_VALUES} are allowed",
                problem_mark=event.start_mark,
            )

    def _expanded_size(self, node: yaml.Node) -> int:
        """How many values `node` stands for once every alias in it is expanded; shared nodes
        are counted once per use but computed once, so a bomb is measured without expanding."""
        key = id(node)
        if key not in self._sizes:
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [part for pair in node.value for part in pair]
            self._sizes[key] = 1 + sum(self._expanded_size(child) for child in children)
        return self._sizes[key]

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
    if isinstance(error, YamlRefused):
        return f"{where}{problem}"
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
        problems.append(
            f"{', '.join(map(str, paths))}: no resources found, only empty documents; a file "
            f"must hold at least one {' or '.join(KINDS)}"
        )
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
        problems.append(f"{file}: is not UTF-8 text; it must be saved as UTF-8")
        return []
    try:
        documents = list(yaml.load_all(text, Loader=YamlLoader))
    except yaml.YAMLError as error:
        problems.append(f"{file}: {yaml_problem(error, text)}")
        return []
    except RecursionError:
        problems.append(f"{file}: {TOO_DEEP}")
        return []
    loaded = []
    for index, document in enumerate(documents, start=1):
        if document is None:
            continue
        where = f"{file}: document {index}"
        resource = parse_document(document, where, problems)
        if resource is not None:
            loaded.append(Loaded(str(file), index, resource))
    return loaded


TOO_DEEP = "nests too deeply to read; resource and platform files nest only a few levels deep"


def parse_document(document: Any, where: str, problems: list[str]) -> Resource | None:
    """Validate one decoded document; append a line per problem to `problems`."""
    if not isinstance(document, dict):
        problems.append(
            f"{where}: must be a mapping with apiVersion, kind, metadata and spec; "
            f"got {shown(document)}"
        )
        return None
    kinds = _one_of(list(KINDS))
    if "kind" not in document:
        hint = _spelt_otherwise(document, "kind")
        problems.append(f"{where}: kind: required field is missing{hint}; it must be {kinds}")
        return None
    kind = document["kind"]
    if not isinstance(kind, str) or kind not in KINDS:
        hint = _case_hint(kind, KINDS)
        if kind == "Platform":
            hint = " (a platform file is given with --platform, not applied)"
        problems.append(f"{where}: kind: must be {kinds}{hint}; got {shown(kind)}")
        return None
    if "apiVersion" not in document:
        hint = _spelt_otherwise(document, "apiVersion")
        problems.append(
            f"{where}: apiVersion: required field is missing{hint}; it must be {API_VERSION}"
        )
        return None
    if document["apiVersion"] != API_VERSION:
        got = shown(document["apiVersion"])
        problems.append(f"{where}: apiVersion: must be {API_VERSION}; got {got}")
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


def _spelt_otherwise(document: dict[Any, Any], field: str) -> str:
    """` (found apiversion, ...)` when a key of the document is the field in other letter case."""
    found = next((k for k in document if isinstance(k, str) and k.lower() == field.lower()), None)
    return f" (found {found}, which is spelt differently)" if found else ""


def describe_errors(error: ValidationError, model: type[BaseModel]) -> list[str]:
    """One `field.path: what is allowed` line per pydantic error, in the user's words.

    pydantic's own messages name Python classes ("instance of WorkloadSpec"), regular
    expressions and Python values ("None"); none of that is what a YAML author wrote."""
    lines = []
    for item in error.errors():
        loc = item["loc"]
        # A bad key of a mapping is reported at the mapping: `labels[2024]` would read as a list.
        field = _field_path(loc[:-2] if loc[-1:] == ("[key]",) else loc)
        message = _message(item, model)
        lines.append(f"{field}: {message}" if field else message)
    return lines


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _message(item: ErrorDetails, model: type[BaseModel]) -> str:
    kind = item["type"]
    loc = item["loc"]
    ctx = item.get("ctx", {})
    got = shown(item.get("input"))
    if kind == "extra_forbidden":
        allowed = _allowed_fields(model, loc[:-1])
        guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.75)
        hint = f" (did you mean {guess[0]}?)" if guess else ""
        return f"unknown field{hint}; allowed fields are {', '.join(allowed)}"
    if kind == "missing":
        return "required field is missing"
    if kind in ("value_error", "assertion_error"):
        # Our validators' messages already say what is allowed and quote the input.
        return str(ctx.get("error", item["msg"]))
    if loc[-1:] == ("[key]",):
        return f"keys must be text; got {got}{_quote_hint(item.get('input'))}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        fields = _allowed_fields(model, loc)
        if fields:
            return f"must be a mapping with the fields {', '.join(fields)}; got {got}"
        return f"must be a mapping of names to values; got {got}"
    if kind == "list_type":
        return f"must be a list (one '- item' per line, or [a, b]); got {got}"
    if kind == "string_type":
        return f"must be text; got {got}{_quote_hint(item.get('input'))}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be a whole number{_bounds(model, loc)}; got {got}"
    if kind in ("float_type", "float_parsing", "finite_number"):
        return f"must be a number{_bounds(model, loc)}; got {got}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false; got {got}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        field = _field_at(model, loc)
        number = "a whole number" if field and _unwrap(field.annotation) is int else "a number"
        return f"must be {number}{_bounds(model, loc) or _bound(ctx)}; got {got}"
    if kind in ("literal_error", "enum"):
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        hint = _case_hint(item.get("input"), choices)
        return f"must be {_one_of(choices)}{hint}; got {got}"
    if kind in ("too_short", "too_long"):
        count = ctx.get("actual_length", 0)
        if "min_length" in ctx:
            return f"must have at least {_items(ctx['min_length'])}; got {count or 'none'}"
        return f"must have at most {_items(ctx['max_length'])}; got {count}"
    if kind == "string_too_short":
        if ctx.get("min_length") == 1:
            return "must not be empty"
        return f"must be at least {ctx['min_length']} characters long; got {got}"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters long"
    # A type no field of ours produces today: pydantic's sentence, in the same voice as ours.
    message = str(item["msg"]).replace("Input should be", "must be")
    return f"{message}; got {got}"


def _quote_hint(value: Any) -> str:
    return ", so quote it" if isinstance(value, int | float) else ""


def _one_of(choices: list[str]) -> str:
    """`A`, `A or B`, `A, B or C`."""
    return " or ".join(filter(None, [", ".join(choices[:-1]), choices[-1]]))


def _items(count: int) -> str:
    return f"{count} item" if count == 1 else f"{count} items"


def _bound(ctx: dict[str, Any]) -> str:
    words = {"ge": "at least", "le": "at most", "gt": "greater than", "lt": "less than"}
    return next(f" {words[key]} {ctx[key]}" for key in words if key in ctx)


def _bounds(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """` from 1 to 65535` (or one bound) as the field declares them, so one message says both."""
    field = _field_at(model, loc)
    if field is None:
        return ""
    low = next((m.ge for m in field.metadata if isinstance(m, annotated_types.Ge)), None)
    high = next((m.le for m in field.metadata if isinstance(m, annotated_types.Le)), None)
    if low is not None and high is not None:
        return f" from {low} to {high}"
    if low is not None:
        return f" of at least {low}"
    if high is not None:
        return f" of at most {high}"
    return ""


def _case_hint(value: Any, choices: typing.Iterable[str]) -> str:
    if isinstance(value, str) and value.lower() in {c.lower() for c in choices}:
        return " (capital letters as shown)"
    return ""


def _field_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> FieldInfo | None:
    """The declaration of the field the error's location ends at, if it is a model's field."""
    if not loc or not isinstance(loc[-1], str):
        return None
    parent = _model_at(model, loc[:-1])
    if parent is None:
        return None
    return next((f for name, f in parent.model_fields.items() if loc[-1] in (name, f.alias)), None)


def _allowed_fields(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The fields allowed at the error's location, when a model is expected there."""
    found = _model_at(model, loc)
    return [f.alias or name for name, f in found.model_fields.items()] if found else []


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """Walk the model along the error's location to the model expected there."""
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
        return current
    return None


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
                f"{first.index}; the paths of two workloads on one hostname must not overlap, so "
                "split them or put them under one workload"
            )
            break
