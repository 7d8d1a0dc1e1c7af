"""Heartbeating while an activity waits, so a crashed worker's activity is retried in seconds
rather than after its whole start-to-close timeout."""

import asyncio
from collections.abc import Awaitable
from datetime import timedelta
from typing import TypeVar

from temporalio import activity

T = TypeVar("T")

HEARTBEAT_TIMEOUT = timedelta(seconds=15)
# Half the timeout: a heartbeat reaches the server in time even behind a busy event loop, and
# an activity done sooner sends none. Temporal Cloud bills each one that reaches the server; at
# every 3 s, a loaded 500-workload onboarding sent 1.6 per workload beside 15 other actions.
EVERY = HEARTBEAT_TIMEOUT.total_seconds() / 2


async def heartbeating(work: Awaitable[T]) -> T:
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=EVERY)
            if done:
                return task.result()
            activity.heartbeat()
    finally:
        task.cancel()
