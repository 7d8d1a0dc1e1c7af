"""docker-compose.yml and the Dockerfile against the project, without a container engine.

No container runs here, so these read the files and check what a `docker compose up` would trip
over first: an image or Dockerfile that is not there, a command the image does not have or whose
flags its parser rejects, two services on one host port, a variable the code reads that nobody
sets or documents, a dependency on a service that does not exist, a COPY of a missing path.
The variables are derived from the code (os.environ reads, `*_ENV` constants and the platform
file's `*_env` fields in each service's import closure), so a new one shows up here by itself.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import re
import runpy
import shlex
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel

from idp.platform import Platform, load_platform

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]
PROJECT_PACKAGES = {"idp", "activities", "workflows", "starter", "emulators", "worker"}
PLATFORM_IN_CONTAINER = "/etc/idp/platform.yaml"


def build_of(service: dict[str, Any]) -> tuple[Path, str | None] | None:
    """(Dockerfile, target) of a service built from this repository."""
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        build = {"context": build}
    context = (ROOT / build.get("context", ".")).resolve()
    return context / build.get("dockerfile", "Dockerfile"), build.get("target")


PROJECT_SERVICES = sorted(name for name, service in SERVICES.items() if build_of(service))


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def stages(path: Path) -> list[tuple[str, list[tuple[str, str]]]]:
    """Each stage's name and its instructions, a stage inheriting its base stage's."""
    result: list[tuple[str, list[tuple[str, str]]]] = []
    for keyword, rest in dockerfile_instructions(path):
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else str(len(result))
            base = next((list(i) for n, i in result if n == words[0]), [])
            result.append((name, base))
        elif result:
            result[-1][1].append((keyword, rest))
    return result


def command_of(service: dict[str, Any]) -> list[str]:
    """What the container runs: entrypoint and command, else the Dockerfile's CMD."""

    def as_list(value: str | list[str] | None) -> list[str]:
        return shlex.split(value) if isinstance(value, str) else list(value or [])

    entrypoint, command = as_list(service.get("entrypoint")), as_list(service.get("command"))
    if not (entrypoint or command):
        build = build_of(service)
        assert build is not None, "no command and no Dockerfile to take its CMD from"
        dockerfile, target = build
        named = dict(stages(dockerfile))
        steps = named[target] if target else stages(dockerfile)[-1][1]
        command = as_list(yaml.safe_load(next(r for k, r in reversed(steps) if k == "CMD")))
    return entrypoint + command


class Parsed(Exception):
    """Raised instead of running the service once its arguments parsed."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        self.namespace = namespace


def entry_module(argv: list[str]) -> str:
    """The module a container command starts, which must exist in the project."""
    if argv[0] in SCRIPTS:
        return SCRIPTS[argv[0]].split(":")[0]
    assert argv[:2] == ["python", "-m"], f"{argv}: neither a console script nor python -m"
    module = argv[2]
    assert module.split(".")[0] in PROJECT_PACKAGES, f"{module} is not part of the project"
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"python -m {module}: no such module"
    # `python -m package` runs the package's __main__.
    return f"{module}.__main__" if spec.submodule_search_locations else module


def parse(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """Parse argv with the entry point's own parser, stopping before it runs anything."""
    entry_module(argv)
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    if argv[0] in SCRIPTS:
        module, function = SCRIPTS[argv[0]].split(":")
        monkeypatch.setattr(sys, "argv", argv)
        target = getattr(importlib.import_module(module), function)
    else:
        monkeypatch.setattr(sys, "argv", [argv[2], *argv[3:]])

        def target() -> None:
            runpy.run_module(argv[2], run_name="__main__", alter_sys=True)

    try:
        target()
    except Parsed as parsed:
        return parsed.namespace
    except SystemExit as exit_:
        pytest.fail(f"{shlex.join(argv)}: rejected by its parser (exit {exit_.code})")
    pytest.fail(f"{shlex.join(argv)}: never parsed its arguments")


# ---- the variables a service reads, from its code -------------------------------------------


def module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@dataclass
class Module:
    name: str
    tree: ast.Module
    imports: dict[str, str]  # local alias -> project module
    names: dict[str, tuple[str, str]]  # local name -> (project module, name there)

    @classmethod
    def load(cls, name: str) -> Module:
        path = module_file(name)
        assert path is not None, name
        tree = ast.parse(path.read_text())
        imports: dict[str, str] = {}
        names: dict[str, tuple[str, str]] = {}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in PROJECT_PACKAGES:
                        imports[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.ImportFrom):
                source = node.module or ""
                if node.level:
                    parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    source = f"{parent}.{source}".strip(".")
                if source.split(".")[0] not in PROJECT_PACKAGES:
                    continue
                for alias in node.names:
                    local = alias.asname or alias.name
                    if module_file(f"{source}.{alias.name}"):
                        imports[local] = f"{source}.{alias.name}"
                    else:
                        imports.setdefault(f"<from {source}>", source)
                        names[local] = (source, alias.name)
        return cls(name, tree, imports, names)

    def constants(self) -> dict[str, str]:
        found = {}
        for node in self.tree.body:
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                found[node.targets[0].id] = node.value.value
        return found


