"""The codec's key ring: real AES-256-GCM, keys generated here."""

import base64
import os

import pytest

from idp.errors import PermanentError
from idp.keyring import KEY_BYTES, NONCE_BYTES, KeyRing, KeyRingError, generate_key

KEY_A = generate_key()
KEY_B = generate_key()


def test_round_trip_with_the_first_key() -> None:
    ring = KeyRing.from_env(f"k2:{KEY_B},k1:{KEY_A}")
    key_id, sealed = ring.encrypt(b'{"secret": "payload"}')

    assert key_id == "k2" == ring.current_key_id
    assert ring.key_ids == ("k2", "k1")
    assert len(sealed) == NONCE_BYTES + len(b'{"secret": "payload"}') + 16
    assert b"payload" not in sealed
    assert ring.decrypt(key_id, sealed) == b'{"secret": "payload"}'


def test_every_encryption_draws_a_fresh_nonce() -> None:
    ring = KeyRing.from_env(f"k1:{KEY_A}")
    first = ring.encrypt(b"same")[1]
    second = ring.encrypt(b"same")[1]
    assert first[:NONCE_BYTES] != second[:NONCE_BYTES]
    assert first != second


def test_empty_payload_round_trips() -> None:
    ring = KeyRing.from_env(f"k1:{KEY_A}")
    assert ring.decrypt(*ring.encrypt(b"")) == b""


def test_rotation_new_key_encrypts_old_key_still_decrypts() -> None:
    before = KeyRing.from_env(f"k1:{KEY_A}")
    old_id, old_payload = before.encrypt(b"written before rotation")

    after = KeyRing.from_env(f"k2:{KEY_B},k1:{KEY_A}")
    new_id, new_payload = after.encrypt(b"written after rotation")

    assert (old_id, new_id) == ("k1", "k2")
    assert after.decrypt(old_id, old_payload) == b"written before rotation"
    assert after.decrypt(new_id, new_payload) == b"written after rotation"
    # A worker not yet rolled out cannot read the new key's payloads, and says which key it lacks.
    with pytest.raises(KeyRingError, match=r"'k2'.*not in the key ring"):
        before.decrypt(new_id, new_payload)


def test_dropping_a_key_makes_its_payloads_unreadable_with_a_clear_error() -> None:
    key_id, payload = KeyRing.from_env(f"k1:{KEY_A}").encrypt(b"x")
    with pytest.raises(KeyRingError, match=r"'k1'.*known: k2"):
        KeyRing.from_env(f"k2:{KEY_B}").decrypt(key_id, payload)


@pytest.mark.parametrize(
    "where",
    [0, NONCE_BYTES, -1],
    ids=["nonce", "ciphertext", "tag"],
)
def test_tampering_is_detected(where: int) -> None:
    ring = KeyRing.from_env(f"k1:{KEY_A}")
    key_id, payload = ring.encrypt(b"do not touch")
    tampered = bytearray(payload)
    tampered[where] ^= 0x01
    with pytest.raises(KeyRingError, match="integrity check"):
        ring.decrypt(key_id, bytes(tampered))


def test_truncated_payload_is_rejected() -> None:
    ring = KeyRing.from_env(f"k1:{KEY_A}")
    key_id, payload = ring.encrypt(b"abc")
    with pytest.raises(KeyRingError, match="too short"):
        ring.decrypt(key_id, payload[: NONCE_BYTES + 3])
    with pytest.raises(KeyRingError, match="integrity check"):
        ring.decrypt(key_id, payload[:-1])


def test_same_id_with_another_key_is_detected() -> None:
    key_id, payload = KeyRing.from_env(f"k1:{KEY_A}").encrypt(b"x")
    with pytest.raises(KeyRingError, match="integrity check"):
        KeyRing.from_env(f"k1:{KEY_B}").decrypt(key_id, payload)


def test_associated_data_is_bound() -> None:
    ring = KeyRing.from_env(f"k1:{KEY_A}")
    key_id, payload = ring.encrypt(b"x", associated_data=b"json/plain")
    assert ring.decrypt(key_id, payload, associated_data=b"json/plain") == b"x"
    with pytest.raises(KeyRingError):
        ring.decrypt(key_id, payload, associated_data=b"binary/plain")


def test_whitespace_around_entries_is_tolerated() -> None:
    ring = KeyRing.from_env(f" k2 : {KEY_B} ,\n k1:{KEY_A} ")
    assert ring.key_ids == ("k2", "k1")


SHORT_KEY = base64.b64encode(os.urandom(16)).decode()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "is empty"),
        ("  ,  ", "is empty"),
        (KEY_A, "no '<key id>:' prefix"),
        (f":{KEY_A}", "no '<key id>:' prefix"),
        (f"k1:{KEY_A},,k2:{KEY_B}", "entry 2 is empty"),
        (f"bad id!:{KEY_A}", "entry 1 has a key id"),
        (f"{'k' * 33}:{KEY_A}", "entry 1 has a key id"),
        ("k1:", "decodes to 0 bytes"),
        (f"k1:{KEY_A[:-4]}!!!!", "not valid base64"),
        (f"k1:{SHORT_KEY}", "decodes to 16 bytes, not 32"),
        (f"k1:{KEY_A},k1:{KEY_B}", "'k1' is listed twice"),
    ],
    ids=[
        "empty",
        "only-commas",
        "bare-key",
        "empty-id",
        "empty-entry",
        "bad-id",
        "long-id",
        "empty-key",
        "bad-base64",
        "short-key",
        "duplicate-id",
    ],
)
def test_bad_formats_name_the_variable_and_never_echo_keys(value: str, expected: str) -> None:
    with pytest.raises(KeyRingError) as caught:
        KeyRing.from_env(value)
    message = str(caught.value)
    assert expected in message
    assert "IDP_CODEC_KEYS" in message
    assert "<key id>:<base64 of a 32-byte key>" in message or "is empty" in message
    for key in (KEY_A, KEY_B, SHORT_KEY, KEY_A[:-4]):
        assert key not in message


def test_error_names_the_variable_it_was_given() -> None:
    with pytest.raises(KeyRingError, match="TEMPORAL_CODEC_KEYS"):
        KeyRing.from_env("nonsense", variable="TEMPORAL_CODEC_KEYS")


def test_key_ring_errors_are_permanent_and_value_errors() -> None:
    # Permanent: retrying a bad key configuration cannot help. ValueError: pydantic validators
    # that build a key ring report it as a field error.
    with pytest.raises(KeyRingError) as caught:
        KeyRing.from_env("")
    assert isinstance(caught.value, PermanentError)
    assert isinstance(caught.value, ValueError)


def test_constructor_validates_too() -> None:
    with pytest.raises(KeyRingError, match="16 bytes long"):
        KeyRing([("k1", os.urandom(16))])
    with pytest.raises(KeyRingError, match="at least one key"):
        KeyRing([])


def test_generate_key() -> None:
    first, second = generate_key(), KeyRing.generate_key()
    assert len(base64.b64decode(first, validate=True)) == KEY_BYTES
    assert first != second
    assert KeyRing.from_env(f"new:{first}").current_key_id == "new"


def test_repr_hides_keys() -> None:
    ring = KeyRing.from_env(f"k2:{KEY_B},k1:{KEY_A}")
    assert KEY_A not in repr(ring) and KEY_B not in repr(ring)
    assert "k2" in repr(ring)
