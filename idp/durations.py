"""Human durations ("10m", "7d", "1h30m") as pydantic fields.

Kubernetes users write durations the Go way; a timedelta alone would force ISO 8601 on them.
"""

import re
from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

from idp.names import shown

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_PATTERN = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_ALLOWED = "a duration such as 90s, 10m, 1h30m or 7d"
_MAX_SECONDS = timedelta.max // timedelta(seconds=1)


def parse_duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str):
        match = _PATTERN.match(value.strip())
        if match and any(match.groups()):
            seconds = sum(
                int(part) * unit
                for part, unit in zip(match.groups(), _UNITS.values(), strict=True)
                if part
            )
    # No setting here is a negative time; NaN, infinity or a number past timedelta's range would
    # raise something other than ValueError, which pydantic lets escape as a crash.
    if seconds is not None and 0 <= seconds <= _MAX_SECONDS:
        return timedelta(seconds=seconds)
    raise ValueError(
        f"must be {_ALLOWED} (whole numbers with the units d, h, m and s, in that order); "
        f"got {shown(value)}"
    )


def format_duration(value: timedelta) -> str:
    remaining = int(value.total_seconds())
    if remaining == 0:
        return "0s"
    parts = []
    for suffix, unit in _UNITS.items():
        count, remaining = divmod(remaining, unit)
        if count:
            parts.append(f"{count}{suffix}")
    return "".join(parts)


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": _PATTERN.pattern, "description": _ALLOWED}),
]