def closure(entry: str) -> dict[str, Module]:
    """Every project module `entry` imports, directly or not, with its packages."""
    seen: dict[str, Module] = {}
    pending = [entry]
    while pending:
        name = pending.pop()
        if name in seen or module_file(name) is None:
            continue
        seen[name] = module = Module.load(name)
        parts = name.split(".")
        pending += [".".join(parts[:i]) for i in range(1, len(parts))]
        pending += list(module.imports.values())
    return seen


def is_environ(node: ast.expr) -> bool:
    """`os.environ`, or a parameter named environ standing in for it."""
    if isinstance(node, ast.Attribute):
        return node.attr == "environ"
    return isinstance(node, ast.Name) and node.id == "environ"


def env_key(call: ast.AST) -> ast.expr | None:
    """The key expression of an environment read: environ.get(K), environ[K], os.getenv(K)."""
    if isinstance(call, ast.Call) and call.args and isinstance(call.func, ast.Attribute):
        if call.func.attr == "get" and is_environ(call.func.value):
            return call.args[0]
        if call.func.attr == "getenv":
            return call.args[0]
    if (
        isinstance(call, ast.Subscript)
        and isinstance(call.ctx, ast.Load)
        and is_environ(call.value)
    ):
        return call.slice
    return None


def variables_read(modules: dict[str, Module]) -> set[str]:
    constants = {name: module.constants() for name, module in modules.items()}

    def resolve(module: Module, node: ast.expr) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in constants[module.name]:
                return constants[module.name][node.id]
            source, name = module.names.get(node.id, ("", ""))
            return constants.get(source, {}).get(name)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            return constants.get(module.imports.get(node.value.id, ""), {}).get(node.attr)
        return None

    found: set[str] = set()
    for module in modules.values():
        # Functions that read the variable a parameter names, like starter.temporal's pick().
        wrappers: dict[str, int] = {}
        for node in ast.walk(module.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                params = [a.arg for a in node.args.args]
                for inner in ast.walk(node):
                    key = env_key(inner)
                    if isinstance(key, ast.Name) and key.id in params:
                        wrappers[node.name] = params.index(key.id)
        for node in ast.walk(module.tree):
            key = env_key(node)
            if key is not None and (value := resolve(module, key)):
                found.add(value)
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in wrappers
                and len(node.args) > wrappers[node.func.id]
                and (value := resolve(module, node.args[wrappers[node.func.id]]))
            ):
                found.add(value)
    if "idp.platform" in modules:
        found |= platform_env_defaults(Platform)
    return found


def platform_env_defaults(model: type[BaseModel]) -> set[str]:
    """Defaults of the platform file's `*Env` fields: variables named there are read too."""
    found: set[str] = set()
    for name, info in model.model_fields.items():
        if name.endswith("_env") and isinstance(info.default, str):
            found.add(info.default)
        for annotation in _types(info.annotation):
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                found |= platform_env_defaults(annotation)
    return found


def _types(annotation: Any) -> Iterator[Any]:
    yield annotation
    for argument in getattr(annotation, "__args__", ()):
        yield from _types(argument)


def readme_production() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^## Production\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, "README.md has no '## Production' section"
    return match.group(1)


# ---- the checks -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_an_image_or_a_dockerfile_that_exists(name: str) -> None:
    service = SERVICES[name]
    build = build_of(service)
    assert build or service.get("image"), f"{name}: neither image nor build"
    if build:
        dockerfile, target = build
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        if target is not None:
            assert target in dict(stages(dockerfile)), f"{name}: no stage {target!r}"
    else:
        # Pinned, so an upgrade is a reviewed change here and not whatever `latest` is today.
        assert ":" in service["image"] and not service["image"].endswith(":latest"), name


def test_the_services_the_issue_names_are_there() -> None:
    commands = {name: shlex.join(command_of(SERVICES[name])) for name in PROJECT_SERVICES}
    always = [c for n, c in commands.items() if not SERVICES[n].get("profiles")]
    local = [c for n, c in commands.items() if "local" in SERVICES[n].get("profiles", [])]
    for start in ("idp-worker", "idpctl codec-server", "idp-port-bridge"):
        assert any(c.startswith(start) for c in always), start
    for start in ("python -m emulators.synadia", "python -m emulators.port"):
        assert any(c.startswith(start) for c in local), start
    images = [service.get("image", "") for service in SERVICES.values()]
    for image in ("postgres:", "temporalio/server:", "temporalio/ui:", "motoserver/moto:"):
        assert any(i.startswith(image) for i in images), image


