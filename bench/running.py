"""How a bench runs its main coroutine, so that `kill` stops it as Ctrl-C does.

Python's default for SIGTERM ends the process at once: no `finally` runs, so a bench killed so
(by `timeout`, a CI step's limit, a plain `kill`) left the stack it started running, with its
temporary directory. Here SIGTERM cancels the main task instead; its `finally` and `with`
blocks stop the stack and remove the directory, then the bench exits with 143, as a process
killed by SIGTERM does.
"""

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, with SIGTERM cancelling `main`."""

    async def guarded() -> T:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await main

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        raise SystemExit(128 + signal.SIGTERM) from None
