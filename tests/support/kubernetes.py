"""Checking Kubernetes objects offline, as strictly as `kubectl apply` checks them.

Core objects are checked against the `kubernetes` client's models. Building a model alone is not
enough: `from_dict` reads only the fields the model has, so a misspelt field would vanish without
a word. `model_problems` therefore first walks the object against each model's `openapi_types`
and `attribute_map`, naming every unknown key and missing required field by its path; then
`build_problems` builds the model as the client deserializes an API answer, which enforces the
types.

Custom resources are checked against their CRD's schema from the shared conformance folder. No
CRD schema says `additionalProperties: false`: the API server prunes unknown fields instead, and
with kubectl's default `--validate=strict` it refuses them. `strict_schema` adds that rule
wherever the schema does not keep unknown fields, so jsonschema refuses what kubectl would.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes.client.models
import pydantic
from kubernetes.client import ApiClient

# API groups whose kinds the client's models describe; anything else is a custom resource.
BUILT_IN_GROUPS = frozenset(
    {"", "apps", "batch", "policy", "networking.k8s.io", "rbac.authorization.k8s.io"}
)
_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "float": (int, float),
    "datetime": (str,),
    "bytes": (str,),
}
_LIST = re.compile(r"^List\[(.*)\]$")
_DICT = re.compile(r"^Dict\[str, (.*)\]$")


def core_model(document: dict[str, Any]) -> str | None:
    """The client's model name for a built-in kind (`V1Deployment`), None for a custom one."""
    group, _, version = str(document.get("apiVersion", "")).rpartition("/")
    if group not in BUILT_IN_GROUPS:
        return None
    name = f"{version[:1].upper()}{version[1:]}{document.get('kind', '')}"
    return name if hasattr(kubernetes.client.models, name) else None


def model_problems(value: Any, type_name: str, path: str = "") -> list[str]:
    """Every key of `value` the model `type_name` does not know, every required field it lacks
    and every scalar of the wrong type, each as `path: problem`."""
    where = path or "(top)"
    if match := _LIST.match(type_name):
        if not isinstance(value, list):
            return [f"{where}: must be a list, not {type(value).__name__}"]
        return [
            problem
            for index, item in enumerate(value)
            for problem in model_problems(item, match.group(1), f"{path}[{index}]")
        ]
    if match := _DICT.match(type_name):
        if not isinstance(value, dict):
            return [f"{where}: must be a mapping, not {type(value).__name__}"]
        return [
            problem
            for key, item in value.items()
            for problem in model_problems(item, match.group(1), _join(path, key))
        ]
    if type_name == "object":
        return []  # int-or-string and free-form fields
    if type_name in _PRIMITIVES:
        allowed = _PRIMITIVES[type_name]
        # YAML's true is an int to isinstance; an int field must not take it.
        if isinstance(value, allowed) and not (type_name == "int" and isinstance(value, bool)):
            return []
        return [f"{where}: must be {type_name}, not {type(value).__name__} {value!r}"]
    model = getattr(kubernetes.client.models, type_name)
    if not isinstance(value, dict):
        return [f"{where}: must be a {type_name} mapping, not {type(value).__name__}"]
    attributes = {key: attribute for attribute, key in model.attribute_map.items()}
    problems = []
    for key, item in value.items():
        if key not in attributes:
            problems.append(f"{_join(path, key)}: unknown field of {type_name}")
        else:
            problems += model_problems(item, model.openapi_types[attributes[key]], _join(path, key))
    for attribute, field in model.model_fields.items():
        # A field named like a Python keyword (`except`) is `var_except` here, with its alias.
        key = field.serialization_alias or attribute
        if field.is_required() and key not in value:
            problems.append(f"{_join(path, key)}: required by {type_name}, missing")
    return problems


def build_problems(document: dict[str, Any], type_name: str) -> list[str]:
    """What building the model the way the client deserializes an API answer refuses."""
    try:
        ApiClient().deserialize(json.dumps(document), type_name, "application/json")
    except pydantic.ValidationError as error:
        return [f"{type_name}: {e['loc']}: {e['msg']}" for e in error.errors()]
    return []


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` refusing unknown fields wherever it lists properties and keeps no unknown ones."""
    strict = copy.deepcopy(schema)

    def tighten(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for child in node.values():
                tighten(child)
        elif isinstance(node, list):
            for child in node:
                tighten(child)

    tighten(strict)
    return strict


def schema_problems(document: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Every place `document` breaks `schema` (Draft 7), as `path: message`."""
    validator = jsonschema.Draft7Validator(schema)
    return sorted(
        f"{_path(error.absolute_path) or '(top)'}: {error.message}"
        for error in validator.iter_errors(document)
    )


def kubectl() -> str | None:
    return shutil.which("kubectl")


def kustomize(directory: Path) -> str:
    """`kubectl kustomize DIRECTORY`, as `make manifests` runs it."""
    binary = kubectl()
    assert binary is not None, "kubectl is not installed"
    result = subprocess.run(
        [binary, "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return result.stdout


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text = f"{text}[{part}]" if isinstance(part, int) else _join(text, part)
    return text
