"""A real moto server for tests: AWS APIs over HTTP on 127.0.0.1, on a free port.

Use it once per module (starting it takes a moment and its state is cheap to reset):

    @pytest.fixture(scope="module")
    def aws_url():
        with moto_server() as url:
            yield url

then point boto3 at it with ``endpoint_url=aws_url``. The helpers are plain context managers so
that async and sync tests, fixtures and scripts can all use them.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from moto.server import ThreadedMotoServer

from emulators.aws import serve_ecr_tags

# moto's fixed default account: ARNs built by code under test must use it to match moto's.
MOTO_ACCOUNT_ID = "123456789012"

# boto3 signs every request, so it needs some credentials; moto accepts any unless auth is on.
_FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "eu-west-1",
}


@contextmanager
def moto_server() -> Iterator[str]:
    """Start moto in a thread on a free port, yield its URL, stop it afterwards.

    Also sets fake credentials in the environment (restored on exit) so that boto3's standard
    credential chain never reaches for a developer's real profile.
    """
    saved = {key: os.environ.get(key) for key in _FAKE_CREDENTIALS}
    os.environ.update(_FAKE_CREDENTIALS)
    # werkzeug logs every request at INFO; that drowns test output, errors still show.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    # Port 0 lets the OS pick a free port, so parallel test runs never collide.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    serve_ecr_tags()
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def reset_moto(url: str) -> None:
    """Forget every resource in every service, e.g. between tests."""
    _post(f"{url}/moto-api/reset", b"")


@contextmanager
def moto_auth(url: str) -> Iterator[None]:
    """Make moto enforce IAM authentication and policies inside the block.

    Requests must then be signed with keys of an IAM user created in moto, and are allowed only by
    that user's policies, so a test can provoke a real AccessDenied answer.
    """
    _post(f"{url}/moto-api/reset-auth", b"0")
    try:
        yield
    finally:
        _post(f"{url}/moto-api/reset-auth", b"inf")


def _post(url: str, body: bytes) -> None:
    # Not form-encoded (urllib's default), or the server parses the body away as a form.
    headers = {"Content-Type": "text/plain"}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
