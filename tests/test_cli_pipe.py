"""`idpctl ... | head`: a reader that stops early must end the command quietly.

The pipe's read end is closed before idpctl writes, which is what `head -1` does once it has its
line, but without the race of `head` exiting before or after the write.
"""

import os
import signal
import subprocess

from support.cli import BIN, ROOT


def test_output_into_a_closed_pipe_ends_without_a_traceback() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        finished = subprocess.run(
            [str(BIN / "idpctl"), "schema", "Workload"],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert finished.stderr == ""
    # What a shell reports for a writer killed by SIGPIPE, so `set -o pipefail` scripts see the
    # same as with any other command.
    assert finished.returncode == 128 + signal.SIGPIPE


def test_output_into_an_open_pipe_is_unchanged() -> None:
    finished = subprocess.run(
        [str(BIN / "idpctl"), "schema", "Workload"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (finished.returncode, finished.stderr) == (0, "")
    assert finished.stdout.startswith("{\n")
