"""A faithful local stand-in for Port.io's API and its self-service action webhooks.

It serves the `/v1` routes the project uses (access tokens, action runs and their logs,
blueprints, entities, actions) with Port's body shapes and rules, records everything for
assertions, can fail like Port does (503s, 429s with rate-limit headers) and invokes actions by
rendering their body templates and sending signed webhooks, well or badly signed.
"""

from emulators.port.app import Faults
from emulators.port.emulator import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    PortEmulator,
)

__all__ = ["DEFAULT_CLIENT_ID", "DEFAULT_CLIENT_SECRET", "Faults", "PortEmulator"]
