"""deploy/kubernetes: the rendered manifests of every overlay, checked offline against the code.

The committed `rendered/<overlay>.yaml` files are what is applied, so they are what is checked:
core objects against the `kubernetes` client's models, strictly (tests/support/kubernetes.py);
ExternalSecrets and HTTPRoutes against their CRDs from the shared conformance folder, made
strict as kubectl's default field validation is (those tests skip, naming the file, when the
folder is absent); the PodMonitor only for its shape, as no CRD of Prometheus Operator is in the
conformance folder. The commands are parsed by the processes' own parsers, the probes are sent
to the processes' own web apps (in process, through httpx's ASGI transport), and every environment
variable is matched to the constant or the setting of the code that reads it. One test re-renders
every overlay with `kubectl kustomize` (skipped where kubectl is not installed) to show the
committed files are current and the rendering deterministic.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest
import yaml
from starlette.applications import Starlette
from support.conformance import load_crd_schema
from support.kubernetes import (
    build_problems,
    core_model,
    kubectl,
    kustomize,
    model_problems,
    schema_problems,
    strict_schema,
)

import worker
from idp.gateway import httproute_problems, render_aggregator
from idp.keyring import KeyRing, generate_key
from idp.models import ApiAggregator, ServiceRef
from idp.names import dns1123_subdomain
from idp.platform import DEFAULT_ENV as PLATFORM_ENV
from idp.platform import Platform, TemporalConfig, load_platform
from idp.routes import RouteTarget
from idp.statestore import StateStore
from starter import codec_server, health, idpctl, port_bridge, telemetry, temporal
from workflows import aggregator, engine, steps

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
RENDERED = KUBERNETES / "rendered"
OVERLAYS = sorted(path.name for path in (KUBERNETES / "overlays").iterdir() if path.is_dir())
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
CRDS = {
    "ExternalSecret": ("external-secrets/externalsecrets.yaml", "v1"),
    "HTTPRoute": ("gateway-api/httproutes.yaml", "v1"),
}
# Overlays for a cluster with the operators the base relies on (the local one has none).
FULL = [overlay for overlay in OVERLAYS if overlay != "local"]

WORKER, BRIDGE, CODEC = "idp-worker", "idp-port-bridge", "idp-codec-server"
NAME_LABEL = "app.kubernetes.io/name"
VERSION_LABEL = "app.kubernetes.io/version"
# Kubernetes label values (validation.IsValidLabelValue).
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# A Secret no ExternalSecret makes: the temporal-mtls component expects cert-manager to write it
# (components/temporal-mtls/kustomization.yaml), with these keys.
CERT_MANAGER_SECRETS = {"idp-temporal-client-tls": {"tls.crt", "tls.key", "ca.crt"}}


# ---- reading the rendered files -------------------------------------------------------------


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    text = (RENDERED / f"{overlay}.yaml").read_text()
    return tuple(doc for doc in yaml.safe_load_all(text) if doc)


def of_kind(overlay: str, kind: str) -> list[dict[str, Any]]:
    return [copy.deepcopy(doc) for doc in rendered(overlay) if doc["kind"] == kind]


def named(overlay: str, kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in of_kind(overlay, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{overlay}: {len(found)} {kind} named {name}"
    return found[0]


def deployment(overlay: str, app: str) -> dict[str, Any]:
    """The one Deployment whose pods are `app` (the worker's name carries its version)."""
    found = [
        doc
        for doc in of_kind(overlay, "Deployment")
        if doc["spec"]["template"]["metadata"]["labels"][NAME_LABEL] == app
    ]
    assert len(found) == 1, f"{overlay}: {len(found)} Deployments of {app}"
    return found[0]


def pod(overlay: str, app: str) -> dict[str, Any]:
    return deployment(overlay, app)["spec"]["template"]


def container(overlay: str, app: str) -> dict[str, Any]:
    containers = pod(overlay, app)["spec"]["containers"]
    assert len(containers) == 1, f"{overlay}: {app} runs {len(containers)} containers"
    return containers[0]


def env_of(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in entry.get("env", [])}


def environment(entry: dict[str, Any]) -> dict[str, str]:
    """The container's variables as the process sees them, a Secret's value as a stand-in."""
    values = {}
    for name, variable in env_of(entry).items():
        if "value" in variable:
            values[name] = variable["value"]
        else:
            ref = variable["valueFrom"]["secretKeyRef"]
            values[name] = f"secret-{ref['name']}-{ref['key']}"
    return values


def port_number(entry: dict[str, Any], port: int | str) -> int:
    """A container port by number or by name."""
    if isinstance(port, int):
        return port
    numbers = [p["containerPort"] for p in entry.get("ports", []) if p.get("name") == port]
    assert numbers, f"container {entry['name']} has no port named {port}"
    return numbers[0]


def mounted_file(entry: dict[str, Any], path: str) -> tuple[str, str]:
    """(volume, key) of the file `path` the container sees through a volume mount."""
    file = PurePosixPath(path)
    mounts = {m["mountPath"]: m["name"] for m in entry.get("volumeMounts", [])}
    assert str(file.parent) in mounts, f"{path}: nothing is mounted at {file.parent}"
    return mounts[str(file.parent)], file.name


def volume(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in spec["volumes"] if v["name"] == name)


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels is used here: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


@cache
def platform_text(overlay: str) -> str:
    """The platform file IDP_PLATFORM_CONFIG points the worker at, from its ConfigMap."""
    spec = pod(overlay, WORKER)["spec"]
    entry = container(overlay, WORKER)
    name, key = mounted_file(entry, env_of(entry)[PLATFORM_ENV]["value"])
    config_map = named(overlay, "ConfigMap", volume(spec, name)["configMap"]["name"])
    assert key in config_map["data"], f"{overlay}: ConfigMap has no {key}"
    return config_map["data"][key]


def platform(overlay: str, tmp_path: Path) -> Platform:
    path = tmp_path / "platform.yaml"
    path.write_text(platform_text(overlay))
    return load_platform(path)


# ---- the files are current ------------------------------------------------------------------


def test_every_overlay_and_only_those_are_rendered() -> None:
    assert OVERLAYS, "no overlays found"
    assert sorted(path.stem for path in RENDERED.glob("*.yaml")) == OVERLAYS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_file_is_what_kustomize_renders_today(overlay: str) -> None:
    if kubectl() is None:
        pytest.skip("kubectl is not installed: cannot re-render the overlays (`make manifests`)")
    first = kustomize(KUBERNETES / "overlays" / overlay)
    assert kustomize(KUBERNETES / "overlays" / overlay) == first, "rendering is not deterministic"
    committed = (RENDERED / f"{overlay}.yaml").read_text()
    assert committed == first, f"rendered/{overlay}.yaml is stale: run `make manifests`"


# ---- schemas --------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_fit_the_kubernetes_models_strictly(overlay: str) -> None:
    checked = 0
    for doc in rendered(overlay):
        model = core_model(doc)
        if model is None:
            assert doc["kind"] in {*CRDS, "PodMonitor"}, f"{overlay}: nothing checks {doc['kind']}"
            continue
        where = f"{overlay}: {doc['kind']} {doc['metadata']['name']}"
        assert model_problems(doc, model) == [], where
        assert build_problems(doc, model) == [], where
        checked += 1
    assert checked >= 8, f"{overlay}: only {checked} core objects"


def test_an_unknown_field_is_named_by_its_path() -> None:
    doc = copy.deepcopy(deployment("production", WORKER))
    entry = doc["spec"]["template"]["spec"]["containers"][0]
    entry["livenessProbes"] = entry.pop("livenessProbe")
    assert model_problems(doc, "V1Deployment") == [
        "spec.template.spec.containers[0].livenessProbes: unknown field of V1Container"
    ]


def test_a_missing_required_field_and_a_wrong_type_are_refused() -> None:
    doc = copy.deepcopy(deployment("production", WORKER))
    del doc["spec"]["template"]["spec"]["containers"][0]["name"]
    doc["spec"]["replicas"] = "3"
    assert model_problems(doc, "V1Deployment") == [
        "spec.replicas: must be int, not str '3'",
        "spec.template.spec.containers[0].name: required by V1Container, missing",
    ]
    # Building the model refuses it too, as the client would.
    assert build_problems(doc, "V1Deployment") != []


def crd_schema(kind: str) -> dict[str, Any]:
    return strict_schema(load_crd_schema(*CRDS[kind]))


@pytest.mark.parametrize("overlay", FULL)
def test_custom_resources_fit_their_crds(overlay: str) -> None:
    for kind in CRDS:
        documents = of_kind(overlay, kind)
        assert documents, f"{overlay}: no {kind}"
        for doc in documents:
            where = f"{overlay}: {kind} {doc['metadata']['name']}"
            assert schema_problems(doc, crd_schema(kind)) == [], where
            # The CRD leaves metadata to the API server, which checks it as ObjectMeta.
            assert model_problems(doc["metadata"], "V1ObjectMeta", "metadata") == [], where


def test_the_crd_check_refuses_unknown_fields_the_upstream_schema_lets_through() -> None:
    secret = of_kind("production", "ExternalSecret")[0]
    secret["spec"]["target"]["creationPolicyy"] = "Owner"
    upstream = load_crd_schema(*CRDS["ExternalSecret"])
    assert schema_problems(secret, upstream) == [], "the upstream schema itself forbids it now"
    assert schema_problems(secret, crd_schema("ExternalSecret")) == [
        "spec.target: Additional properties are not allowed ('creationPolicyy' was unexpected)"
    ]
    route = of_kind("production", "HTTPRoute")[0]
    route["spec"]["rules"][0]["backendRef"] = route["spec"]["rules"][0].pop("backendRefs")
    assert schema_problems(route, crd_schema("HTTPRoute")) == [
        "spec.rules[0]: Additional properties are not allowed ('backendRef' was unexpected)"
    ]


@pytest.mark.parametrize("overlay", FULL)
def test_the_pod_monitor_scrapes_the_workers_metrics_port(overlay: str) -> None:
    """Its shape only: Prometheus Operator's CRD is not in the conformance folder."""
    (monitor,) = of_kind(overlay, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert model_problems(monitor["metadata"], "V1ObjectMeta", "metadata") == []
    spec = monitor["spec"]
    assert set(spec) == {"selector", "podMetricsEndpoints"}
    assert model_problems(spec["selector"], "V1LabelSelector", "spec.selector") == []
    # Every worker version's pods: the version label is not part of the selector.
    assert spec["selector"] == {"matchLabels": {NAME_LABEL: WORKER}}
    entry = container(overlay, WORKER)
    address = telemetry.metrics_address(env_of(entry)[telemetry.METRICS_ADDRESS_ENV]["value"])
    for endpoint in spec["podMetricsEndpoints"]:
        assert set(endpoint) <= {"port", "path", "interval"}, endpoint
        assert endpoint["path"] == "/metrics"  # the SDK's Prometheus exporter
        assert port_number(entry, endpoint["port"]) == int(address.rpartition(":")[2])


# ---- the processes --------------------------------------------------------------------------


def command(entry: dict[str, Any]) -> list[str]:
    argv = entry["command"] + entry.get("args", [])
    assert argv[0] in SCRIPTS, f"{argv[0]} is not one of the project's commands"
    return argv


def worker_args(overlay: str) -> argparse.Namespace:
    argv = command(container(overlay, WORKER))
    assert SCRIPTS[argv[0]] == "worker:main"
    return worker.parse_args(argv[1:])


class FakeProbes:
    """What the health app asks; live and not ready, so each path shows which check it runs."""

    def live(self) -> str | None:
        return None

    async def ready(self) -> str | None:
        return "the worker is not polling yet"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_probes_reach_the_health_server(overlay: str) -> None:
    entry = container(overlay, WORKER)
    _, port = health.parse_address(env_of(entry)[health.HEALTH_ADDRESS_ENV]["value"])
    app = health.app(FakeProbes())
    # Liveness must not depend on Temporal: a restart does not bring the server back.
    for probe in ("startupProbe", "livenessProbe"):
        check = entry[probe]["httpGet"]
        assert port_number(entry, check["port"]) == port, probe
        assert status(app, "GET", check["path"]) == 200, probe
    check = entry["readinessProbe"]["httpGet"]
    assert port_number(entry, check["port"]) == port
    assert status(app, "GET", check["path"]) == 503, "readiness must ask whether it polls"


def status(app: Starlette, method: str, path: str, **options: Any) -> int:
    """The status the app answers a request with, in process."""

    async def call() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pod") as client:
            return (await client.request(method, path, **options)).status_code

    return asyncio.run(call())


def bridge_app() -> Starlette:
    # The bridge's routes need none of its collaborators until a webhook arrives.
    return port_bridge.Bridge(None, None, None).app()


def codec_app() -> Starlette:
    keyring = KeyRing.from_env(f"k1:{generate_key()}")
    config = codec_server.CodecServerConfig(keyring=keyring, token="t" * 32)
    return codec_server.create_app(config)


def codec_args(overlay: str) -> argparse.Namespace:
    argv = command(container(overlay, CODEC))
    assert SCRIPTS[argv[0]] == "starter.idpctl:main"
    args = idpctl.parser().parse_args(argv[1:])
    # What the server refuses at start (origins, loopback-only options) it refuses here.
    codec_server.load_config(
        args,
        {
            codec_server.KEYS_ENV: f"k1:{generate_key()}",
            codec_server.TOKEN_ENV: "t" * 32,
        },
    )
    return args


def bridge_args(overlay: str) -> argparse.Namespace:
    argv = command(container(overlay, BRIDGE))
    assert SCRIPTS[argv[0]] == "starter.port_bridge:main"
    return port_bridge.parse_args(argv[1:])


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("app", [BRIDGE, CODEC])
def test_bridge_and_codec_server_probes_reach_healthz_on_the_port_they_listen_on(
    overlay: str, app: str
) -> None:
    args = bridge_args(overlay) if app == BRIDGE else codec_args(overlay)
    web = bridge_app() if app == BRIDGE else codec_app()
    # On every interface: the kubelet and the Service do not come from the pod's loopback.
    assert args.host == "0.0.0.0"
    entry = container(overlay, app)
    for probe in ("livenessProbe", "readinessProbe"):
        check = entry[probe]["httpGet"]
        assert port_number(entry, check["port"]) == args.port, probe
        assert status(web, "GET", check["path"]) == 200, probe
    (service,) = [s for s in of_kind(overlay, "Service") if s["metadata"]["name"] == app]
    assert selects(
        {"matchLabels": service["spec"]["selector"]}, pod(overlay, app)["metadata"]["labels"]
    )
    for port in service["spec"]["ports"]:
        assert port_number(entry, port["targetPort"]) == args.port


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_exceeds_the_activity_timeouts(
    overlay: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    grace = pod(overlay, WORKER)["spec"]["terminationGracePeriodSeconds"]
    # The step timeout of the workload engine and the ApiAggregator is one figure.
    assert engine.STEP_TIMEOUT is steps.STEP_TIMEOUT is aggregator.STEP_TIMEOUT
    assert grace > steps.STEP_TIMEOUT.total_seconds()
    # The worker's own graceful shutdown, as build_worker configures it.
    options: dict[str, Any] = {}
    monkeypatch.setattr(worker, "Worker", lambda *args, **kwargs: options.update(kwargs))
    bare = Platform.model_validate({"destinations": [{"name": "d", "stateStore": {"url": "x"}}]})
    worker.build_worker(None, bare, "idp", tmp_path)
    assert grace > options["graceful_shutdown_timeout"].total_seconds()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_what_the_processes_write_is_on_writable_volumes(overlay: str, tmp_path: Path) -> None:
    home = re.search(r"^ENV HOME=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert home, "the Dockerfile no longer sets HOME"
    for app in (WORKER, BRIDGE, CODEC):
        spec = pod(overlay, app)["spec"]
        entry = container(overlay, app)
        writable = {
            m["mountPath"]
            for m in entry["volumeMounts"]
            if "emptyDir" in volume(spec, m["name"]) and not m.get("readOnly")
        }
        assert home.group(1) in writable, f"{app}: HOME is not writable"
        if app == WORKER:
            assert worker_args(overlay).cache_dir in writable
    # A state store on disk lies in a volume an init container makes it in.
    worker_spec = pod(overlay, WORKER)["spec"]
    for destination in platform(overlay, tmp_path).destinations:
        url = destination.state_store.url
        if url.startswith("/"):
            inits = worker_spec.get("initContainers", [])
            assert any(i["command"][:2] == ["git", "init"] and url in i["command"] for i in inits)
            volume_name, _ = mounted_file(container(overlay, WORKER), url)
            assert "emptyDir" in volume(worker_spec, volume_name)


def pods(overlay: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in of_kind(overlay, "Deployment"):
        yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_process_runs_unprivileged_on_a_read_only_root(overlay: str) -> None:
    users = re.findall(r"^USER (\d+)$", (ROOT / "Dockerfile").read_text(), re.M)
    image_user = int(users[-1])
    for name, spec in pods(overlay):
        context = spec["securityContext"]
        assert context["runAsUser"] == image_user and context["runAsNonRoot"], name
        # Mounted Secrets are readable by this group only (defaultMode 0440).
        assert context["fsGroup"] == image_user, name
        for entry in spec["containers"] + spec.get("initContainers", []):
            security = entry["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, (name, entry["name"])
            assert security["allowPrivilegeEscalation"] is False, (name, entry["name"])
            assert security["capabilities"]["drop"] == ["ALL"], (name, entry["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_image_for_every_process(overlay: str) -> None:
    images = {
        entry["image"]
        for _, spec in pods(overlay)
        for entry in spec["containers"] + spec.get("initContainers", [])
    }
    assert len(images) == 1, images


# ---- worker versioning ----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_worker_deployment_is_named_and_labelled_by_the_build_its_image_is(
    overlay: str,
) -> None:
    doc = deployment(overlay, WORKER)
    entry = container(overlay, WORKER)
    image = env_of(entry)[worker.WORKER_IMAGE_ENV]["value"]
    assert image == entry["image"], "IDP_WORKER_IMAGE is not the container's image"
    version = worker.deployment_version(image)
    assert version.deployment_name == "idp-reconciler"
    assert doc["metadata"]["name"] == f"{WORKER}-{version.build_id}"
    dns1123_subdomain(doc["metadata"]["name"])
    for labels in (
        doc["metadata"]["labels"],
        doc["spec"]["selector"]["matchLabels"],
        doc["spec"]["template"]["metadata"]["labels"],
    ):
        assert labels[VERSION_LABEL] == version.build_id
    assert LABEL_VALUE.match(version.build_id) and len(version.build_id) <= 63
    # Kept when a new tag renames it, so the old build serves its pinned workflows.
    annotations = doc["metadata"]["annotations"]
    assert annotations["argocd.argoproj.io/sync-options"] == "Prune=false"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_budgets_span_every_worker_version_and_never_block_a_drain(overlay: str) -> None:
    budgets = of_kind(overlay, "PodDisruptionBudget")
    for doc in of_kind(overlay, "Deployment"):
        name, replicas = doc["metadata"]["name"], doc["spec"]["replicas"]
        labels = doc["spec"]["template"]["metadata"]["labels"]
        covering = [b for b in budgets if selects(b["spec"]["selector"], labels)]
        if overlay == "local":
            assert replicas == 1, name
        else:
            assert replicas >= 2, name
            assert len(covering) == 1, f"{name}: {len(covering)} budgets"
        for budget in covering:
            assert VERSION_LABEL not in budget["spec"]["selector"]["matchLabels"]
            assert budget["spec"].get("minAvailable", 0) < replicas, name


# ---- environment, secrets, platform file ----------------------------------------------------


def read_by_temporal_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Whether starter/temporal.py's settings take `name` from the environment."""
    with monkeypatch.context() as scope:
        scope.setenv(name, "sentinel-value")
        found = temporal.settings(argparse.Namespace(), TemporalConfig())
    return "sentinel-value" in dataclasses.astuple(found)


def handed_to_git(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> bool:
    """Whether `name` is one of git's own variables (they all start with GIT_, git(1)) and the
    state store passes it on to the git it runs (README, State store), as it passes on most."""
    if not name.startswith("GIT_"):
        return False
    with monkeypatch.context() as scope:
        scope.setenv(name, "sentinel-value")
        store = StateStore("git@example.com:state.git", "main", tmp_path / "clone")
    return store._env.get(name) == "sentinel-value"


def platform_variables(loaded: Platform, app: str) -> set[str]:
    """The variables the platform file names for a process to read credentials from."""
    names = {loaded.temporal.api_key_env}
    if loaded.port is not None:
        names |= {loaded.port.client_id_env, loaded.port.client_secret_env}
    if app == WORKER and loaded.synadia is not None:
        names.add(loaded.synadia.token_env)
    return names


CONSTANTS = {
    WORKER: {
        PLATFORM_ENV,
        temporal.CODEC_KEYS_ENV,
        telemetry.METRICS_ADDRESS_ENV,
        health.HEALTH_ADDRESS_ENV,
        worker.WORKER_IMAGE_ENV,
    },
    BRIDGE: {PLATFORM_ENV, temporal.CODEC_KEYS_ENV},
    CODEC: {codec_server.KEYS_ENV, codec_server.TOKEN_ENV},
}


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("app", [WORKER, BRIDGE, CODEC])
def test_every_variable_set_is_one_the_code_reads(
    overlay: str, app: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in [n for n in os.environ if n.startswith("TEMPORAL_")]:
        monkeypatch.delenv(name)
    loaded = platform(overlay, tmp_path)
    known = CONSTANTS[app] | (platform_variables(loaded, app) if app != CODEC else set())
    unread = []
    for name in env_of(container(overlay, app)):
        if name in known:
            continue
        if app != CODEC and read_by_temporal_settings(name, monkeypatch):
            continue
        if app == WORKER and handed_to_git(name, monkeypatch, tmp_path):
            continue
        unread.append(name)
    assert unread == [], f"{overlay}: {app} sets variables nothing reads"
    # And the credentials the platform file names are all there.
    if app != CODEC:
        wanted = platform_variables(loaded, app) - {loaded.temporal.api_key_env}
        assert wanted <= set(env_of(container(overlay, app))), overlay


def secret_references(overlay: str) -> Iterator[tuple[str, str, str]]:
    """(Deployment, Secret, key) of every Secret a container reads."""
    for name, spec in pods(overlay):
        for entry in spec["containers"]:
            for variable in env_of(entry).values():
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    yield name, ref["name"], ref["key"]
        for vol in spec["volumes"]:
            if "secret" not in vol:
                continue
            keys = {
                path.removeprefix(f"{mount['mountPath']}/")
                for entry in spec["containers"]
                for mount in entry["volumeMounts"]
                if mount["name"] == vol["name"]
                for value in environment(entry).values()
                for path in paths_in(value)
                if path.startswith(f"{mount['mountPath']}/")
            }
            assert keys, f"{name}: no variable names a file of the Secret volume {vol['name']}"
            for key in keys:
                yield name, vol["secret"]["secretName"], key


def paths_in(value: str) -> Iterator[str]:
    """Absolute paths in a variable's value: a path, or a command line naming some
    (`ssh -i /key -o UserKnownHostsFile=/hosts`)."""
    for word in shlex.split(value):
        yield from (piece for piece in word.split("=") if piece.startswith("/"))


def local_secret_commands() -> dict[str, set[str]]:
    """Secret name → keys, from the `kubectl create secret generic` lines of the README."""
    text = (KUBERNETES / "README.md").read_text().replace("\\\n", " ")
    made: dict[str, set[str]] = {}
    for line in text.splitlines():
        found = re.search(r"create secret generic (\S+)", line)
        if found:
            made[found.group(1)] = set(re.findall(r"--from-literal=(\w+)=", line))
    return made


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_read_is_made(overlay: str) -> None:
    made: dict[str, set[str]] = {}
    for external in of_kind(overlay, "ExternalSecret"):
        target = external["spec"]["target"]["name"]
        made[target] = {entry["secretKey"] for entry in external["spec"]["data"]}
    if overlay == "local":
        assert made == {}, "the local overlay runs without External Secrets Operator"
        made = local_secret_commands()
    made |= CERT_MANAGER_SECRETS
    for name, secret, key in secret_references(overlay):
        assert secret in made, f"{overlay}: {name} reads Secret {secret}, which nothing makes"
        assert key in made[secret], f"{overlay}: {secret} has no {key}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_platform_file_is_valid_and_has_what_the_bridge_needs(overlay: str, tmp_path: Path) -> None:
    loaded = platform(overlay, tmp_path)
    assert loaded.port is not None, "the bridge refuses a platform file without port"
    entry = container(overlay, BRIDGE)
    assert env_of(entry)[PLATFORM_ENV] == env_of(container(overlay, WORKER))[PLATFORM_ENV]
    # The same file: both mount the same ConfigMap there.
    path = env_of(entry)[PLATFORM_ENV]["value"]
    mounts = [
        volume(pod(overlay, app)["spec"], mounted_file(container(overlay, app), path)[0])
        for app in (BRIDGE, WORKER)
    ]
    assert mounts[0] == mounts[1]


def connection(
    overlay: str, app: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> temporal.TemporalSettings:
    """The Temporal settings the process arrives at with its environment and platform file."""
    for name in [n for n in os.environ if n.startswith("TEMPORAL_")]:
        monkeypatch.delenv(name)
    for name, value in environment(container(overlay, app)).items():
        monkeypatch.setenv(name, value)
    return temporal.settings(argparse.Namespace(), platform(overlay, tmp_path).temporal)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("app", [WORKER, BRIDGE])
def test_the_temporal_connection_each_overlay_promises(
    overlay: str, app: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    found = connection(overlay, app, monkeypatch, tmp_path)
    if overlay == "temporal-cloud":
        assert found.api_key == "secret-idp-temporal-api-key-TEMPORAL_API_KEY"
        assert found.tls is True
        assert found.address.endswith(".api.temporal.io:7233")
        assert found.namespace != platform(overlay, tmp_path).temporal.namespace
        return
    assert found.api_key is None
    if overlay != "temporal-mtls":
        assert found.tls is False
        return
    spec = pod(overlay, app)["spec"]
    entry = container(overlay, app)
    assert found.tls_server_name
    for path in (found.tls_cert, found.tls_key, found.tls_ca):
        assert path is not None
        name, key = mounted_file(entry, path)
        secret = volume(spec, name)["secret"]
        assert key in CERT_MANAGER_SECRETS[secret["secretName"]]


# ---- exposure -------------------------------------------------------------------------------


def route_paths(route: dict[str, Any]) -> list[str]:
    return [match["path"]["value"] for r in route["spec"]["rules"] for match in r["matches"]]


def route_as_the_project_renders_it(route: dict[str, Any]) -> dict[str, Any]:
    """The HTTPRoute idp/gateway.py renders for an ApiAggregator target with this route's
    hostname, Gateway, backend and paths."""
    spec = route["spec"]
    (hostname,) = spec["hostnames"]
    (parent,) = spec["parentRefs"]
    backends = {tuple(sorted(b.items())) for r in spec["rules"] for b in r["backendRefs"]}
    assert len(backends) == 1, "one backend per route"
    backend = dict(next(iter(backends)))
    namespace = route["metadata"]["namespace"]
    api = ApiAggregator.model_validate(
        {
            "metadata": {"name": "idp"},
            "spec": {
                "hostname": hostname,
                "gateway": {k: parent[k] for k in ("name", "namespace", "sectionName")},
                "destination": "cluster",
                "namespace": namespace,
            },
        }
    )
    target = RouteTarget(
        system="idp",
        workload=route["metadata"]["name"],
        namespace=namespace,
        index=0,
        paths=route_paths(route),
        service=ServiceRef(name=backend["name"], port=backend["port"]),
    )
    (text,) = render_aggregator(api, [target]).values()
    return yaml.safe_load(text)


@pytest.mark.parametrize("overlay", FULL)
def test_routes_have_the_shape_the_project_renders_and_reach_the_processes(
    overlay: str,
) -> None:
    routes = {r["metadata"]["name"]: r for r in of_kind(overlay, "HTTPRoute")}
    assert set(routes) == {BRIDGE, CODEC}
    for name, route in routes.items():
        assert route["spec"] == route_as_the_project_renders_it(route)["spec"], name
        assert httproute_problems(route) == [], name
        for backend in (b for r in route["spec"]["rules"] for b in r["backendRefs"]):
            # The Service of the process itself; its ports reach the process (tested above).
            service = named(overlay, "Service", backend["name"])
            assert service["spec"]["selector"][NAME_LABEL] == name
            assert backend["port"] in {p["port"] for p in service["spec"]["ports"]}, name
    # The webhook and nothing else of the bridge; the two codec endpoints the UI and CLI call.
    assert route_paths(routes[BRIDGE]) == [port_bridge.WEBHOOK_PATH]
    codec_paths = route_paths(routes[CODEC])
    web = codec_app()
    for path in codec_paths:
        # Unauthorised, but routed: the path exists (a missing one answers 404).
        assert status(web, "POST", path, json={"payloads": []}) == 401, path
    assert sorted(codec_paths) == ["/decode", "/encode"]


def egress_ports(policy: dict[str, Any]) -> set[tuple[str, int | str]]:
    return {
        (port.get("protocol", "TCP"), port["port"])
        for rule in policy["spec"].get("egress", [])
        for port in rule.get("ports", [])
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_select_the_pods_and_let_them_reach_what_they_use(
    overlay: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    policies = {p["metadata"]["name"]: p for p in of_kind(overlay, "NetworkPolicy")}
    assert set(policies) == {WORKER, BRIDGE, CODEC}
    for app, policy in policies.items():
        assert selects(policy["spec"]["podSelector"], pod(overlay, app)["metadata"]["labels"])
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                port_number(container(overlay, app), port["port"])
    for app in (WORKER, BRIDGE):
        address = connection(overlay, app, monkeypatch, tmp_path).address
        allowed = egress_ports(policies[app])
        assert ("TCP", int(address.rpartition(":")[2])) in allowed, f"{app}: Temporal"
        assert {("UDP", 53), ("TCP", 53), ("TCP", 443)} <= allowed, app
    # The codec server only answers.
    assert policies[CODEC]["spec"].get("egress", []) == []
