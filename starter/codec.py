"""The payload codec: every Temporal payload leaves the process AES-256-GCM encrypted.

Temporal stores workflow inputs, results, signals, updates, queries, summaries and failure details
in its database and shows them to anyone who can read the namespace. The codec encrypts each
payload (after the pydantic converter has turned it into JSON) with the current key of a
`KeyRing`; only workers, clients and the codec server holding the keys can read them back.

An encrypted payload carries two metadata entries: ``encoding: binary/encrypted`` and
``encryption-key-id: <key id>``; its data is ``nonce || ciphertext || tag`` of the whole original
Payload serialized as protobuf, so the original encoding and metadata are protected too.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from idp.keyring import KeyRing, KeyRingError

__all__ = ["ENCODING", "KEY_ID_METADATA", "EncryptionCodec"]

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
# Bound into every ciphertext as associated data, so a blob encrypted with the same keys for some
# other purpose can never be passed off as a Temporal payload (and vice versa).
_ASSOCIATED_DATA = b"idp temporal payload v1"


class EncryptionCodec(PayloadCodec):
    def __init__(self, keyring: KeyRing) -> None:
        self._keyring = keyring

    @property
    def keyring(self) -> KeyRing:
        return self._keyring

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(payload) for payload in payloads]

    # AES-GCM on a few kilobytes takes microseconds: doing it inline is cheaper than a thread hop.

    def encrypt(self, payload: Payload) -> Payload:
        key_id, sealed = self._keyring.encrypt(
            payload.SerializeToString(deterministic=True), associated_data=_ASSOCIATED_DATA
        )
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id.encode("ascii")},
            data=sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            # Written before encryption was switched on (or by a plain client): histories of
            # long-lived workflows must keep replaying, so pass it through unchanged.
            return payload
        raw_key_id = payload.metadata.get(KEY_ID_METADATA)
        if not raw_key_id:
            raise KeyRingError(
                f"encrypted payload has no {KEY_ID_METADATA!r} metadata; it was not written by "
                "this codec."
            )
        try:
            key_id = raw_key_id.decode("ascii")
        except UnicodeDecodeError:
            raise KeyRingError(f"encrypted payload has a malformed {KEY_ID_METADATA!r}.") from None
        plaintext = self._keyring.decrypt(key_id, payload.data, associated_data=_ASSOCIATED_DATA)
        try:
            return Payload.FromString(plaintext)
        except DecodeError:
            # Authenticated but not a Payload: only possible if our own key encrypted something
            # else under this associated data, i.e. a bug, not an attacker.
            raise KeyRingError(
                f"payload decrypted with key {key_id!r} is not a serialized Temporal payload."
            ) from None
