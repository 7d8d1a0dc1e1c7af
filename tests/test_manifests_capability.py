"""The Manifests capability through its contract (observe, plan, apply, teardown), against real
git: a bare repository on disk as the state store, edited by hand the way a person would."""

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.stack import commits, git, platform_for, read

from activities.statestore import destination_store
from capabilities.manifests import Manifests
from capabilities.manifests.actions import ManifestsActions
from capabilities.manifests.capability import ManifestsObservation
from idp.capability import Change, Context, Plan, Report
from idp.manifests import digest, render_workload, shared_name
from idp.models import Workload
from idp.platform import Platform
from idp.statechange import OwnedByAnother

ROLE = "arn:aws:iam::123456789012:role/idp-shop-cart"
DIRECTORY = "dev/shop/cart"
SERVICE_ACCOUNT = f"{DIRECTORY}/serviceaccount.yaml"
SECRET = f"{DIRECTORY}/sealedsecret-nats.yaml"
RECORD = "dev/.idp-owners/shop/ServiceAccount/cart-sa"
MANIFESTS = Manifests()


@pytest.fixture
def platform(repo: Path) -> Platform:
    return platform_for(repo)


@pytest.fixture
def actions(platform: Platform, tmp_path: Path) -> ManifestsActions:
    return MANIFESTS.actions(platform, None, tmp_path / "cache")


@pytest.fixture
def git_commands(platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The git commands the worker's store runs, by subcommand."""
    store = destination_store(platform.destinations[0], tmp_path / "cache")
    commands: list[str] = []
    run = store._git

    async def counting(*args: str, **kwargs: Any) -> Any:
        commands.append(args[0])
        return await run(*args, **kwargs)

    monkeypatch.setattr(store, "_git", counting)
    return commands


def workload(system: str = "shop", **spec: Any) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": "cart", "system": system},
            "spec": {"owner": "team-shop", "destination": "dev", "namespace": "shop", **spec},
        }
    )


def context(
    w: Workload | None = None,
    outputs: dict[str, Any] | None = None,
    role_arn: str | None = ROLE,
    generation: int = 1,
) -> Context:
    w = w or workload()
    registry = {"repositoryUri": "1.dkr.ecr/idp/shop/cart", "roleArn": role_arn}
    return Context(
        workload=w,
        workflow_id=w.workflow_id,
        generation=generation,
        now=datetime(2025, 1, 1, tzinfo=UTC),
        outputs=outputs,
        inputs={"Registry": registry} if role_arn else {},
    )


async def run_pass(actions: ManifestsActions, ctx: Context) -> tuple[Plan, Report]:
    """One pass, as the engine runs it in one activity."""
    observation = await actions.observe(ctx)
    plan = MANIFESTS.plan(ctx, observation)
    return plan, await actions.apply(ctx, plan, observation)


def by_hand(repo: Path, tmp_path: Path, edit: Callable[[Path], None]) -> None:
    """Someone clones the state store, edits it and pushes: drift the reconciler did not make."""
    clone = tmp_path / f"hand-{uuid.uuid4().hex[:6]}"
    git("clone", "--quiet", str(repo), str(clone))
    git("checkout", "--quiet", "-B", "main", cwd=clone)  # also when the store is still empty
    edit(clone)
    git("add", "--all", cwd=clone)
    git("commit", "--quiet", "-m", "by hand", cwd=clone)
    git("push", "--quiet", "origin", "main", cwd=clone)


def head(repo: Path) -> str:
    return git("rev-parse", "main", cwd=repo).strip()


