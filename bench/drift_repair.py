"""Drift repair under the fleet observer: every kind of drift, made by hand, and how long until
the workload has repaired it and sleeps on the outside again.

    .venv/bin/python bench/drift_repair.py [--drift 30s] [--workloads 20]

Starts `idpctl dev`'s stack (bench/steady_state.py's) with `reconcile.fleetObserver` on, applies
the workloads (registry in moto, manifests and sealed credentials in git, a NATS user in the
Synadia emulator; the last few deliver their credentials through Secrets Manager instead) and
waits until the observer watches them all. Then it makes one drift of each kind at once, each on a
workload of its own, the way a person would (boto3 against moto, a commit pushed to the state
store, Synadia's API), and polls until that workload has run a pass since (its history grew; a
watched workload has no timer of its own, so that pass came from a sweep), is watched again, and
the capability's fleet read finds what the workload now records: the moment the repair is visible
outside. Some repairs make something new (a recreated user, a credential issued again), so the
recorded digest is the one after the repair, not the one before. Prints one row per kind, with
the latency against the drift interval. Api, whose outside is the aggregator workflows, is left
out: tests/test_api_fleet.py covers each of its kinds.
"""

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import running
from steady_state import all_watched, apply_all, workload
from temporalio.client import Client

from activities.capabilities import settings_of
from idp import fleet
from idp.capability import Actions, Fingerprint, by_name
from idp.durations import format_duration, parse_duration
from idp.models import Workload
from idp.platform import Platform, load_platform
from idp.synadia import SynadiaClient
from starter import dev, temporal
from workflows import search_attributes as sa

POLL_SECONDS = 0.5


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


class Person:
    """Changes what the reconciler made, by hand."""

    def __init__(self, stack: dev.Stack, root: Path, platform: Platform) -> None:
        aws = {"region_name": "eu-west-1", "endpoint_url": stack.aws_url}
        self.ecr = boto3.client("ecr", **aws)
        self.iam = boto3.client("iam", **aws)
        self.secrets = boto3.client("secretsmanager", **aws)
        self.synadia_url = platform.synadia.url if platform.synadia else ""
        self.synadia_token = stack.synadia_token or ""
        self.clone = root / "person"
        git("clone", "-q", str(stack.state_store), str(self.clone), cwd=root)

    def synadia(self) -> SynadiaClient:
        return SynadiaClient(self.synadia_url, self.synadia_token)

    def commit(self, name: str, file: str, change: Callable[[Path], None]) -> None:
        git("pull", "-q", "--rebase", "origin", "main", cwd=self.clone)
        (found,) = self.clone.glob(f"**/{name}/{file}")
        change(found)
        git("add", "-A", cwd=self.clone)
        git("commit", "-qm", f"a person changes {name}", cwd=self.clone)
        git("push", "-q", "origin", "HEAD:main", cwd=self.clone)

    def delete_role(self, role: str) -> None:
        for policy in self.iam.list_role_policies(RoleName=role)["PolicyNames"]:
            self.iam.delete_role_policy(RoleName=role, PolicyName=policy)
        for policy in self.iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
            self.iam.detach_role_policy(RoleName=role, PolicyArn=policy["PolicyArn"])
        self.iam.delete_role(RoleName=role)

    def widen_trust(self, role: str) -> None:
        trust = self.iam.get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"]
        trust["Statement"][0]["Principal"] = {"AWS": "arn:aws:iam::999999999999:root"}
        self.iam.update_assume_role_policy(RoleName=role, PolicyDocument=json.dumps(trust))


# The workloads, from the last, whose credentials go through Secrets Manager.
EXTERNAL = 2


def bench_workload(index: int, workloads: int) -> Workload:
    item = workload(index).model_dump(mode="json", by_alias=True, exclude_none=True)
    external = index >= workloads - EXTERNAL
    item["spec"]["nats"] = {"credentials": {"delivery": "external-secret"}} if external else {}
    return Workload.model_validate(item)


Change = Callable[[Workload, dict[str, Fingerprint]], Awaitable[None] | None]


