"""A capability from another installed package, end to end: tests/plugins/idp-bucket.

The plugin is installed for real (pip, into a directory of its own) and reaches the processes
that should see it through PYTHONPATH only, so nothing in the project names it and every other
test keeps the built-in capabilities alone. Workers and `idpctl` run as subprocesses, with or
without it, against the session's Temporal dev server, a moto server standing in for S3, a bare
git repository as the state store and the Port emulator.

- a. every part picks it up: schemas, the loader's errors, the platform file, `idpctl port
  install`, the worker (observe, the plan in the workflow, apply only when it is not empty),
  `describe`, the Port entity and teardown;
- b. installed under a running workflow: the history recorded without it replays, and the next
  pass takes it up, as the settings it records offer it;
- c. uninstalled: from a run whose history holds its commands, a worker without it is stuck
  (nondeterminism) until it is back; once it is no longer offered and the run has continued as
  new, a worker without it reports it as a condition and runs on.

This test process does not have the plugin: it reads statuses as plain JSON (a workload with a
`bucket` section is not a Workload here), exactly as a tool without the plugin would.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import secrets
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pytest
import yaml
from botocore.exceptions import ClientError
from support.cli import ROOT, Result, clean_env, run
from support.moto import moto_server
from support.processes import WorkerProcess
from support.stack import bare_repo, start_dev_server, task_queue, workflow_exists
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from emulators.port import PortEmulator
from workflows.engine import MISSING
from workflows.portview import WORKLOAD_BLUEPRINT, entity_identifier
from workflows.steps import BASELINE

PLUGIN = ROOT / "tests" / "plugins" / "idp-bucket"
BIN = Path(sys.executable).parent
REGION = "eu-west-1"
PREFIX = "acme"
POLL = 0.1
TIMEOUT = 60.0
# The server suggests continue-as-new once a run has this many events (test c only).
SUGGEST_AFTER_EVENTS = 40

T = TypeVar("T")


# ---- the plugin, installed where only the processes given its path see it ---------------------


def _builds_offline() -> bool:
    """Whether this venv can build the plugin's wheel by itself: setuptools before 70.1 needs the
    separate `wheel` package for that."""
    setuptools = importlib.metadata.version("setuptools")
    version = tuple(int(part) for part in setuptools.split(".")[:2])
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install` of tests/plugins/idp-bucket into a directory of its own (a copy of the
    source is built, so the build leaves nothing in the work tree)."""
    root = tmp_path_factory.mktemp("plugin")
    source, site = root / "idp-bucket", root / "site"
    shutil.copytree(PLUGIN, source)
    # Offline with the venv's own setuptools when it can build wheels; otherwise pip fetches
    # the build backend (setuptools and wheel) from the configured index, as any
    # `pip install ./idp-bucket` would.
    offline = ["--no-index", "--no-build-isolation"] if _builds_offline() else []
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *offline]
    subprocess.run([*command, "--target", str(site), str(source)], check=True)
    assert (site / "idp_bucket-0.1.0.dist-info" / "entry_points.txt").is_file()
    return site


def process_env(plugin_site: Path | None, **extra: str) -> dict[str, str]:
    """A subprocess's environment: with the plugin on its path, or certainly without it."""
    env = {k: v for k, v in clean_env(**extra).items() if k != "PYTHONPATH"}
    return env | {"PYTHONPATH": str(plugin_site)} if plugin_site else env


# ---- the module's parts ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aws_url() -> Iterator[str]:
    with moto_server() as url:  # also puts fake AWS keys in the environment workers inherit
        yield url


@pytest.fixture(scope="module")
def s3(aws_url: str) -> Any:
    return boto3.client("s3", endpoint_url=aws_url, region_name=REGION)


@pytest.fixture(scope="module")
async def port() -> AsyncIterator[PortEmulator]:
    async with PortEmulator.running(client_secret=secrets.token_urlsafe(24)) as emulator:
        yield emulator


