"""idp.synadia against the project's Synadia Cloud emulator and a real nats-server (no mocks).

The emulator is the stand-in for Synadia Cloud, which cannot be reached here; it is checked
against the published OpenAPI spec by the contract tests at the end, and its credentials are
checked by the real nats-server it runs. What the emulator cannot tell us about the real service
(the error body format, whether names must be unique, whether rotate/delete revoke) is covered by
knobs and by the client not depending on it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from support.synadia import (
    Exchange,
    OpenApiContract,
    RecordingTransport,
    connect_refusal,
    connect_with_creds,
    write_creds,
    write_local_platform,
)

from emulators.synadia import DEFAULT_TOKEN, SynadiaEmulator, accounts_of
from emulators.synadia.controlplane import JOURNAL_FOLD_AT, AccountSpec, ControlPlane
from emulators.synadia.natsjwt import verify
from idp.errors import PermanentError, TransientError
from idp.synadia import (
    JwtSettings,
    NatsUser,
    Permission,
    ResponsePermission,
    SynadiaApiError,
    SynadiaClient,
    SynadiaNotFoundError,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
async def emulator(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SynadiaEmulator]:
    async with SynadiaEmulator.running(tmp_path_factory.mktemp("synadia")) as emu:
        yield emu


@pytest.fixture(scope="module")
def recorder() -> RecordingTransport:
    """Every exchange of the module's client, for the contract tests at the end."""
    return RecordingTransport()


@pytest.fixture(scope="module")
async def synadia(
    emulator: SynadiaEmulator, recorder: RecordingTransport
) -> AsyncIterator[SynadiaClient]:
    async with SynadiaClient(
        emulator.api_url,
        DEFAULT_TOKEN,
        transport=recorder,
        max_attempts=4,
        backoff_base=0.01,
        backoff_cap=0.05,
    ) as client:
        yield client


@pytest.fixture(autouse=True)
def _calm_emulator(request: pytest.FixtureRequest) -> None:
    """Each test starts without injected faults and with the default behaviour."""
    if "emulator" in request.fixturenames:
        emu: SynadiaEmulator = request.getfixturevalue("emulator")
        emu.set_faults()
        emu.set_behaviour(revoke_on_rotate=False, revoke_on_delete=False)


def orders_settings(*extra_pub: str) -> JwtSettings:
    return JwtSettings(
        pub=Permission(allow=["orders.>", *extra_pub], deny=["orders.secret"]),
        sub=Permission(allow=["orders.>", "_INBOX.>"]),
        resp=ResponsePermission(max=1, ttl=0),
        tags=["workload:orders"],
    )


async def new_user(
    synadia: SynadiaClient, emu: SynadiaEmulator, name: str, ttl: int = 3600
) -> NatsUser:
    return await synadia.create_nats_user(
        emu.account_id,
        name,
        sk_group_id=emu.sk_group_id,
        jwt_expires_in_secs=ttl,
        jwt_settings=orders_settings(),
    )


# ---------------------------------------------------------------- discovery


async def test_discovers_team_system_account_and_signing_key_group(
    synadia: SynadiaClient, emulator: SynadiaEmulator
) -> None:
    teams = await synadia.list_teams()
    assert [t.id for t in teams] == [emulator.team_id]
    system = await synadia.find_system(emulator.system_name)
    assert system is not None and system.id == emulator.system_id
    assert await synadia.find_system("no-such-system") is None
    assert (await synadia.get_system(emulator.system_id)) == system
    assert await synadia.get_system("missing") is None

    account = await synadia.find_account(system.id, emulator.account_name)
    assert account is not None and account.id == emulator.account_id
    assert account.account_public_key and account.account_public_key.startswith("A")
    assert account.system is not None and account.system.server_urls == emulator.nats_url
    accounts = await synadia.list_accounts(system.id)
    assert any(a.is_system_account for a in accounts)
    assert await synadia.get_account("missing") is None

    groups = await synadia.list_sk_groups(account.id)
    assert [g.id for g in groups] == [emulator.sk_group_id]


# ---------------------------------------------------------------- users and credentials


