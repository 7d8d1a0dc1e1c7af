"""Port's webhook signature: what verifies, and every way a request can fail to."""

import base64
import hashlib
import hmac
from datetime import timedelta

import pytest

from idp.portwebhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    signature,
    signed_headers,
    verify,
)

SECRET = "test-client-secret"
BODY = b'{"action":"idp_reconcile_workload","runId":"r_1","inputs":{},"entity":"demo.hello"}'
NOW = 1_700_000_000


class Headers(dict):
    """Case-insensitive lookups, like the request headers verify() is given."""

    def get(self, key, default=None):  # type: ignore[override]
        for name, value in self.items():
            if name.lower() == key.lower():
                return value
        return default


def headers(timestamp: int = NOW, body: bytes = BODY, secret: str = SECRET) -> Headers:
    return Headers(signed_headers(secret, body, timestamp))


def test_the_signature_is_base64_hmac_sha256_over_timestamp_dot_body():
    digest = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).digest()
    assert signature(SECRET, NOW, BODY) == "v1," + base64.b64encode(digest).decode()


def test_a_fresh_correct_signature_verifies():
    verify(SECRET, headers(), BODY, now=NOW + 10)


def test_header_names_are_case_insensitive():
    upper = Headers({name.upper(): value for name, value in headers().items()})
    verify(SECRET, upper, BODY, now=NOW)


def test_a_signature_made_with_another_secret_is_refused():
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, headers(secret="someone-else"), BODY, now=NOW)


def test_a_tampered_body_is_refused():
    tampered = BODY.replace(b"demo.hello", b"demo.other")
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, headers(), tampered, now=NOW)


def test_a_moved_timestamp_is_refused():
    moved = headers()
    moved[TIMESTAMP_HEADER] = str(NOW + 1)
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, moved, BODY, now=NOW)


@pytest.mark.parametrize("missing", [TIMESTAMP_HEADER, SIGNATURE_HEADER])
def test_a_missing_header_is_refused(missing):
    partial = headers()
    del partial[missing]
    with pytest.raises(SignatureError, match="missing"):
        verify(SECRET, partial, BODY, now=NOW)


def test_a_stale_request_is_refused_and_the_window_is_configurable():
    old = headers(timestamp=NOW - 301)
    with pytest.raises(SignatureError, match="301s old; at most 300s"):
        verify(SECRET, old, BODY, now=NOW)
    verify(SECRET, old, BODY, now=NOW, window=timedelta(minutes=10))
    verify(SECRET, headers(timestamp=NOW - 300), BODY, now=NOW)


def test_a_request_from_the_future_is_refused():
    with pytest.raises(SignatureError, match="in the future"):
        verify(SECRET, headers(timestamp=NOW + 301), BODY, now=NOW)


@pytest.mark.parametrize("stamp", ["1.7e9", "-5", "", "\uff11\uff17"])
def test_a_timestamp_that_is_not_whole_seconds_is_refused(stamp):
    bad = headers()
    bad[TIMESTAMP_HEADER] = stamp
    with pytest.raises(SignatureError):
        verify(SECRET, bad, BODY, now=NOW)


def test_the_error_never_quotes_the_signature_or_secret():
    wrong = headers(secret="someone-else")
    with pytest.raises(SignatureError) as refused:
        verify(SECRET, wrong, BODY, now=NOW)
    assert wrong[SIGNATURE_HEADER] not in str(refused.value)
    assert SECRET not in str(refused.value)
