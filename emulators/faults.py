"""Misbehaviour now and then, the way hosted APIs misbehave: answers that are slow, sometimes
very slow (a spike), 5xx and 429 for a share of the calls. Shared by the emulators, which each
answer an injected failure in their API's own shape.

The draws come from a seeded RNG, so a run with the same seed and the same calls in the same
order gets the same faults; each draw is made only when its rate is set, so adding a knob leaves
the others' sequence alone.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class RandomFaults(BaseModel):
    """Latency and a share of failing calls (an emulator's admin routes are never affected)."""

    model_config = ConfigDict(extra="forbid")

    error_rate: float = Field(0.0, ge=0.0, le=1.0)
    error_status: int = Field(503, ge=500, le=599)
    throttle_rate: float = Field(0.0, ge=0.0, le=1.0)
    latency_ms: int = Field(0, ge=0)
    spike_rate: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of calls delayed by spike_ms."
    )
    spike_ms: int = Field(2000, ge=0, description="The extra delay of a latency spike.")
    seed: int | None = None


class FaultDice:
    """The draws of one RandomFaults; what was injected is counted as '<route> spike',
    '<route> 429' and so on by the emulator that answers it."""

    def __init__(self, faults: RandomFaults) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed)

    async def delay(self, route: str, injected: Counter[str]) -> None:
        """Wait out the latency, and now and then a spike on top of it."""
        delay = self.faults.latency_ms
        if self.faults.spike_rate and self._rng.random() < self.faults.spike_rate:
            injected[f"{route} spike"] += 1
            delay += self.faults.spike_ms
        if delay:
            await asyncio.sleep(delay / 1000)

    def failure(self) -> int | None:
        """The status to answer instead of running the call (429 or error_status), or None."""
        if self.faults.throttle_rate and self._rng.random() < self.faults.throttle_rate:
            return 429
        if self.faults.error_rate and self._rng.random() < self.faults.error_rate:
            return self.faults.error_status
        return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """RandomFaults as command-line options of an emulator's `python -m`."""
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of calls that 5xx")
    parser.add_argument("--error-status", type=int, default=503)
    parser.add_argument("--throttle-rate", type=float, default=0.0, help="share of calls that 429")
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--spike-rate", type=float, default=0.0, help="share of calls delayed")
    parser.add_argument("--spike-ms", type=int, default=2000, help="delay of those calls")
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault dice")


def from_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The RandomFaults fields that `add_arguments` put on `args`."""
    return {name: getattr(args, name) for name in RandomFaults.model_fields}
