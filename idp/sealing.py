"""Bitnami SealedSecrets: seal values the way kubeseal does, and find the controller's certificate.

The wire format must match the controller byte for byte (upstream pkg/crypto HybridEncrypt), since
the controller is the only reader: a fresh AES-256-GCM session key per value, encrypted under an
all-zero nonce, with the session key wrapped by RSA-OAEP (SHA-256) under a label that pins the value
to its scope. Layout: uint16 big-endian length of the RSA block || RSA block || GCM ciphertext+tag,
standard base64.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from idp.errors import PermanentError, TransientError

__all__ = [
    "API_VERSION",
    "CLUSTER_WIDE_ANNOTATION",
    "DEFAULT_CERTIFICATE_TTL",
    "KEY_RENEWAL_PERIOD",
    "KIND",
    "NAMESPACE_WIDE_ANNOTATION",
    "CertificateCache",
    "CertificateSource",
    "ClusterCertificateSource",
    "ControllerCertificate",
    "SealingScope",
    "UnsealError",
    "controller_certificate",
    "label_for",
    "parse_certificate",
    "render_sealed_secret",
    "scope_annotations",
    "scope_from_annotations",
    "seal",
    "unseal",
    "unseal_sealed_secret",
]

API_VERSION = "bitnami.com/v1alpha1"
KIND = "SealedSecret"
NAMESPACE_WIDE_ANNOTATION = "sealedsecrets.bitnami.com/namespace-wide"
CLUSTER_WIDE_ANNOTATION = "sealedsecrets.bitnami.com/cluster-wide"

# The controller generates a new sealing key every 30 days by default (--key-renew-period). A cache
# must expire well before that, or we would keep sealing to a key the controller already replaced.
KEY_RENEWAL_PERIOD = timedelta(days=30)
DEFAULT_CERTIFICATE_TTL = timedelta(hours=24)

_SESSION_KEY_BYTES = 32
# The session key is used for exactly one value, so a fixed nonce never repeats under one key;
# upstream relies on this and so must we, or the controller could not open our values.
_ZERO_NONCE = bytes(12)
_LENGTH_PREFIX = struct.Struct(">H")

# kubectl and kubecfg keep a verbatim copy of an applied object in these annotations; carried into a
# SealedSecret template they would leak the plaintext, so kubeseal drops them and so do we.
_LAST_APPLIED_ANNOTATIONS = frozenset(
    {
        "kubectl.kubernetes.io/last-applied-configuration",
        "kubecfg.ksonnet.io/last-applied-configuration",
    }
)
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class UnsealError(PermanentError):
    """A sealed value could not be opened. The message never contains plaintext or key material."""


class SealingScope(StrEnum):
    """How far a sealed value may travel: the label it is sealed under decides where it opens."""

    STRICT = "strict"
    NAMESPACE_WIDE = "namespace-wide"
    CLUSTER_WIDE = "cluster-wide"


def label_for(scope: SealingScope, namespace: str, name: str) -> bytes:
    """The RSA-OAEP label the controller will use to open a value of this scope."""
    scope = SealingScope(scope)
    if scope is SealingScope.CLUSTER_WIDE:
        return b""
    if not namespace:
        raise PermanentError(f"a {scope.value} sealed secret needs a namespace.")
    if scope is SealingScope.NAMESPACE_WIDE:
        return namespace.encode()
    if not name:
        raise PermanentError("a strict sealed secret needs a name.")
    return f"{namespace}/{name}".encode()


def scope_annotations(scope: SealingScope) -> dict[str, str]:
    """The annotations that tell the controller which label to unseal with (none for strict)."""
    scope = SealingScope(scope)
    if scope is SealingScope.NAMESPACE_WIDE:
        return {NAMESPACE_WIDE_ANNOTATION: "true"}
    if scope is SealingScope.CLUSTER_WIDE:
        return {CLUSTER_WIDE_ANNOTATION: "true"}
    return {}


def scope_from_annotations(annotations: Mapping[str, str] | None) -> SealingScope:
    """Read the scope back the way the controller does: cluster-wide wins over namespace-wide."""
    annotations = annotations or {}
    if annotations.get(CLUSTER_WIDE_ANNOTATION) == "true":
        return SealingScope.CLUSTER_WIDE
    if annotations.get(NAMESPACE_WIDE_ANNOTATION) == "true":
        return SealingScope.NAMESPACE_WIDE
    return SealingScope.STRICT


def _oaep(label: bytes) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)


def seal(plaintext: bytes, public_key: RSAPublicKey, label: bytes) -> str:
    """Seal one value for the controller holding the private half of ``public_key``."""
    session_key = os.urandom(_SESSION_KEY_BYTES)
    # cryptography treats an empty label as "no label", which is what Go's EncryptOAEP does with
    # an empty slice too, so cluster-wide values interoperate.
    wrapped = public_key.encrypt(session_key, _oaep(label))
    sealed = AESGCM(session_key).encrypt(_ZERO_NONCE, plaintext, None)
    return base64.b64encode(_LENGTH_PREFIX.pack(len(wrapped)) + wrapped + sealed).decode("ascii")


def unseal(ciphertext_b64: str, private_key: RSAPrivateKey, label: bytes) -> bytes:
    """Open a sealed value as the controller would; for tests and for checking a delivery."""
    try:
        raw = base64.b64decode(ciphertext_b64, validate=True)
    except (binascii.Error, ValueError):
        raise UnsealError("the sealed value is not valid base64.") from None
    if len(raw) < _LENGTH_PREFIX.size:
        raise UnsealError("the sealed value is too short to be a SealedSecret value.")
    (rsa_length,) = _LENGTH_PREFIX.unpack_from(raw)
    if len(raw) < _LENGTH_PREFIX.size + rsa_length:
        raise UnsealError("the sealed value is too short to be a SealedSecret value.")
    wrapped = raw[_LENGTH_PREFIX.size : _LENGTH_PREFIX.size + rsa_length]
    sealed = raw[_LENGTH_PREFIX.size + rsa_length :]
    try:
        session_key = private_key.decrypt(wrapped, _oaep(label))
    except ValueError:
        # OAEP cannot tell a wrong key from a wrong label, and saying which would be an oracle.
        raise UnsealError(
            "the sealed value does not open with this key and label: it was sealed for another "
            "controller key or another scope, namespace or name."
        ) from None
    try:
        return AESGCM(session_key).decrypt(_ZERO_NONCE, sealed, None)
    except (InvalidTag, ValueError):
        raise UnsealError(
            "the sealed value's payload fails its integrity check: it was altered after sealing."
        ) from None


def _public_key_of(certificate: x509.Certificate | RSAPublicKey) -> RSAPublicKey:
    if isinstance(certificate, RSAPublicKey):
        return certificate
    key = certificate.public_key()
    if not isinstance(key, RSAPublicKey):
        raise PermanentError(
            f"the sealing certificate holds a {type(key).__name__}, but sealed secrets need RSA."
        )
    return key


def render_sealed_secret(
    name: str,
    namespace: str,
    data: Mapping[str, bytes],
    certificate: x509.Certificate | RSAPublicKey,
    scope: SealingScope = SealingScope.STRICT,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A SealedSecret manifest shaped like kubeseal's output (minus its null creationTimestamps).

    ``labels`` and ``annotations`` go to the Secret the controller creates (``spec.template``);
    the scope annotations go on both the SealedSecret, where the controller reads the label to
    unseal with, and the template, which is what upstream's ``Scope()`` reports.

    Every call draws fresh session keys, so the output differs each time even for the same data:
    callers that must not rewrite an unchanged secret decide that before calling this.
    """
    scope = SealingScope(scope)
    if not name:
        raise PermanentError("a sealed secret needs a name.")
    if not namespace:
        raise PermanentError(f"sealed secret {name!r} needs a namespace.")
    if not data:
        # kubeseal refuses this too: an empty SealedSecret is almost always a bug upstream of it.
        raise PermanentError(f"sealed secret {namespace}/{name} has no data to seal.")
    for key in data:
        if len(key) > 253 or not _SECRET_KEY.match(key):
            raise PermanentError(
                f"sealed secret {namespace}/{name} has data key {key!r}, but Secret keys may only "
                "hold letters, digits, '-', '_' and '.' (at most 253)."
            )
    clashing = sorted({NAMESPACE_WIDE_ANNOTATION, CLUSTER_WIDE_ANNOTATION} & set(annotations or {}))
    if clashing:
        raise PermanentError(
            f"sealed secret {namespace}/{name} sets {', '.join(clashing)} as an annotation; "
            "choose the scope with the scope argument instead."
        )

    public_key = _public_key_of(certificate)
    label = label_for(scope, namespace, name)
    encrypted = {key: seal(bytes(data[key]), public_key, label) for key in sorted(data)}

    template_annotations = {
        key: value
        for key, value in (annotations or {}).items()
        if key not in _LAST_APPLIED_ANNOTATIONS
    }
    template_annotations.update(scope_annotations(scope))
    template_metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        template_metadata["labels"] = dict(sorted(labels.items()))
    if template_annotations:
        template_metadata["annotations"] = dict(sorted(template_annotations.items()))

    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if scope is not SealingScope.STRICT:
        metadata["annotations"] = scope_annotations(scope)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": {
            "encryptedData": encrypted,
            "template": {"metadata": template_metadata, "type": "Opaque"},
        },
    }


