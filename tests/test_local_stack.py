"""The local stack's Synadia accounts and what `idpctl dev` tells a new user to run.

Against the real Synadia emulator and its nats-server; the platform file is the one
`starter.dev` writes, read back with the loader the worker uses.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from support.synadia import write_local_platform

from emulators.synadia import DEFAULT_TOKEN, SynadiaEmulator, accounts_of
from idp.errors import PermanentError
from idp.loading import load
from idp.natsusers import Directory
from idp.platform import PlatformError, SynadiaConfig, load_platform
from idp.synadia import SynadiaClient
from starter import dev

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
async def emulator(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SynadiaEmulator]:
    async with SynadiaEmulator.running(tmp_path_factory.mktemp("synadia")) as emu:
        yield emu


def local_synadia(emu: SynadiaEmulator, platform_file: Path) -> SynadiaConfig:
    synadia = load_platform(platform_file).synadia
    assert synadia is not None
    return synadia.model_copy(update={"url": emu.api_url, "token_env": "UNUSED"})


async def test_unknown_account_on_the_local_stack_says_how_to_add_it(
    emulator: SynadiaEmulator, tmp_path: Path
) -> None:
    platform_file = write_local_platform(
        tmp_path / "platform.yaml", "http://x", [{"name": "platform"}]
    )
    config = local_synadia(emulator, platform_file)
    async with SynadiaClient(emulator.api_url, DEFAULT_TOKEN) as client:
        assert (await Directory(config).account(client, "platform")).name == "platform"
        with pytest.raises(PermanentError) as raised:
            await Directory(config).account(client, "quoting")
    assert raised.value.reason == "UnknownAccount"
    message = str(raised.value)
    assert "'quoting' does not exist" in message
    assert "add `- name: quoting` under synadia.local.accounts" in message
    assert ".idp/platform.yaml" in message and "restart `idpctl dev`" in message


async def test_unknown_account_in_synadia_cloud_says_to_create_it(
    emulator: SynadiaEmulator,
) -> None:
    config = SynadiaConfig(url=emulator.api_url, system="emulated-system", default_account="x")
    async with SynadiaClient(emulator.api_url, DEFAULT_TOKEN) as client:
        with pytest.raises(PermanentError, match=r"create it or correct spec\.nats\.account"):
            await Directory(config).account(client, "quoting")


def test_default_account_must_be_one_the_emulator_creates(tmp_path: Path) -> None:
    platform_file = write_local_platform(
        tmp_path / "platform.yaml", "http://x", [{"name": "quoting"}], default_account="platform"
    )
    with pytest.raises(PlatformError, match="defaultAccount 'platform' must be one of"):
        load_platform(platform_file)


def stack(root: Path) -> dev.Stack:
    return dev.Stack(root=root, host="127.0.0.1", port=17999, ui_port=18999, synadia_port=19999)


def test_dev_keeps_the_accounts_a_developer_adds_to_its_platform_file(tmp_path: Path) -> None:
    local = stack(tmp_path)
    dev.write_platform(local)
    assert "synadia.local is kept" in local.platform_file.read_text()
    assert [a.name for a in accounts_of(local.platform_file)] == ["platform"]

    document = yaml.safe_load(local.platform_file.read_text())
    document["synadia"]["local"]["accounts"].append(
        {"name": "quoting", "signingKeyGroups": ["Default", "ci"]}
    )
    local.platform_file.write_text(yaml.safe_dump(document))
    local.synadia_port = 19998  # a restart may take other ports; the accounts stay
    dev.write_platform(local)

    synadia = load_platform(local.platform_file).synadia
    assert synadia is not None and synadia.url.endswith(":19998")
    assert [(a.name, a.sk_groups) for a in accounts_of(local.platform_file)] == [
        ("platform", ("Default",)),
        ("quoting", ("Default", "ci")),
    ]


def test_dev_names_the_field_of_a_broken_account_list(tmp_path: Path) -> None:
    local = stack(tmp_path)
    dev.write_platform(local)
    document = yaml.safe_load(local.platform_file.read_text())
    document["synadia"]["local"]["accounts"] = [{"name": "platform", "signingKeyGroups": []}]
    local.platform_file.write_text(yaml.safe_dump(document))
    field = r"platform\.yaml: synadia\.local\.accounts\[0\]\.signingKeyGroups: "
    with pytest.raises(SystemExit, match=field):
        dev.write_platform(local)


def test_the_commands_dev_prints_run_in_a_new_shell(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new shell has no .venv/bin on PATH: the printed block must put idpctl and temporal
    there itself, and start where examples/ is."""
    monkeypatch.chdir(PROJECT_ROOT)
    local = stack(tmp_path)
    local.nats_accounts = ["platform", "quoting"]
    dev._print_summary(local)
    summary, block_text = capsys.readouterr().out.split("In another shell:\n", 1)
    assert "NATS accounts     platform, quoting  (add one under synadia.local.accounts" in summary
    block = block_text.splitlines()
    lines = [line.strip() for line in block]
    assert lines[0] == f"cd {PROJECT_ROOT}"
    [path_line] = [line for line in lines if line.startswith("export PATH=")]
    path = re.fullmatch(r'export PATH="(.+):\$PATH"', path_line)
    assert path is not None
    commands = {line.split()[0] for line in lines if line and not line.startswith(("#", "export"))}
    assert commands == {"cd", "idpctl", "temporal", "curl"}
    for command in ("idpctl", "temporal"):
        found = shutil.which(command, path=os.pathsep.join([path[1], "/usr/bin:/bin"]))
        assert found is not None, f"{command} is not in {path[1]}"
    assert "idpctl apply -f examples/ --wait" in lines
    # The workload it shows is one that apply (or the demo) starts.
    assert "temporal workflow show -w workload/shop/orders   # decoded" in lines
    applied = {item.resource.workflow_id for item in load([PROJECT_ROOT / "examples"])}
    assert "workload/shop/orders" in applied
