"""The sealed-secret delivery: a Bitnami SealedSecret in the workload's state-store directory,
sealed to the destination controller's certificate."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from pydantic import SecretStr

from idp.delivery import (
    FINGERPRINT_ANNOTATION,
    VERSION_ANNOTATION,
    CredentialMetadata,
    Delivered,
    DeliveryState,
    DeliveryTarget,
    can_resume,
    check_annotations,
    credential_annotations,
    git_object_id,
    metadata_from,
    parse_manifest,
    revealed,
)
from idp.models import Delivery
from idp.sealing import CertificateCache, CertificateSource, SealingScope, render_sealed_secret
from idp.statestore import StateStore
from idp.yamltext import dump

CERTIFICATE_ANNOTATION = "idp.dev/sealing-certificate"
SEALED_DIGEST_ANNOTATION = "idp.dev/sealed-data-digest"


def sealed_digest(encrypted: Mapping[str, Any]) -> str:
    """sha256 of the sealed values as written: an edit of the ciphertext shows up here."""
    canonical = json.dumps(dict(encrypted), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def render_sealed(
    target: DeliveryTarget,
    data: Mapping[str, SecretStr],
    credential: CredentialMetadata,
    certificate: x509.Certificate,
    certificate_fingerprint: str,
) -> dict[str, Any]:
    """The SealedSecret manifest; the Secret it makes carries the version and fingerprint."""
    template_annotations = {
        VERSION_ANNOTATION: str(credential.version),
        FINGERPRINT_ANNOTATION: credential.fingerprint,
    }
    manifest = render_sealed_secret(
        target.secret_name,
        target.namespace,
        {key: value.encode() for key, value in revealed(target, data).items()},
        certificate,
        SealingScope.STRICT,
        labels=target.labels,
        annotations=template_annotations,
    )
    metadata = manifest["metadata"]
    metadata["labels"] = dict(sorted(target.labels.items()))
    metadata["annotations"] = {
        **metadata.get("annotations", {}),
        **credential_annotations(credential),
        CERTIFICATE_ANNOTATION: certificate_fingerprint,
        SEALED_DIGEST_ANNOTATION: sealed_digest(manifest["spec"]["encryptedData"]),
    }
    return manifest


class SealedSecretDelivery:
    kind = Delivery.SEALED_SECRET
    resume_readies = False

    def __init__(
        self, store: StateStore, source: CertificateSource, certificates: CertificateCache
    ) -> None:
        self._store = store
        self._source = source
        self._certificates = certificates

    def _inspect(
        self, target: DeliveryTarget, files: Mapping[str, str]
    ) -> tuple[dict[str, Any], str | None]:
        """The file's annotations, and what is wrong with it apart from the credential."""
        path = target.path(target.sealed_file)
        manifest, problem = parse_manifest(files.get(target.sealed_file), path, "SealedSecret")
        if manifest is None:
            return {}, problem
        metadata = manifest.get("metadata") or {}
        annotations = metadata.get("annotations") or {}
        spec = manifest.get("spec") or {}
        encrypted = spec.get("encryptedData") or {}
        template = (spec.get("template") or {}).get("metadata") or {}
        names = {(metadata.get("name"), metadata.get("namespace"))}
        names.add((template.get("name"), template.get("namespace")))
        if names != {(target.secret_name, target.namespace)}:
            return annotations, f"{path} names another secret than {target.secret_name}"
        if set(encrypted) != set(target.keys):
            keys = f"key{'s' if len(target.keys) > 1 else ''} {', '.join(target.keys)}"
            return annotations, f"{path} does not hold exactly the {keys}"
        if annotations.get(SEALED_DIGEST_ANNOTATION) != sealed_digest(encrypted):
            return annotations, f"{path} has sealed data that was edited after sealing"
        return annotations, None

    async def resume(
        self, target: DeliveryTarget, version: int, public_key: str, message: str
    ) -> Delivered | None:
        files = await self._store.read(target.directory)
        annotations, problem = self._inspect(target, files)
        found = metadata_from(annotations)
        if problem or not can_resume(found, version, public_key):
            return None
        assert found is not None
        return Delivered(
            credential=found,
            delivery=self.kind,
            location=target.path(target.sealed_file),
            detail=annotations.get(CERTIFICATE_ANNOTATION),
            resumed=True,
            left=DeliveryState(in_place=True, file_id=git_object_id(files.get(target.sealed_file))),
        )

    async def deliver(
        self,
        target: DeliveryTarget,
        data: Mapping[str, SecretStr],
        credential: CredentialMetadata,
        message: str,
    ) -> Delivered:
        certificate = await self._certificates.aget(self._source)
        manifest = render_sealed(
            target, data, credential, certificate.certificate, certificate.fingerprint
        )
        text = dump(manifest)
        result = await self._store.apply(target.change({target.sealed_file: text}, message))
        return Delivered(
            credential=credential,
            delivery=self.kind,
            location=target.path(target.sealed_file),
            commit=result.commit,
            detail=certificate.fingerprint,
            left=DeliveryState(in_place=True, file_id=git_object_id(text)),
        )

    async def check(self, target: DeliveryTarget, credential: CredentialMetadata) -> DeliveryState:
        files = await self._store.read(target.directory)
        annotations, problem = self._inspect(target, files)
        problem = problem or check_annotations(
            annotations, credential, target.path(target.sealed_file)
        )
        # Everything it judged is in this one file: its id stands for it in a fleet read.
        file_id = git_object_id(files.get(target.sealed_file))
        return DeliveryState(in_place=problem is None, problem=problem, file_id=file_id)

    async def current(self, target: DeliveryTarget) -> CredentialMetadata | None:
        # An edited ciphertext still says, in its annotations, which credential it was.
        annotations, _ = self._inspect(target, await self._store.read(target.directory))
        return metadata_from(annotations)

    async def remove(self, target: DeliveryTarget, message: str) -> list[str]:
        result = await self._store.apply(target.change({}, message))
        return list(result.removed)
