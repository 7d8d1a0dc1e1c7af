"""The Port pieces of a test stack: the emulator, a worker whose platform has Port, and the bridge
served over HTTP (in this process, so caplog sees its log lines), or the bridge alone for workers
that run elsewhere."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr
from support.stack import platform_for, running_worker, task_queue
from temporalio.client import Client

from emulators.port import PortEmulator
from emulators.serving import AsgiServer
from idp.platform import Platform, PortConfig
from idp.port import PortClient, client_from_config
from starter import port_setup
from starter.port_bridge import WEBHOOK_PATH, Bridge, BridgeSettings

UI_URL = "http://temporal-ui.test"


@dataclass
class PortStack:
    client: Client
    emulator: PortEmulator
    port: PortClient
    bridge: Bridge
    webhook_url: str
    queue: str
    repo: Path

    def workflow_link(self, workflow_id: str) -> str:
        return self.bridge.workflow_link(workflow_id)


def port_platform(repo: Path, emulator: PortEmulator) -> Platform:
    return platform_for(repo).model_copy(update={"port": PortConfig(url=emulator.url)})


@asynccontextmanager
async def port_stack(client: Client, repo: Path, cache: Path) -> AsyncIterator[PortStack]:
    """Emulator (with a random client secret), worker, bridge; blueprints and actions
    installed with the bridge as their webhook."""
    secret = secrets.token_urlsafe(32)
    async with PortEmulator.running(client_secret=secret) as emulator:
        platform = port_platform(repo, emulator)
        queue = task_queue()
        with pytest.MonkeyPatch.context() as env:
            env.setenv("PORT_CLIENT_ID", emulator.client_id)
            env.setenv("PORT_CLIENT_SECRET", secret)
            port = client_from_config(platform.port)
            async with (
                port,
                running_worker(client, platform, queue, cache),
                bridge_serving(client, emulator, port, queue) as (bridge, webhook_url),
            ):
                yield PortStack(client, emulator, port, bridge, webhook_url, queue, repo)


@asynccontextmanager
async def bridge_serving(
    client: Client, emulator: PortEmulator, port: PortClient, queue: str
) -> AsyncIterator[tuple[Bridge, str]]:
    """The bridge for the workers of `queue`, served over HTTP, with the blueprints and actions
    installed through `port` and pointed at it: the bridge and its webhook URL."""
    settings = BridgeSettings(
        task_queue=queue,
        namespace=client.namespace,
        ui_url=UI_URL,
        secret=SecretStr(emulator.client_secret),
        window=PortConfig(url=emulator.url).webhook_window,
        destinations=("dev",),
    )
    bridge = Bridge(client, port, settings)
    server = AsgiServer(bridge.app())
    await server.start()
    try:
        webhook_url = server.url + WEBHOOK_PATH
        await port_setup.install(port, webhook_url)
        yield bridge, webhook_url
    finally:
        await server.stop()
