"""Drift repair under the fleet observer: every kind of drift, made by hand, and how long until
the outside is back as the workload recorded it.

    .venv/bin/python bench/drift_repair.py [--drift 30s] [--workloads 20]

Starts `idpctl dev`'s stack (bench/steady_state.py's) with `reconcile.fleetObserver` on, applies
the workloads (registry in moto, manifests in git) and waits until the observer watches them all.
Then it makes one drift of each kind at once, each on a workload of its own, the way a person
would (boto3 against moto, a commit pushed to the state store), and polls each capability's own
fleet read for that workload until its digest is again the one the workload recorded: the moment
the repair is visible outside. A watched workload has no timer of its own, so every repair here
went through a sweep. Prints one row per kind, with the latency against the drift interval.
"""

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
from steady_state import all_watched, apply_all, free_port, workload

from activities.capabilities import settings_of
from idp import fleet
from idp.capability import Actions, by_name
from idp.durations import format_duration, parse_duration
from idp.platform import Platform, load_platform
from starter import dev, temporal
from workflows import search_attributes as sa

POLL_SECONDS = 0.5


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


class Person:
    """Changes what the reconciler made, by hand."""

    def __init__(self, stack: dev.Stack, root: Path) -> None:
        self.ecr = boto3.client("ecr", region_name="eu-west-1", endpoint_url=stack.aws_url)
        self.iam = boto3.client("iam", region_name="eu-west-1", endpoint_url=stack.aws_url)
        self.clone = root / "person"
        git("clone", "-q", str(stack.state_store), str(self.clone), cwd=root)

    def commit(self, name: str, change: Callable[[Path], None]) -> None:
        git("pull", "-q", "--rebase", "origin", "main", cwd=self.clone)
        (manifest,) = self.clone.glob(f"**/{name}/serviceaccount.yaml")
        change(manifest)
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


def drifts(person: Person) -> dict[str, tuple[str, Callable[[str, str, str], None]]]:
    """Kind → (capability, change(workload name, repository, role))."""
    ecr, iam = person.ecr, person.iam

    def arn(repository: str) -> str:
        found = ecr.describe_repositories(repositoryNames=[repository])
        return found["repositories"][0]["repositoryArn"]

    return {
        "manifest edited": (
            "Manifests",
            lambda n, r, o: person.commit(n, lambda p: p.write_text(p.read_text() + "# hand\n")),
        ),
        "manifest deleted": ("Manifests", lambda n, r, o: person.commit(n, Path.unlink)),
        "repository deleted": (
            "Registry",
            lambda n, r, o: ecr.delete_repository(repositoryName=r, force=True),
        ),
        "repository tag removed": (
            "Registry",
            lambda n, r, o: ecr.untag_resource(resourceArn=arn(r), tagKeys=["idp.workload"]),
        ),
        "lifecycle policy deleted": (
            "Registry",
            lambda n, r, o: ecr.delete_lifecycle_policy(repositoryName=r),
        ),
        "tag mutability flipped": (
            "Registry",
            lambda n, r, o: ecr.put_image_tag_mutability(
                repositoryName=r, imageTagMutability="MUTABLE"
            ),
        ),
        "scan on push off": (
            "Registry",
            lambda n, r, o: ecr.put_image_scanning_configuration(
                repositoryName=r, imageScanningConfiguration={"scanOnPush": False}
            ),
        ),
        "role deleted": ("Registry", lambda n, r, o: person.delete_role(o)),
        "trust policy widened": ("Registry", lambda n, r, o: person.widen_trust(o)),
        "inline policy deleted": (
            "Registry",
            lambda n, r, o: iam.delete_role_policy(RoleName=o, PolicyName="idp-registry"),
        ),
        "role tag removed": (
            "Registry",
            lambda n, r, o: iam.untag_role(RoleName=o, TagKeys=["idp.system"]),
        ),
    }


async def repaired(
    actions: Actions[Any, Any], key: str, digest: str, since: float, timeout: float
) -> float:
    """Seconds from `since` (the change) until the capability's fleet read finds `key` at
    `digest` again."""
    while (await actions.fleet_observe([key])).get(key) != digest:
        if time.monotonic() - since > timeout:
            raise SystemExit(f"error: {key} was not repaired within {timeout:.0f} s")
        await asyncio.sleep(POLL_SECONDS)
    return time.monotonic() - since


def worker_actions(platform: Platform, cache: Path) -> dict[str, Actions[Any, Any]]:
    capabilities = by_name()
    return {
        name: capabilities[name].actions(platform, settings_of(capabilities[name], platform), cache)
        for name in ("Registry", "Manifests")
    }


async def main(workloads: int, drift: timedelta) -> None:
    with tempfile.TemporaryDirectory(prefix="idp-drift-") as tmp:
        stack = dev.Stack(Path(tmp), "127.0.0.1", free_port(), free_port())
        stack.drift_interval = format_duration(drift)
        stack.fleet_observer = True
        try:
            await dev.start(stack)
            client = await temporal.connect(temporal.TemporalSettings(address=stack.address))
            items = [workload(i) for i in range(workloads)]
            await apply_all(client, items)
            await all_watched(client, workloads, drift)
            platform = load_platform(stack.platform_file)
            # The worker's local credentials for moto, for this process's own clients.
            os.environ |= {k: v for k, v in stack.env().items() if k.startswith("AWS_")}
            actions = worker_actions(platform, Path(tmp) / "bench-cache")
            person = Person(stack, Path(tmp))
            kinds = drifts(person)
            if len(kinds) > workloads:
                raise SystemExit(f"error: {len(kinds)} kinds of drift need as many workloads")
            waits = []
            for (kind, (capability, change)), item in zip(kinds.items(), items, strict=False):
                description = await client.get_workflow_handle(item.workflow_id).describe()
                recorded = fleet.parse(description.typed_search_attributes.get(sa.FLEET) or [])
                key, digest = recorded[capability].key, recorded[capability].digest
                repository, role = recorded["Registry"].key.split("|")[:2]
                change(item.metadata.name, repository, role)
                since, timeout = time.monotonic(), 3 * drift.total_seconds() + 60
                wait = repaired(actions[capability], key, digest, since, timeout)
                waits.append((kind, capability, wait))
            latencies = await asyncio.gather(*(wait for _, _, wait in waits))
        finally:
            stack.stop()
    interval = drift.total_seconds()
    print(f"\ndrift interval {format_duration(drift)}; {workloads} watched workloads; "
          "each kind made by hand on its own workload, all at once")  # fmt: skip
    header = ("kind of drift", "capability", "repaired after (s)", "of interval")
    print(f"{header[0]:<28} {header[1]:<10} {header[2]:>19} {header[3]:>12}")
    for (kind, capability, _), seconds in zip(waits, latencies, strict=True):
        print(f"{kind:<28} {capability:<10} {seconds:>19.1f} {seconds / interval:>12.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", type=int, default=20)
    parser.add_argument("--drift", type=parse_duration, default=timedelta(seconds=30))
    args = parser.parse_args()
    asyncio.run(main(args.workloads, args.drift))
