"""Payload encryption end to end: the codec, the converter, the worker's refusal, the codec server
and the dev stack.

Real parts: AES-256-GCM keys generated here, the session's Temporal dev server with an encrypting
worker and client on their own task queue (the session client stays plain, so it sees exactly
what the server stores), worker and codec server processes, the temporal CLI, and one whole
`idpctl dev` stack on free ports.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sqlite3
import stat
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from support.stack import bare_repo, platform_for, running_worker, task_queue, temporal_cli
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from idp.keyring import KeyRing, KeyRingError, generate_key
from idp.models import Workload
from starter import codec_server, dev, replay, temporal
from starter.codec import ENCODING, KEY_ID_METADATA, EncryptionCodec
from starter.operations import apply_workload
from workflows.messages import WaitReadyRequest, WorkloadStatus
from workflows.state import ConditionStatus, Phase
from workflows.workload import WorkloadWorkflow

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 60.0
TOKEN = "test-token-" + uuid.uuid4().hex
UI = "http://127.0.0.1:8233"


def ring(*key_ids: str) -> KeyRing:
    return KeyRing.from_env(",".join(f"{key_id}:{generate_key()}" for key_id in key_ids))


def plain_payload(text: str) -> Payload:
    return Payload(
        metadata={"encoding": b"json/plain", "messageType": b"Example"},
        data=json.dumps({"owner": text}).encode(),
    )


def env_without_keys(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "IDP_"))}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


# ---- the codec ---------------------------------------------------------------------------------


async def test_round_trip_restores_the_whole_original_payload() -> None:
    codec = EncryptionCodec(ring("k1"))
    original = plain_payload("team-secret-owner")
    [encrypted] = await codec.encode([original])
    assert encrypted.metadata["encoding"] == ENCODING
    assert encrypted.metadata[KEY_ID_METADATA] == b"k1"
    assert set(encrypted.metadata) == {"encoding", KEY_ID_METADATA}  # messageType is hidden too
    assert b"team-secret-owner" not in encrypted.SerializeToString()
    assert await codec.decode([encrypted]) == [original]


async def test_encryption_is_randomised() -> None:
    codec = EncryptionCodec(ring("k1"))
    first, second = await codec.encode([plain_payload("x"), plain_payload("x")])
    assert first.data != second.data


async def test_payloads_without_our_encoding_pass_through_decode() -> None:
    """Histories written before encryption was switched on must still replay."""
    codec = EncryptionCodec(ring("k1"))
    old = plain_payload("written-before-encryption")
    assert await codec.decode([old]) == [old]


async def test_tampered_ciphertext_fails() -> None:
    codec = EncryptionCodec(ring("k1"))
    [encrypted] = await codec.encode([plain_payload("x")])
    tampered = Payload()
    tampered.CopyFrom(encrypted)
    tampered.data = encrypted.data[:-1] + bytes([encrypted.data[-1] ^ 1])
    with pytest.raises(KeyRingError, match="integrity check"):
        await codec.decode([tampered])


async def test_a_relabelled_key_id_fails_too() -> None:
    keys = ring("k2", "k1")
    [encrypted] = await EncryptionCodec(keys).encode([plain_payload("x")])
    relabelled = Payload()
    relabelled.CopyFrom(encrypted)
    relabelled.metadata[KEY_ID_METADATA] = b"k1"
    with pytest.raises(KeyRingError, match="integrity check under key 'k1'"):
        await EncryptionCodec(keys).decode([relabelled])


async def test_key_rotation_old_key_decrypts_new_key_encrypts() -> None:
    k1 = generate_key()
    before = EncryptionCodec(KeyRing.from_env(f"k1:{k1}"))
    after = EncryptionCodec(KeyRing.from_env(f"k2:{generate_key()},k1:{k1}"))
    original = plain_payload("rotated")

    [old] = await before.encode([original])
    assert await after.decode([old]) == [original]

    [new] = await after.encode([original])
    assert new.metadata[KEY_ID_METADATA] == b"k2"
    assert await after.decode([new]) == [original]
    with pytest.raises(KeyRingError, match="'k2', which is not in the key ring"):
        await before.decode([new])


# ---- the converter and where its keys come from ------------------------------------------------


async def test_failure_messages_and_stack_traces_are_encrypted() -> None:
    converter = temporal.data_converter(ring("k1"))
    failure = Failure()
    try:
        raise ApplicationError("destination 'nowhere' is not defined", type="UnknownDestination")
    except ApplicationError as error:
        await converter.encode_failure(error, failure)
    assert failure.message == "Encoded failure"
    assert failure.stack_trace == ""
    assert failure.encoded_attributes.metadata["encoding"] == ENCODING
    assert b"nowhere" not in failure.SerializeToString()
    decoded = await converter.decode_failure(failure)
    assert isinstance(decoded, ApplicationError)
    assert decoded.message == "destination 'nowhere' is not defined"


def test_without_keys_the_converter_is_the_plain_pydantic_one() -> None:
    assert temporal.data_converter(None) is pydantic_data_converter


def test_keys_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IDP_CODEC_KEYS", raising=False)
    assert temporal.codec_keyring() is None
    monkeypatch.setenv("IDP_CODEC_KEYS", f"k2:{generate_key()}, k1:{generate_key()}")
    keyring = temporal.codec_keyring()
    assert keyring is not None and keyring.key_ids == ("k2", "k1")
    # Set but empty is a secret that failed to mount: an error, not "encryption off".
    monkeypatch.setenv("IDP_CODEC_KEYS", "")
    with pytest.raises(KeyRingError, match="IDP_CODEC_KEYS is empty"):
        temporal.codec_keyring()


async def test_connect_refuses_bad_keys_without_echoing_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IDP_CODEC_KEYS", "k1:c2VjcmV0LWtleS1tYXRlcmlhbA==")
    with pytest.raises(temporal.ConnectError) as raised:
        await temporal.connect(temporal.TemporalSettings(address="127.0.0.1:1"))
    assert "decodes to 19 bytes, not 32" in str(raised.value)
    assert "c2VjcmV0" not in str(raised.value)


async def test_connect_encrypts_with_the_environment_keys(
    dev_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDP_CODEC_KEYS", f"env1:{generate_key()}")
    address = dev_env.client.service_client.config.target_host
    client = await temporal.connect(temporal.TemporalSettings(address=address))
    codec = client.data_converter.payload_codec
    assert isinstance(codec, EncryptionCodec)
    assert codec.keyring.current_key_id == "env1"


# ---- end to end on the session's server --------------------------------------------------------


@dataclass(frozen=True)
class EncryptedRun:
    key: str  # base64, key id "e2e"
    client: Client  # encrypting
    plain: Client  # what anyone with access to the server sees
    queue: str
    workflow_id: str
    owner: str
    namespace: str
    label: str
    history: WorkflowHistory


def workload_doc(system: str, name: str, owner: str, namespace: str, **spec: str) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": name, "system": system, "labels": {"cost-centre": namespace}},
            "spec": {"owner": owner, "destination": "dev", "namespace": namespace, **spec},
        }
    )


@pytest.fixture(scope="module")
async def encrypted_run(
    dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[EncryptedRun]:
    """A workload made Ready by an encrypting worker, which keeps running for the module."""
    tmp = tmp_path_factory.mktemp("codec")
    key = generate_key()
    client = await Client.connect(
        dev_env.client.service_client.config.target_host,
        namespace=dev_env.client.namespace,
        data_converter=temporal.data_converter(KeyRing.from_env(f"e2e:{key}")),
    )
    queue = task_queue()
    marker = uuid.uuid4().hex[:10]
    item = workload_doc(queue, "enc", f"owner-{marker}", f"ns-{marker}")
    async with running_worker(client, platform_for(bare_repo(tmp / "s.git")), queue, tmp / "c"):
        result = await apply_workload(client, queue, item)
        status = await client.get_workflow_handle(item.workflow_id).execute_update(
            WorkloadWorkflow.wait_ready,
            WaitReadyRequest(generation=result.generation, timeout_seconds=TIMEOUT),
        )
        assert status.phase == Phase.READY, status.conditions
        history = await dev_env.client.get_workflow_handle(item.workflow_id).fetch_history()
        yield EncryptedRun(
            key=key,
            client=client,
            plain=dev_env.client,
            queue=queue,
            workflow_id=item.workflow_id,
            owner=item.spec.owner,
            namespace=item.spec.namespace,
            label=f"ns-{marker}",
            history=history,
        )


def payloads_in(message: Message, path: str = "") -> Iterator[tuple[str, Payload]]:
    """Every Payload inside a protobuf message, with its field path."""
    if message.DESCRIPTOR.full_name == Payload.DESCRIPTOR.full_name:
        yield path, message  # type: ignore[misc]
        return
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].type != FieldDescriptor.TYPE_MESSAGE:
                continue
            children = [(f"{path}.{field.name}[{key}]", child) for key, child in value.items()]
        elif field.is_repeated:
            children = [(f"{path}.{field.name}[{i}]", child) for i, child in enumerate(value)]
        else:
            children = [(f"{path}.{field.name}", value)]
        for child_path, child in children:
            yield from payloads_in(child, child_path)


def without_search_attributes(event: HistoryEvent) -> HistoryEvent:
    """The event minus its search attributes, which the server indexes and so stores as-is."""
    copy = HistoryEvent()
    copy.CopyFrom(event)
    for _, attributes in copy.ListFields():
        if isinstance(attributes, Message) and "search_attributes" in [
            f.name for f in attributes.DESCRIPTOR.fields
        ]:
            attributes.ClearField("search_attributes")
    return copy


async def test_history_holds_no_plaintext_of_the_spec(encrypted_run: EncryptedRun) -> None:
    events = encrypted_run.history.events
    found = [(f"event {e.event_id}{path}", p) for e in events for path, p in payloads_in(e)]
    # Stored as-is on purpose: search attributes (the server indexes them) and the SDK's own
    # bookkeeping: a local activity's marker (sequence number, activity type, times) and a
    # workflow.patched marker (the patch id, a constant of our code).
    expected_plain = (
        "search_attributes",
        "marker_recorded_event_attributes.details[data]",
        "marker_recorded_event_attributes.details[patch-data]",
    )
    encrypted = [(path, p) for path, p in found if not any(e in path for e in expected_plain)]
    assert len(encrypted) > 10, "expected inputs, results, updates and summaries in the history"
    for path, payload in encrypted:
        assert payload.metadata["encoding"] == ENCODING, path
        assert payload.metadata[KEY_ID_METADATA] == b"e2e", path
    stored = b"".join(without_search_attributes(e).SerializeToString() for e in events)
    for plaintext in (encrypted_run.owner, encrypted_run.namespace, encrypted_run.label):
        assert plaintext.encode() not in stored
    # The owner is a search attribute (IdpOwner): the one place it is meant to be readable.
    everything = b"".join(e.SerializeToString() for e in events)
    assert encrypted_run.owner.encode() in everything


async def test_the_encrypting_client_reads_it_back(encrypted_run: EncryptedRun) -> None:
    handle = encrypted_run.client.get_workflow_handle(encrypted_run.workflow_id)
    status: WorkloadStatus = await handle.query(WorkloadWorkflow.status)
    assert status.workload.spec.owner == encrypted_run.owner
    # The input as stored in history, decoded with the keys.
    started = encrypted_run.history.events[0].workflow_execution_started_event_attributes
    [decoded] = await encrypted_run.client.data_converter.decode(started.input.payloads)
    assert encrypted_run.owner in json.dumps(decoded)


async def test_a_failing_activity_message_is_encrypted_in_history(
    encrypted_run: EncryptedRun,
) -> None:
    client, queue = encrypted_run.client, encrypted_run.queue
    marker = uuid.uuid4().hex[:8]
    item = workload_doc(queue, "lost", "team-x", "demo", destination=f"nowhere-{marker}")
    await apply_workload(client, queue, item)
    handle = client.get_workflow_handle(item.workflow_id)
    async with asyncio.timeout(TIMEOUT):
        while True:
            status = await handle.query(WorkloadWorkflow.status)
            failed = [c for c in status.conditions if c.status == ConditionStatus.FALSE]
            if failed:
                break
            await asyncio.sleep(0.1)
    assert "is not defined" in failed[0].message  # readable with the keys

    history = await encrypted_run.plain.get_workflow_handle(item.workflow_id).fetch_history()
    failures = [
        e.activity_task_failed_event_attributes.failure
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
    ]
    assert failures, "the manifests activity should have failed"
    stored = b"".join(without_search_attributes(e).SerializeToString() for e in history.events)
    assert b"is not defined" not in stored
    assert f"nowhere-{marker}".encode() not in stored
    for failure in failures:
        assert failure.message == "Encoded failure"
        assert failure.stack_trace == ""
        assert failure.encoded_attributes.metadata["encoding"] == ENCODING
    decoded = await client.data_converter.decode_failure(failures[0])
    assert isinstance(decoded, ApplicationError)
    assert decoded.type == "UnknownDestination"
    assert f"destination 'nowhere-{marker}' is not defined" in decoded.message


async def test_the_replayer_replays_encrypted_histories(
    encrypted_run: EncryptedRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def history() -> AsyncIterator[WorkflowHistory]:
        yield encrypted_run.history

    monkeypatch.setenv("IDP_CODEC_KEYS", f"newer:{generate_key()}")
    [without_the_key] = await replay.replay(history())
    # Readable: the replayer does not encode its own failures (they never leave the process).
    assert without_the_key.error is not None
    assert "payload is encrypted with key" in without_the_key.error
    assert "e2e" in without_the_key.error and "not in the key ring" in without_the_key.error

    monkeypatch.setenv("IDP_CODEC_KEYS", f"newer:{generate_key()},e2e:{encrypted_run.key}")
    [outcome] = await replay.replay(history())
    assert outcome.error is None


HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


async def test_recorded_unencrypted_histories_pass_through_the_codec() -> None:
    codec = EncryptionCodec(ring("k1"))
    seen = 0
    for path in HISTORIES:
        history = WorkflowHistory.from_json(path.stem, path.read_text())
        for event in history.events:
            for where, payload in payloads_in(event):
                assert await codec.decode([payload]) == [payload], (path.name, where)
                seen += 1
    assert seen > 50


async def test_keys_do_not_change_how_recorded_histories_replay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("IDP_CODEC_KEYS", raising=False)
    plain = await replay.replay(replay.from_files(HISTORIES))
    monkeypatch.setenv("IDP_CODEC_KEYS", f"k1:{generate_key()}")
    keyed = await replay.replay(replay.from_files(HISTORIES))
    assert len(keyed) == len(HISTORIES)
    assert [(o.workflow_id, o.error is None) for o in keyed] == [
        (o.workflow_id, o.error is None) for o in plain
    ]


# ---- the codec server ----------------------------------------------------------------------------


def app_client(
    keys: KeyRing, *, origins: tuple[str, ...] = (UI,), ui_without_token: bool = False
) -> httpx.AsyncClient:
    config = codec_server.CodecServerConfig(
        keyring=keys, token=TOKEN, ui_origins=origins, ui_without_token=ui_without_token
    )
    transport = httpx.ASGITransport(app=codec_server.create_app(config))
    return httpx.AsyncClient(transport=transport, base_url="http://codec")


def as_json(*payloads: Payload) -> dict:
    return {"payloads": [json_format.MessageToDict(p) for p in payloads]}


def from_json(body: dict) -> list[Payload]:
    return [json_format.ParseDict(p, Payload()) for p in body["payloads"]]


BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def test_codec_server_requires_the_token() -> None:
    keys = ring("k1")
    [encrypted] = await EncryptionCodec(keys).encode([plain_payload("x")])
    async with app_client(keys) as http:
        missing = await http.post("/decode", json=as_json(encrypted))
        wrong = await http.post(
            "/decode", json=as_json(encrypted), headers={"Authorization": f"Bearer {TOKEN}x"}
        )
        basic = await http.post(
            "/decode", json=as_json(encrypted), headers={"Authorization": f"Basic {TOKEN}"}
        )
    for response in (missing, wrong, basic):
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "payloads" not in response.json()


async def test_codec_server_decodes_and_encodes_with_the_token() -> None:
    keys = ring("k1")
    original = plain_payload("decoded-by-the-server")
    [encrypted] = await EncryptionCodec(keys).encode([original])
    async with app_client(keys) as http:
        decoded = await http.post(
            "/decode",
            json=as_json(encrypted, original),
            headers={**BEARER, "X-Namespace": "default"},
        )
        assert decoded.status_code == 200, decoded.text
        assert from_json(decoded.json()) == [original, original]

        encoded = await http.post("/encode", json=as_json(original), headers=BEARER)
        assert encoded.status_code == 200, encoded.text
        [again] = from_json(encoded.json())
        assert again.metadata[KEY_ID_METADATA] == b"k1"
        assert await EncryptionCodec(keys).decode([again]) == [original]

        empty = await http.post("/decode", json={"payloads": []}, headers=BEARER)
        assert empty.json() == {"payloads": []}


async def test_codec_server_reports_bad_input_without_quoting_it() -> None:
    keys = ring("k1")
    [foreign] = await EncryptionCodec(ring("other")).encode([plain_payload("x")])
    async with app_client(keys) as http:
        unknown_key = await http.post("/decode", json=as_json(foreign), headers=BEARER)
        garbage = await http.post(
            "/encode", content=b'{"payloads": "plaintext-secret"}', headers=BEARER
        )
    assert unknown_key.status_code == 422
    assert "'other', which is not in the key ring" in unknown_key.json()["error"]
    assert garbage.status_code == 400
    assert "plaintext-secret" not in garbage.text


async def test_cors_preflight_is_allowed_only_from_the_ui_origin() -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-namespace",
    }
    async with app_client(ring("k1")) as http:
        allowed = await http.options("/decode", headers={"Origin": UI, **preflight})
        other = await http.options("/decode", headers={"Origin": "https://evil.test", **preflight})
        other_post = await http.post(
            "/decode", json={"payloads": []}, headers={"Origin": "https://evil.test", **BEARER}
        )
        ui_post = await http.post(
            "/decode", json={"payloads": []}, headers={"Origin": UI, **BEARER}
        )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == UI
    allowed_headers = allowed.headers["access-control-allow-headers"].lower()
    assert {"x-namespace", "content-type", "authorization"} <= set(allowed_headers.split(", "))
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert other.status_code != 200
    assert "access-control-allow-origin" not in other.headers
    assert other_post.status_code == 403
    assert "access-control-allow-origin" not in other_post.headers
    assert ui_post.status_code == 200
    assert ui_post.headers["access-control-allow-origin"] == UI


async def test_the_loopback_ui_needs_no_token_only_when_allowed() -> None:
    keys = ring("k1")
    [encrypted] = await EncryptionCodec(keys).encode([plain_payload("x")])
    from_ui = {"Origin": UI, "X-Namespace": "default"}
    async with app_client(keys, ui_without_token=True) as http:
        ui = await http.post("/decode", json=as_json(encrypted), headers=from_ui)
        no_origin = await http.post("/decode", json=as_json(encrypted))
        wrong_token = await http.post(
            "/decode", json=as_json(encrypted), headers={**from_ui, "Authorization": "Bearer no"}
        )
    assert ui.status_code == 200 and from_json(ui.json()) == [plain_payload("x")]
    assert no_origin.status_code == 401
    assert wrong_token.status_code == 401  # a wrong token never falls back to the origin rule
    async with app_client(keys) as http:
        assert (
            await http.post("/decode", json=as_json(encrypted), headers=from_ui)
        ).status_code == 401


def test_codec_server_configuration_is_checked() -> None:
    keys = ring("k1")
    with pytest.raises(codec_server.CodecServerError, match="too short"):
        codec_server.CodecServerConfig(keyring=keys, token="short")
    with pytest.raises(codec_server.CodecServerError, match="only for a UI on loopback"):
        codec_server.CodecServerConfig(
            keyring=keys, token=TOKEN, ui_origins=("https://temporal.example.com",),
            ui_without_token=True,
        )  # fmt: skip
    assert codec_server.parse_origin("http://LOCALHOST:8233/") == "http://localhost:8233"
    assert codec_server.parse_origin("https://ui.example.com:443") == "https://ui.example.com"
    for bad in ("*", "http://127.0.0.1:8233/path", "127.0.0.1:8233", "null"):
        with pytest.raises(codec_server.CodecServerError):
            codec_server.parse_origin(bad)


async def read_until(process: asyncio.subprocess.Process, needle: str, seen: list[str]) -> None:
    assert process.stdout is not None
    async with asyncio.timeout(TIMEOUT):
        while True:
            line = (await process.stdout.readline()).decode()
            if not line:
                raise AssertionError(f"exited before printing {needle!r}:\n{''.join(seen)}")
            seen.append(line)
            if needle in line:
                return


async def test_the_temporal_cli_decodes_through_a_codec_server_process(
    encrypted_run: EncryptedRun,
) -> None:
    port = dev.free_port("127.0.0.1")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "starter.codec_server", "--port", str(port), "--ui-origin", UI,
        cwd=ROOT,
        env=env_without_keys(
            IDP_CODEC_KEYS=f"e2e:{encrypted_run.key}", IDP_CODEC_SERVER_TOKEN=TOKEN
        ),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    seen: list[str] = []
    try:
        await read_until(process, "Uvicorn running", seen)
        show = ["workflow", "show", "-w", encrypted_run.workflow_id, "--output", "json"]
        connection = [
            "--address", encrypted_run.plain.service_client.config.target_host,
            "--codec-endpoint", f"http://127.0.0.1:{port}",
        ]  # fmt: skip
        code, output = await run_cli(*show, *connection, "--codec-auth", f"Bearer {TOKEN}")
        assert code == 0, output + "".join(seen)
        assert encrypted_run.namespace.encode() in payload_data(json.loads(output))
        # The CLI retries a refused codec call until its deadline: keep that short.
        refused = ["--codec-auth", "Bearer wrong-token", "--command-timeout", "2s"]
        code, output = await run_cli(*show, *connection, *refused)
        assert code != 0, output
        assert encrypted_run.namespace not in output
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT):
            rest, _ = await process.communicate()
    log = "".join(seen) + rest.decode()
    assert "decoded" in log and "authorised by token" in log
    assert "decode refused (401 invalid token)" in log
    assert TOKEN not in log


async def run_cli(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        temporal_cli(), *args, env=env_without_keys(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(TIMEOUT):
        output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


def payload_data(document: object) -> bytes:
    """The decoded `data` of every payload in the CLI's JSON (bytes fields are base64)."""
    if isinstance(document, dict):
        found = b""
        if isinstance(document.get("data"), str) and "metadata" in document:
            found += base64.b64decode(document["data"])
        return found + b"".join(payload_data(v) for v in document.values())
    if isinstance(document, list):
        return b"".join(payload_data(v) for v in document)
    return b""


