"""NATS nkeys, JWTs and .creds files, as nats-server and the NATS tools expect them.

Written from the published format (nats-io/jwt v2, nkeys): an ed25519-nkey signed JWT whose `jti`
is the base32 SHA-256 of the claims, and the decorated .creds text `nsc` writes. Only the emulator
uses this module; the project's client never mints credentials itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any

import nkeys
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

JWT_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}

_PREFIXES = {
    "operator": nkeys.PREFIX_BYTE_OPERATOR,
    "account": nkeys.PREFIX_BYTE_ACCOUNT,
    "user": nkeys.PREFIX_BYTE_USER,
}

_CREDS_TEMPLATE = """-----BEGIN NATS USER JWT-----
{jwt}
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.
NKEYs are sensitive and should be treated as secrets.

-----BEGIN USER NKEY SEED-----
{seed}
------END USER NKEY SEED------

*************************************************************
"""

_USER_KEY_RE = re.compile(r"^U[A-Z2-7]{55}$")


@dataclass(frozen=True)
class NKey:
    """An nkey pair held by its seed; `repr` hides the seed so it never reaches a log."""

    seed: str

    @classmethod
    def generate(cls, kind: str) -> NKey:
        raw = nkeys.encode_seed(os.urandom(32), _PREFIXES[kind])
        return cls(raw.decode())

    @property
    def public(self) -> str:
        return nkeys.from_seed(self.seed.encode()).public_key.decode()

    def sign(self, data: bytes) -> bytes:
        return nkeys.from_seed(self.seed.encode()).sign(data)

    def __repr__(self) -> str:
        return f"NKey(public={self.public!r})"


def is_user_public_key(value: str) -> bool:
    return bool(_USER_KEY_RE.match(value))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def encode(claims: dict[str, Any], signer: NKey) -> str:
    """Sign `claims` with `signer`; sets `iss` and computes `jti` over the claims without it."""
    body = {k: v for k, v in claims.items() if k != "jti"}
    body["iss"] = signer.public
    digest = hashlib.sha256(_compact(body)).digest()
    jti = base64.b32encode(digest).decode().rstrip("=")
    body = {"jti": jti, **body}
    signing_input = f"{_b64url(_compact(JWT_HEADER))}.{_b64url(_compact(body))}"
    return f"{signing_input}.{_b64url(signer.sign(signing_input.encode()))}"


def decode(token: str) -> dict[str, Any]:
    """The claims of a JWT, without checking its signature (use `verify` for that)."""
    try:
        _, payload, _ = token.split(".")
        claims = json.loads(_b64url_decode(payload))
    except (ValueError, json.JSONDecodeError) as exc:
        raise ValueError("not a NATS JWT") from exc
    if not isinstance(claims, dict):
        raise ValueError("not a NATS JWT")
    return claims


def public_key_bytes(public: str) -> bytes:
    raw = base64.b32decode(public + "=" * (-len(public) % 8))
    # One prefix byte in front, a two-byte CRC16 behind the 32-byte ed25519 key.
    return raw[1:-2]


def verify(token: str) -> dict[str, Any]:
    """Check the header and the signature against `iss`; return the claims."""
    header_b64, payload_b64, sig_b64 = token.split(".")
    if json.loads(_b64url_decode(header_b64)) != JWT_HEADER:
        raise ValueError("unexpected JWT header")
    claims = decode(token)
    try:
        VerifyKey(public_key_bytes(claims["iss"])).verify(
            f"{header_b64}.{payload_b64}".encode(), _b64url_decode(sig_b64)
        )
    except BadSignatureError as exc:
        raise ValueError("bad JWT signature") from exc
    return claims


def format_creds(user_jwt: str, user_seed: str) -> str:
    """The .creds text as `nsc generate creds` writes it; nats clients parse the decorations."""
    return _CREDS_TEMPLATE.format(jwt=user_jwt, seed=user_seed)