def unseal_sealed_secret(
    manifest: Mapping[str, Any], private_key: RSAPrivateKey
) -> dict[str, bytes]:
    """Open every value of a SealedSecret manifest as the controller would (tests, e2e checks).

    Like the controller, the label comes from the SealedSecret's own metadata, not the template,
    so a manifest whose scope annotation was edited after sealing fails here as it would there.
    """
    metadata = manifest.get("metadata") or {}
    scope = scope_from_annotations(metadata.get("annotations"))
    label = label_for(scope, metadata.get("namespace", ""), metadata.get("name", ""))
    encrypted = (manifest.get("spec") or {}).get("encryptedData") or {}
    opened: dict[str, bytes] = {}
    for key, value in encrypted.items():
        try:
            opened[key] = unseal(value, private_key, label)
        except UnsealError as exc:
            raise UnsealError(f"encryptedData[{key!r}]: {exc}") from None
    return opened


# --- where the controller's certificate comes from -------------------------------------------


class _Model(BaseModel):
    # Frozen so that a source can key the certificate cache.
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class ClusterCertificateSource(_Model):
    """Ask the controller through the API server's service proxy, as ``kubeseal --fetch-cert``."""

    controller_name: str = Field(default="sealed-secrets-controller", min_length=1)
    controller_namespace: str = Field(default="kube-system", min_length=1)

    @field_validator("controller_name", "controller_namespace")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not _DNS1123_LABEL.match(value):
            raise ValueError(
                "must be a DNS-1123 label: lower-case letters, digits and '-', at most 63, "
                "starting and ending with a letter or digit"
            )
        return value


