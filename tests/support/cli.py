"""Running the command-line interfaces as a user would: real processes, real exit codes.

Processes are started with asyncio so that a worker running in the test's event loop keeps
serving the workflows while the command runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMMAND_TIMEOUT = 60.0

T = TypeVar("T")


@dataclass(frozen=True, repr=False)
class Result:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    def __repr__(self) -> str:  # what pytest shows when an assertion fails
        return (
            f"$ {' '.join(self.args)}\nexit {self.code}\n"
            f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
        )


async def run(*args: str, env: dict[str, str], timeout: float = COMMAND_TIMEOUT) -> Result:
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{' '.join(args)} did not finish within {timeout:g}s") from None
    assert process.returncode is not None
    return Result(args, process.returncode, stdout.decode(), stderr.decode())


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without Temporal or idp settings that could leak in (a
    developer's IDP_METRICS_ADDRESS would make every test worker bind the same port)."""
    prefixes = ("TEMPORAL_", "IDP_PLATFORM", "IDP_CODEC", "IDP_METRICS", "IDP_HEALTH", "IDP_WORKER")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


@dataclass(frozen=True)
class Cli:
    """`idpctl` and `temporal` for one test: its server, task queue and platform file."""

    address: str
    task_queue: str
    platform_file: Path

    def env(self) -> dict[str, str]:
        return clean_env(
            TEMPORAL_ADDRESS=self.address,
            TEMPORAL_TASK_QUEUE=self.task_queue,
            IDP_PLATFORM_CONFIG=str(self.platform_file),
        )

    async def idpctl(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> Result:
        return await run(
            sys.executable, "-m", "starter.idpctl", *args, env=self.env(), timeout=timeout
        )

    async def temporal(self, *args: str) -> Result:
        """The temporal CLI with the connection given as flags, the way the README shows it."""
        return await run(
            str(BIN / "temporal"),
            *args,
            "--address",
            self.address,
            "--namespace",
            "default",
            env=clean_env(),
        )


def write_platform(path: Path, state_store: Path, address: str) -> Path:
    platform = {
        "apiVersion": "idp.dev/v1alpha1",
        "kind": "Platform",
        "destinations": [{"name": "dev", "stateStore": {"url": str(state_store)}}],
        "reconcile": {"driftInterval": "10m", "minBackoff": "1s", "maxBackoff": "5s"},
        "temporal": {"address": address},
    }
    path.write_text(yaml.safe_dump(platform, sort_keys=False))
    return path


async def eventually(
    attempt: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    timeout: float = 20.0,
    interval: float = 0.2,
) -> T:
    """Repeat `attempt` until `done(result)`; fail with the last result after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await attempt()
        if done(result):
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached within {timeout:g}s; last result:\n{result}")
        await asyncio.sleep(interval)
