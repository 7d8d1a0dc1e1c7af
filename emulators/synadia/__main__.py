"""`python -m emulators.synadia --port N --state-dir DIR`: run the emulator until interrupted.

With `--platform FILE` it creates the accounts that file lists under synadia.local.accounts
(else one, `platform`). On start it prints one JSON line with the API and NATS URLs and the ids a
platform configuration needs, so a launcher (`idpctl dev`) can read them from stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from emulators import faults
from emulators.synadia.app import Faults
from emulators.synadia.controlplane import DEFAULT_ACCOUNTS, Behaviour
from emulators.synadia.emulator import DEFAULT_TOKEN, SynadiaEmulator, accounts_of
from idp.platform import LOCAL_ACCOUNTS_FIELD, PlatformError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m emulators.synadia",
        description="Local emulator of the Synadia Cloud control-plane API with a real nats-server",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="API port (0: any free port)")
    parser.add_argument("--nats-port", type=int, default=-1, help="NATS port (-1: any free port)")
    parser.add_argument("--state-dir", required=True, help="keys, users and nats-server config")
    parser.add_argument(
        "--platform",
        type=Path,
        help=f"platform file whose {LOCAL_ACCOUNTS_FIELD} lists the accounts to create",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("SYNADIA_EMULATOR_TOKEN", DEFAULT_TOKEN),
        help="bearer token the API accepts (default: $SYNADIA_EMULATOR_TOKEN or a fixed one)",
    )
    faults.add_arguments(parser)
    parser.add_argument("--retry-after", type=int, default=None, help="Retry-After on 429s")
    parser.add_argument("--revoke-on-rotate", action="store_true")
    parser.add_argument("--revoke-on-delete", action="store_true")
    parser.add_argument("--nats-server-bin", default=None)
    return parser


async def _main(args: argparse.Namespace) -> None:
    injected = Faults(**faults.from_arguments(args), retry_after=args.retry_after)
    behaviour = Behaviour(
        revoke_on_rotate=args.revoke_on_rotate,
        revoke_on_delete=args.revoke_on_delete,
    )
    emulator = SynadiaEmulator(
        args.state_dir,
        host=args.host,
        port=args.port,
        nats_port=args.nats_port,
        token=args.token,
        faults=injected,
        behaviour=behaviour,
        nats_server_bin=args.nats_server_bin,
        accounts=accounts_of(args.platform) if args.platform else DEFAULT_ACCOUNTS,
    )
    await emulator.start()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, emulator.request_stop)
    try:
        print(json.dumps(emulator.info()), flush=True)
        await emulator.wait()
    finally:
        await emulator.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        asyncio.run(_main(args))
    except (RuntimeError, FileNotFoundError, ValueError, PlatformError) as exc:
        print(f"synadia emulator: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
