"""The real parts every fault-injection test shares: moto's server, the Synadia emulator with its
nats-server, a sealing certificate, and the seed each test draws its random faults from."""

import os
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support.moto import moto_server
from support.secrets import ControllerKeys

from emulators.synadia import SynadiaEmulator

SEED_ENV = "IDP_FAULTS_SEED"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
async def synadia(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SynadiaEmulator]:
    async with SynadiaEmulator.running(tmp_path_factory.mktemp("synadia")) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def sealing_cert(keys: ControllerKeys) -> Path:
    """The certificate of tests/conftest.py's controller key pair, whose private half opens
    what was delivered."""
    return keys.cert_file


@pytest.fixture
def seed() -> int:
    """Random per run, so runs explore different schedules; printed, so a failure can be
    replayed with the same one."""
    value = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**32))
    print(f"fault seed {value} (replay: {SEED_ENV}={value})")
    return value