async def test_codec_server_process_refuses_to_start_without_a_token() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "starter.codec_server", "--port", str(dev.free_port("127.0.0.1")),
        cwd=ROOT, env=env_without_keys(IDP_CODEC_KEYS=f"k1:{generate_key()}"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(TIMEOUT):
        output, _ = await process.communicate()
    assert process.returncode == 2
    assert "IDP_CODEC_SERVER_TOKEN is not set" in output.decode()


# ---- the worker process ------------------------------------------------------------------------


@pytest.fixture
def platform_file(tmp_path: Path) -> Path:
    path = tmp_path / "platform.yaml"
    repo = bare_repo(tmp_path / "state.git")
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "idp.dev/v1alpha1",
                "kind": "Platform",
                "destinations": [{"name": "dev", "stateStore": {"url": str(repo)}}],
            }
        )
    )
    return path


async def start_worker(
    dev_env: WorkflowEnvironment, platform_file: Path, *flags: str, **env: str
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "--platform", str(platform_file),
        "--cache-dir", str(platform_file.parent / "cache"),
        "--address", dev_env.client.service_client.config.target_host,
        "--task-queue", task_queue(), *flags,
        cwd=ROOT, env=env_without_keys(**env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip


async def finish(process: asyncio.subprocess.Process) -> str:
    async with asyncio.timeout(TIMEOUT):
        output, _ = await process.communicate()
    return output.decode()


async def test_worker_refuses_to_start_without_a_key(
    dev_env: WorkflowEnvironment, platform_file: Path
) -> None:
    worker = await start_worker(dev_env, platform_file)
    output = await finish(worker)
    assert worker.returncode == 2, output
    assert "IDP_CODEC_KEYS is not set" in output
    assert "--insecure-no-encryption" in output
    assert "polling" not in output


async def test_worker_rejects_a_malformed_key_in_one_sentence(
    dev_env: WorkflowEnvironment, platform_file: Path
) -> None:
    worker = await start_worker(dev_env, platform_file, IDP_CODEC_KEYS="k1:c2VjcmV0")
    output = await finish(worker)
    assert worker.returncode == 2, output
    [line] = output.strip().splitlines()
    assert "ERROR" in line and "IDP_CODEC_KEYS must be" in line and "decodes to 6 bytes" in line
    assert "c2VjcmV0" not in output


async def test_worker_runs_insecurely_only_when_told_and_says_so(
    dev_env: WorkflowEnvironment, platform_file: Path
) -> None:
    worker = await start_worker(dev_env, platform_file, "--insecure-no-encryption")
    seen: list[str] = []
    try:
        await read_until(worker, "polling task queue", seen)
    finally:
        worker.send_signal(signal.SIGTERM)
        rest = await finish(worker)
    [warning] = [line for line in seen if "INSECURE" in line]
    assert "WARNING" in warning and "PLAINTEXT" in warning
    # Not the exit code: worker.main() can still abort in interpreter teardown after a clean
    # stop (temporalio/sdk-python#300; idpctl works around it with os._exit).
    assert "worker stopped" in rest, "".join(seen) + rest


async def test_worker_with_a_key_says_which_one_encrypts(
    dev_env: WorkflowEnvironment, platform_file: Path
) -> None:
    keys = f"k9:{generate_key()}"
    worker = await start_worker(dev_env, platform_file, IDP_CODEC_KEYS=keys)
    seen: list[str] = []
    try:
        await read_until(worker, "polling task queue", seen)
    finally:
        worker.send_signal(signal.SIGTERM)
        await finish(worker)
    assert any("payload encryption on, encrypting with key 'k9'" in line for line in seen)
    assert keys.split(":")[1] not in "".join(seen)


# ---- the dev stack -----------------------------------------------------------------------------


async def test_dev_stack_encrypts_and_points_the_ui_at_its_codec_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # dev.start exports the stack's keys into this process; undo that after the test.
    monkeypatch.setenv("IDP_CODEC_KEYS", "placeholder")
    stack = dev.Stack.on_free_ports(tmp_path / ".idp")
    try:
        await dev.start(stack)
        keys_mode = stat.S_IMODE(stack.codec_keys_file.stat().st_mode)
        token_mode = stat.S_IMODE(stack.codec_token_file.stat().st_mode)
        assert (keys_mode, token_mode) == (0o600, 0o600)
        keyring = KeyRing.from_env(stack.codec_keys_file.read_text())
        assert os.environ["IDP_CODEC_KEYS"] == stack.codec_keys_file.read_text().strip()
        assert stack.env()["IDP_CODEC_KEYS"] == os.environ["IDP_CODEC_KEYS"]

        async with httpx.AsyncClient(timeout=10) as http:
            settings = (await http.get(f"{stack.ui_url}/api/v1/settings")).json()
            assert settings["Codec"]["Endpoint"] == stack.codec_url

            [encrypted] = await EncryptionCodec(keyring).encode([plain_payload("dev")])
            decode = f"{stack.codec_url}/decode"
            for ui in (stack.ui_url, f"http://localhost:{stack.ui_port}"):
                from_ui = await http.post(decode, json=as_json(encrypted), headers={"Origin": ui})
                assert from_ui.status_code == 200, from_ui.text
                assert from_json(from_ui.json()) == [plain_payload("dev")]
            anonymous = await http.post(decode, json=as_json(encrypted))
            assert anonymous.status_code == 401
            token = stack.codec_token_file.read_text().strip()
            cli = await http.post(
                decode, json=as_json(encrypted), headers={"Authorization": f"Bearer {token}"}
            )
            assert cli.status_code == 200

        client = await temporal.connect(temporal.TemporalSettings(address=stack.address))
        assert isinstance(client.data_converter.payload_codec, EncryptionCodec)
        # Not the codec's: the one check that the dev server took its SQLite settings
        # (starter/dev.py says why it keeps a write-ahead log).
        with contextlib.closing(sqlite3.connect(stack.root / "temporal.db")) as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        worker_log = stack.logs / "worker.log"
        async with asyncio.timeout(TIMEOUT):
            while "payload encryption on" not in worker_log.read_text():
                assert stack.dead() is None, stack.dead()
                await asyncio.sleep(0.1)
        assert token not in "".join(p.read_text() for p in stack.logs.glob("*.log"))
    finally:
        stack.stop()

    # A second start reuses the key: the database it encrypted stays readable.
    again = dev.Stack.on_free_ports(tmp_path / ".idp")
    dev.load_codec_secrets(again)
    assert again.codec_keys == stack.codec_keys