async def test_the_first_pass_commits_and_the_next_makes_no_commit_and_no_fetch(
    actions: ManifestsActions, repo: Path, git_commands: list[str]
) -> None:
    plan, report = await run_pass(actions, context())

    assert plan == Plan(
        changes=[Change(action="write", subject=SERVICE_ACCOUNT, why="it is missing")]
    )
    commit = head(repo)
    assert report == Report(
        reason="Applied",
        changed=True,
        message=f"committed serviceaccount.yaml at {commit[:12]}",
        outputs={
            "directory": DIRECTORY,
            "digest": digest(render_workload(workload(), role_arn=ROLE)),
            "commit": commit,
        },
    )
    manifest = yaml.safe_load(read(repo, SERVICE_ACCOUNT) or "")
    assert manifest["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": ROLE}
    message = git("log", "-1", "--format=%B", "main", cwd=repo).strip()
    assert message == "apply Workload shop/cart generation 1\n\nWorkflow: workload/shop/cart"

    for generation in (2, 3):
        git_commands.clear()
        ctx = context(outputs=report.outputs, generation=generation)
        again, in_sync = await run_pass(actions, ctx)
        assert not again
        assert in_sync == Report(
            reason="InSync", message=f"{DIRECTORY} in sync", outputs=report.outputs
        )
        # One look at the remote's head, which is the first pass's commit, and one at the
        # tree: no fetch, no blob read, no commit, no push.
        assert git_commands == ["ls-remote", "ls-tree"]
    assert commits(repo) == ["apply Workload shop/cart generation 1"]


async def test_an_out_of_band_change_is_planned_as_a_repair_that_says_why(
    actions: ManifestsActions, repo: Path, tmp_path: Path
) -> None:
    _, applied = await run_pass(actions, context())
    rendered = read(repo, SERVICE_ACCOUNT)

    by_hand(repo, tmp_path, lambda clone: (clone / SERVICE_ACCOUNT).write_text("edited: 1\n"))
    plan, report = await run_pass(actions, context(outputs=applied.outputs))

    why = "it differs from what the workload renders"
    assert plan.changes == [Change(action="write", subject=SERVICE_ACCOUNT, why=why)]
    assert report.reason == "DriftRepaired" and report.changed
    assert report.message == "restored files changed outside the reconciler: serviceaccount.yaml"
    assert report.outputs == {**(applied.outputs or {}), "commit": head(repo)}
    assert read(repo, SERVICE_ACCOUNT) == rendered

    by_hand(repo, tmp_path, lambda clone: (clone / SERVICE_ACCOUNT).unlink())
    plan, report = await run_pass(actions, context(outputs=report.outputs))
    assert plan.changes == [Change(action="write", subject=SERVICE_ACCOUNT, why="it is missing")]
    assert report.reason == "DriftRepaired"
    assert read(repo, SERVICE_ACCOUNT) == rendered


async def test_a_new_rendering_is_applied(actions: ManifestsActions, repo: Path) -> None:
    _, applied = await run_pass(actions, context())

    # The registry went away: the ServiceAccount loses its role.
    plan, report = await run_pass(actions, context(outputs=applied.outputs, role_arn=None))

    why = "it differs from what the workload renders"
    assert plan.changes == [Change(action="write", subject=SERVICE_ACCOUNT, why=why)]
    assert report.reason == "Applied"
    assert report.message == f"committed serviceaccount.yaml at {head(repo)[:12]}"
    assert "annotations" not in yaml.safe_load(read(repo, SERVICE_ACCOUNT) or "")["metadata"]


async def test_the_delivered_secret_beside_the_manifests_is_never_touched(
    actions: ManifestsActions, repo: Path, tmp_path: Path
) -> None:
    def deliver(clone: Path) -> None:
        (clone / DIRECTORY).mkdir(parents=True)
        (clone / SECRET).write_text("kind: SealedSecret\n")

    by_hand(repo, tmp_path, deliver)

    plan, applied = await run_pass(actions, context())
    assert [change.subject for change in plan.changes] == [SERVICE_ACCOUNT]
    assert not (await run_pass(actions, context(outputs=applied.outputs)))[0]
    assert read(repo, SECRET) == "kind: SealedSecret\n"


