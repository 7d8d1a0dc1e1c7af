"""What every fault-injection test shares beside tests/conftest.py's moto and Synadia emulator: a
sealing certificate, and the seed each test draws its random faults from."""

import os
import random
from pathlib import Path

import pytest
from support.secrets import ControllerKeys

SEED_ENV = "IDP_FAULTS_SEED"


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