async def test_user_creds_connect_and_permissions_are_enforced(
    synadia: SynadiaClient, emulator: SynadiaEmulator, tmp_path: Path
) -> None:
    user = await new_user(synadia, emulator, "wl-shop-orders")
    assert user.user_public_key.startswith("U")
    assert user.jwt_settings.pub == Permission(allow=["orders.>"], deny=["orders.secret"])
    found = await synadia.find_nats_user(emulator.account_id, "wl-shop-orders")
    assert found is not None and found.id == user.id
    assert await synadia.find_nats_user(emulator.account_id, "wl-nobody") is None

    creds = await synadia.download_creds(user.id)
    assert creds.user_public_key == user.user_public_key
    assert creds.expires_at is not None
    assert creds.expires_at - creds.issued_at == timedelta(seconds=3600)
    assert emulator.creds_issued(user.id) == 1

    # The JWT nats-server is about to accept is signed by the account's signing key.
    jwt_text = creds.reveal().split("-----BEGIN NATS USER JWT-----")[1].split()[0]
    claims = verify(jwt_text)
    account = await synadia.get_account(emulator.account_id)
    assert account is not None
    assert claims["nats"]["issuer_account"] == account.account_public_key
    assert claims["iss"] != account.account_public_key

    probe = await connect_with_creds(emulator.nats_url, write_creds(tmp_path, "v1", creds.reveal()))
    try:
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_msg(msg: object) -> None:
            await got.put(msg.data)  # type: ignore[attr-defined]

        await probe.nc.subscribe("orders.created", cb=on_msg)
        await probe.nc.publish("orders.created", b"ok")
        assert await asyncio.wait_for(got.get(), 3) == b"ok"

        await probe.nc.publish("payments.charged", b"denied")
        await probe.nc.flush()
        error = await probe.wait_for_error("permissions violation")
        assert "payments.charged" in error
        assert not probe.nc.is_closed
    finally:
        await probe.close()

    patched = await synadia.update_nats_user(
        user.id, jwt_settings=JwtSettings(pub=Permission(allow=["orders.>", "payments.>"]))
    )
    # PATCH merges: the deny list that was not sent stays.
    assert patched.jwt_settings.pub == Permission(
        allow=["orders.>", "payments.>"], deny=["orders.secret"]
    )
    assert patched.jwt_settings.sub == Permission(allow=["orders.>", "_INBOX.>"])
    probe = await connect_with_creds(
        emulator.nats_url,
        write_creds(tmp_path, "v2", (await synadia.download_creds(user.id)).reveal()),
    )
    try:
        await probe.nc.publish("payments.charged", b"allowed now")
        await probe.nc.flush()
        await asyncio.sleep(0.2)
        assert probe.errors == []
    finally:
        await probe.close()
    assert emulator.creds_issued(user.id) == 2


async def test_rotate_keeps_old_creds_until_revoked_then_delete(
    synadia: SynadiaClient, emulator: SynadiaEmulator, tmp_path: Path
) -> None:
    user = await new_user(synadia, emulator, "wl-shop-rotate")
    old_creds = write_creds(tmp_path, "old", (await synadia.download_creds(user.id)).reveal())
    live = await connect_with_creds(emulator.nats_url, old_creds)

    rotated = await synadia.rotate_nats_user(user.id)
    assert rotated.id == user.id and rotated.user_public_key != user.user_public_key
    new_creds_value = await synadia.download_creds(user.id)
    assert new_creds_value.user_public_key == rotated.user_public_key
    new_creds = write_creds(tmp_path, "new", new_creds_value.reveal())

    # Rotation alone revokes nothing: the old key still gets in, so workloads can switch over.
    again = await connect_with_creds(emulator.nats_url, old_creds)
    await again.close()
    assert not live.nc.is_closed

    revocation = await synadia.revoke_nats_user_key(emulator.account_id, user.user_public_key)
    assert revocation.user_nkey_public == user.user_public_key and revocation.before > 0
    await asyncio.wait_for(live.closed.wait(), 5)
    assert "revoked" in str(live.nc.last_error).lower()
    refusal = await connect_refusal(emulator.nats_url, old_creds)
    assert "authorization violation" in refusal.lower()
    fresh = await connect_with_creds(emulator.nats_url, new_creds)
    await fresh.close()

    assert await synadia.get_revocation(emulator.account_id, user.user_public_key) == revocation
    account = await synadia.get_account(emulator.account_id)
    assert account is not None
    assert account.jwt_settings.revocations[user.user_public_key] == revocation.before

    assert await synadia.delete_nats_user(user.id) is True
    assert await synadia.get_nats_user(user.id) is None
    assert await synadia.delete_nats_user(user.id) is False
    # Deleting the user in the control plane does not revoke what was already issued.
    still = await connect_with_creds(emulator.nats_url, new_creds)
    await still.close()

    assert await synadia.delete_revocation(emulator.account_id, user.user_public_key) is True
    assert await synadia.delete_revocation(emulator.account_id, user.user_public_key) is False
    assert await synadia.get_revocation(emulator.account_id, user.user_public_key) is None


