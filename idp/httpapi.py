"""What our clients of SaaS JSON APIs (Synadia Cloud, Port) share: one connection pool per
client, closed with it, and the jittered exponential backoff between retries."""

from __future__ import annotations

import functools
import random
import ssl
from collections.abc import Mapping
from types import TracebackType
from typing import Self

import httpx


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context per process: building one loads the CA bundle, about 20 ms of CPU, which
    was a third of the worker's CPU per onboarded workload when every client built its own.
    httpx's own builder, so SSL_CERT_FILE and SSL_CERT_DIR still apply."""
    return httpx.create_ssl_context()


class ApiClient:
    """Use as `async with Client(...) as client`."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float,
        max_attempts: int,
        backoff_base: float,
        backoff_cap: float,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self.base_url = base_url
        self.max_attempts = max(1, max_attempts)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Accept": "application/json", **(headers or {})},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            transport=transport,
            verify=_tls(),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based)."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
        # Half fixed, half random: spreads a herd of retrying workers without collapsing to 0.
        return ceiling / 2 + random.uniform(0, ceiling / 2)