@pytest.mark.parametrize("name", PROJECT_SERVICES)
def test_project_commands_exist_and_their_parsers_accept_the_flags(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = command_of(SERVICES[name])
    entry_module(argv)
    parse(argv, monkeypatch)


@pytest.mark.parametrize("profile", [None, "local"])
def test_host_ports_do_not_clash(profile: str | None) -> None:
    taken: dict[tuple[str, int], str] = {}
    for name, service in SERVICES.items():
        profiles = service.get("profiles")
        if profiles and profile not in profiles:
            continue
        for ip, port in host_ports(service):
            for other_ip in {ip, "0.0.0.0"} if ip != "0.0.0.0" else {"0.0.0.0", "127.0.0.1"}:
                clash = taken.get((other_ip, port))
                assert clash is None, f"{name} and {clash} both want host port {port}"
            taken[(ip, port)] = name


def host_ports(service: dict[str, Any]) -> Iterator[tuple[str, int]]:
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            if "published" in entry:
                yield entry.get("host_ip", "0.0.0.0"), int(entry["published"])
            continue
        parts = str(entry).split("/")[0].split(":")
        if len(parts) >= 2 and parts[-2]:
            ip = parts[-3] if len(parts) == 3 else "0.0.0.0"
            first, _, last = parts[-2].partition("-")
            yield from ((ip, p) for p in range(int(first), int(last or first) + 1))
    if service.get("network_mode") == "host":
        # Listening straight on the host: its port flag is its host port.
        argv = command_of(service)
        assert "--port" in argv, "a host-network service must say its port with --port"
        host = argv[argv.index("--host") + 1] if "--host" in argv else "0.0.0.0"
        yield host, int(argv[argv.index("--port") + 1])


@pytest.mark.parametrize("name", PROJECT_SERVICES)
def test_every_variable_the_code_reads_is_set_or_documented(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = command_of(SERVICES[name])
    namespace = parse(argv, monkeypatch)
    entry = entry_module(argv)
    # idpctl runs one subcommand: the module that defines it is where the service starts.
    run = getattr(namespace, "run", None)
    if run is not None and getattr(run, "__module__", "").split(".")[0] in PROJECT_PACKAGES:
        entry = run.__module__
    read = variables_read(closure(entry))
    assert read, f"{name}: found no environment reads in {entry}; is the scan broken?"
    environment = SERVICES[name].get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    documented = readme_production()
    missing = sorted(v for v in read if v not in environment and f"`{v}`" not in documented)
    assert missing == [], (
        f"{name} ({entry}) reads {', '.join(missing)}: set it in docker-compose.yml or "
        "document it in README.md, section Production"
    )


def test_services_reading_the_platform_file_have_it_mounted() -> None:
    for name in PROJECT_SERVICES:
        environment = SERVICES[name].get("environment", {})
        if environment.get("IDP_PLATFORM_CONFIG") == PLATFORM_IN_CONTAINER:
            mounts = [mount_target(v) for v in SERVICES[name].get("volumes", [])]
            assert PLATFORM_IN_CONTAINER in mounts, name


def test_depends_on_names_existing_services() -> None:
    for name, service in SERVICES.items():
        for dependency in service.get("depends_on", []):
            assert dependency in SERVICES, f"{name} depends on unknown service {dependency}"


def mount_target(volume: str) -> str:
    """The path inside the container of a short-syntax volume, whatever ${...} its source has."""
    return re.sub(r"\$\{[^}]*\}", "SOURCE", volume).split(":")[1]


def test_bind_mounts_from_the_repository_exist() -> None:
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("./") and "$" not in source:
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"


def test_the_local_platform_file_loads_and_names_local_services() -> None:
    platform = load_platform(ROOT / "deploy/platform-local.yaml")
    urls = [platform.aws.endpoint_url, platform.synadia.url, platform.port.url]
    assert platform.aws and platform.synadia and platform.port
    local = {n for n, s in SERVICES.items() if not s.get("profiles") or "local" in s["profiles"]}
    for url in urls:
        assert urlsplit(url).hostname in local, f"{url} names no service of the local profile"
    assert platform.temporal.address.split(":")[0] in SERVICES


def test_the_ui_decodes_through_the_codec_server() -> None:
    endpoint = urlsplit(SERVICES["temporal-ui"]["environment"]["TEMPORAL_CODEC_ENDPOINT"])
    codec = command_of(SERVICES["codec-server"])
    assert endpoint.port == int(codec[codec.index("--port") + 1])
    ui_port = next(port for _, port in host_ports(SERVICES["temporal-ui"]))
    origins = [codec[i + 1] for i, arg in enumerate(codec) if arg == "--ui-origin"]
    assert f"http://localhost:{ui_port}" in origins


def test_dockerfile_copies_what_exists_and_installs_pinned_packages() -> None:
    dockerfile = ROOT / "Dockerfile"
    pinned = {
        line.split("==")[0].lower()
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line
    }
    for keyword, rest in dockerfile_instructions(dockerfile):
        if keyword == "COPY" and "--from" not in rest:
            *sources, _ = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        if keyword == "RUN" and "pip install" in rest:
            assert "-c constraints.txt" in rest, f"unpinned: RUN {rest}"
            words = rest.split("pip install", 1)[1].split()
            packages = [
                w for w in words if not w.startswith(("-", ".", '"')) and w != "constraints.txt"
            ]
            for package in packages:
                assert package.split("[")[0].lower() in pinned, f"{package} not in constraints.txt"
    assert stages(dockerfile)[-1][0] == "production", "plain `docker build .` must be production"