async def test_revoke_on_rotate_and_delete_knobs(
    synadia: SynadiaClient, emulator: SynadiaEmulator, tmp_path: Path
) -> None:
    emulator.set_behaviour(revoke_on_rotate=True, revoke_on_delete=True)
    user = await new_user(synadia, emulator, "wl-shop-strict")
    first = write_creds(tmp_path, "first", (await synadia.download_creds(user.id)).reveal())
    live = await connect_with_creds(emulator.nats_url, first)
    await synadia.rotate_nats_user(user.id)
    await asyncio.wait_for(live.closed.wait(), 5)
    assert "authorization violation" in (await connect_refusal(emulator.nats_url, first)).lower()

    second = write_creds(tmp_path, "second", (await synadia.download_creds(user.id)).reveal())
    await (await connect_with_creds(emulator.nats_url, second)).close()
    await synadia.delete_nats_user(user.id)
    assert "authorization violation" in (await connect_refusal(emulator.nats_url, second)).lower()


async def test_user_jwt_expiry_is_enforced_by_nats_server(
    synadia: SynadiaClient, emulator: SynadiaEmulator, tmp_path: Path
) -> None:
    user = await new_user(synadia, emulator, "wl-shop-brief", ttl=2)
    creds = await synadia.download_creds(user.id)
    assert creds.expires_at is not None
    assert creds.expires_at - creds.issued_at == timedelta(seconds=2)
    path = write_creds(tmp_path, "brief", creds.reveal())
    live = await connect_with_creds(emulator.nats_url, path)
    # nats-server drops the client when its JWT expires and refuses new connections once the
    # expiry second has passed (it compares whole unix seconds: exp < now).
    await asyncio.wait_for(live.closed.wait(), 5)
    assert "expired" in str(live.nc.last_error).lower()
    await asyncio.sleep(max(0.0, creds.expires_at.timestamp() + 1.05 - time.time()))
    refusal = await connect_refusal(emulator.nats_url, path)
    assert "authorization violation" in refusal.lower()
    refreshed = await synadia.get_nats_user(user.id)
    assert refreshed is not None
    assert refreshed.jwt_expires_at_max == int(creds.expires_at.timestamp())
    await synadia.delete_nats_user(user.id)


async def test_secrets_never_print(synadia: SynadiaClient, emulator: SynadiaEmulator) -> None:
    user = await new_user(synadia, emulator, "wl-shop-quiet")
    creds = await synadia.download_creds(user.id)
    seed = next(line for line in creds.reveal().splitlines() if line.startswith("SU"))
    jwt_text = user.jwt.get_secret_value()
    for shown in (repr(creds), str(creds), creds.model_dump_json(), repr(user), str(user)):
        assert seed not in shown and jwt_text not in shown
    assert DEFAULT_TOKEN not in repr(synadia)
    await synadia.delete_nats_user(user.id)


# ---------------------------------------------------------------- errors and retries


async def test_not_found_reads_and_deletes_are_none_or_false(synadia: SynadiaClient) -> None:
    assert await synadia.get_nats_user("no-such-user") is None
    assert await synadia.delete_nats_user("no-such-user") is False
    with pytest.raises(SynadiaNotFoundError) as caught:
        await synadia.rotate_nats_user("no-such-user")
    assert caught.value.status == 404
    assert "rotate NATS user no-such-user" in str(caught.value)


