"""The README's first ten minutes: what it tells a new user to type works as printed.

After `make demo` / `make test` a new shell has nothing of the project on PATH, so every command
in the README's shell blocks must be a system tool, a path into the virtualenv that exists, or
one of its commands with the README saying to activate it first.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from idp.loading import load, resource_files
from idp.models import Workload

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
EXAMPLES = ROOT / "examples"
VENV_BIN = ROOT / ".venv" / "bin"  # where the Makefile installs
ACTIVATE = "source .venv/bin/activate"
# What a fresh machine brings (the README asks for Python and git; make and curl come along).
SYSTEM_TOOLS = {"make", "export", "curl", "git", "docker", "date"}


def shell_blocks() -> list[tuple[int, list[str]]]:
    """(offset in the README, its commands) per ```sh block: continuations joined, comments and
    blank lines dropped."""
    blocks = []
    for match in re.finditer(r"```sh\n(.*?)```", README, re.S):
        lines = match[1].replace("\\\n", " ").splitlines()
        commands = [
            line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")
        ]
        blocks.append((match.start(), commands))
    return blocks


def test_every_command_names_a_tool_a_new_shell_finds() -> None:
    if not VENV_BIN.is_dir():
        pytest.skip(f"{VENV_BIN} does not exist: run `make install` first")
    activated_at = README.find(ACTIVATE)
    problems = []
    for offset, commands in shell_blocks():
        for command in commands:
            tool = command.split()[0]
            if tool in SYSTEM_TOOLS:
                continue
            if tool.startswith(".venv/bin/"):
                if not (ROOT / tool).is_file():
                    problems.append(f"{command!r}: {tool} does not exist")
                continue
            if not (VENV_BIN / tool).is_file():
                problems.append(f"{command!r}: no {tool} in {VENV_BIN}")
            elif not 0 <= activated_at < offset:
                problems.append(f"{command!r}: the README does not say `{ACTIVATE}` before it")
    assert not problems, "\n".join(problems)


def test_the_first_temporal_start_example_starts_a_workload_the_demo_did_not() -> None:
    """Starting an id that already runs returns that run and applies nothing."""
    [(_, block)] = [b for b in shell_blocks() if any("temporal workflow start" in c for c in b[1])]
    [start] = [c for c in block if c.startswith("temporal workflow start")]
    args = shlex.split(start)
    workflow_id = args[args.index("--workflow-id") + 1]
    input_file = ROOT / args[args.index("--input-file") + 1]

    applied_by_demo = {item.resource.workflow_id for item in load([EXAMPLES])}
    assert workflow_id not in applied_by_demo
    assert input_file.parent == EXAMPLES and input_file not in resource_files(EXAMPLES)
    workload = Workload.model_validate(json.loads(input_file.read_text())["workload"])
    assert workload.workflow_id == workflow_id
    # The rest of the block drives the workload it started.
    targets = {c.split("--workflow-id ")[1].split()[0] for c in block if "--workflow-id " in c}
    assert targets == {workflow_id}


def test_relative_links_point_at_files() -> None:
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    missing = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert not missing
