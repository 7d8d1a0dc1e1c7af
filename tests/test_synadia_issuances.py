"""Synadia's issuance history (GET /nats-users/{userId}/issuances) as the emulator serves it and
idp.synadia reads it: shaped as the published spec says, one record per set of claims with an
event per download, and a status that follows the key's revocation the way nats-server does.
"""

from collections.abc import AsyncIterator

import pytest
from support.synadia import OpenApiContract, RecordingTransport

from emulators.synadia import DEFAULT_TOKEN, SynadiaEmulator
from idp.synadia import SynadiaClient


@pytest.fixture(scope="module")
async def emulator(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SynadiaEmulator]:
    async with SynadiaEmulator.running(tmp_path_factory.mktemp("synadia")) as emu:
        yield emu


async def test_issuances_follow_downloads_rotations_and_revocations(
    emulator: SynadiaEmulator,
) -> None:
    recorder = RecordingTransport()
    async with SynadiaClient(emulator.api_url, DEFAULT_TOKEN, transport=recorder) as synadia:
        user = await synadia.create_nats_user(
            emulator.account_id, "issuances", sk_group_id=emulator.sk_group_id
        )
        # Creating a user issues nothing anyone can use: no seed leaves Synadia.
        assert await synadia.list_nats_user_issuances(user.id) == []

        first = await synadia.download_creds(user.id)
        second = await synadia.download_creds(user.id)
        [issuance] = await synadia.list_nats_user_issuances(user.id)
        # Identical claims share one record; without a ttl the JWTs never expire.
        assert (issuance.sub, issuance.status) == (user.user_public_key, "Active")
        assert issuance.events_count == 2 and issuance.exp_max is None
        assert issuance.iat_min == int(first.issued_at.timestamp())
        assert issuance.iat_max == int(second.issued_at.timestamp())

        rotated = await synadia.rotate_nats_user(user.id)
        await synadia.download_creds(user.id)
        await synadia.revoke_nats_user_key(emulator.account_id, user.user_public_key)
        statuses = {i.sub: i.status for i in await synadia.list_nats_user_issuances(user.id)}
        assert statuses == {user.user_public_key: "Revoked", rotated.user_public_key: "Active"}

        assert emulator.creds_issued(user.id) == 3

    contract = OpenApiContract.load()
    listed = [e for e in recorder.exchanges if e.path.endswith("/issuances")]
    assert listed
    assert [p for e in listed for p in contract.check_response(e)] == []
