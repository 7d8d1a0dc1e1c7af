"""Heartbeating while an activity waits, so a crashed worker's activity is retried in seconds
rather than after its whole start-to-close timeout."""

import asyncio
from collections.abc import Awaitable
from datetime import timedelta
from typing import TypeVar

from temporalio import activity

T = TypeVar("T")

HEARTBEAT_TIMEOUT = timedelta(seconds=15)


async def heartbeating(work: Awaitable[T], every: float = 3.0) -> T:
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=every)
            if done:
                return task.result()
            activity.heartbeat()
    finally:
        task.cancel()
