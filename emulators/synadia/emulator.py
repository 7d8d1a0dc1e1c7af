"""SynadiaEmulator: the control-plane HTTP server plus the nats-server it manages.

Run it in-process for tests (`async with SynadiaEmulator.running(tmp_path) as emu:`) or as a
process (`python -m emulators.synadia --port N --state-dir DIR`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from emulators.serving import AsgiServer
from emulators.synadia.app import API_PREFIX, EmulatorApp, Faults
from emulators.synadia.controlplane import (
    DEFAULT_ACCOUNTS,
    AccountRecord,
    AccountSpec,
    Behaviour,
    ControlPlane,
)
from emulators.synadia.natsserver import NatsServer
from idp.platform import LOCAL_ACCOUNTS_FIELD, PlatformError, load_platform

# A fixed credential of a local test double, not a secret; override it with --token.
DEFAULT_TOKEN = "emulator-token"


def accounts_of(platform_file: Path) -> tuple[AccountSpec, ...]:
    """The accounts a platform file lists under synadia.local.accounts; PlatformError if none."""
    synadia = load_platform(platform_file).synadia
    if synadia is None or synadia.local is None:
        raise PlatformError(f"{platform_file}: has no {LOCAL_ACCOUNTS_FIELD}")
    return tuple(
        AccountSpec(name=a.name, sk_groups=tuple(a.signing_key_groups))
        for a in synadia.local.accounts
    )


class SynadiaEmulator:
    """The emulated Synadia Cloud control plane and its NATS server.

    `faults` and `behaviour` can be changed at run time, here or through `/_emulator/...`.
    `accounts` are the application accounts to have (created where missing) and their signing
    key groups; the first one made in a fresh state directory is `account_id`.
    """

    def __init__(
        self,
        state_dir: Path | str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        nats_port: int = -1,
        token: str = DEFAULT_TOKEN,
        faults: Faults | None = None,
        behaviour: Behaviour | None = None,
        nats_server_bin: str | None = None,
        accounts: Sequence[AccountSpec] = DEFAULT_ACCOUNTS,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port
        self.token = token
        self.plane = ControlPlane(self.state_dir, behaviour, accounts)
        self.nats = NatsServer(self.state_dir, host=host, port=nats_port, binary=nats_server_bin)
        self.app = EmulatorApp(self)
        if faults is not None:
            self.app.set_faults(faults)
        self._http: AsgiServer | None = None

    # -- addresses and ids tests need

    @property
    def api_url(self) -> str:
        """The Synadia URL a client is configured with (it appends /api/core/beta)."""
        return f"http://{self.host}:{self.port}"

    @property
    def api_base_url(self) -> str:
        return f"{self.api_url}{API_PREFIX}"

    @property
    def nats_url(self) -> str:
        return self.nats.url

    @property
    def team_id(self) -> str:
        return self.plane.state.team_id

    @property
    def system_id(self) -> str:
        return self.plane.state.system_id

    @property
    def system_name(self) -> str:
        return self.plane.state.system_name

    @property
    def account_id(self) -> str:
        """The application account users are created in."""
        return self.plane.state.app_account_id

    @property
    def account_name(self) -> str:
        return self.plane.state.accounts[self.account_id].name

    @property
    def system_account_id(self) -> str:
        return self.plane.state.system_account_id

    @property
    def sk_group_id(self) -> str:
        return self.plane.state.accounts[self.account_id].sk_groups[0].id

    def application_account(self, name: str) -> AccountRecord:
        """An application account by name; KeyError if the emulator has none of that name."""
        account = self.plane.application_account(name)
        if account is None:
            raise KeyError(name)
        return account

    def info(self) -> dict[str, Any]:
        return {
            "api_url": self.api_url,
            "api_base_url": self.api_base_url,
            "nats_url": self.nats_url,
            "team_id": self.team_id,
            "system_id": self.system_id,
            "system_name": self.system_name,
            "account_id": self.account_id,
            "account_name": self.account_name,
            "system_account_id": self.system_account_id,
            "sk_group_id": self.sk_group_id,
            "accounts": [
                {
                    "id": account.id,
                    "name": account.name,
                    "sk_groups": [{"id": g.id, "name": g.name} for g in account.sk_groups],
                }
                for account in self.plane.state.accounts.values()
                if not account.is_system
            ],
        }

    # -- knobs and counters

    @property
    def faults(self) -> Faults:
        return self.app.faults

    def set_faults(self, **changes: Any) -> Faults:
        """Replace the fault settings (unnamed ones go back to their defaults)."""
        faults = Faults.model_validate(changes)
        self.app.set_faults(faults)
        return faults

    @property
    def behaviour(self) -> Behaviour:
        return self.plane.behaviour

    def set_behaviour(self, **changes: Any) -> Behaviour:
        self.plane.behaviour = Behaviour.model_validate(
            {**self.plane.behaviour.model_dump(), **changes}
        )
        return self.plane.behaviour

    def counters(self) -> dict[str, Any]:
        """{"calls": {route: n}, "statuses": {"route status": n}, "injected": {...},
        "bytes": {route: answered}, "connections": n, "creds_issued": {user_id: n}}"""
        return self.app.counters.snapshot(self.plane.creds_issued)

    def creds_issued(self, user_id: str) -> int:
        return self.plane.creds_issued.get(user_id, 0)

    def calls(self, route: str) -> int:
        """Calls to one route, named like 'POST /nats-users/{userId}/creds'."""
        return self.app.counters.calls[route]

    def reset_counters(self) -> None:
        self.app.reset_counters()

    # -- lifecycle

    def _account_jwts(self) -> dict[str, str]:
        return {a.public_key: a.jwt for a in self.plane.state.accounts.values()}

    def _system_account_key(self) -> str:
        return self.plane.state.accounts[self.system_account_id].public_key

    async def push_accounts(self) -> None:
        await self.nats.reload(
            self.plane.state.operator_jwt, self._system_account_key(), self._account_jwts()
        )

    async def start(self) -> None:
        self.nats.write_config(
            self.plane.state.operator_jwt, self._system_account_key(), self._account_jwts()
        )
        await self.nats.start()
        self.plane.nats_url = self.nats.url
        try:
            self._http = AsgiServer(self.app.build(), self.host, self.port)
            await self._http.start()
            self.port = self._http.port
        except BaseException:
            await self.stop()
            raise

    async def wait(self) -> None:
        """Until the HTTP server stops (see `request_stop`)."""
        if self._http is not None:
            await self._http.wait()

    def request_stop(self) -> None:
        if self._http is not None:
            self._http.request_stop()

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.stop()
        self._http = None
        await self.nats.stop()

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, state_dir: Path | str, **kwargs: Any) -> AsyncIterator[SynadiaEmulator]:
        """Start on a free port of 127.0.0.1 and stop (nats-server included) on exit."""
        emulator = cls(state_dir, **kwargs)
        await emulator.start()
        try:
            yield emulator
        finally:
            await emulator.stop()
