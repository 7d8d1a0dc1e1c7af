"""Seal time per secret: kubeseal-compatible sealing of a 1 KiB value with a 4096-bit key.

.venv/bin/python bench/seal_time.py [--count 200]
"""

import argparse
import os
import statistics
import time

from cryptography.hazmat.primitives.asymmetric import rsa

from idp.sealing import SealingScope, label_for, seal, unseal


def main(count: int) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    label = label_for(SealingScope.STRICT, "shop", "orders-nats")
    value = os.urandom(1024)
    seal(value, key.public_key(), label)
    sealed, opened = [], []
    for _ in range(count):
        started = time.perf_counter()
        ciphertext = seal(value, key.public_key(), label)
        sealed.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert unseal(ciphertext, key, label) == value
        opened.append(time.perf_counter() - started)
    print(f"\n{'operation (1 KiB, RSA-4096)':<32} {'median µs':>10} {'p95 µs':>10}")
    for name, times in (("seal", sealed), ("unseal (controller side)", opened)):
        p95 = statistics.quantiles(times, n=20)[-1]
        print(f"{name:<32} {statistics.median(times) * 1e6:>10.0f} {p95 * 1e6:>10.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    main(parser.parse_args().count)