class Worker(WorkerProcess):
    """`idp-worker`, the installed console script, as a process: with the plugin installed or
    not, and with a platform file that offers buckets (its `buckets` section) or not."""

    def __init__(self, world: World, *, plugin: bool, offers: bool, log: str) -> None:
        platform = world.platform_file(buckets=offers)
        super().__init__(
            world.address, platform, world.queue, world.root / "cache", world.root / log
        )
        self.command = [str(BIN / "idp-worker"), *self.command[3:]]  # not `python -m worker`
        self.env = world.env(plugin, platform)


@dataclass
class World:
    """One test's task queue, system, state store and platform files on the module's parts."""

    root: Path
    client: Client
    address: str
    queue: str
    plugin_site: Path
    aws_url: str
    port: PortEmulator
    with_port: bool = False

    @property
    def system(self) -> str:
        return self.queue  # workflow ids and bucket names are global: one system per test

    def workflow_id(self, name: str) -> str:
        return f"workload/{self.system}/{name}"

    def bucket(self, name: str) -> str:
        return f"{PREFIX}-{self.system}-{name}"

    def platform_file(self, *, buckets: bool) -> Path:
        """The platform file, with the plugin's `buckets` section or without it (a platform
        file with it is refused where the plugin is not installed)."""
        platform: dict[str, Any] = {
            "apiVersion": "idp.dev/v1alpha1",
            "kind": "Platform",
            "destinations": [{"name": "dev", "stateStore": {"url": str(self.root / "state.git")}}],
            "reconcile": {"driftInterval": "10m", "minBackoff": "1s", "maxBackoff": "5s"},
            "temporal": {"address": self.address, "taskQueue": self.queue},
        }
        if self.with_port:
            platform["port"] = {"url": self.port.url}
        if buckets:
            platform["buckets"] = {"prefix": PREFIX, "region": REGION, "endpointUrl": self.aws_url}
        path = self.root / ("platform-buckets.yaml" if buckets else "platform.yaml")
        path.write_text(yaml.safe_dump(platform, sort_keys=False))
        return path

    def env(self, plugin: bool, platform: Path | None = None) -> dict[str, str]:
        """A process's environment; its platform file offers buckets when it has the plugin,
        unless `platform` says otherwise."""
        return process_env(
            self.plugin_site if plugin else None,
            TEMPORAL_ADDRESS=self.address,
            TEMPORAL_TASK_QUEUE=self.queue,
            IDP_PLATFORM_CONFIG=str(platform or self.platform_file(buckets=plugin)),
            PORT_CLIENT_ID=self.port.client_id,
            PORT_CLIENT_SECRET=self.port.client_secret,
        )

    async def idpctl(self, *args: str, plugin: bool, platform: Path | None = None) -> Result:
        return await run(str(BIN / "idpctl"), *args, env=self.env(plugin, platform))

    def workload_file(self, name: str, **spec: Any) -> Path:
        document = {
            "apiVersion": "idp.dev/v1alpha1",
            "kind": "Workload",
            "metadata": {"name": name, "system": self.system},
            "spec": {"owner": "team-a", "destination": "dev", "namespace": name, **spec},
        }
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    def worker(self, *, plugin: bool, offers: bool | None = None) -> Worker:
        """A worker; its platform file offers buckets exactly when it has the plugin, unless
        `offers` says otherwise."""
        offers = plugin if offers is None else offers
        log = f"worker-{'plugin' if plugin else 'plain'}-{'offers' if offers else 'not'}.log"
        return Worker(self, plugin=plugin, offers=offers, log=log)


def make_world(
    env: WorkflowEnvironment, root: Path, plugin_site: Path, aws_url: str, port: PortEmulator
) -> World:
    bare_repo(root / "state.git")
    client = env.client
    address = client.service_client.config.target_host
    return World(root, client, address, task_queue(), plugin_site, aws_url, port)


@pytest.fixture
def world(
    dev_env: WorkflowEnvironment,
    tmp_path: Path,
    plugin_site: Path,
    aws_url: str,
    port: PortEmulator,
) -> World:
    return make_world(dev_env, tmp_path, plugin_site, aws_url, port)


@pytest.fixture
async def workers() -> AsyncIterator[list[Worker]]:
    """Workers a test starts; stopped at its end whatever happened."""
    started: list[Worker] = []
    yield started
    for worker in started:
        await worker.stop()


