"""Sections of a Workload spec or of the platform file that a capability owns.

The built-in capabilities' sections are ordinary fields; a plugin's (`spec.postgres`, say) is not
known when the models are defined, so the models accept it only when an installed capability owns
it, validate it with that capability's model, and answer any other name as the unknown field it
is, with the same error a built-in model gives.
"""

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_snake


def get(model: BaseModel, field: str) -> Any:
    """The section `field` of `model` (as users write it), or None when absent."""
    name = to_snake(field)
    if name in type(model).model_fields:
        return getattr(model, name)
    return (model.model_extra or {}).get(field)


def field_names(model: type[BaseModel]) -> set[str]:
    """Every name a field may be written by (alias and Python name)."""
    return {n for name, f in model.model_fields.items() for n in (name, f.alias) if n}


def validate_with_sections(
    model: type[BaseModel],
    data: Any,
    handler: Callable[[Any], Any],
    sections: Mapping[str, type[BaseModel]],
) -> Any:
    """A wrap validator's body: the model's own fields as usual, each of `sections` by its
    model (kept as an extra), and any other name refused as unknown."""
    if not isinstance(data, dict):
        return handler(data)
    known = field_names(model)
    own: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    errors: list[Any] = []
    for key, value in data.items():
        if key in known:
            own[key] = value
        elif key in sections:
            section = sections[key]
            if isinstance(value, section):
                extra[key] = value
                continue
            try:
                extra[key] = section.model_validate(value)
            except ValidationError as error:
                errors += [{**e, "loc": (key, *e["loc"])} for e in error.errors()]
        else:
            errors.append({"type": "extra_forbidden", "loc": (key,), "input": value})
    if errors:
        raise ValidationError.from_exception_data(model.__name__, errors)
    return handler({**own, **extra})


def add_to_schema(
    schema: dict[str, Any], definition: str, sections: Mapping[str, type[BaseModel]]
) -> dict[str, Any]:
    """`schema` (a model's JSON Schema) with `sections` as properties of its `$defs` entry
    `definition` (or of the root when it is the root), and nothing else allowed there."""
    defs = schema.setdefault("$defs", {})
    target = schema if definition not in defs else defs[definition]
    for field, section in sorted(sections.items()):
        part = section.model_json_schema(by_alias=True)
        defs.update(part.pop("$defs", {}))
        target.setdefault("properties", {})[field] = part
    target["additionalProperties"] = False
    return schema
