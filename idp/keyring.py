"""The AES-256-GCM key ring behind the Temporal payload codec.

Keys come from one environment variable, newest first: ``"k2:<base64 key>,k1:<base64 key>"``. The
first key encrypts; every listed key decrypts, so rotating is "prepend a new key, deploy, and drop
the old one once no history still needs it". Each ciphertext travels with the id of its key, so a
reader never has to guess.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from idp.errors import PermanentError

__all__ = ["ENV_FORMAT", "KEY_BYTES", "NONCE_BYTES", "KeyRing", "KeyRingError", "generate_key"]

KEY_BYTES = 32
# Random 96-bit nonces are safe for well under 2**32 messages per key; rotation keeps us far below.
NONCE_BYTES = 12
_TAG_BYTES = 16
ENV_FORMAT = "<key id>:<base64 of a 32-byte key>, comma-separated, the encrypting key first"
_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
_KEY_ID_RULE = "1-32 letters, digits, '.', '_' or '-', starting with a letter or digit"


class KeyRingError(PermanentError, ValueError):
    """Bad key configuration or an unreadable payload. Never carries key material or plaintext.

    Also a ValueError, so a pydantic validator that builds a key ring reports it as a field error.
    """


def generate_key() -> str:
    """A new random key, base64-encoded, ready to prepend to the key variable."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


class KeyRing:
    def __init__(self, keys: Iterable[tuple[str, bytes]]) -> None:
        """``keys`` in order of preference: the first one encrypts."""
        self._keys: dict[str, AESGCM] = {}
        for key_id, key in keys:
            if not _KEY_ID.match(key_id):
                raise KeyRingError(f"key id {key_id!r} is not allowed: use {_KEY_ID_RULE}.")
            if key_id in self._keys:
                raise KeyRingError(f"key id {key_id!r} is listed twice.")
            if len(key) != KEY_BYTES:
                raise KeyRingError(
                    f"key {key_id!r} is {len(key)} bytes long; AES-256 keys are {KEY_BYTES} bytes."
                )
            self._keys[key_id] = AESGCM(key)
        if not self._keys:
            raise KeyRingError("a key ring needs at least one key.")
        self._current = next(iter(self._keys))

    @classmethod
    def from_env(cls, value: str, *, variable: str = "IDP_CODEC_KEYS") -> KeyRing:
        """Parse the key variable; ``variable`` only names it in error messages."""
        problem = f"{variable} must be {ENV_FORMAT}"
        entries = [entry.strip() for entry in (value or "").split(",")]
        if not any(entries):
            raise KeyRingError(f"{variable} is empty; it must be {ENV_FORMAT}.")
        parsed: list[tuple[str, bytes]] = []
        for position, entry in enumerate(entries, start=1):
            # Positions, not contents, identify a bad entry: the entry may be a bare key.
            if not entry:
                raise KeyRingError(f"{problem}; entry {position} is empty.")
            key_id, colon, encoded = entry.partition(":")
            key_id = key_id.strip()
            if not colon or not key_id:
                raise KeyRingError(f"{problem}; entry {position} has no '<key id>:' prefix.")
            if not _KEY_ID.match(key_id):
                raise KeyRingError(
                    f"{problem}; entry {position} has a key id that is not {_KEY_ID_RULE}."
                )
            try:
                key = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise KeyRingError(
                    f"{problem}; the key of {key_id!r} (entry {position}) is not valid base64."
                ) from None
            if len(key) != KEY_BYTES:
                raise KeyRingError(
                    f"{problem}; the key of {key_id!r} (entry {position}) decodes to {len(key)} "
                    f"bytes, not {KEY_BYTES}."
                )
            if any(key_id == seen for seen, _ in parsed):
                raise KeyRingError(f"{problem}; key id {key_id!r} is listed twice.")
            parsed.append((key_id, key))
        return cls(parsed)

    generate_key = staticmethod(generate_key)

    @property
    def current_key_id(self) -> str:
        return self._current

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def encrypt(self, data: bytes, *, associated_data: bytes | None = None) -> tuple[str, bytes]:
        """Encrypt with the current key: returns its id and ``nonce || ciphertext || tag``."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[self._current].encrypt(nonce, data, associated_data)
        return self._current, nonce + sealed

    def decrypt(self, key_id: str, data: bytes, *, associated_data: bytes | None = None) -> bytes:
        aead = self._keys.get(key_id)
        if aead is None:
            raise KeyRingError(
                f"payload is encrypted with key {key_id!r}, which is not in the key ring "
                f"(known: {', '.join(self._keys)}); add that key to decrypt it."
            )
        if len(data) < NONCE_BYTES + _TAG_BYTES:
            raise KeyRingError(f"payload for key {key_id!r} is too short to be encrypted data.")
        try:
            return aead.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], associated_data)
        except InvalidTag:
            raise KeyRingError(
                f"payload fails its integrity check under key {key_id!r}: it was altered, or "
                "encrypted with a different key under the same id."
            ) from None

    def __repr__(self) -> str:
        # Never show keys, even in a debugger or a log of locals.
        return f"KeyRing(key_ids={list(self._keys)!r}, current={self._current!r})"
