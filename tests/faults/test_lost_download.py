"""The worker SIGKILLed between downloading credentials and delivering them.

Synadia holds its answer to every creds download for a while after it has issued the JWT, so the
test knows, from the emulator's own count, that each workload's credentials exist at Synadia and
reached nobody; then it kills the worker (`python -m worker`, a real process) and starts another.
Afterwards Synadia's issuance history must show, per user, exactly one JWT still valid, the one
sealed in git, every other one revoked, and one download per key.
"""

import asyncio
import hashlib
from pathlib import Path

import yaml
from support import fleet
from support.secrets import ControllerKeys
from support.stack import git
from support.synadia import connect_with_creds, write_creds
from temporalio.client import Client

from capabilities.credentials import CredentialsOutputs
from emulators.synadia import SynadiaEmulator
from emulators.synadia.natsjwt import decode
from idp.delivery import FINGERPRINT_ANNOTATION, PUBLIC_KEY_ANNOTATION
from idp.manifests import SEALED_FILE, workload_directory
from idp.sealing import unseal_sealed_secret
from idp.synadia import SynadiaClient

COUNT = 5
CREDS_ROUTE = "POST /nats-users/{userId}/creds"
# Long enough for every workload's download to be issued before the first answer goes out.
HOLD_MS = 30_000


async def test_a_worker_killed_between_download_and_delivery_leaves_only_delivered_creds_valid(
    client: Client,
    aws_url: str,
    synadia: SynadiaEmulator,
    sealing_cert: Path,
    keys: ControllerKeys,
    tmp_path: Path,
) -> None:
    run = fleet.onboarding(
        tmp_path,
        client.service_client.config.target_host,
        COUNT,
        aws_url=aws_url,
        synadia=synadia,
        sealing_cert=sealing_cert,
    )

    def issued() -> int:
        return sum(synadia.counters()["creds_issued"].values())

    issued_before = issued()
    worker = run.worker
    synadia.set_faults(hold_match=CREDS_ROUTE, hold_ms=HOLD_MS)
    try:
        await worker.start()
        await run.apply(client)
        async with asyncio.timeout(HOLD_MS / 1000 - 5):
            while issued() - issued_before < COUNT:
                worker.check_alive()
                await asyncio.sleep(0.02)
        await worker.kill()
    finally:
        synadia.set_faults()
    lost = issued() - issued_before
    committed = fleet.commits_per_file(run.repo)
    assert not any(path.endswith(SEALED_FILE) for path in committed), "delivered before the kill"

    await worker.start()
    try:
        statuses = await fleet.wait_all_ready(client, run.workloads)
    finally:
        await worker.stop()
    await fleet.assert_onboarded_once(run, statuses, aws_url=aws_url, synadia=synadia)

    delivered = revoked = downloads = 0
    async with SynadiaClient(synadia.api_url, synadia.token) as api:
        for workload, status in zip(run.workloads, statuses, strict=True):
            record = CredentialsOutputs.model_validate(status.outputs["Credentials"])
            path = f"{workload_directory('', workload)}/{SEALED_FILE}"
            manifest = yaml.safe_load(git("show", f"main:{path}", cwd=run.repo))
            annotations = manifest["metadata"]["annotations"]
            creds = unseal_sealed_secret(manifest, keys.key)["nats.creds"].decode()
            claims = decode(next(line for line in creds.splitlines() if line.startswith("eyJ")))
            # The sealed creds are the ones the workflow and the annotations describe.
            assert claims["sub"] == record.public_key == annotations[PUBLIC_KEY_ANNOTATION]
            fingerprint = hashlib.sha256(claims["jti"].encode()).hexdigest()
            assert fingerprint == record.fingerprint == annotations[FINGERPRINT_ANNOTATION]

            issuances = await api.list_nats_user_issuances(status.outputs["Nats"]["userId"])
            valid = [i for i in issuances if i.status == "Active"]
            assert [(i.sub, i.iat_max) for i in valid] == [(claims["sub"], claims["iat"])], (
                workload.metadata.name,
                issuances,
            )
            assert all(i.status == "Revoked" for i in issuances if i not in valid), issuances
            assert all(i.events_count == 1 for i in issuances), "two downloads on one key"
            delivered += len(valid)
            revoked += len(issuances) - len(valid)
            downloads += sum(i.events_count for i in issuances)

            probe = await connect_with_creds(
                synadia.nats_url, write_creds(tmp_path, workload.metadata.name, creds)
            )
            await probe.close()

    print(
        f"credentials issued {downloads} times for {COUNT} workloads: {delivered} delivered and "
        f"valid, {revoked} revoked (lost with the killed worker: {lost})"
    )
    assert delivered == COUNT
    assert revoked == lost
    assert downloads == issued() - issued_before == delivered + revoked