async def start(workers: list[Worker], worker: Worker) -> Worker:
    workers.append(worker)
    await worker.start()
    return worker


# ---- reading the workflow as plain JSON ---------------------------------------------------------


async def status(client: Client, workflow_id: str) -> dict[str, Any]:
    return await client.get_workflow_handle(workflow_id).query("status", result_type=dict)


def condition(state: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in state["conditions"] if c["type"] == type_), None)


async def until(
    attempt: Callable[[], Awaitable[T]], done: Callable[[T], bool], worker: Worker
) -> T:
    """Poll `attempt` until `done`; fails with the last answer, or at once if the worker died."""
    last: T | None = None
    try:
        async with asyncio.timeout(TIMEOUT):
            while True:
                last = await attempt()
                if done(last):
                    return last
                worker.check_alive()
                await asyncio.sleep(POLL)
    except TimeoutError:
        raise AssertionError(f"not reached in {TIMEOUT:g}s; last: {last}") from None


async def one_pass(
    client: Client, workflow_id: str, worker: Worker, trigger: Awaitable[Any]
) -> dict[str, Any]:
    """Trigger one reconcile pass and wait for it to end: every pass ends by setting the next
    drift check, so a new `nextCheckAt` means the loop went back to sleep after it."""
    before = (await status(client, workflow_id))["nextCheckAt"]
    await trigger
    return await until(
        lambda: status(client, workflow_id), lambda s: s["nextCheckAt"] != before, worker
    )


async def history(client: Client, workflow_id: str) -> WorkflowHistory:
    return await client.get_workflow_handle(workflow_id).fetch_history()


def scheduled(events: WorkflowHistory) -> Counter[str]:
    """How many times each activity type was scheduled."""
    return Counter(
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in events.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    )


def failed_tasks(events: WorkflowHistory) -> list[str]:
    """Workflow tasks that failed (nondeterminism shows here), with their messages."""
    return [
        e.workflow_task_failed_event_attributes.failure.message
        for e in events.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    ]


def patches(events: WorkflowHistory) -> list[str]:
    """The ids of the patch markers recorded."""
    found = []
    for event in events.events:
        if event.event_type != EventType.EVENT_TYPE_MARKER_RECORDED:
            continue
        marker = event.marker_recorded_event_attributes
        if marker.marker_name == "core_patch":
            found.append(json.loads(marker.details["patch-data"].payloads[0].data)["id"])
    return found


def recovered(events: WorkflowHistory) -> bool:
    """Whether a workflow task completed after the last one that failed."""
    kinds = [e.event_type for e in events.events]
    last = {k: i for i, k in enumerate(kinds)}
    failed = last.get(EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED, -1)
    return last.get(EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED, -1) > failed


def slept(events: WorkflowHistory) -> bool:
    """Whether the run has gone to sleep after a pass (its drift-check timer started)."""
    return any(e.event_type == EventType.EVENT_TYPE_TIMER_STARTED for e in events.events)


async def deleted(world: World, name: str, worker: Worker) -> dict[str, Any]:
    """`idpctl delete --wait`, then the Bucket condition of the workflow's final status."""
    result = await world.idpctl(
        "delete", "workload", f"{world.system}/{name}", "--wait", "--timeout", "60", plugin=True
    )
    assert result.code == 0, result
    worker.check_alive()
    handle = world.client.get_workflow_handle(world.workflow_id(name), result_type=dict)
    final = await handle.result()
    assert final["phase"] == "Deleted"
    bucket = condition(final, "Bucket")
    assert bucket is not None
    return bucket


def bucket_exists(s3: Any, bucket: str) -> bool:
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as error:
        if error.response["Error"]["Code"] in ("404", "NoSuchBucket"):
            return False
        raise
    return True


def versioning(s3: Any, bucket: str) -> str | None:
    return s3.get_bucket_versioning(Bucket=bucket).get("Status")


def owner_tag(s3: Any, bucket: str) -> str | None:
    tags = s3.get_bucket_tagging(Bucket=bucket)["TagSet"]
    return next((t["Value"] for t in tags if t["Key"] == "idp.owner"), None)