def drifts(person: Person) -> dict[str, tuple[str, Change, bool]]:
    """Kind → (capability, change(workload, its recorded fingerprints), on an external-secret
    workload)."""
    ecr, iam, secrets = person.ecr, person.iam, person.secrets

    def arn(repository: str) -> str:
        found = ecr.describe_repositories(repositoryNames=[repository])
        return found["repositories"][0]["repositoryArn"]

    def registry(change: Callable[[str, str], object]) -> Change:
        def made(w: Workload, recorded: dict[str, Fingerprint]) -> None:
            repository, role = recorded["Registry"].key.split("|")[:2]
            change(repository, role)

        return made

    def manifest(change: Callable[[Path], None]) -> Change:
        return lambda w, _: person.commit(w.metadata.name, "serviceaccount.yaml", change)

    def sealed(change: Callable[[Path], None]) -> Change:
        return lambda w, _: person.commit(w.metadata.name, "sealedsecret-nats.yaml", change)

    def nats(change: Callable[[SynadiaClient, str], Awaitable[object]]) -> Change:
        async def made(w: Workload, recorded: dict[str, Fingerprint]) -> None:
            user_id = recorded["Nats"].key.split("/")[1]
            async with person.synadia() as client:
                await change(client, user_id)

        return made

    def external(change: Callable[[str], object]) -> Change:
        def made(w: Workload, _: dict[str, Fingerprint]) -> None:
            change(f"idp/{w.metadata.system}/{w.metadata.name}/nats")

        return made

    def edit(path: Path) -> None:
        path.write_text(path.read_text() + "# hand\n")

    return {
        "manifest edited": ("Manifests", manifest(edit), False),
        "manifest deleted": ("Manifests", manifest(Path.unlink), False),
        "repository deleted": (
            "Registry",
            registry(lambda r, o: ecr.delete_repository(repositoryName=r, force=True)),
            False,
        ),
        "repository tag removed": (
            "Registry",
            registry(lambda r, o: ecr.untag_resource(resourceArn=arn(r), tagKeys=["idp.workload"])),
            False,
        ),
        "lifecycle policy deleted": (
            "Registry",
            registry(lambda r, o: ecr.delete_lifecycle_policy(repositoryName=r)),
            False,
        ),
        "tag mutability flipped": (
            "Registry",
            registry(
                lambda r, o: ecr.put_image_tag_mutability(
                    repositoryName=r, imageTagMutability="MUTABLE"
                )
            ),
            False,
        ),
        "scan on push off": (
            "Registry",
            registry(
                lambda r, o: ecr.put_image_scanning_configuration(
                    repositoryName=r, imageScanningConfiguration={"scanOnPush": False}
                )
            ),
            False,
        ),
        "role deleted": ("Registry", registry(lambda r, o: person.delete_role(o)), False),
        "trust policy widened": ("Registry", registry(lambda r, o: person.widen_trust(o)), False),
        "inline policy deleted": (
            "Registry",
            registry(lambda r, o: iam.delete_role_policy(RoleName=o, PolicyName="idp-registry")),
            False,
        ),
        "role tag removed": (
            "Registry",
            registry(lambda r, o: iam.untag_role(RoleName=o, TagKeys=["idp.system"])),
            False,
        ),
        "NATS user deleted": ("Nats", nats(lambda c, u: c.delete_nats_user(u)), False),
        "NATS user renamed": (
            "Nats",
            nats(lambda c, u: c.update_nats_user(u, name="renamed-by-hand")),
            False,
        ),
        "NATS JWT lifetime changed": (
            "Nats",
            nats(lambda c, u: c.update_nats_user(u, jwt_expires_in_secs=3600)),
            False,
        ),
        "NATS key rotated": ("Nats", nats(lambda c, u: c.rotate_nats_user(u)), False),
        "sealed secret edited": ("Credentials", sealed(edit), False),
        "sealed secret deleted": ("Credentials", sealed(Path.unlink), False),
        "Secrets Manager value put": (
            "Credentials",
            external(lambda name: secrets.put_secret_value(SecretId=name, SecretString="{}")),
            True,
        ),
        "Secrets Manager secret deleted": (
            "Credentials",
            external(
                lambda name: secrets.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
            ),
            True,
        ),
    }