async def test_invalid_input_is_a_permanent_error_naming_the_call(
    synadia: SynadiaClient, emulator: SynadiaEmulator
) -> None:
    with pytest.raises(PermanentError) as caught:
        await synadia.create_nats_user(
            emulator.account_id,
            "wl-bad-subject",
            sk_group_id=emulator.sk_group_id,
            jwt_settings=JwtSettings(pub=Permission(allow=["orders..created"])),
        )
    message = str(caught.value)
    assert isinstance(caught.value, SynadiaApiError) and caught.value.status == 422
    assert message.startswith("Synadia create NATS user 'wl-bad-subject' in account")
    assert "HTTP 422 Unprocessable Entity" in message
    assert "invalid subject 'orders..created'" in message
    assert DEFAULT_TOKEN not in message

    with pytest.raises(PermanentError, match=r"422.*not a signing key group"):
        await synadia.create_nats_user(emulator.account_id, "wl-x", sk_group_id="nope")

    async with SynadiaClient(emulator.api_url, "wrong-token", max_attempts=1) as stranger:
        with pytest.raises(SynadiaApiError, match="HTTP 401 Unauthorized") as denied:
            await stranger.list_teams()
        assert "wrong-token" not in str(denied.value)


async def test_a_create_is_sent_again_only_after_a_429(
    synadia: SynadiaClient, emulator: SynadiaEmulator
) -> None:
    create = "POST /accounts/{accountId}/nats-users"
    emulator.set_faults(fail_next=[429, 429], fail_match="POST /accounts")
    emulator.reset_counters()
    throttled = await new_user(synadia, emulator, "wl-shop-throttled")
    assert emulator.calls(create) == 3 and throttled.name == "wl-shop-throttled"

    # The nasty case: the server creates the user, then answers 502. Sent again, it would make a
    # second user where names need not be unique; the caller looks it up before trying again.
    emulator.set_faults(fail_next=[502], fail_match="POST /accounts", fail_after_commit=True)
    emulator.reset_counters()
    with pytest.raises(TransientError) as caught:
        await new_user(synadia, emulator, "wl-shop-lost-answer")
    assert str(caught.value) == (
        f"Synadia create NATS user 'wl-shop-lost-answer' in account {emulator.account_id} "
        "failed (not retried) with HTTP 502 Bad Gateway: injected server error."
    )
    assert emulator.calls(create) == 1
    found = await synadia.find_nats_user(emulator.account_id, "wl-shop-lost-answer")
    assert found is not None


async def test_where_names_need_not_be_unique_a_second_create_makes_a_second_user(
    synadia: SynadiaClient, emulator: SynadiaEmulator
) -> None:
    # The published spec documents no 409, so the real service may keep two users of one name:
    # the emulator does so too, and looking one up by that name is then refused.
    first = await new_user(synadia, emulator, "wl-shop-double")
    second = await new_user(synadia, emulator, "wl-shop-double")
    assert second.id != first.id
    with pytest.raises(PermanentError, match="has 2 NATS users named 'wl-shop-double'"):
        await synadia.find_nats_user(emulator.account_id, "wl-shop-double")
    await synadia.delete_nats_user(second.id)


async def test_injected_5xx_and_429_are_retried(
    synadia: SynadiaClient, emulator: SynadiaEmulator
) -> None:
    emulator.reset_counters()
    emulator.set_faults(fail_next=[503, 429, 500])
    assert [t.id for t in await synadia.list_teams()] == [emulator.team_id]
    counters = emulator.counters()
    assert counters["calls"]["GET /teams"] == 4
    assert counters["injected"] == {"GET /teams 503": 1, "GET /teams 429": 1, "GET /teams 500": 1}


async def test_persistent_5xx_becomes_transient_error(
    synadia: SynadiaClient, emulator: SynadiaEmulator
) -> None:
    emulator.reset_counters()
    emulator.set_faults(error_rate=1.0, error_status=502)
    with pytest.raises(TransientError) as caught:
        await synadia.get_nats_user("anything")
    assert emulator.calls("GET /nats-users/{userId}") == synadia.max_attempts
    assert str(caught.value) == (
        "Synadia get NATS user anything failed after 4 attempts, "
        "last with HTTP 502 Bad Gateway: injected server error."
    )
    emulator.set_faults(throttle_rate=1.0, retry_after=0)
    with pytest.raises(TransientError, match="HTTP 429 Too Many Requests"):
        await synadia.list_teams()