# ---- a. picked up everywhere, with no edit to the project ----------------------------------------


async def test_an_installed_plugin_is_picked_up_by_every_part(
    world: World, workers: list[Worker], s3: Any
) -> None:
    world.with_port = True
    # The schemas editors read: the plugin's sections, with their properties.
    workload_schema = (await world.idpctl("schema", "Workload", plugin=True)).json
    spec = workload_schema["$defs"]["WorkloadSpec"]
    assert spec["properties"]["bucket"]["properties"]["versioning"]["type"] == "boolean"
    platform_schema = (await world.idpctl("schema", "Platform", plugin=True)).json
    assert set(platform_schema["properties"]["buckets"]["required"]) == {"prefix", "region"}
    # ... and without the plugin, neither.
    plain = (await world.idpctl("schema", "Workload", plugin=False)).json
    assert "bucket" not in plain["$defs"]["WorkloadSpec"]["properties"]

    # The loader validates the section with the plugin's model: one sentence, nothing started.
    web = world.workflow_id("web")
    bad = world.workload_file("web", bucket={"versioning": "maybe"})
    refused = await world.idpctl("apply", "-f", str(bad), plugin=True)
    assert refused.code == 2, refused
    assert refused.stderr.strip().splitlines() == [
        f"error: {bad}: document 1: spec.bucket.versioning: must be true or false; got 'maybe'"
    ]
    # Without the plugin the section is what any unknown field is.
    good = world.workload_file("web", bucket={"versioning": True}, deletionPolicy="Delete")
    unknown = await world.idpctl("apply", "-f", str(good), plugin=False)
    assert unknown.code == 2, unknown
    assert f"{good}: document 1: spec.bucket: unknown field" in unknown.stderr
    assert not await workflow_exists(world.client, web)
    # The platform file's `buckets` section likewise, by the plugin's settings model.
    platform = yaml.safe_load(world.platform_file(buckets=True).read_text())
    bad_platform = world.root / "bad-platform.yaml"
    bad_platform.write_text(yaml.safe_dump({**platform, "buckets": {"prefix": "ACME"}}))
    refused = await world.idpctl("--platform", str(bad_platform), "get", "workloads", plugin=True)
    assert refused.code == 2, refused
    assert f"{bad_platform}: buckets.prefix: must be up to 20 lowercase" in refused.stderr
    assert "buckets.region: required field is missing" in refused.stderr
    refused = await world.idpctl(
        "get", "workloads", plugin=False, platform=world.platform_file(buckets=True)
    )
    assert refused.code == 2, refused
    assert "buckets: unknown field" in refused.stderr

    # Port's workload blueprint gets the plugin's property from `idpctl port install`.
    install = await world.idpctl(
        "port", "install", "--webhook-url", "http://127.0.0.1:9/port/webhook", plugin=True
    )
    assert install.code == 0, install
    blueprint = world.port.state.blueprints[WORKLOAD_BLUEPRINT]
    assert blueprint["schema"]["properties"]["bucketName"]["type"] == "string"

    # The worker runs it: the bucket is made as asked and the condition says so.
    worker = await start(workers, world.worker(plugin=True))
    applied = await world.idpctl("apply", "-f", str(good), "--wait", "--timeout", "60", plugin=True)
    assert applied.code == 0, applied
    state = await status(world.client, web)
    assert state["phase"] == "Ready"
    bucket = condition(state, "Bucket")
    assert bucket is not None and (bucket["status"], bucket["reason"]) == ("True", "Created")
    name = world.bucket("web")
    assert state["outputs"]["Bucket"] == {"name": name, "arn": f"arn:aws:s3:::{name}"}
    assert versioning(s3, name) == "Enabled"
    assert owner_tag(s3, name) == web
    first = scheduled(await history(world.client, web))
    assert (first["Bucket.observe"], first["Bucket.apply"]) == (1, 1)

    described = await world.idpctl("describe", "workload", f"{world.system}/web", plugin=True)
    assert described.code == 0, described
    assert f"  bucket:      {name}" in described.stdout.splitlines()
    identifier = entity_identifier(world.system, "web")
    entity = await world.port.until(lambda: world.port.entity(WORKLOAD_BLUEPRINT, identifier))
    assert entity["properties"]["bucketName"] == name

    # Steady state: observe runs, the empty plan is decided in the workflow, nothing is written.
    reconcile = world.idpctl("reconcile", "workload", f"{world.system}/web", plugin=True)
    state = await one_pass(world.client, web, worker, reconcile)
    second = scheduled(await history(world.client, web))
    assert (second["Bucket.observe"], second["Bucket.apply"]) == (2, 1)
    bucket = condition(state, "Bucket")
    assert bucket is not None and (bucket["status"], bucket["reason"]) == ("True", "InSync")

    # Drift: versioning suspended behind idp's back is put back by the next pass.
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Suspended"})
    handle = world.client.get_workflow_handle(web)
    state = await one_pass(world.client, web, worker, handle.execute_update("reconcile"))
    third = scheduled(await history(world.client, web))
    assert (third["Bucket.observe"], third["Bucket.apply"]) == (3, 2)
    assert versioning(s3, name) == "Enabled"
    bucket = condition(state, "Bucket")
    assert bucket is not None and (bucket["status"], bucket["reason"]) == ("True", "Applied")
    assert bucket["message"] == (
        f"update versioning of S3 bucket {name} (from Suspended to Enabled)"
    )
    assert not failed_tasks(await history(world.client, web))

    # Teardown honours deletionPolicy: Delete removes the (empty) bucket.
    bucket = await deleted(world, "web", worker)
    assert (bucket["reason"], bucket["message"]) == ("Deleted", f"deleted S3 bucket {name}")
    assert not bucket_exists(s3, name)


