"""The Port client against the Port emulator over real HTTP: tokens, errors, backoff, setup."""

import json
import secrets
import sys
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import yaml
from support.cli import clean_env, run

from emulators.port import PortEmulator
from idp.platform import PortConfig
from idp.port import (
    PortApiError,
    PortClient,
    PortEntity,
    PortUnavailable,
    client_from_config,
    covers,
    entity_differs,
)
from starter import port_setup
from starter.port_bridge import ACTIONS, WebhookBody

TOKEN_ROUTE = "POST /v1/auth/access_token"
RUN_ROUTE = "GET /v1/actions/runs/{run_id}"


class Clock:
    """The client's monotonic clock, moved by the test instead of waited for."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def emulator() -> AsyncIterator[PortEmulator]:
    async with PortEmulator.running(client_secret=secrets.token_urlsafe(32)) as emu:
        yield emu


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def port(emulator: PortEmulator, clock: Clock) -> AsyncIterator[PortClient]:
    async with PortClient(
        emulator.url,
        emulator.client_id,
        emulator.client_secret,
        backoff_base=0.01,
        backoff_cap=0.05,
        clock=clock,
    ) as client:
        yield client


def leaked(emulator: PortEmulator, *texts: str) -> list[str]:
    """Which secrets (the client secret, any token handed out) appear in the texts."""
    values = [emulator.client_secret, *emulator.issued_tokens]
    return [v for v in values if any(v in text for text in texts)]


async def test_the_token_is_cached_until_shortly_before_it_expires(emulator, port, clock):
    run = emulator.create_run("idp_reconcile_workload")
    for _ in range(3):
        assert (await port.get_run(run.id)).status == "IN_PROGRESS"
    assert emulator.calls(TOKEN_ROUTE) == 1
    clock.now += 3 * 3600 - 61  # Port's tokens live 3h; the client drops them a minute early
    await port.get_run(run.id)
    assert emulator.calls(TOKEN_ROUTE) == 1
    clock.now += 2
    await port.get_run(run.id)
    assert emulator.calls(TOKEN_ROUTE) == 2
    assert emulator.counters()["statuses"].get(f"{RUN_ROUTE} 401") is None


async def test_a_token_port_stopped_accepting_is_replaced_once(emulator, port):
    run = emulator.create_run("idp_reconcile_workload")
    await port.add_run_log(run.id, "first")
    emulator.expire_tokens()
    await port.add_run_log(run.id, "second")
    assert [log.message for log in emulator.run(run.id).logs] == ["first", "second"]
    assert emulator.calls(TOKEN_ROUTE) == 2
    assert emulator.counters()["statuses"]["POST /v1/actions/runs/{run_id}/logs 401"] == 1


async def test_wrong_credentials_are_a_permanent_error_without_the_secret(emulator):
    wrong = "not-the-" + emulator.client_secret
    async with PortClient(emulator.url, emulator.client_id, wrong) as port:
        with pytest.raises(PortApiError) as refused:
            await port.get_run("r_any")
    assert refused.value.status == 401
    assert "refused the configured client id and secret" in str(refused.value)
    assert wrong not in str(refused.value) and wrong not in repr(port)


async def test_missing_credentials_name_the_variables():
    config = PortConfig(url="http://127.0.0.1:9", client_secret_env="MY_PORT_SECRET")
    with pytest.raises(Exception, match="MY_PORT_SECRET must be set"):
        client_from_config(config, {"PORT_CLIENT_ID": "x"})


async def test_port_errors_name_the_endpoint_the_status_and_ports_error(emulator, port):
    with pytest.raises(PortApiError) as missing:
        await port.update_run("r_missing", status_label="x")
    message = str(missing.value)
    assert "PATCH /v1/actions/runs/r_missing" in message
    assert "HTTP 404 Not Found: not_found: Action run 'r_missing' was not found" in message
    assert missing.value.reason == "PortHTTP404"

    run = emulator.create_run("idp_reconcile_workload")
    await port.add_run_log(run.id, "done", termination_status="SUCCESS")
    with pytest.raises(PortApiError) as twice:
        await port.add_run_log(run.id, "again", termination_status="FAILURE")
    assert twice.value.status == 422 and twice.value.error == "run_already_terminated"
    with pytest.raises(PortApiError):
        await port.update_run(run.id, status="FAILURE")
    assert emulator.run(run.id).status == "SUCCESS"
    assert emulator.run(run.id).terminations == ["SUCCESS"]
    assert not leaked(emulator, message, str(twice.value))


async def test_finishing_a_run_is_idempotent(emulator, port):
    run = emulator.create_run("idp_reconcile_workload")
    link = "http://temporal-ui.test/namespaces/default/workflows/x"
    assert await port.finish_run(run.id, "SUCCESS", "ok", status_label="Ready", link=link)
    assert not await port.finish_run(run.id, "SUCCESS", "ok", status_label="Ready", link=link)
    recorded = emulator.run(run.id)
    assert (recorded.status, recorded.status_label, recorded.link) == ("SUCCESS", "Ready", [link])
    assert recorded.terminations == ["SUCCESS"]


async def test_run_patch_refuses_unknown_fields_like_port(emulator, port):
    run = emulator.create_run("idp_reconcile_workload")
    await port.get_run(run.id)
    token = emulator.issued_tokens[-1]
    async with httpx.AsyncClient(base_url=emulator.url) as http:
        answer = await http.patch(
            f"/v1/actions/runs/{run.id}",
            json={"status": "SUCCESS", "colour": "green"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert answer.status_code == 422
    body = answer.json()
    assert body["ok"] is False and body["error"] == "invalid_request"
    assert "must NOT have additional properties" in body["message"]
    assert emulator.run(run.id).status == "IN_PROGRESS"


async def test_5xx_is_retried_with_backoff(emulator, port):
    run = emulator.create_run("idp_reconcile_workload")
    await port.get_run(run.id)
    emulator.set_faults(status=503, calls=2)
    assert (await port.get_run(run.id)).id == run.id
    assert emulator.counters()["injected"] == {f"{RUN_ROUTE} 503": 2}


async def test_429_waits_for_the_rate_limit_reset(emulator, port):
    run = emulator.create_run("idp_reconcile_workload")
    await port.get_run(run.id)
    emulator.set_faults(status=429, calls=1, ratelimit_reset=1)
    started = time.monotonic()
    await port.get_run(run.id)
    assert time.monotonic() - started >= 0.95
    assert emulator.counters()["injected"] == {f"{RUN_ROUTE} 429": 1}


async def test_a_long_rate_limit_wait_is_handed_to_the_caller(emulator, port):
    run = emulator.create_run("idp_reconcile_workload")
    await port.get_run(run.id)
    emulator.set_faults(status=429, ratelimit_reset=45)
    started = time.monotonic()
    with pytest.raises(PortUnavailable) as limited:
        await port.get_run(run.id)
    assert time.monotonic() - started < 1
    assert limited.value.retry_after == 45
    assert "HTTP 429 Too Many Requests (rate_limit" in str(limited.value)


async def test_a_lasting_outage_becomes_a_transient_error(emulator, port):
    emulator.set_faults(status=503)
    with pytest.raises(PortUnavailable) as down:
        await port.get_entity("idpWorkload", "demo.hello")
    message = str(down.value)
    assert "failed after 4 attempt(s), last with HTTP 503 Service Unavailable" in message
    assert "POST /v1/auth/access_token" in message
    assert not leaked(emulator, message)


async def test_an_unreachable_port_is_a_transient_error(emulator):
    url = emulator.url
    await emulator.stop()
    async with PortClient(url, "id", "secret-value", backoff_base=0.01, max_attempts=2) as port:
        with pytest.raises(PortUnavailable, match="ConnectError talking to") as down:
            await port.get_run("r_1")
    assert "secret-value" not in str(down.value)


async def test_entities_merge_and_fit_their_blueprint(emulator, port):
    await port_setup.install(port, "http://bridge.test/port/webhook")
    system = PortEntity(identifier="demo", title="demo", properties={"workflows": "http://x/y"})
    await port.upsert_entity("idpSystem", system)
    first = PortEntity(
        identifier="demo.hello",
        title="demo/hello",
        properties={"phase": "Ready", "owner": "team-a"},
        relations={"system": "demo"},
    )
    await port.upsert_entity("idpWorkload", first)
    await port.upsert_entity(
        "idpWorkload", PortEntity(identifier="demo.hello", properties={"phase": "Degraded"})
    )
    stored = await port.get_entity("idpWorkload", "demo.hello")
    assert stored.properties == {"phase": "Degraded", "owner": "team-a"}
    assert stored.relations == {"system": "demo"}
    with pytest.raises(PortApiError, match="not defined in blueprint 'idpWorkload'"):
        await port.upsert_entity(
            "idpWorkload", PortEntity(identifier="demo.hello", properties={"colour": "red"})
        )
    with pytest.raises(PortApiError, match="which does not exist"):
        await port.upsert_entity(
            "idpWorkload", PortEntity(identifier="x.y", relations={"system": "nowhere"})
        )


def test_entity_differs_compares_only_what_we_set():
    current = PortEntity(
        identifier="demo.hello",
        title="demo/hello",
        properties={"phase": "Ready", "expires": "2030-01-01T00:00:00.000Z", "theirs": 1},
        relations={"apiAggregators": ["b", "a"]},
    )
    same = PortEntity(
        identifier="demo.hello",
        title="demo/hello",
        properties={"phase": "Ready", "expires": "2030-01-01T00:00:00+00:00"},
        relations={"apiAggregators": ["a", "b"]},
    )
    assert not entity_differs(current, same)
    assert entity_differs(current, same.model_copy(update={"properties": {"phase": "Degraded"}}))
    assert entity_differs(None, same)


def test_covers_ignores_what_port_adds():
    assert covers({"a": {"b": 1, "added": 2}, "updatedAt": "x"}, {"a": {"b": 1}})
    assert not covers({"a": {"b": 1}}, {"a": {"b": 2}})


async def test_idpctl_port_install_creates_then_leaves_alone(emulator, tmp_path):
    platform = {
        "apiVersion": "idp.dev/v1alpha1",
        "kind": "Platform",
        "destinations": [{"name": "dev", "stateStore": {"url": str(tmp_path / "repo")}}],
        "port": {"url": emulator.url},
    }
    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump(platform))
    env = clean_env(
        IDP_PLATFORM_CONFIG=str(path),
        PORT_CLIENT_ID=emulator.client_id,
        PORT_CLIENT_SECRET=emulator.client_secret,
    )
    url = "http://bridge.test/port/webhook"
    idpctl = (sys.executable, "-m", "starter.idpctl")
    result = await run(*idpctl, "port", "install", "--webhook-url", url, env=env)
    assert result.code == 0, result
    lines = result.stdout.splitlines()
    assert "blueprint idpSystem created" in lines and "action idp_create_workload created" in lines
    assert lines.index("blueprint idpSystem created") < lines.index("blueprint idpWorkload created")
    stored = emulator.state.actions["idp_delete_workload"]
    assert stored["invocationMethod"]["url"] == url
    assert stored["trigger"]["operation"] == "DELETE"

    async with client_from_config(PortConfig(url=emulator.url), env) as port:
        again = await port_setup.install(port, url)
        assert {outcome for _, _, outcome in again} == {"unchanged"}
        moved = await port_setup.install(port, "http://elsewhere.test/port/webhook")
    assert {o for kind, _, o in moved if kind == "action"} == {"updated"}
    assert {o for kind, _, o in moved if kind == "blueprint"} == {"unchanged"}
    assert not leaked(emulator, result.stdout, result.stderr)


def test_action_bodies_send_what_the_bridge_reads():
    """Every action's template yields the bridge's WebhookBody fields and nothing else."""
    _, actions = port_setup.load_definitions(port_setup.DEFINITIONS)
    assert sorted(a["identifier"] for a in actions) == sorted(ACTIONS)
    fields = {f.alias or name for name, f in WebhookBody.model_fields.items()}
    for action in actions:
        body = action["invocationMethod"]["body"]
        assert set(body) == fields, action["identifier"]
        assert json.dumps(body).count("{{") == len(fields)
