"""`python -m emulators.port --port N`: run the Port emulator until interrupted.

The client id and secret it accepts (and signs webhooks with) come from
`PORT_EMULATOR_CLIENT_ID` and `PORT_EMULATOR_CLIENT_SECRET`, so the secret never shows in a
process listing; without them it uses fixed test credentials. On start it prints one JSON line
with its URL. The fault options (--error-rate, --latency-ms, ...) make every `/v1` call slow or
failing now and then, as the Synadia emulator's do; an outage is started through
`PUT /_emulator/faults`.

Press an action's button from a shell (inputs, entity, user and mode are optional; mode is one
of signed, bad-signature, stale, future, unsigned):

    curl -X POST http://127.0.0.1:N/_emulator/actions/idp_reconcile_workload/runs \\
        -d '{"entity": "demo.hello"}'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

from emulators import faults
from emulators.port.emulator import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_TOKEN_TTL,
    PortEmulator,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m emulators.port", description="Local emulator of Port.io's API"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="API port (0: any free port)")
    parser.add_argument(
        "--token-ttl",
        type=float,
        default=DEFAULT_TOKEN_TTL,
        help=f"seconds an access token lives ({DEFAULT_TOKEN_TTL})",
    )
    faults.add_arguments(parser)
    return parser


async def _main(args: argparse.Namespace) -> None:
    emulator = PortEmulator(
        host=args.host,
        port=args.port,
        client_id=os.environ.get("PORT_EMULATOR_CLIENT_ID", DEFAULT_CLIENT_ID),
        client_secret=os.environ.get("PORT_EMULATOR_CLIENT_SECRET", DEFAULT_CLIENT_SECRET),
        token_ttl=args.token_ttl,
    )
    emulator.set_faults(**faults.from_arguments(args))
    await emulator.start()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, emulator.server.request_stop)
    try:
        print(json.dumps(emulator.info()), flush=True)
        await emulator.server.wait()
    finally:
        await emulator.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        asyncio.run(_main(args))
    except OSError as exc:
        print(f"port emulator: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
