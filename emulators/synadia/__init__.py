"""A faithful local stand-in for the Synadia Cloud control plane and its NATS system.

It serves the `/api/core/beta` routes the project uses, shaped as the published OpenAPI spec
shapes them, owns a real operator/account/signing-key hierarchy, mints real user JWTs and .creds,
and runs a real nats-server that enforces them (revocations included).
"""

from emulators.synadia.app import Faults
from emulators.synadia.controlplane import Behaviour
from emulators.synadia.emulator import DEFAULT_TOKEN, SynadiaEmulator, accounts_of

__all__ = ["DEFAULT_TOKEN", "Behaviour", "Faults", "SynadiaEmulator", "accounts_of"]
