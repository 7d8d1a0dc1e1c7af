"""The worker's Kubernetes probes (`--health-address`): /livez and /readyz against a real dev
server that goes away, and the endpoint going with the worker.

The worker is a real `python -m worker` process and the dev server one of its own, so the test
can stop the server under it.
"""

import asyncio
import re
from pathlib import Path

import httpx
import pytest
import yaml
from support.processes import DevServerProcess, WorkerProcess
from support.stack import bare_repo, platform_for, task_queue
from temporalio.client import Client

from starter import health
from starter.dev import free_port
from worker import build_worker

# The server check is cached for SERVER_CHECK_TTL: a change shows within that, plus a probe.
SETTLE = health.SERVER_CHECK_TTL.total_seconds() + 10


async def status(http: httpx.AsyncClient, path: str) -> tuple[int, str]:
    response = await http.get(path)
    return response.status_code, response.text


async def eventually(http: httpx.AsyncClient, path: str, code: int) -> str:
    """The body of `path` once it answers `code`."""
    async with asyncio.timeout(SETTLE):
        while True:
            answer, body = await status(http, path)
            if answer == code:
                return body
            await asyncio.sleep(0.2)


def platform_file(directory: Path) -> Path:
    path = directory / "platform.yaml"
    repo = bare_repo(directory / "state.git")
    document = {
        "apiVersion": "idp.dev/v1alpha1",
        "kind": "Platform",
        "destinations": [{"name": "dev", "stateStore": {"url": str(repo)}}],
    }
    path.write_text(yaml.safe_dump(document))
    return path


async def test_probes_follow_the_server_and_stop_with_the_worker(tmp_path: Path) -> None:
    server = DevServerProcess(
        free_port("127.0.0.1"), tmp_path / "temporal.db", tmp_path / "server.log"
    )
    probes = f"127.0.0.1:{free_port('127.0.0.1')}"
    worker = WorkerProcess(
        server.address,
        platform_file(tmp_path),
        task_queue(),
        tmp_path / "cache",
        tmp_path / "worker.log",
        {health.HEALTH_ADDRESS_ENV: probes},
    )
    await server.start()
    try:
        await worker.start()
        async with httpx.AsyncClient(base_url=f"http://{probes}", timeout=5) as http:
            assert await status(http, "/livez") == (200, "ok\n")
            assert await eventually(http, "/readyz", 200) == "ok\n"

            await server.stop()
            reason = await eventually(http, "/readyz", 503)
            assert reason.startswith(
                f"the Temporal server at {server.address} does not answer a health check: "
            )
            assert reason.count("\n") == 1, reason
            # Not a reason to restart the pod: the worker reconnects once the server is back.
            assert await status(http, "/livez") == (200, "ok\n")
            worker.check_alive()

            await worker.stop()
            assert worker.process is not None and worker.process.returncode == 0
            with pytest.raises(httpx.ConnectError):
                await http.get("/livez")
    finally:
        await worker.stop()
        await server.stop()


async def test_probes_in_process_follow_the_worker(client: Client, tmp_path: Path) -> None:
    """Before the worker polls, while it does, and once it has stopped; the endpoint is closed
    as soon as the worker stops, while the process goes on."""
    platform = platform_for(bare_repo(tmp_path / "state.git"))
    worker = build_worker(client, platform, task_queue(), tmp_path / "cache")
    target = client.service_client.config.target_host
    probes = health.Probes(worker, client, target)
    address = ("127.0.0.1", free_port("127.0.0.1"))
    assert probes.live() is None
    assert await probes.ready() == "the worker is not polling yet"

    async with httpx.AsyncClient(base_url=f"http://{address[0]}:{address[1]}") as http:
        async with health.serving(probes, health.listen(address)):
            running = asyncio.create_task(worker.run())
            assert await eventually(http, "/readyz", 200) == "ok\n"
            probes.stopping = True
            assert await status(http, "/readyz") == (503, "the worker is shutting down\n")
            assert await status(http, "/livez") == (200, "ok\n")
            await worker.shutdown()
            await running
            assert await status(http, "/livez") == (503, "the worker has stopped\n")
            assert await status(http, "/readyz") == (503, "the worker has stopped\n")
        with pytest.raises(httpx.ConnectError):
            await http.get("/livez")


def test_health_address_must_be_host_and_port() -> None:
    assert health.parse_address("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert health.parse_address("[::1]:8080") == ("::1", 8080)
    for bad in ("8080", "localhost", ":8080", "host:0", "host:http"):
        with pytest.raises(health.HealthError, match="is not HOST:PORT"):
            health.parse_address(bad)


def test_a_taken_port_is_one_sentence() -> None:
    address = ("127.0.0.1", free_port("127.0.0.1"))
    with health.listen(address):
        taken = re.escape(f"cannot serve health probes on 127.0.0.1:{address[1]}: ")
        with pytest.raises(health.HealthError, match=taken):
            health.listen(address)
