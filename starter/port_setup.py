"""`idpctl port ...`: put the platform's blueprints and self-service actions into Port, and read
what Port holds about a run or an entity.

    idpctl port install --webhook-url https://bridge.example.com/port/webhook
    idpctl port run r_abc123
    idpctl port entity idpWorkload demo.hello

The definitions are the JSON files under starter/port/ (blueprints/*.json, actions/*.json, see
starter/port/README.md), installed with the package; `install` creates what is missing, updates what
differs and leaves the rest alone, and points every action's webhook at `--webhook-url`.
Port is reached as the platform file's `port` section says, with the client id and secret from
the environment variables it names.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

from idp.capability import installed
from idp.errors import IdpError
from idp.platform import PlatformError, PortConfig, load_platform, platform_path
from idp.port import PortClient, client_from_config
from workflows.portview import WORKLOAD_BLUEPRINT

# Package data, so an installed worker image has them too.
DEFINITIONS = Path(__file__).resolve().parent / "port"


class DefinitionError(Exception):
    """A definition file cannot be used; the message names the file."""


def load_definitions(directory: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Blueprints (each after the blueprints its relations target) and actions."""
    blueprints = [_read(path) for path in sorted((directory / "blueprints").glob("*.json"))]
    actions = [_read(path) for path in sorted((directory / "actions").glob("*.json"))]
    if not blueprints and not actions:
        raise DefinitionError(f"{directory}: no blueprints/*.json or actions/*.json found")
    return _by_dependency([_with_capabilities(b) for b in blueprints]), actions


def _with_capabilities(blueprint: dict[str, Any]) -> dict[str, Any]:
    """The workload blueprint with the properties each installed capability shows on it."""
    if blueprint["identifier"] != WORKLOAD_BLUEPRINT:
        return blueprint
    schema = blueprint.get("schema", {})
    properties = dict(schema.get("properties", {}))
    for capability in installed():
        properties |= capability.port_schema()
    return {**blueprint, "schema": {**schema, "properties": properties}}


def _read(path: Path) -> dict[str, Any]:
    try:
        definition = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DefinitionError(f"{path}: cannot be read as JSON ({error})") from None
    if not isinstance(definition, dict) or not isinstance(definition.get("identifier"), str):
        raise DefinitionError(f"{path}: must be a JSON object with an identifier")
    return definition


def _by_dependency(blueprints: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Port refuses a relation to a blueprint that does not exist yet.
    known = {b["identifier"] for b in blueprints}
    ordered: list[dict[str, Any]] = []
    placed: set[str] = set()
    pending = list(blueprints)
    while pending:
        ready = [
            b
            for b in pending
            if all(
                r.get("target") in placed or r.get("target") not in known
                for r in b.get("relations", {}).values()
                if r.get("target") != b["identifier"]
            )
        ]
        if not ready:
            cycle = ", ".join(b["identifier"] for b in pending)
            raise DefinitionError(f"blueprint relations form a cycle among {cycle}")
        for blueprint in ready:
            ordered.append(blueprint)
            placed.add(blueprint["identifier"])
            pending.remove(blueprint)
    return ordered


def with_webhook(action: dict[str, Any], webhook_url: str) -> dict[str, Any]:
    invocation = {**action.get("invocationMethod", {}), "url": webhook_url}
    return {**action, "invocationMethod": invocation}


async def install(
    port: PortClient, webhook_url: str, directory: Path = DEFINITIONS
) -> list[tuple[str, str, str]]:
    """(kind, identifier, "created" | "updated" | "unchanged") for every definition."""
    blueprints, actions = load_definitions(directory)
    outcomes = []
    for blueprint in blueprints:
        outcome = await port.upsert_blueprint(blueprint)
        outcomes.append(("blueprint", blueprint["identifier"], outcome))
    for action in actions:
        outcome = await port.upsert_action(with_webhook(action, webhook_url))
        outcomes.append(("action", action["identifier"], outcome))
    return outcomes


def _port_config(args: argparse.Namespace) -> PortConfig:
    path = platform_path(args.platform)
    if path is None:
        _usage("no platform configuration: pass --platform FILE or set IDP_PLATFORM_CONFIG")
    try:
        platform = load_platform(path)
    except PlatformError as error:
        _usage(str(error))
    if platform.port is None:
        _usage(f"{path}: has no port section, so there is no Port to talk to")
    return platform.port


def _usage(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


async def cmd_install(args: argparse.Namespace) -> None:
    if not args.webhook_url.startswith(("http://", "https://")):
        _usage(f"--webhook-url must be an http:// or https:// URL; got {args.webhook_url!r}")
    config = _port_config(args)
    try:
        async with client_from_config(config) as port:
            outcomes = await install(port, args.webhook_url, Path(args.definitions))
    except (IdpError, DefinitionError) as error:
        raise SystemExit(f"error: {error}") from None
    for kind, identifier, outcome in outcomes:
        print(f"{kind} {identifier} {outcome}", flush=True)


async def cmd_run(args: argparse.Namespace) -> None:
    try:
        async with client_from_config(_port_config(args)) as port:
            run = await port.get_run(args.run_id)
            logs = await port.get_run_logs(args.run_id) if run else []
    except IdpError as error:
        raise SystemExit(f"error: {error}") from None
    if run is None:
        raise SystemExit(f"error: Port has no action run {args.run_id}")
    print(f"Run:     {run.id}\nStatus:  {run.status}  {run.status_label or ''}".rstrip())
    for link in run.link:
        print(f"Link:    {link}")
    if run.summary:
        print(f"Summary: {run.summary}")
    for log in logs:
        print(f"  {log.get('createdAt', '')}  {log.get('message', '')}")


async def cmd_entity(args: argparse.Namespace) -> None:
    try:
        async with client_from_config(_port_config(args)) as port:
            entity = await port.get_entity(args.blueprint, args.identifier)
    except IdpError as error:
        raise SystemExit(f"error: {error}") from None
    if entity is None:
        raise SystemExit(f"error: Port has no {args.blueprint} entity {args.identifier!r}")
    print(entity.model_dump_json(indent=2))


def add_parser(commands: argparse._SubParsersAction) -> None:
    port = commands.add_parser("port", help="set up Port.io and read what it holds")
    port_commands = port.add_subparsers(dest="port_command", required=True, metavar="COMMAND")
    setup = port_commands.add_parser(
        "install", help="create or update the blueprints and self-service actions in Port"
    )
    setup.add_argument(
        "--webhook-url",
        required=True,
        help="where Port sends action invocations: the bridge's /port/webhook, reachable by Port",
    )
    setup.add_argument(
        "--definitions",
        default=str(DEFINITIONS),
        help="directory with blueprints/ and actions/ JSON (this repository's port/)",
    )
    setup.set_defaults(run=cmd_install)
    run = port_commands.add_parser("run", help="an action run's status, link and logs")
    run.add_argument("run_id", metavar="RUN_ID")
    run.set_defaults(run=cmd_run)
    entity = port_commands.add_parser("entity", help="an entity as Port holds it (JSON)")
    entity.add_argument("blueprint", help="e.g. idpWorkload")
    entity.add_argument("identifier", help="e.g. demo.hello (<system>.<name> for workloads)")
    entity.set_defaults(run=cmd_entity)