async def test_an_ownership_record_is_planned_and_restored_like_a_manifest(
    actions: ManifestsActions, repo: Path, tmp_path: Path
) -> None:
    custom = workload(serviceAccount="cart-sa")
    plan, applied = await run_pass(actions, context(custom))

    assert plan.changes == [
        Change(action="write", subject=RECORD, why="the workload's ownership record is missing"),
        Change(action="write", subject=SERVICE_ACCOUNT, why="it is missing"),
    ]
    assert applied.message == f"committed cart-sa, serviceaccount.yaml at {head(repo)[:12]}"
    assert read(repo, RECORD) == "workload/shop/cart\n"

    by_hand(repo, tmp_path, lambda clone: (clone / RECORD).unlink())
    plan, repaired = await run_pass(actions, context(custom, outputs=applied.outputs))
    assert [change.subject for change in plan.changes] == [RECORD]
    assert repaired.reason == "DriftRepaired"
    assert repaired.message == "restored files changed outside the reconciler: cart-sa"

    # Back to the default ServiceAccount: the record is released with the new manifest.
    plan, back = await run_pass(actions, context(outputs=repaired.outputs))
    assert plan.changes == [
        Change(
            action="write", subject=SERVICE_ACCOUNT, why="it differs from what the workload renders"
        ),
        Change(action="delete", subject=RECORD, why="the workload no longer holds it"),
    ]
    assert back.message == f"committed serviceaccount.yaml, -cart-sa at {head(repo)[:12]}"
    assert read(repo, RECORD) is None


async def test_a_directory_held_by_another_workload_is_refused_when_applied(
    actions: ManifestsActions, repo: Path
) -> None:
    await run_pass(actions, context())
    before = head(repo)
    other = workload(system="other")

    with pytest.raises(OwnedByAnother) as caught:
        await run_pass(actions, context(other))

    assert caught.value.reason == "OwnedByAnother"
    assert str(caught.value) == shared_name(other, workload())
    assert head(repo) == before


async def test_the_plan_is_deterministic(
    actions: ManifestsActions, repo: Path, tmp_path: Path
) -> None:
    await run_pass(actions, context(workload(serviceAccount="cart-sa")))
    by_hand(repo, tmp_path, lambda clone: (clone / SERVICE_ACCOUNT).write_text("edited: 1\n"))
    ctx = context()

    observation = await actions.observe(ctx)
    plan = MANIFESTS.plan(ctx, observation)

    assert plan == MANIFESTS.plan(ctx, observation)
    again = ManifestsObservation.model_validate(json.loads(observation.model_dump_json()))
    assert MANIFESTS.plan(ctx, again) == plan
    assert MANIFESTS.plan(ctx, await actions.observe(ctx)) == plan
    assert [(c.action, c.subject) for c in plan.changes] == [
        ("write", SERVICE_ACCOUNT),
        ("delete", RECORD),
    ]


async def test_teardown_removes_the_directory_once(actions: ManifestsActions, repo: Path) -> None:
    await run_pass(actions, context())

    assert await actions.teardown(context()) == Report(
        reason="Deleted", message=f"removed {DIRECTORY}"
    )
    assert read(repo, SERVICE_ACCOUNT) is None
    assert await actions.teardown(context()) == Report(
        reason="Deleted", message=f"{DIRECTORY} already absent"
    )
    assert git("log", "-1", "--format=%s", "main", cwd=repo).strip() == (
        "delete Workload shop/cart generation 1"
    )


def test_wanted_always_after_the_registry_and_described() -> None:
    assert MANIFESTS.wanted(context()) and MANIFESTS.requires == ("Registry",)
    outputs = {"directory": DIRECTORY, "digest": "d", "commit": "0123456789abcdef"}
    assert MANIFESTS.describe(outputs) == [f"state store: {DIRECTORY} (commit 0123456789ab)"]
    assert MANIFESTS.describe({**outputs, "commit": None}) == [
        f"state store: {DIRECTORY} (commit -)"
    ]
