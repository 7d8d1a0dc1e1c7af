"""Sealing against the upstream controller's format, and fetching its certificate.

Real crypto throughout; keys and certificates are generated here. The upstream vectors and the
SealedSecret CRD come from the shared conformance folder (skipped, with the reason, if absent).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import jsonschema
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from pydantic import ValidationError
from support.conformance import conformance_file, load_crd_schema

from idp.errors import PermanentError, TransientError
from idp.sealing import (
    CLUSTER_WIDE_ANNOTATION,
    NAMESPACE_WIDE_ANNOTATION,
    CertificateCache,
    CertificateSource,
    ClusterCertificateSource,
    SealingScope,
    UnsealError,
    label_for,
    parse_certificate,
    render_sealed_secret,
    scope_annotations,
    scope_from_annotations,
    seal,
    unseal,
    unseal_sealed_secret,
)
from starter.dev import free_port

UPSTREAM_SCOPES = [SealingScope.STRICT, SealingScope.NAMESPACE_WIDE, SealingScope.CLUSTER_WIDE]


# --- keys and certificates ----------------------------------------------------------------------


def make_certificate(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> x509.Certificate:
    """A self-signed certificate like the controller's (CN and O "sealed-secret")."""
    now = datetime.now(UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "sealed-secret"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sealed-secret"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(minutes=5))
        .not_valid_after(not_after or now + timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def controller_key() -> rsa.RSAPrivateKey:
    # The controller's default key size; generated once because 4096-bit keygen takes seconds.
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


@pytest.fixture(scope="module")
def controller_cert(controller_key: rsa.RSAPrivateKey) -> x509.Certificate:
    return make_certificate(controller_key)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# --- upstream vectors ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> tuple[list[dict[str, str]], rsa.RSAPrivateKey]:
    cases = json.loads(conformance_file("sealed-secrets/upstream-cases.json").read_text())
    key_pem = conformance_file("sealed-secrets/test-controller-key.pem").read_bytes()
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return cases, key


@pytest.mark.parametrize("index", range(3), ids=[scope.value for scope in UPSTREAM_SCOPES])
def test_unseals_what_upstream_sealed(
    upstream: tuple[list[dict[str, str]], rsa.RSAPrivateKey], index: int
) -> None:
    cases, key = upstream
    case = cases[index]
    # The vectors were sealed for namespace "myns" and name "mysecret" under each scope in turn.
    label = label_for(UPSTREAM_SCOPES[index], "myns", "mysecret")
    assert label == case["label"].encode()
    assert unseal(case["ct"], key, label) == case["plain"].encode()


def test_upstream_vector_does_not_open_under_another_scope(
    upstream: tuple[list[dict[str, str]], rsa.RSAPrivateKey],
) -> None:
    cases, key = upstream
    strict = cases[0]
    for scope in (SealingScope.NAMESPACE_WIDE, SealingScope.CLUSTER_WIDE):
        with pytest.raises(UnsealError, match="does not open"):
            unseal(strict["ct"], key, label_for(scope, "myns", "mysecret"))


def test_upstream_vector_layout(upstream: tuple[list[dict[str, str]], rsa.RSAPrivateKey]) -> None:
    cases, key = upstream
    for case in cases:
        raw = base64.b64decode(case["ct"])
        assert int.from_bytes(raw[:2], "big") == key.key_size // 8 == 512
        assert len(raw) == 2 + 512 + len(case["plain"]) + 16


# --- seal / unseal ------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", list(SealingScope))
def test_round_trip_every_scope(controller_key: rsa.RSAPrivateKey, scope: SealingScope) -> None:
    label = label_for(scope, "team-a", "nats-creds")
    plaintext = b"-----BEGIN NATS USER JWT-----\n" + bytes(range(256)) * 8
    sealed = seal(plaintext, controller_key.public_key(), label)
    assert unseal(sealed, controller_key, label) == plaintext


def test_empty_value_round_trips(controller_key: rsa.RSAPrivateKey) -> None:
    sealed = seal(b"", controller_key.public_key(), b"ns/name")
    assert unseal(sealed, controller_key, b"ns/name") == b""


def test_layout(controller_key: rsa.RSAPrivateKey) -> None:
    plaintext = b"x" * 1024
    sealed = seal(plaintext, controller_key.public_key(), b"team-a/nats-creds")
    raw = base64.b64decode(sealed, validate=True)  # standard alphabet, padded
    rsa_length = int.from_bytes(raw[:2], "big")
    assert rsa_length == 512 == controller_key.key_size // 8
    # length prefix || RSA block || AES-GCM ciphertext (same length as plaintext) || 16-byte tag
    assert len(raw) == 2 + 512 + len(plaintext) + 16
    # A fresh session key per value: sealing the same value twice never gives the same bytes.
    again = base64.b64decode(seal(plaintext, controller_key.public_key(), b"team-a/nats-creds"))
    assert raw[2:514] != again[2:514] and raw[514:] != again[514:]


def test_wrong_label_is_rejected_without_leaking(controller_key: rsa.RSAPrivateKey) -> None:
    sealed = seal(b"top-secret-token", controller_key.public_key(), b"team-a/nats-creds")
    with pytest.raises(UnsealError) as caught:
        unseal(sealed, controller_key, b"team-a/other-secret")
    assert "another scope, namespace or name" in str(caught.value)
    assert "top-secret" not in str(caught.value)
    assert isinstance(caught.value, PermanentError)


def test_wrong_key_is_rejected(
    controller_key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    sealed = seal(b"value", controller_key.public_key(), b"ns/name")
    with pytest.raises(UnsealError, match="another controller key"):
        unseal(sealed, other_key, b"ns/name")


def test_altered_payload_is_rejected(controller_key: rsa.RSAPrivateKey) -> None:
    raw = bytearray(base64.b64decode(seal(b"value", controller_key.public_key(), b"ns/name")))
    raw[-1] ^= 0x01
    with pytest.raises(UnsealError, match="altered"):
        unseal(base64.b64encode(bytes(raw)).decode(), controller_key, b"ns/name")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("not base64!", "not valid base64"), ("AA==", "too short"), ("AgAA", "too short")],
)
def test_malformed_values_are_rejected(
    controller_key: rsa.RSAPrivateKey, value: str, expected: str
) -> None:
    with pytest.raises(UnsealError, match=expected):
        unseal(value, controller_key, b"ns/name")


# --- scope --------------------------------------------------------------------------------------


def test_labels_and_annotations_per_scope() -> None:
    assert label_for(SealingScope.STRICT, "ns", "name") == b"ns/name"
    assert label_for(SealingScope.NAMESPACE_WIDE, "ns", "name") == b"ns"
    assert label_for(SealingScope.CLUSTER_WIDE, "ns", "name") == b""
    assert scope_annotations(SealingScope.STRICT) == {}
    assert scope_annotations(SealingScope.NAMESPACE_WIDE) == {
        "sealedsecrets.bitnami.com/namespace-wide": "true"
    }
    assert scope_annotations(SealingScope.CLUSTER_WIDE) == {
        "sealedsecrets.bitnami.com/cluster-wide": "true"
    }
    for scope in SealingScope:
        assert scope_from_annotations(scope_annotations(scope)) is scope
    # The controller lets cluster-wide win when both are set.
    both = {NAMESPACE_WIDE_ANNOTATION: "true", CLUSTER_WIDE_ANNOTATION: "true"}
    assert scope_from_annotations(both) is SealingScope.CLUSTER_WIDE
    assert SealingScope("namespace-wide") is SealingScope.NAMESPACE_WIDE


def test_scoped_labels_need_their_parts() -> None:
    with pytest.raises(PermanentError, match="needs a namespace"):
        label_for(SealingScope.NAMESPACE_WIDE, "", "name")
    with pytest.raises(PermanentError, match="needs a name"):
        label_for(SealingScope.STRICT, "ns", "")


# --- the rendered SealedSecret ------------------------------------------------------------------


@pytest.fixture(scope="module")
def sealedsecret_schema() -> dict:
    return load_crd_schema("sealed-secrets/sealedsecrets-crd.yaml", "v1alpha1")


@pytest.mark.parametrize("scope", list(SealingScope))
def test_rendered_sealed_secret_matches_crd_and_unseals(
    controller_key: rsa.RSAPrivateKey,
    controller_cert: x509.Certificate,
    sealedsecret_schema: dict,
    scope: SealingScope,
) -> None:
    data = {"user.creds": b"-----BEGIN NATS USER JWT-----\n...", "account": b"ACCOUNT"}
    manifest = render_sealed_secret(
        "nats-creds",
        "team-a",
        data,
        controller_cert,
        scope,
        labels={"app.kubernetes.io/managed-by": "idp"},
        annotations={"idp.example.com/credentials-version": "3"},
    )
    jsonschema.Draft7Validator(sealedsecret_schema).validate(manifest)

    assert manifest["apiVersion"] == "bitnami.com/v1alpha1"
    assert manifest["kind"] == "SealedSecret"
    assert manifest["metadata"]["name"] == "nats-creds"
    assert manifest["metadata"]["namespace"] == "team-a"
    assert manifest["metadata"].get("annotations", {}) == scope_annotations(scope)
    spec = manifest["spec"]
    assert list(spec["encryptedData"]) == ["account", "user.creds"]  # sorted: stable output
    template = spec["template"]
    assert template["type"] == "Opaque"
    assert template["metadata"] == {
        "name": "nats-creds",
        "namespace": "team-a",
        "labels": {"app.kubernetes.io/managed-by": "idp"},
        "annotations": {"idp.example.com/credentials-version": "3", **scope_annotations(scope)},
    }
    assert unseal_sealed_secret(manifest, controller_key) == data


def test_minimal_strict_render_has_no_annotations(controller_cert: x509.Certificate) -> None:
    manifest = render_sealed_secret("s", "ns", {"k": b"v"}, controller_cert)
    assert "annotations" not in manifest["metadata"]
    assert manifest["spec"]["template"]["metadata"] == {"name": "s", "namespace": "ns"}


def test_render_accepts_a_bare_public_key(controller_key: rsa.RSAPrivateKey) -> None:
    manifest = render_sealed_secret("s", "ns", {"k": b"v"}, controller_key.public_key())
    assert unseal_sealed_secret(manifest, controller_key) == {"k": b"v"}


def test_editing_the_scope_after_sealing_breaks_unsealing(
    controller_key: rsa.RSAPrivateKey, controller_cert: x509.Certificate
) -> None:
    manifest = render_sealed_secret(
        "s", "ns", {"k": b"v"}, controller_cert, SealingScope.CLUSTER_WIDE
    )
    del manifest["metadata"]["annotations"]
    with pytest.raises(UnsealError, match=r"encryptedData\['k'\]"):
        unseal_sealed_secret(manifest, controller_key)


def test_render_strips_last_applied_annotations(controller_cert: x509.Certificate) -> None:
    manifest = render_sealed_secret(
        "s",
        "ns",
        {"k": b"v"},
        controller_cert,
        annotations={"kubectl.kubernetes.io/last-applied-configuration": '{"data": "plain"}'},
    )
    assert "annotations" not in manifest["spec"]["template"]["metadata"]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"data": {}}, "no data"),
        ({"data": {"bad/key": b"v"}}, "data key 'bad/key'"),
        ({"namespace": ""}, "needs a namespace"),
        ({"name": ""}, "needs a name"),
        ({"annotations": {CLUSTER_WIDE_ANNOTATION: "true"}}, "scope argument"),
    ],
    ids=["empty-data", "bad-key", "no-namespace", "no-name", "scope-annotation"],
)
def test_render_rejects_bad_input(
    controller_cert: x509.Certificate, kwargs: dict, expected: str
) -> None:
    arguments = {"name": "s", "namespace": "ns", "data": {"k": b"v"}} | kwargs
    with pytest.raises(PermanentError, match=expected):
        render_sealed_secret(certificate=controller_cert, **arguments)


