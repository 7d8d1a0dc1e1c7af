"""Connecting to Temporal the same way from every entry point (worker, idpctl, bridges).

Settings come from, in order: command-line flags, the `TEMPORAL_*` environment variables the
temporal CLI also reads, the platform file, then local defaults.

Payload encryption is decided here and nowhere else: `codec_keyring()` reads the key ring from
`IDP_CODEC_KEYS`, `data_converter()` turns it into the converter every client, worker and replayer
uses, and `connect()` combines the two.
"""

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn

from temporalio.client import Client, Interceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverter,
    DefaultFailureConverterWithEncodedAttributes,
)
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig

from idp.keyring import ENV_FORMAT, KeyRing, KeyRingError
from idp.platform import TemporalConfig
from starter.codec import EncryptionCodec

CODEC_KEYS_ENV = "IDP_CODEC_KEYS"


class ConnectError(Exception):
    """No client: the server cannot be reached or the codec keys are unusable; the message says
    which, and where we looked."""


@dataclass(frozen=True)
class TemporalSettings:
    address: str = "localhost:7233"
    namespace: str = "default"
    task_queue: str = "idp"
    api_key: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    tls_server_name: str | None = None
    ui_url: str = "http://localhost:8233"

    @property
    def tls(self) -> TLSConfig | bool:
        if not (self.tls_cert or self.tls_ca or self.tls_server_name):
            # API keys (Temporal Cloud) need TLS even without client certificates.
            return self.api_key is not None
        return TLSConfig(
            client_cert=Path(self.tls_cert).read_bytes() if self.tls_cert else None,
            client_private_key=Path(self.tls_key).read_bytes() if self.tls_key else None,
            server_root_ca_cert=Path(self.tls_ca).read_bytes() if self.tls_ca else None,
            domain=self.tls_server_name,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Temporal connection (flags override TEMPORAL_* variables)")
    group.add_argument("--address", help="host:port of the frontend (TEMPORAL_ADDRESS)")
    group.add_argument("--namespace", help="Temporal namespace (TEMPORAL_NAMESPACE)")
    group.add_argument("--task-queue", help="task queue of the workers (TEMPORAL_TASK_QUEUE)")
    group.add_argument("--api-key", help="API key, e.g. for Temporal Cloud (TEMPORAL_API_KEY)")
    group.add_argument("--tls-cert-path", help="mTLS client certificate (TEMPORAL_TLS_CERT)")
    group.add_argument("--tls-key-path", help="mTLS client key (TEMPORAL_TLS_KEY)")
    group.add_argument("--tls-ca-path", help="server CA certificate (TEMPORAL_TLS_CA)")
    group.add_argument("--tls-server-name", help="TLS server name (TEMPORAL_TLS_SERVER_NAME)")


def settings(args: argparse.Namespace, config: TemporalConfig | None = None) -> TemporalSettings:
    config = config or TemporalConfig()
    tls = config.tls

    def pick(flag: str, env: str, configured: str | None) -> str | None:
        return getattr(args, flag, None) or os.environ.get(env) or configured

    return TemporalSettings(
        address=pick("address", "TEMPORAL_ADDRESS", config.address) or config.address,
        namespace=pick("namespace", "TEMPORAL_NAMESPACE", config.namespace) or config.namespace,
        task_queue=pick("task_queue", "TEMPORAL_TASK_QUEUE", config.task_queue)
        or config.task_queue,
        api_key=pick("api_key", "TEMPORAL_API_KEY", os.environ.get(config.api_key_env)),
        tls_cert=pick("tls_cert_path", "TEMPORAL_TLS_CERT", tls.cert_file if tls else None),
        tls_key=pick("tls_key_path", "TEMPORAL_TLS_KEY", tls.key_file if tls else None),
        tls_ca=pick("tls_ca_path", "TEMPORAL_TLS_CA", tls.ca_file if tls else None),
        tls_server_name=pick(
            "tls_server_name", "TEMPORAL_TLS_SERVER_NAME", tls.server_name if tls else None
        ),
        ui_url=config.ui_url,
    )


def codec_keyring() -> KeyRing | None:
    """The payload key ring from `IDP_CODEC_KEYS`; None when the variable is not set at all.

    Set but empty or malformed raises KeyRingError: a secret that failed to mount must not
    silently turn encryption off.
    """
    value = os.environ.get(CODEC_KEYS_ENV)
    if value is None:
        return None
    return KeyRing.from_env(value, variable=CODEC_KEYS_ENV)


def required_keyring(insecure: bool, log: logging.Logger) -> KeyRing | None:
    """The key ring a process that writes payloads must have; None only with `insecure`.

    Refuse rather than fall back: a process writing plaintext into a namespace whose other
    processes encrypt would leak every payload it handles, silently.
    """
    keyring = codec_keyring()
    if keyring is None and not insecure:
        raise KeyRingError(
            f"{CODEC_KEYS_ENV} is not set, so workflow payloads would be stored in plaintext; set "
            f"it to the payload key ring ({ENV_FORMAT}), or pass --insecure-no-encryption for "
            "local experiments"
        )
    if keyring is None:
        log.warning(
            "INSECURE: --insecure-no-encryption given and %s not set: every payload and failure "
            "message this process writes is stored in PLAINTEXT in Temporal; never run like "
            "this with real workloads",
            CODEC_KEYS_ENV,
        )
    else:
        ignored = " (--insecure-no-encryption ignored)" if insecure else ""
        log.info("payload encryption on, encrypting with key %r%s", keyring.current_key_id, ignored)
    return keyring


def data_converter(keyring: KeyRing | None, *, encode_failures: bool = True) -> DataConverter:
    """The pydantic converter, encrypting every payload and failure message when given keys.

    Failure messages and stack traces normally travel in the clear; with keys they move into an
    encoded (hence encrypted) attribute, because an exception message can quote its input.
    Decoding reads both forms either way. `encode_failures=False` is for the replayer alone: its
    failures never leave the process, and the person reading a replay report needs the reason.
    """
    if keyring is None:
        return pydantic_data_converter
    return replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(keyring),
        failure_converter_class=(
            DefaultFailureConverterWithEncodedAttributes
            if encode_failures
            else DefaultFailureConverter
        ),
    )