async def repaired(
    client: Client,
    actions: Actions[Any, Any],
    item: Workload,
    capability: str,
    since: tuple[float, int],
    timeout: float,
) -> float:
    """Seconds from the change until the workload has run a pass since (its history grew past
    `since`'s length), is watched, and the capability's fleet read finds what it recorded."""
    started, length = since
    handle = client.get_workflow_handle(item.workflow_id)
    while True:
        description = await handle.describe()
        recorded = fleet.parse(description.typed_search_attributes.get(sa.FLEET) or [])
        mine = recorded.get(capability)
        if description.history_length > length and mine is not None:
            if (await actions.fleet_observe([mine.key])).get(mine.key) == mine.digest:
                return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise SystemExit(f"error: {item.workflow_id} was not repaired within {timeout:.0f} s")
        await asyncio.sleep(POLL_SECONDS)


def worker_actions(platform: Platform, cache: Path) -> dict[str, Actions[Any, Any]]:
    capabilities = by_name()
    return {
        name: capabilities[name].actions(platform, settings_of(capabilities[name], platform), cache)
        for name in ("Registry", "Manifests", "Nats", "Credentials")
    }


async def main(workloads: int, drift: timedelta) -> None:
    with tempfile.TemporaryDirectory(prefix="idp-drift-") as tmp:
        stack = dev.Stack.on_free_ports(Path(tmp))
        stack.drift_interval = format_duration(drift)
        stack.fleet_observer = True
        try:
            await dev.start(stack)
            client = await temporal.connect(temporal.TemporalSettings(address=stack.address))
            items = [bench_workload(i, workloads) for i in range(workloads)]
            await apply_all(client, items)
            await all_watched(client, workloads, drift)
            platform = load_platform(stack.platform_file)
            # The worker's local credentials for moto and Synadia, for this process's clients.
            os.environ |= {k: v for k, v in stack.env().items() if k.startswith("AWS_")}
            os.environ[dev.SYNADIA_TOKEN_ENV] = stack.synadia_token or ""
            actions = worker_actions(platform, Path(tmp) / "bench-cache")
            person = Person(stack, Path(tmp), platform)
            kinds = drifts(person)
            sealed = iter(items[: workloads - EXTERNAL])
            external = iter(items[workloads - EXTERNAL :])
            waits = []
            for kind, (capability, change, on_external) in kinds.items():
                item = next(external if on_external else sealed, None)
                if item is None:
                    raise SystemExit(f"error: --workloads {workloads} is too few for every kind")
                description = await client.get_workflow_handle(item.workflow_id).describe()
                recorded = fleet.parse(description.typed_search_attributes.get(sa.FLEET) or [])
                made = change(item, recorded)
                if made is not None:
                    await made
                since = (time.monotonic(), description.history_length)
                timeout = 3 * drift.total_seconds() + 60
                wait = repaired(client, actions[capability], item, capability, since, timeout)
                waits.append((kind, capability, wait))
            latencies = await asyncio.gather(*(wait for _, _, wait in waits))
        finally:
            stack.stop()
    interval = drift.total_seconds()
    print(f"\ndrift interval {format_duration(drift)}; {workloads} watched workloads; "
          "each kind made by hand on its own workload, all at once")  # fmt: skip
    header = ("kind of drift", "capability", "repaired after (s)", "of interval")
    print(f"{header[0]:<32} {header[1]:<11} {header[2]:>19} {header[3]:>12}")
    for (kind, capability, _), seconds in zip(waits, latencies, strict=True):
        print(f"{kind:<32} {capability:<11} {seconds:>19.1f} {seconds / interval:>12.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", type=int, default=24)
    parser.add_argument("--drift", type=parse_duration, default=timedelta(seconds=30))
    args = parser.parse_args()
    running.run(main(args.workloads, args.drift))