def test_render_rejects_a_non_rsa_certificate() -> None:
    ec_cert = make_certificate(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(PermanentError, match="need RSA"):
        render_sealed_secret("s", "ns", {"k": b"v"}, ec_cert)


# --- certificate sources ------------------------------------------------------------------------


def test_source_accepts_exactly_one_kind() -> None:
    assert CertificateSource.model_validate({"file": "/etc/cert.pem"}).file == Path("/etc/cert.pem")
    source = CertificateSource.model_validate(
        {"cluster": {"controllerName": "sealed-secrets", "controllerNamespace": "ops"}}
    )
    assert source.cluster == ClusterCertificateSource(
        controller_name="sealed-secrets", controller_namespace="ops"
    )
    defaults = CertificateSource.model_validate({"cluster": {}})
    assert str(defaults) == "sealed-secrets controller kube-system/sealed-secrets-controller"

    with pytest.raises(ValidationError, match="exactly one of file, url or cluster"):
        CertificateSource.model_validate({})
    with pytest.raises(ValidationError, match=r"got file, url"):
        CertificateSource.model_validate({"file": "/c.pem", "url": "http://x/v1/cert.pem"})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        CertificateSource.model_validate({"file": "/c.pem", "path": "/c.pem"})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        CertificateSource.model_validate({"cluster": {"name": "x"}})
    with pytest.raises(ValidationError, match="http:// or https://"):
        CertificateSource.model_validate({"url": "ftp://host/cert.pem"})
    with pytest.raises(ValidationError, match="DNS-1123"):
        CertificateSource.model_validate({"cluster": {"controllerNamespace": "Kube_System"}})


def test_sources_are_hashable_cache_keys() -> None:
    a = CertificateSource(url="http://sealed-secrets-controller.kube-system:8080/v1/cert.pem")
    b = CertificateSource.model_validate(
        {"url": "http://sealed-secrets-controller.kube-system:8080/v1/cert.pem"}
    )
    assert hash(a) == hash(b) and {a: 1}[b] == 1


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(days=30), timedelta(days=31)])
def test_cache_ttl_must_be_shorter_than_key_renewal(ttl: timedelta) -> None:
    with pytest.raises(ValueError, match="below 30 days"):
        CertificateCache(ttl)