class CertificateSource(_Model):
    """Exactly one of ``file`` (a PEM on disk), ``url`` (the controller's /v1/cert.pem or a copy)
    or ``cluster`` (the controller's service, reached through the Kubernetes API)."""

    file: Path | None = None
    url: str | None = None
    cluster: ClusterCertificateSource | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            parsed = httpx.URL(value)
        except httpx.InvalidURL as exc:
            raise ValueError(f"is not a valid URL ({exc})") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> CertificateSource:
        chosen = [field for field in ("file", "url", "cluster") if getattr(self, field) is not None]
        if len(chosen) != 1:
            got = ", ".join(chosen) if chosen else "none"
            raise ValueError(f"set exactly one of file, url or cluster (got {got})")
        return self

    def __str__(self) -> str:
        if self.file is not None:
            return f"certificate file {self.file}"
        if self.url is not None:
            return f"certificate URL {self.url}"
        assert self.cluster is not None
        return (
            f"sealed-secrets controller {self.cluster.controller_namespace}/"
            f"{self.cluster.controller_name}"
        )


@dataclass(frozen=True)
class ControllerCertificate:
    """A parsed controller certificate and the fingerprint activities report instead of the key."""

    source: CertificateSource
    certificate: x509.Certificate
    fingerprint: str
    """SHA-256 of the certificate's DER encoding, lower-case hex."""

    @property
    def public_key(self) -> RSAPublicKey:
        return _public_key_of(self.certificate)

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def parse_certificate(
    pem: bytes, source: CertificateSource, *, now: datetime | None = None
) -> ControllerCertificate:
    """Parse the first certificate of a PEM bundle, with kubeseal's checks (RSA, not expired)."""
    try:
        certificate = x509.load_pem_x509_certificates(pem)[0]
    except (ValueError, IndexError):
        raise PermanentError(f"{source} does not hold a PEM-encoded X.509 certificate.") from None
    key = certificate.public_key()
    if not isinstance(key, RSAPublicKey):
        raise PermanentError(
            f"{source} holds a {type(key).__name__} certificate, but sealed secrets need RSA."
        )
    now = now or datetime.now(UTC)
    if certificate.not_valid_after_utc < now:
        # kubeseal refuses to seal with an expired certificate; a stale copy is the usual cause.
        raise PermanentError(
            f"{source} holds a certificate that expired on "
            f"{certificate.not_valid_after_utc:%Y-%m-%d}; fetch the controller's current one."
        )
    fingerprint = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    return ControllerCertificate(source=source, certificate=certificate, fingerprint=fingerprint)


def _read_file(source: CertificateSource) -> bytes:
    assert source.file is not None
    try:
        return source.file.read_bytes()
    except FileNotFoundError:
        raise PermanentError(f"{source} does not exist.") from None
    except OSError as exc:
        raise PermanentError(f"{source} cannot be read: {exc.strerror}.") from None


def _raise_for_status(source: CertificateSource, status: int) -> None:
    if status < 300:
        return
    # 408 and 429 are the client-side statuses that a later retry can fix.
    if status >= 500 or status in (408, 429):
        raise TransientError(f"{source} answered HTTP {status}; will retry.")
    raise PermanentError(f"{source} answered HTTP {status}; check the address.")


