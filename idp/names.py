"""Kubernetes naming rules, as reusable pydantic field types.

The messages say what is allowed, because they end up verbatim in `idpctl apply` errors.
"""

import datetime
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

_SHOWN_MAX = 80


def shown(value: object) -> str:
    """A value as a message quotes it: the way YAML wrote it, not as Python prints it.

    `owner:` left empty arrives as None and `namespace: no` as False; "got None" or "got False"
    would tell a YAML author nothing.
    """
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"{str(value).lower()} (YAML reads true/false, yes/no and on/off as booleans)"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, datetime.date):
        return f"the date {value.isoformat()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, bytes):
        return "binary data"
    text = str(value)
    if len(text) > _SHOWN_MAX:
        text = text[: _SHOWN_MAX - 3] + "..."
    return repr(text)


@dataclass(frozen=True)
class Matches:
    """`Annotated[str, Matches(pattern, allowed)]`: `Field(pattern=...)` whose error says what
    is allowed in words. The JSON Schema keeps the pattern for editors; a person reading an
    `idpctl apply` error should not have to read a regular expression."""

    pattern: str
    allowed: str

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        compiled = re.compile(self.pattern)

        def check(value: str) -> str:
            if not compiled.fullmatch(value):
                raise ValueError(f"must be {self.allowed}; got {shown(value)}")
            return value

        return core_schema.no_info_after_validator_function(check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {**handler(schema), "pattern": self.pattern}


_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def dns1123_label(value: str) -> str:
    if len(value) > 63 or not _LABEL.match(value):
        raise ValueError(
            "must be a DNS-1123 label: at most 63 lowercase letters, digits or '-', "
            f"starting and ending with a letter or digit; got {shown(value)}"
        )
    return value


def dns1123_subdomain(value: str) -> str:
    if len(value) > 253 or not _SUBDOMAIN.match(value):
        raise ValueError(
            "must be a DNS-1123 subdomain: at most 253 lowercase letters, digits, '-' or '.', "
            f"each part starting and ending with a letter or digit; got {shown(value)}"
        )
    return value


_HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+$")
_IPV4 = re.compile(r"^[0-9.]+$")


def gateway_hostname(value: str) -> str:
    # Gateway API's hostname rules, plus at least one dot: a bare word here is nearly always an
    # aggregator's name pasted where its hostname belongs.
    if len(value) > 253 or not _HOSTNAME.match(value) or _IPV4.match(value):
        raise ValueError(
            "must be a DNS hostname such as api.example.com (lowercase, at least two labels, "
            f"'*' allowed only as the whole first label, no IP address or port); got {shown(value)}"
        )
    return value


Label = Annotated[str, AfterValidator(dns1123_label)]
Subdomain = Annotated[str, AfterValidator(dns1123_subdomain)]
Hostname = Annotated[str, AfterValidator(gateway_hostname)]
