"""The deliveries a platform file configures, for every capability that delivers a credential
(NATS credentials, a plugin's database password): one place that knows what each delivery needs
and says so in the words of the field that chose it."""

from collections.abc import Callable
from pathlib import Path

import boto3
from botocore.client import BaseClient
from botocore.config import Config

from activities.statestore import destination_store
from idp.delivery import CredentialDelivery, DeliveryTarget
from idp.delivery.external import ExternalSecretDelivery
from idp.delivery.kubernetes import KubeApi, KubernetesDelivery, KubernetesSecrets
from idp.delivery.sealed import SealedSecretDelivery
from idp.errors import PermanentError
from idp.models import Delivery
from idp.platform import Destination, Platform
from idp.sealing import CertificateCache
from idp.statechange import Change
from idp.statestore import StateStore


class Deliveries:
    """`cache_dir` is where state-store clones live: the one the manifests step uses, so their
    commits group. Made once per worker; clients are made on first use."""

    def __init__(
        self,
        platform: Platform,
        cache_dir: Path,
        *,
        certificates: CertificateCache | None = None,
        kubernetes: Callable[[str | None], KubernetesSecrets] = KubeApi,
    ) -> None:
        self._platform = platform
        self._cache_dir = cache_dir
        self._certificates = certificates or CertificateCache()
        self._kubernetes = kubernetes
        self._secrets: BaseClient | None = None

    def store(self, destination: Destination) -> StateStore:
        return destination_store(destination, self._cache_dir)

    def secrets_client(self) -> BaseClient:
        aws = self._platform.aws
        assert aws is not None
        if self._secrets is None:
            config = Config(
                region_name=aws.region,
                retries={"mode": "standard", "max_attempts": 4},
                connect_timeout=5,
                read_timeout=30,
            )
            self._secrets = boto3.session.Session().client(
                "secretsmanager", endpoint_url=aws.endpoint_url, config=config
            )
        return self._secrets

    def of(self, destination: Destination, kind: Delivery, field: str) -> CredentialDelivery:
        """The delivery `kind` to `destination`; PermanentError, naming `field` (the spec field
        that chose it), when the platform file lacks what it needs."""
        if kind == Delivery.SEALED_SECRET:
            if destination.sealing is None:
                raise PermanentError(
                    f"delivery sealed-secret needs the sealing certificate of destination "
                    f"{destination.name} (destinations[].sealing in the platform configuration); "
                    f"set it or choose another {field}",
                    reason="NoSealingCertificate",
                )
            return SealedSecretDelivery(
                self.store(destination), destination.sealing, self._certificates
            )
        if kind == Delivery.EXTERNAL_SECRET:
            if destination.secret_store is None or self._platform.aws is None:
                raise PermanentError(
                    f"delivery external-secret needs destinations[].secretStore for "
                    f"{destination.name} and the aws section in the platform configuration; set "
                    f"them or choose another {field}",
                    reason="NoSecretStore",
                )
            return ExternalSecretDelivery(
                self.store(destination), self.secrets_client(), destination.secret_store
            )
        return KubernetesDelivery(
            self._kubernetes(destination.kube_context), destination.kube_context
        )

    async def remove(
        self,
        destination: Destination,
        target: DeliveryTarget,
        recorded: Delivery | None,
        message: str,
    ) -> list[str]:
        """Whatever delivery was used before, its traces go: both state-store files, the
        Secrets Manager secret where one can exist, the Secret where one was applied (by the
        `recorded` delivery). What it removed."""
        removed: list[str] = []
        if destination.secret_store is not None and self._platform.aws is not None:
            external = self.of(destination, Delivery.EXTERNAL_SECRET, "")
            removed += await external.remove(target, message)
        else:
            change = Change(target.directory, {}, message, target.files)
            removed += (await self.store(destination).apply(change)).removed
        if recorded == Delivery.KUBERNETES:
            kubernetes = self.of(destination, Delivery.KUBERNETES, "")
            removed += await kubernetes.remove(target, message)
        return removed
