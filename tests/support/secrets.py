"""Throwaway key material for delivery tests: a sealed-secrets controller key pair and real NATS
user credentials, plus the leak scan every test that handles credentials ends with."""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from emulators.synadia import natsjwt
from emulators.synadia.natsjwt import NKey
from idp.sealing import controller_certificate
from idp.synadia import NatsCreds, parse_creds


@dataclass(frozen=True)
class ControllerKeys:
    key: rsa.RSAPrivateKey
    cert_file: Path


def controller_keys(directory: Path) -> ControllerKeys:
    """A key pair like the sealed-secrets controller's (2048 bits: enough here, and fast)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = controller_certificate(key, timedelta(days=30))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "controller-cert.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ControllerKeys(key, path)


def mint_creds(*, expires_in: int = 3600, user: NKey | None = None) -> NatsCreds:
    """Real .creds (an nkey seed and a signed user JWT), for deliveries that need no server."""
    user = user or NKey.generate("user")
    now = int(time.time())
    claims = {
        "iat": now,
        "exp": now + expires_in,
        "name": "test",
        "sub": user.public,
        "nats": {"type": "user", "version": 2},
    }
    jwt = natsjwt.encode(claims, NKey.generate("account"))
    return parse_creds(natsjwt.format_creds(jwt, user.seed))


def secret_parts(text: str) -> list[str]:
    """What must never leak: the creds text, its base64, the seed and the JWT."""
    lines = [line.strip() for line in text.splitlines()]
    seed = next(line for line in lines if line.startswith("SU"))
    jwt = next(line for line in lines if line.startswith("eyJ"))
    return [text, base64.b64encode(text.encode()).decode(), seed, jwt]


def assert_nowhere(
    texts: Iterable[str], repos: Iterable[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """None of the secrets appear in any git object of the repositories or in a log record."""
    texts = list(texts)
    assert texts, "nothing to scan for"
    history = "".join(
        subprocess.run(
            ["git", "--git-dir", str(repo), "log", "-p", "--all"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for repo in repos
    )
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)
    for text in texts:
        for part in secret_parts(text):
            assert part not in history, "a secret reached git"
            assert part not in logged, "a secret reached a log record"
