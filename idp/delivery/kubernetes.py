"""The kubernetes delivery: a Secret applied straight to the cluster's API server (server-side
apply)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from pydantic import SecretStr

from idp.delivery import (
    CredentialMetadata,
    Delivered,
    DeliveryState,
    DeliveryTarget,
    can_resume,
    check_annotations,
    credential_annotations,
    metadata_from,
    revealed,
)
from idp.errors import PermanentError, TransientError
from idp.models import Delivery

T = TypeVar("T")
FIELD_MANAGER = "idp"


def render_kubernetes_secret(
    target: DeliveryTarget, data: Mapping[str, SecretStr], credential: CredentialMetadata
) -> dict[str, Any]:
    """The Secret applied to the cluster (stringData: the API server encodes it)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": target.secret_name,
            "namespace": target.namespace,
            "labels": dict(sorted(target.labels.items())),
            "annotations": credential_annotations(credential),
        },
        "type": "Opaque",
        "stringData": revealed(target, data),
    }


class KubernetesSecrets(Protocol):
    """The three calls the kubernetes delivery makes; `KubeApi` makes them for real."""

    def apply(self, body: dict[str, Any]) -> None: ...

    def annotations(self, namespace: str, name: str) -> dict[str, str] | None: ...

    def delete(self, namespace: str, name: str) -> bool: ...


class KubeApi:
    """The seam to a real API server, one call per method. No API server runs in this
    repository's tests, so this class is not exercised there; everything around it is."""

    def __init__(self, context: str | None) -> None:
        self._context = context

    def _core(self) -> Any:
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        try:
            if self._context is None:
                try:
                    configuration = client.Configuration()
                    config.load_incluster_config(client_configuration=configuration)
                    return client.CoreV1Api(client.ApiClient(configuration))
                except ConfigException:
                    pass
            return client.CoreV1Api(config.new_client_from_config(context=self._context))
        except (ConfigException, OSError) as exc:
            raise PermanentError(
                f"No usable Kubernetes config for context {self._context or 'in-cluster'}: "
                f"{type(exc).__name__}.",
                reason="NoKubeConfig",
            ) from None

    def apply(self, body: dict[str, Any]) -> None:
        metadata = body["metadata"]
        _kube(
            lambda: self._core().patch_namespaced_secret(
                metadata["name"],
                metadata["namespace"],
                body,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type="application/apply-patch+yaml",
            ),
            "apply",
        )

    def annotations(self, namespace: str, name: str) -> dict[str, str] | None:
        found = _kube(lambda: self._core().read_namespaced_secret(name, namespace), "read")
        return None if found is None else dict(found.metadata.annotations or {})

    def delete(self, namespace: str, name: str) -> bool:
        return (
            _kube(lambda: self._core().delete_namespaced_secret(name, namespace), "delete")
            is not None
        )


def _kube(call: Callable[[], T], verb: str) -> T | None:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return call()
    except ApiException as exc:
        # Only the status: an error body may quote the object, and the object holds the secret.
        status = exc.status or 0
        if status == 404 and verb != "apply":
            return None
        text = f"Kubernetes refused to {verb} a credentials Secret (HTTP {status})."
        if status >= 500 or status in (408, 429):
            raise TransientError(text, reason=f"KubernetesHTTP{status}") from None
        raise PermanentError(text, reason=f"KubernetesHTTP{status}") from None
    except HTTPError as exc:
        raise TransientError(
            f"The Kubernetes API server could not be reached ({type(exc).__name__}).",
            reason="KubernetesUnavailable",
        ) from None


class KubernetesDelivery:
    kind = Delivery.KUBERNETES
    resume_readies = False

    def __init__(self, api: KubernetesSecrets, context: str | None) -> None:
        self._api = api
        self._where = context or "in-cluster"

    def _location(self, target: DeliveryTarget) -> str:
        return f"Secret {target.namespace}/{target.secret_name} (kubernetes {self._where})"

    async def resume(
        self, target: DeliveryTarget, version: int, public_key: str, message: str
    ) -> Delivered | None:
        found = await asyncio.to_thread(self._api.annotations, target.namespace, target.secret_name)
        metadata = metadata_from(found or {})
        if not can_resume(metadata, version, public_key):
            return None
        assert metadata is not None
        return Delivered(
            credential=metadata, delivery=self.kind, location=self._location(target), resumed=True
        )

    async def deliver(
        self,
        target: DeliveryTarget,
        data: Mapping[str, SecretStr],
        credential: CredentialMetadata,
        message: str,
    ) -> Delivered:
        body = render_kubernetes_secret(target, data, credential)
        await asyncio.to_thread(self._api.apply, body)
        return Delivered(credential=credential, delivery=self.kind, location=self._location(target))

    async def check(self, target: DeliveryTarget, credential: CredentialMetadata) -> DeliveryState:
        found = await asyncio.to_thread(self._api.annotations, target.namespace, target.secret_name)
        where = self._location(target)
        problem = (
            f"{where} does not exist"
            if found is None
            else check_annotations(found, credential, where)
        )
        return DeliveryState(in_place=problem is None, problem=problem)

    async def current(self, target: DeliveryTarget) -> CredentialMetadata | None:
        found = await asyncio.to_thread(self._api.annotations, target.namespace, target.secret_name)
        return metadata_from(found or {})

    async def remove(self, target: DeliveryTarget, message: str) -> list[str]:
        gone = await asyncio.to_thread(self._api.delete, target.namespace, target.secret_name)
        return [self._location(target)] if gone else []