# ---- b. rolled out to a running workflow --------------------------------------------------------


async def test_installing_the_plugin_takes_it_up_in_running_workflows_without_breaking_replay(
    world: World, workers: list[Worker], s3: Any
) -> None:
    api = world.workflow_id("api")
    plain = await start(workers, world.worker(plugin=False))
    applied = await world.idpctl(
        "apply", "-f", str(world.workload_file("api")), "--wait", plugin=False
    )
    assert applied.code == 0, applied
    state = await status(world.client, api)
    assert state["phase"] == "Ready" and condition(state, "Bucket") is None
    await plain.stop()
    before = await history(world.client, api)
    recorded = world.root / f"{world.system}-api.json"
    recorded.write_text(before.to_json())

    # The same history replays with the plugin installed: its recorded settings skip it there.
    replayed = await world.idpctl("replay", str(recorded), plugin=True)
    assert replayed.code == 0, replayed
    assert "replayed 1 histories, 0 failed" in replayed.stdout

    # A worker with the plugin picks the workflow up (replaying it first) and the next pass
    # takes the bucket up; the workload was not applied again.
    worker = await start(workers, world.worker(plugin=True))
    handle = world.client.get_workflow_handle(api)
    state = await one_pass(world.client, api, worker, handle.execute_update("reconcile"))
    bucket = condition(state, "Bucket")
    assert bucket is not None and (bucket["status"], bucket["reason"]) == ("True", "Created")
    assert state["phase"] == "Ready" and state["generation"] == 1
    assert owner_tag(s3, world.bucket("api")) == api
    after = await history(world.client, api)
    assert not failed_tasks(after)
    # The run began on code with the baseline: its one marker stands for every patch, so
    # what gates Bucket here is the settings each pass recorded, not a patch of its own.
    assert patches(after) == [BASELINE]
    assert scheduled(after)["Bucket.observe"] == 1
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    # What it recorded taking Bucket up replays too.
    recorded.write_text(after.to_json())
    replayed = await world.idpctl("replay", str(recorded), plugin=True)
    assert replayed.code == 0, replayed

    # And it is torn down like any other: deletionPolicy Retain (the default) keeps the bucket.
    bucket = await deleted(world, "api", worker)
    name = world.bucket("api")
    expected = ("Deleted", f"kept S3 bucket {name} (deletionPolicy Retain)")
    assert (bucket["reason"], bucket["message"]) == expected
    assert bucket_exists(s3, name)


