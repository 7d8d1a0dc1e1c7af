"""Port's webhook signature: who sent a self-service action invocation, and when.

Port signs every webhook it sends with the organisation's client secret: the header
`x-port-timestamp` holds the time in epoch seconds, and `x-port-signature` is `v1,` followed by
the base64 of HMAC-SHA256 over `"{timestamp}.{raw body}"`. Checking the signature proves the body
came from Port unaltered; checking the timestamp bounds how long a captured request can be
replayed. The raw body must be verified as received, before any JSON parsing: re-serialising
changes bytes.
"""

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping
from datetime import timedelta

TIMESTAMP_HEADER = "x-port-timestamp"
SIGNATURE_HEADER = "x-port-signature"
VERSION = "v1"
DEFAULT_WINDOW = timedelta(minutes=5)


class SignatureError(Exception):
    """The request cannot be trusted; the message says why, and never quotes the signature."""


def signature(secret: str, timestamp: int | str, body: bytes) -> str:
    """The `x-port-signature` value Port sends for this body at this time."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).digest()
    return f"{VERSION},{base64.b64encode(digest).decode()}"


def signed_headers(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The two headers of a request signed like Port signs it (now, unless told otherwise)."""
    moment = int(time.time()) if timestamp is None else timestamp
    return {TIMESTAMP_HEADER: str(moment), SIGNATURE_HEADER: signature(secret, moment, body)}


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    window: timedelta = DEFAULT_WINDOW,
    now: float | None = None,
) -> None:
    """Raise SignatureError unless `body` was signed with `secret` within `window` of now.

    `headers` must look names up case-insensitively (starlette's and httpx's headers do). A
    timestamp too far in the future is refused like a stale one: a signer whose clock is that far
    ahead would otherwise mint requests that stay replayable for longer than the window.
    """
    stamp = headers.get(TIMESTAMP_HEADER)
    given = headers.get(SIGNATURE_HEADER)
    if not stamp or not given:
        raise SignatureError(f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER} header")
    if not stamp.isascii() or not stamp.isdigit():
        raise SignatureError(f"{TIMESTAMP_HEADER} must be whole seconds since the epoch")
    age = (time.time() if now is None else now) - int(stamp)
    limit = window.total_seconds()
    if age > limit:
        raise SignatureError(f"the request is {int(age)}s old; at most {int(limit)}s is accepted")
    if -age > limit:
        raise SignatureError(f"the request is dated {int(-age)}s in the future")
    if not hmac.compare_digest(signature(secret, stamp, body).encode(), given.encode()):
        raise SignatureError("the signature does not match the body")
