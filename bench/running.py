"""How a bench runs: on the project compiled, and stopped by `kill` as by Ctrl-C.

The project is byte-compiled first, as installing it does (pip byte-compiles a package; the
image is built so). The workflow sandbox imports the workflow modules afresh for every workflow
it starts or replays: with PYTHONDONTWRITEBYTECODE set and no cache, each of those imports would
compile their source again, a cost no deployment pays (3% of the worker's samples in a
500-workload onboarding profile).

Python's default for SIGTERM ends the process at once: no `finally` runs, so a bench killed so
(by `timeout`, a CI step's limit, a plain `kill`) left the stack it started running, with its
temporary directory. Here SIGTERM cancels the main task instead; its `finally` and `with`
blocks stop the stack and remove the directory, then the bench exits with 143, as a process
killed by SIGTERM does.
"""

import asyncio
import compileall
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("activities", "capabilities", "emulators", "idp", "starter", "workflows")


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the compiled project, with SIGTERM cancelling `main`."""
    for package in PACKAGES:
        compileall.compile_dir(ROOT / package, quiet=1)
    compileall.compile_file(ROOT / "worker.py", quiet=1)

    async def guarded() -> T:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await main

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        raise SystemExit(128 + signal.SIGTERM) from None
