"""No churn: writes made by 100 reconcile passes with nothing to change (target: 0).

    .venv/bin/python bench/no_churn.py [--passes 100]

Two workloads, one delivering through a SealedSecret in git, one through Secrets Manager and an
ExternalSecret, run on the time-skipping test server with drift checks every 10 minutes against
the Synadia emulator (real nats-server), moto's server and a bare git repository. After the first
pass has issued and delivered, it lets `--passes` more drift checks happen and counts what they
wrote: commits, Secrets Manager versions, credential issuances.
"""

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import boto3
import running
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from moto.server import ThreadedMotoServer
from temporalio.testing import WorkflowEnvironment

from emulators.synadia import DEFAULT_TOKEN, SynadiaEmulator
from idp.models import Workload
from idp.platform import load_platform
from idp.sealing import controller_certificate
from starter.operations import apply_workload
from starter.temporal import data_converter
from worker import build_worker
from workflows.messages import WaitReadyRequest
from workflows.workload import WorkloadWorkflow

BIN = Path(sys.executable).parent
REGION = "eu-west-1"
ACCOUNT = "123456789012"


def sealing_certificate(directory: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    cert = controller_certificate(key, timedelta(days=30))
    path = directory / "cert.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def workload(name: str, delivery: str) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": name, "system": "churn"},
            "spec": {
                "owner": "bench",
                "destination": "dev",
                "namespace": "bench",
                "registry": {"enabled": False},
                "nats": {
                    "permissions": {"publish": {"allow": ["bench.>"]}},
                    "credentials": {"ttl": "7d", "delivery": delivery},
                },
            },
        }
    )


def bare_repo(path: Path) -> Path:
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True)
    return path


def commits(repo: Path) -> int:
    out = subprocess.run(
        ["git", "rev-list", "--count", "main"], cwd=repo, capture_output=True, text=True
    )
    return int(out.stdout.strip() or 0)


def secret_versions(aws_url: str, name: str) -> int:
    sm = boto3.client("secretsmanager", region_name=REGION, endpoint_url=aws_url)
    return len(sm.list_secret_version_ids(SecretId=name)["Versions"])


async def main(passes: int) -> None:
    os.environ |= {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    os.environ["IDP_BENCH_SYNADIA_TOKEN"] = DEFAULT_TOKEN
    with tempfile.TemporaryDirectory(prefix="idp-churn-") as tmp:
        root = Path(tmp)
        repo = bare_repo(root / "state.git")
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        host, port = moto.get_host_and_port()
        aws_url = f"http://{host}:{port}"
        try:
            async with SynadiaEmulator.running(root / "synadia") as synadia:
                platform_file = root / "platform.yaml"
                platform_file.write_text(
                    PLATFORM.format(
                        repo=repo,
                        cert=sealing_certificate(root),
                        aws=aws_url,
                        synadia=synadia.api_url,
                        system=synadia.system_name,
                        account=synadia.account_name,
                    )
                )
                rows = await run(load_platform(platform_file), synadia, aws_url, repo, passes)
        finally:
            moto.stop()
    print(f"\n{'delivery':<18} {'passes':>7} {'commits':>8} {'SM versions':>12} {'issuances':>10}")
    for row in rows:
        print(f"{row[0]:<18} {row[1]:>7} {row[2]:>8} {row[3]:>12} {row[4]:>10}")


async def run(platform, synadia: SynadiaEmulator, aws_url: str, repo: Path, passes: int):
    items = [workload("sealed", "sealed-secret"), workload("external", "external-secret")]
    async with await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN / "temporal-test-server"),
        data_converter=data_converter(None),
    ) as env:
        async with build_worker(env.client, platform, "idp", repo.parent / "cache"):
            for item in items:
                await apply_workload(env.client, "idp", item)
                await env.client.get_workflow_handle(item.workflow_id).execute_update(
                    WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=1, timeout_seconds=60)
                )
            statuses = [
                await env.client.get_workflow_handle(i.workflow_id).query(WorkloadWorkflow.status)
                for i in items
            ]
            users = [s.outputs["Nats"]["userId"] for s in statuses]
            calls_before = sum(synadia.counters()["calls"].values())
            before = (
                commits(repo),
                secret_versions(aws_url, "idp/churn/external/nats"),
                [synadia.creds_issued(u) for u in users],
            )
            for _ in range(passes):
                await env.sleep(timedelta(minutes=10))
            after = (
                commits(repo),
                secret_versions(aws_url, "idp/churn/external/nats"),
                [synadia.creds_issued(u) for u in users],
            )
            calls = sum(synadia.counters()["calls"].values()) - calls_before
    print(f"Synadia API calls per steady-state pass and workload: {calls / passes / len(items):g}")
    # Both workloads share the repository, so commits are reported once, on the first row.
    return [
        ("sealed-secret", passes, after[0] - before[0], "-", after[2][0] - before[2][0]),
        ("external-secret", passes, "(shared)", after[1] - before[1], after[2][1] - before[2][1]),
    ]


PLATFORM = """
apiVersion: idp.dev/v1alpha1
kind: Platform
destinations:
  - name: dev
    stateStore: {{url: "{repo}"}}
    cluster: {{oidcProviderArn: "arn:aws:iam::123456789012:oidc-provider/oidc.bench/id/X"}}
    sealing: {{file: "{cert}"}}
    secretStore: {{name: aws-secrets-manager, forceDelete: true}}
reconcile: {{driftInterval: 10m, searchAttributes: false}}
aws: {{region: eu-west-1, accountId: "123456789012", endpointUrl: "{aws}"}}
synadia:
  url: "{synadia}"
  tokenEnv: IDP_BENCH_SYNADIA_TOKEN
  system: "{system}"
  defaultAccount: "{account}"
"""


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=100)
    running.run(main(parser.parse_args().passes))
