"""Throwaway key material for delivery tests: a sealed-secrets controller key pair and real NATS
user credentials, plus the leak scan every test that handles credentials ends with (git, logs and,
payloads included, workflow histories)."""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from support.stack import read
from temporalio.client import WorkflowHistory

from emulators.synadia import natsjwt
from emulators.synadia.natsjwt import NKey
from idp.sealing import controller_certificate, unseal_sealed_secret
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


def unsealed(repo: Path, path: str, key: rsa.RSAPrivateKey) -> dict[str, str]:
    """The data of the SealedSecret at `path` on main, opened with the controller's private
    `key` as the cluster's controller would."""
    text = read(repo, path)
    assert text is not None, f"{path} is not in the state store"
    opened = unseal_sealed_secret(yaml.safe_load(text), key)
    return {name: value.decode() for name, value in opened.items()}


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
    """What must never leak: the text, its base64 and, of NATS creds, the seed and the JWT."""
    lines = [line.strip() for line in text.splitlines()]
    seed_and_jwt = [line for line in lines if line.startswith(("SU", "eyJ"))]
    return [text, base64.b64encode(text.encode()).decode(), *seed_and_jwt]


def history_text(history: WorkflowHistory) -> str:
    """Every event of the history in protobuf's wire format, read as text: there a payload's
    data (an activity's input or result, a query's answer) is stored as it is, where the
    history's JSON writes it as base64 and a secret inside it would not show."""
    wire = b"".join(event.SerializeToString() for event in history.events)
    return wire.decode(errors="replace")


def git_objects(repo: Path) -> str:
    """Every object of the repository, reachable or not: the blobs of every commit, and of
    commits no branch holds any more, as they are (`git log -p` shows only reachable ones, and
    prefixes each line of a multi-line secret)."""
    return subprocess.run(
        ["git", "--git-dir", str(repo), "cat-file", "--batch-all-objects", "--batch"],
        check=True,
        capture_output=True,
    ).stdout.decode(errors="replace")


def assert_nowhere(
    texts: Iterable[str],
    repos: Iterable[Path],
    caplog: pytest.LogCaptureFixture,
    *,
    histories: Iterable[WorkflowHistory] = (),
    files: Iterable[Path] = (),
    seen: Iterable[str] = (),
) -> None:
    """None of the secrets appear in any git object of the repositories, in a log record, in
    any of the workflow histories or in any of the files (a server's log, say).

    Each of `seen`, non-secrets written beside the secrets (a login's name, a user's public
    key), must show in the git objects, the log records and the histories (where given): a scan
    that finds those reads what was written, so finding no secret there means something."""
    texts, seen = list(texts), list(seen)
    assert texts, "nothing to scan for"
    places = {
        "git": "\n".join(git_objects(repo) for repo in repos),
        "a log record": "\n".join(
            f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records
        ),
    }
    histories = [history_text(history) for history in histories]
    if histories:
        places["a workflow history"] = "\n".join(histories)
    for where, scanned in places.items():
        for text in seen:
            assert text in scanned, f"{text} is not in {where}: the scan would miss a secret too"
    places |= {str(file): file.read_text(errors="replace") for file in files}
    for text in texts:
        for part in secret_parts(text):
            for where, scanned in places.items():
                assert part not in scanned, f"a secret reached {where}"