def test_default_ttl_is_a_day() -> None:
    assert CertificateCache().ttl == timedelta(hours=24)
    assert CertificateCache(timedelta(days=29)).ttl == timedelta(days=29)


def test_certificate_from_file(tmp_path: Path, controller_cert: x509.Certificate) -> None:
    path = tmp_path / "cert.pem"
    path.write_bytes(pem(controller_cert))
    source = CertificateSource(file=path)

    got = CertificateCache().get(source)

    der = controller_cert.public_bytes(serialization.Encoding.DER)
    assert got.fingerprint == hashlib.sha256(der).hexdigest()
    assert got.certificate == controller_cert
    assert got.public_key.public_numbers() == controller_cert.public_key().public_numbers()
    assert got.pem == pem(controller_cert)
    assert got.source == source


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.pem"
    with pytest.raises(PermanentError, match=re.escape(f"certificate file {path} does not exist")):
        CertificateCache().get(CertificateSource(file=path))


def test_malformed_pem_is_permanent(tmp_path: Path) -> None:
    path = tmp_path / "cert.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n")
    with pytest.raises(
        PermanentError, match=re.escape(f"{path} does not hold a PEM-encoded X.509")
    ):
        CertificateCache().get(CertificateSource(file=path))


def test_non_rsa_and_expired_certificates_are_refused(other_key: rsa.RSAPrivateKey) -> None:
    source = CertificateSource(file=Path("/nowhere.pem"))
    ec_cert = make_certificate(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(PermanentError, match="need RSA"):
        parse_certificate(pem(ec_cert), source)
    past = datetime.now(UTC) - timedelta(days=10)
    expired = make_certificate(other_key, not_before=past - timedelta(days=1), not_after=past)
    with pytest.raises(PermanentError, match=f"expired on {past:%Y-%m-%d}"):
        parse_certificate(pem(expired), source)


# A real HTTP server on 127.0.0.1 stands for the controller's /v1/cert.pem endpoint (and, below,
# for the API server's service proxy). Each test uses its own paths so request counts stay apart.


@dataclass
class CertServer:
    base: str
    routes: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)