def _fetch_url(source: CertificateSource, timeout: float) -> bytes:
    assert source.url is not None
    try:
        response = httpx.get(source.url, timeout=timeout, follow_redirects=True)
    except httpx.TransportError as exc:
        raise TransientError(f"{source} could not be reached ({type(exc).__name__}).") from None
    _raise_for_status(source, response.status_code)
    return response.content


def _fetch_cluster(source: CertificateSource, timeout: float, kubeconfig: Path | None) -> bytes:
    """kubeseal --fetch-cert through the API server's service proxy.

    Nothing here can be exercised against a real API server in this repository's test setup;
    see tests/test_sealing.py for what is tested and how.
    """
    # Imported here: the kubernetes package is slow to import and only this source needs it.
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException
    from urllib3.exceptions import HTTPError

    assert source.cluster is not None
    try:
        if kubeconfig is not None:
            api_client = config.new_client_from_config(config_file=str(kubeconfig))
        else:
            try:
                configuration = client.Configuration()
                config.load_incluster_config(client_configuration=configuration)
                api_client = client.ApiClient(configuration)
            except ConfigException:
                api_client = config.new_client_from_config()
    except (ConfigException, OSError) as exc:
        raise PermanentError(
            f"{source} cannot be reached: no usable Kubernetes config ({exc})."
        ) from None
    try:
        with api_client:
            response = client.CoreV1Api(api_client).connect_get_namespaced_service_proxy_with_path(
                # "<service>:<port name>": the chart names the controller's port "http".
                name=f"{source.cluster.controller_name}:http",
                namespace=source.cluster.controller_namespace,
                path="v1/cert.pem",
                _preload_content=False,
                _request_timeout=timeout,
            )
            return bytes(response.data)
    except ApiException as exc:
        _raise_for_status(source, exc.status or 500)
        raise TransientError(f"{source} answered HTTP {exc.status}; will retry.") from None
    except HTTPError as exc:
        raise TransientError(f"{source} could not be reached ({type(exc).__name__}).") from None


class CertificateCache:
    """Controller certificates by source, each kept for ``ttl`` (default 24 hours).

    Thread-safe, so synchronous activities can share one per worker; ``aget`` runs the fetch in a
    thread for async callers. Failures are not cached: the next call tries again.
    """

    def __init__(
        self,
        ttl: timedelta = DEFAULT_CERTIFICATE_TTL,
        *,
        timeout: float = 10.0,
        kubeconfig: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not timedelta(0) < ttl < KEY_RENEWAL_PERIOD:
            raise ValueError(
                f"the certificate cache TTL must be above 0 and below {KEY_RENEWAL_PERIOD.days} "
                f"days (the controller's key renewal period), got {ttl}."
            )
        self.ttl = ttl
        self._timeout = timeout
        self._kubeconfig = kubeconfig
        self._clock = clock
        self._entries: dict[CertificateSource, tuple[float, ControllerCertificate]] = {}
        self._locks: dict[CertificateSource, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, source: CertificateSource) -> ControllerCertificate:
        with self._guard:
            lock = self._locks.setdefault(source, threading.Lock())
        # One lock per source: concurrent callers for the same controller share a single fetch,
        # while a slow controller does not hold up the others.
        with lock:
            cached = self._entries.get(source)
            if cached is not None:
                fetched_at, certificate = cached
                fresh = self._clock() - fetched_at < self.ttl.total_seconds()
                if fresh and certificate.certificate.not_valid_after_utc > datetime.now(UTC):
                    return certificate
            certificate = parse_certificate(self._load(source), source)
            self._entries[source] = (self._clock(), certificate)
            return certificate

    async def aget(self, source: CertificateSource) -> ControllerCertificate:
        return await asyncio.to_thread(self.get, source)

    def invalidate(self, source: CertificateSource | None = None) -> None:
        """Forget one source (or all), e.g. after the controller was reinstalled with a new key."""
        with self._guard:
            if source is None:
                self._entries.clear()
            else:
                self._entries.pop(source, None)

    def _load(self, source: CertificateSource) -> bytes:
        if source.file is not None:
            return _read_file(source)
        if source.url is not None:
            return _fetch_url(source, self._timeout)
        return _fetch_cluster(source, self._timeout, self._kubeconfig)


def controller_certificate(key: RSAPrivateKey, valid_for: timedelta) -> x509.Certificate:
    """A self-signed certificate for a key, like the one the sealed-secrets controller makes for
    itself: for the local stack, tests and benchmarks, which have no controller."""
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "sealed-secret")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + valid_for)
        .sign(key, hashes.SHA256())
    )