async def test_unreachable_api_is_transient() -> None:
    async with SynadiaClient(
        "http://127.0.0.1:9", "t", max_attempts=2, backoff_base=0.01
    ) as nowhere:
        with pytest.raises(TransientError, match=r"ConnectError talking to http://127\.0\.0\.1:9"):
            await nowhere.list_teams()


# ---------------------------------------------------------------- the emulator itself


async def test_admin_api_flips_knobs_and_reads_counters(emulator: SynadiaEmulator) -> None:
    async with httpx.AsyncClient(base_url=f"{emulator.api_url}/_emulator") as admin:
        info = (await admin.get("/info")).json()
        assert info["nats_url"] == emulator.nats_url and info["account_id"] == emulator.account_id
        faults = {"latency_ms": 5, "fail_next": [503]}
        assert (await admin.put("/faults", json=faults)).json()["fail_next"] == [503]
        assert (await admin.put("/faults", json={"bogus": 1})).status_code == 400
        assert (await admin.put("/behaviour", json={"revoke_on_rotate": True})).json() == {
            "revoke_on_rotate": True,
            "revoke_on_delete": False,
        }
        assert emulator.behaviour.revoke_on_rotate
        counters = (await admin.delete("/counters")).json()
        assert counters == {
            "calls": {},
            "statuses": {},
            "injected": {},
            "bytes": {},
            "connections": 0,
            "creds_issued": {},
        }


async def test_restart_keeps_operator_and_users(tmp_path: Path) -> None:
    async with SynadiaEmulator.running(tmp_path) as emu:
        async with SynadiaClient(emu.api_url, DEFAULT_TOKEN) as client:
            user = await new_user(client, emu, "wl-survivor")
            creds = write_creds(tmp_path, "s", (await client.download_creds(user.id)).reveal())
        ids = emu.info()
    async with SynadiaEmulator.running(tmp_path) as emu:
        assert {k: emu.info()[k] for k in ("team_id", "system_id", "account_id")} == {
            k: ids[k] for k in ("team_id", "system_id", "account_id")
        }
        async with SynadiaClient(emu.api_url, DEFAULT_TOKEN) as client:
            assert (await client.get_nats_user(user.id)) is not None
        await (await connect_with_creds(emu.nats_url, creds)).close()


def test_a_change_is_journaled_not_a_rewrite_of_every_user(tmp_path: Path) -> None:
    plane = ControlPlane(tmp_path)
    account = plane.state.app_account_id
    group = plane.state.accounts[account].sk_groups[0].id
    state_file = (tmp_path / "state.json").read_bytes()

    def create(name: str) -> str:
        return plane.create_user(account, {"name": name, "sk_group_id": group}).id

    kept, gone = create("wl-kept"), create("wl-gone")
    plane.issue_creds(kept)
    plane.delete_user(gone)
    # Onboarding N users must not write N growing copies of the state: O(N²) in all.
    assert (tmp_path / "state.json").read_bytes() == state_file
    # A crash in the middle of an append leaves a torn line; what came before it holds.
    with (tmp_path / "journal.jsonl").open("a") as journal:
        journal.write('{"kind": "user", "rec')

    again = ControlPlane(tmp_path)
    assert set(again.state.users) == {kept}
    assert len(again.state.users[kept].issuances) == 1
    assert not (tmp_path / "journal.jsonl").exists()  # folded into state.json at start

    for i in range(JOURNAL_FOLD_AT):
        again.patch_user(kept, {"name": f"wl-kept-{i}"})
    assert not (tmp_path / "journal.jsonl").exists()  # folded once it held that many changes
    assert ControlPlane(tmp_path).state.users[kept].name == f"wl-kept-{JOURNAL_FOLD_AT - 1}"