@pytest.fixture(scope="module")
def cert_server() -> Iterator[CertServer]:
    state = CertServer(base="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            # Decoded like Go's net/http does before routing (the API server sees decoded paths).
            path = unquote(self.path)
            state.requests[path] += 1
            status, body = state.routes.get(path, (404, b"not found"))
            self.send_response(status)
            self.send_header("Content-Type", "application/x-pem-file")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


class FakeClock:
    """Stands in for time.monotonic so TTL expiry is tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_certificate_from_url_is_cached_for_the_ttl(
    cert_server: CertServer, controller_cert: x509.Certificate
) -> None:
    cert_server.routes["/ttl/v1/cert.pem"] = (200, pem(controller_cert))
    source = CertificateSource(url=f"{cert_server.base}/ttl/v1/cert.pem")
    clock = FakeClock()
    cache = CertificateCache(timedelta(hours=24), clock=clock)

    first = cache.get(source)
    clock.now += timedelta(hours=23).total_seconds()
    second = cache.get(source)
    assert cert_server.requests["/ttl/v1/cert.pem"] == 1
    assert second is first

    clock.now += timedelta(hours=2).total_seconds()
    third = cache.get(source)
    assert cert_server.requests["/ttl/v1/cert.pem"] == 2
    assert third.fingerprint == first.fingerprint


def test_second_get_within_ttl_makes_no_request(
    cert_server: CertServer, controller_cert: x509.Certificate
) -> None:
    cert_server.routes["/real-clock/cert.pem"] = (200, pem(controller_cert))
    source = CertificateSource(url=f"{cert_server.base}/real-clock/cert.pem")
    cache = CertificateCache()
    assert cache.get(source).fingerprint == cache.get(source).fingerprint
    assert cert_server.requests["/real-clock/cert.pem"] == 1


def test_a_rotated_certificate_is_seen_after_invalidate(
    cert_server: CertServer, controller_cert: x509.Certificate, other_key: rsa.RSAPrivateKey
) -> None:
    cert_server.routes["/rotate/cert.pem"] = (200, pem(controller_cert))
    source = CertificateSource(url=f"{cert_server.base}/rotate/cert.pem")
    cache = CertificateCache()
    before = cache.get(source)
    rotated = make_certificate(other_key)
    cert_server.routes["/rotate/cert.pem"] = (200, pem(rotated))
    assert cache.get(source).fingerprint == before.fingerprint
    cache.invalidate(source)
    assert cache.get(source).certificate == rotated
    assert cert_server.requests["/rotate/cert.pem"] == 2


async def test_aget_runs_off_the_event_loop(
    cert_server: CertServer, controller_cert: x509.Certificate
) -> None:
    cert_server.routes["/async/cert.pem"] = (200, pem(controller_cert))
    got = await CertificateCache().aget(CertificateSource(url=f"{cert_server.base}/async/cert.pem"))
    assert got.certificate == controller_cert


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (404, PermanentError, "answered HTTP 404; check the address"),
        (403, PermanentError, "answered HTTP 403"),
        (500, TransientError, "answered HTTP 500; will retry"),
        (503, TransientError, "answered HTTP 503"),
        (429, TransientError, "answered HTTP 429"),
    ],
)
def test_http_errors_are_classified(
    cert_server: CertServer, status: int, error: type[Exception], expected: str
) -> None:
    path = f"/status/{status}/cert.pem"
    cert_server.routes[path] = (status, b"nope")
    source = CertificateSource(url=cert_server.base + path)
    with pytest.raises(
        error, match=re.escape(f"certificate URL {source.url} {expected}")
    ) as caught:
        CertificateCache().get(source)
    if error is PermanentError:
        assert not isinstance(caught.value, TransientError)


def test_failures_are_not_cached(
    cert_server: CertServer, controller_cert: x509.Certificate
) -> None:
    cert_server.routes["/flaky/cert.pem"] = (503, b"starting")
    source = CertificateSource(url=f"{cert_server.base}/flaky/cert.pem")
    cache = CertificateCache()
    with pytest.raises(TransientError):
        cache.get(source)
    cert_server.routes["/flaky/cert.pem"] = (200, pem(controller_cert))
    assert cache.get(source).certificate == controller_cert


def test_url_serving_garbage_is_permanent(cert_server: CertServer) -> None:
    cert_server.routes["/garbage/cert.pem"] = (200, b"<html>login page</html>")
    source = CertificateSource(url=f"{cert_server.base}/garbage/cert.pem")
    with pytest.raises(PermanentError, match=r"does not hold a PEM-encoded X\.509 certificate"):
        CertificateCache().get(source)


def test_unreachable_url_is_transient() -> None:
    source = CertificateSource(url=f"http://127.0.0.1:{free_port('127.0.0.1')}/v1/cert.pem")
    with pytest.raises(TransientError, match=r"could not be reached \(ConnectError\)"):
        CertificateCache(timeout=2).get(source)


# --- the cluster source -------------------------------------------------------------------------
# No Kubernetes API server can run here, so these tests cover only what needs none: that a missing
# kube config is a clear permanent error, and (with the local HTTP server standing in for the API
# server, answering one path) the exact service-proxy request kubeseal --fetch-cert would make,
# how the answer is parsed, and how proxy errors are classified. Authentication, RBAC and the
# proxying itself are the API server's and are not exercised.


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "stand-in", "cluster": {"server": server}}],
                "users": [{"name": "nobody", "user": {}}],
                "contexts": [
                    {"name": "stand-in", "context": {"cluster": "stand-in", "user": "nobody"}}
                ],
                "current-context": "stand-in",
            }
        )
    )
    return path


def test_cluster_source_without_kube_config_is_permanent(tmp_path: Path) -> None:
    source = CertificateSource(cluster=ClusterCertificateSource())
    cache = CertificateCache(kubeconfig=tmp_path / "no-such-kubeconfig")
    with pytest.raises(
        PermanentError,
        match="controller kube-system/sealed-secrets-controller cannot be reached: no usable",
    ):
        cache.get(source)


def test_cluster_source_asks_the_service_proxy(
    tmp_path: Path, cert_server: CertServer, controller_cert: x509.Certificate
) -> None:
    proxy_path = "/api/v1/namespaces/ops/services/sealer:http/proxy/v1/cert.pem"
    cert_server.routes[proxy_path] = (200, pem(controller_cert))
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", cert_server.base)
    source = CertificateSource.model_validate(
        {"cluster": {"controllerName": "sealer", "controllerNamespace": "ops"}}
    )

    got = CertificateCache(kubeconfig=kubeconfig).get(source)

    assert cert_server.requests[proxy_path] == 1
    assert got.certificate == controller_cert


def test_cluster_source_classifies_proxy_errors(tmp_path: Path, cert_server: CertServer) -> None:
    # The API server answers 503 while the controller's pods are not ready.
    cert_server.routes["/api/v1/namespaces/down/services/sealer:http/proxy/v1/cert.pem"] = (
        503,
        b'{"kind":"Status","code":503}',
    )
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", cert_server.base)
    cache = CertificateCache(kubeconfig=kubeconfig)
    down = CertificateSource.model_validate(
        {"cluster": {"controllerName": "sealer", "controllerNamespace": "down"}}
    )
    with pytest.raises(TransientError, match="controller down/sealer answered HTTP 503"):
        cache.get(down)
    # No such service: the stand-in answers 404 like the API server would.
    missing = CertificateSource.model_validate(
        {"cluster": {"controllerName": "absent", "controllerNamespace": "ops"}}
    )
    with pytest.raises(PermanentError, match="controller ops/absent answered HTTP 404"):
        cache.get(missing)
