"""Connecting to Temporal the same way from every entry point (worker, idpctl, bridges).

Settings come from, in order: command-line flags, the `TEMPORAL_*` environment variables the
temporal CLI also reads, the platform file, then local defaults.
"""

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.service import TLSConfig

from idp.platform import TemporalConfig


class ConnectError(Exception):
    """The Temporal server cannot be reached; the message says where we looked."""


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


def data_converter() -> DataConverter:
    return pydantic_data_converter


async def connect(settings: TemporalSettings) -> Client:
    try:
        return await Client.connect(
            settings.address,
            namespace=settings.namespace,
            api_key=settings.api_key,
            tls=settings.tls,
            data_converter=data_converter(),
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
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