def test_command_line_runs_and_stops_cleanly(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "emulators.synadia", "--port", "0", "--state-dir", str(tmp_path)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    try:
        assert process.stdout is not None
        info = json.loads(process.stdout.readline())
        teams = httpx.get(
            f"{info['api_base_url']}/teams",
            headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"},
        )
        assert teams.json()["items"][0]["id"] == info["team_id"]
        nats_pid = int(next((tmp_path / "nats").glob("*.ports")).name.split("_")[1].split(".")[0])
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0, process.stderr.read() if process.stderr else ""
    with pytest.raises(ProcessLookupError):
        os.kill(nats_pid, 0)


def test_command_line_creates_the_accounts_its_platform_file_lists(tmp_path: Path) -> None:
    platform_file = write_local_platform(
        tmp_path / "platform.yaml",
        "http://127.0.0.1:1",
        [{"name": "platform"}, {"name": "quoting", "signingKeyGroups": ["Default", "ci"]}],
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "emulators.synadia", "--port", "0",
         "--state-dir", str(tmp_path / "synadia"), "--platform", str(platform_file)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        info = json.loads(process.stdout.readline())
        with httpx.Client(
            base_url=info["api_base_url"], headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"}
        ) as api:
            listed = api.get(f"/systems/{info['system_id']}/accounts").json()["items"]
            names = {a["name"]: a["id"] for a in listed if not a["is_system_account"]}
            assert set(names) == {"platform", "quoting"}
            groups = api.get(f"/accounts/{names['quoting']}/account-sk-groups").json()["items"]
            assert [g["name"] for g in groups] == ["Default", "ci"]
        assert [a["name"] for a in info["accounts"]] == ["platform", "quoting"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0, process.stderr.read() if process.stderr else ""


def test_command_line_refuses_a_platform_file_without_local_accounts(tmp_path: Path) -> None:
    platform_file = write_local_platform(tmp_path / "platform.yaml", "http://x", [])
    result = subprocess.run(
        [sys.executable, "-m", "emulators.synadia", "--state-dir", str(tmp_path / "synadia"),
         "--platform", str(platform_file)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    assert "synadia.local.accounts" in result.stderr and "Traceback" not in result.stderr


async def test_each_listed_account_is_a_real_nats_account(tmp_path: Path) -> None:
    """Users of two accounts from one platform file connect, and each account's subjects are
    its own: nats-server knows both accounts, not one under two names."""
    platform_file = write_local_platform(
        tmp_path / "platform.yaml", "http://x", [{"name": "platform"}, {"name": "quoting"}]
    )
    accounts = accounts_of(platform_file)
    async with (
        SynadiaEmulator.running(tmp_path / "synadia", accounts=accounts) as emu,
        SynadiaClient(emu.api_url, DEFAULT_TOKEN) as client,
    ):
        probes = {}
        for name in ("platform", "quoting"):
            account = await client.find_account(emu.system_id, name)
            assert account is not None and not account.is_system_account
            [group] = await client.list_sk_groups(account.id)
            user = await client.create_nats_user(
                account.id, f"wl-{name}", sk_group_id=group.id, jwt_expires_in_secs=600
            )
            text = (await client.download_creds(user.id)).reveal()
            probes[name] = await connect_with_creds(emu.nats_url, write_creds(tmp_path, name, text))
        try:
            platform, quoting = probes["platform"].nc, probes["quoting"].nc
            seen_by_platform = await platform.subscribe("quotes.>")
            seen_by_quoting = await quoting.subscribe("quotes.>")
            await platform.flush()
            await quoting.flush()
            await quoting.publish("quotes.eur", b"1.08")
            assert (await seen_by_quoting.next_msg(timeout=3)).data == b"1.08"
            # The server delivered quoting's message to every matching subscriber before
            # quoting saw it, and a connection gets its messages in order: had the accounts
            # been one, platform would see 1.08 ahead of its own message.
            await platform.publish("quotes.eur", b"from platform")
            assert (await seen_by_platform.next_msg(timeout=3)).data == b"from platform"
        finally:
            for probe in probes.values():
                await probe.close()


async def test_restart_adds_listed_accounts_and_groups_and_keeps_the_rest(
    tmp_path: Path,
) -> None:
    async with SynadiaEmulator.running(tmp_path) as emu:
        first = emu.info()
    wanted = [
        AccountSpec(name="platform", sk_groups=("Default", "ci")),
        AccountSpec(name="quoting"),
    ]
    async with SynadiaEmulator.running(tmp_path, accounts=wanted) as emu:
        assert (emu.account_id, emu.sk_group_id) == (first["account_id"], first["sk_group_id"])
        assert [g.name for g in emu.application_account("platform").sk_groups] == ["Default", "ci"]
        quoting = emu.application_account("quoting")
    # Left out of the list, an account stays: users may live in it.
    async with SynadiaEmulator.running(tmp_path) as emu:
        assert emu.application_account("quoting").id == quoting.id


def test_listed_accounts_must_not_take_the_system_account_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="system account"):
        SynadiaEmulator(tmp_path, accounts=[AccountSpec(name="SYS")])


# ---------------------------------------------------------------- contract with the spec


async def sweep_every_route(
    synadia: SynadiaClient, emulator: SynadiaEmulator, recorder: RecordingTransport
) -> None:
    """Call each route the emulator serves at least once, through the recording transport."""
    await synadia.list_teams()
    await synadia.list_systems(emulator.team_id)
    await synadia.get_system(emulator.system_id)
    await synadia.list_accounts(emulator.system_id)
    await synadia.get_account(emulator.account_id)
    await synadia.list_sk_groups(emulator.account_id)
    user = await synadia.create_nats_user(
        emulator.account_id,
        "wl-contract",
        sk_group_id=emulator.sk_group_id,
        jwt_expires_in_secs=600,
        jwt_settings=JwtSettings(
            pub=Permission(allow=["a.>"]),
            sub=Permission(allow=["a.>"], deny=["a.b"]),
            resp=ResponsePermission(max=1, ttl=1_000_000_000),
            subs=10,
            data=-1,
            payload=1024,
            tags=["t"],
            src=["127.0.0.1/32"],
        ),
    )
    await synadia.list_nats_users(emulator.account_id)
    await synadia.get_nats_user(user.id)
    await synadia.update_nats_user(
        user.id,
        name="wl-contract-renamed",
        jwt_expires_in_secs=300,
        jwt_settings=JwtSettings(pub=None, sub=Permission(allow=None, deny=["x"]), tags=None),
    )
    await synadia.download_creds(user.id)
    await synadia.list_nats_user_issuances(user.id)
    rotated = await synadia.rotate_nats_user(user.id)
    await synadia.revoke_nats_user_key(emulator.account_id, user.user_public_key)
    await synadia.revoke_nats_user_key(emulator.account_id, user.user_public_key, before=1)
    await synadia.get_revocation(emulator.account_id, user.user_public_key)
    await synadia.delete_revocation(emulator.account_id, user.user_public_key)
    await synadia.delete_nats_user(rotated.id)
    async with httpx.AsyncClient(
        base_url=synadia.base_url,
        transport=recorder,
        headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"},
    ) as raw:
        await raw.get(f"/teams/{emulator.team_id}")


async def test_emulator_responses_match_the_openapi_spec(
    synadia: SynadiaClient, emulator: SynadiaEmulator, recorder: RecordingTransport
) -> None:
    contract = OpenApiContract.load()
    await sweep_every_route(synadia, emulator, recorder)
    problems = [p for exchange in recorder.exchanges for p in contract.check_response(exchange)]
    assert problems == []
    called = {
        f"{e.method} {found[0].removeprefix('/core/beta')}"
        for e in recorder.exchanges
        if (found := contract.operation(e.method, e.path))
    }
    assert set(emulator.app.routes) <= called


async def test_client_requests_match_the_openapi_spec(
    synadia: SynadiaClient, emulator: SynadiaEmulator, recorder: RecordingTransport
) -> None:
    contract = OpenApiContract.load()
    await sweep_every_route(synadia, emulator, recorder)
    problems = [p for exchange in recorder.exchanges for p in contract.check_request(exchange)]
    assert problems == []
    bodies = [e for e in recorder.exchanges if e.request_body is not None]
    assert {e.method for e in bodies} == {"POST", "PATCH", "PUT"}


def test_contract_checker_catches_a_bad_body() -> None:
    contract = OpenApiContract.load()
    bad = Exchange(
        method="POST",
        path="/api/core/beta/accounts/A/nats-users",
        request_body={"name": "x", "jwt_settings": {"pub": {"allow": "not-a-list"}}},
        status=201,
        content_type="application/json",
        response_body=b'{"id": 1}',
    )
    assert any("sk_group_id" in p for p in contract.check_request(bad))
    assert any("allow" in p for p in contract.check_request(bad))
    assert any("'name' is a required property" in p for p in contract.check_response(bad))
    nullable = Exchange(
        "PATCH",
        "/api/core/beta/nats-users/U",
        {"jwt_settings": {"pub": None}},
        200,
        "application/json",
        b"{}",
    )
    assert contract.check_request(nullable) == []
