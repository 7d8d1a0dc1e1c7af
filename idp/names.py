"""Kubernetes naming rules, as reusable pydantic field types.

The messages say what is allowed, because they end up verbatim in `idpctl apply` errors.
"""

import re
from typing import Annotated

from pydantic import AfterValidator

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def dns1123_label(value: str) -> str:
    if len(value) > 63 or not _LABEL.match(value):
        raise ValueError(
            "must be a DNS-1123 label: at most 63 lowercase letters, digits or '-', "
            f"starting and ending with a letter or digit; got {value!r}"
        )
    return value


def dns1123_subdomain(value: str) -> str:
    if len(value) > 253 or not _SUBDOMAIN.match(value):
        raise ValueError(
            "must be a DNS-1123 subdomain: at most 253 lowercase letters, digits, '-' or '.', "
            f"each part starting and ending with a letter or digit; got {value!r}"
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
            f"'*' allowed only as the whole first label, no IP address or port); got {value!r}"
        )
    return value


Label = Annotated[str, AfterValidator(dns1123_label)]
Subdomain = Annotated[str, AfterValidator(dns1123_subdomain)]
Hostname = Annotated[str, AfterValidator(gateway_hostname)]