async def connect(
    settings: TemporalSettings,
    *,
    runtime: Runtime | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> Client:
    """A client whose converter encrypts with the key ring in `IDP_CODEC_KEYS`, if set.

    `runtime` carries the worker's metrics exporter; `interceptors` that are also worker
    interceptors (tracing) apply to the workers built on this client too."""
    try:
        keyring = codec_keyring()
    except KeyRingError as error:
        raise ConnectError(str(error)) from None
    try:
        return await Client.connect(
            settings.address,
            namespace=settings.namespace,
            api_key=settings.api_key,
            tls=settings.tls,
            data_converter=data_converter(keyring),
            runtime=runtime,
            interceptors=interceptors,
        )
    except OSError as error:
        raise ConnectError(f"cannot read a TLS file: {error}") from None
    except RuntimeError as error:
        raise ConnectError(
            f"cannot reach the Temporal server at {settings.address} (namespace "
            f"{settings.namespace}): {_first_line(error)}; start one with `idpctl dev` or set "
            "--address / TEMPORAL_ADDRESS"
        ) from None


def _first_line(error: Exception) -> str:
    """The OS-level reason inside the SDK's nested error text, e.g. "Connection refused"."""
    text = str(error)
    match = re.search(r'message: "([^"]+)"', text)
    if match:
        return match.group(1)
    lines = text.strip().splitlines()
    return lines[0][:200].rsplit(" ", 1)[0] if lines else type(error).__name__


def exit_now(code: int) -> NoReturn:
    """Exit without interpreter teardown. The Temporal client's Rust threads can still call into
    Python while it finalizes, which aborts the process (SIGABRT, "PyGILState_Release: thread
    state ... must be current"; temporalio/sdk-python#300) and turns any outcome into exit 134."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