# ---- c. uninstalled while workflows hold its outputs ---------------------------------------------


@pytest.fixture(scope="module")
async def small_history_env() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server that suggests continue-as-new early, so that a run can start over without
    the plugin's commands in its history."""
    limit = f"limit.historyCount.suggestContinueAsNew={SUGGEST_AFTER_EVENTS}"
    async with await start_dev_server("--dynamic-config-value", limit) as env:
        yield env


async def test_uninstalling_the_plugin_is_reported_not_failed_once_no_history_needs_it(
    small_history_env: WorkflowEnvironment,
    tmp_path: Path,
    plugin_site: Path,
    aws_url: str,
    port: PortEmulator,
    workers: list[Worker],
) -> None:
    world = make_world(small_history_env, tmp_path, plugin_site, aws_url, port)
    client, db = world.client, world.workflow_id("db")
    handle = client.get_workflow_handle(db)
    worker = await start(workers, world.worker(plugin=True))
    applied = await world.idpctl(
        "apply", "-f", str(world.workload_file("db")), "--wait", plugin=True
    )
    assert applied.code == 0, applied
    state = await status(client, db)
    assert state["outputs"]["Bucket"]["name"] == world.bucket("db")
    assert scheduled(await history(client, db))["Bucket.observe"] == 1
    await worker.stop()

    # 1. Uninstalled too early: the run's history holds the plugin's commands, which a worker
    # without it cannot replay. Its workflow tasks fail and are retried; the workflow does not
    # fail, but it is stuck until the plugin is back.
    plain = await start(workers, world.worker(plugin=False))
    await handle.signal("reconcile")
    stuck = await until(lambda: history(client, db), failed_tasks, plain)
    assert "Nondeterminism" in failed_tasks(stuck)[0]
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    await plain.stop()

    # 2. The way back, and the way out: the plugin installed again but no longer offered (the
    # platform file without `buckets`). The stuck pass goes through, later passes leave Bucket
    # alone, and once the run has continued as new no history needs the plugin any more.
    retiring = await start(workers, world.worker(plugin=True, offers=False))
    await until(lambda: history(client, db), recovered, retiring)
    first_run = (await handle.describe()).run_id

    async def next_run() -> str | None:
        current = (await handle.describe()).run_id
        if current != first_run:
            return current
        await handle.signal("reconcile")  # each pass adds events, until the server says enough
        return None

    run = client.get_workflow_handle(db, run_id=await until(next_run, bool, retiring))
    fresh = await until(run.fetch_history, slept, retiring)  # its first pass is over
    assert "Bucket.observe" not in scheduled(fresh)
    await retiring.stop()

    # 3. Uninstalled now: a condition says what the workload still holds; nothing fails.
    plain = await start(workers, world.worker(plugin=False))
    state = await one_pass(client, db, plain, handle.execute_update("reconcile"))
    bucket = condition(state, "Bucket")
    assert bucket is not None
    assert (bucket["status"], bucket["reason"], bucket["permanent"]) == ("False", MISSING, True)
    assert "capability Bucket, which the worker does not have installed" in bucket["message"]
    manifests = condition(state, "Manifests")
    assert manifests is not None and manifests["status"] == "True"
    assert state["phase"] == "Degraded"
    assert state["outputs"]["Bucket"]["name"] == world.bucket("db")  # kept for its return
    # Which capabilities the worker had is recorded with each pass's settings, so the run
    # replays the same with the plugin or without it (and on reinstalling it).
    await one_pass(client, db, plain, handle.execute_update("reconcile"))
    recorded = await run.fetch_history()
    assert not failed_tasks(recorded)
    file = world.root / "run-reported-missing.json"
    file.write_text(recorded.to_json())
    for plugin in (False, True):
        replayed = await world.idpctl("replay", str(file), plugin=plugin)
        assert replayed.code == 0, replayed
        assert "replayed 1 histories, 0 failed" in replayed.stdout
    # The workflow runs on (it may have continued as new again meanwhile: the server here
    # suggests that early), and no task of its latest run failed either.
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    assert not failed_tasks(await history(client, db))
