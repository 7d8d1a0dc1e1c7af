"""The git state store against real git repositories on disk (bare "remotes" plus clones)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.stack import bare_repo, git

from idp import statechange, statestore
from idp.errors import PermanentError, TransientError
from idp.statechange import Change, Claim, OwnedByAnother
from idp.statestore import NETWORK_TIMEOUT_SECONDS, StateStore, state_store
from starter.dev import free_port, git_daemon_command

BRANCH = "main"
DIR = "dev/team-a/hello"


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    """A fresh, empty bare repository: the branch does not exist until the first push."""
    return bare_repo(tmp_path / "state.git")


def store_for(remote: Path, tmp_path: Path, name: str = "clone") -> StateStore:
    return StateStore(str(remote), BRANCH, tmp_path / "work" / name)


def commits(remote: Path) -> list[str]:
    return git("--git-dir", str(remote), "rev-list", BRANCH).split()


def commit_count(remote: Path) -> int:
    try:
        return int(git("--git-dir", str(remote), "rev-list", "--count", BRANCH).strip())
    except subprocess.CalledProcessError:
        return 0  # the branch does not exist yet


def head(remote: Path) -> str:
    return git("--git-dir", str(remote), "rev-parse", BRANCH).strip()


def full_log(remote: Path) -> str:
    return git("--git-dir", str(remote), "log", "--format=%B", BRANCH)


def tree(remote: Path) -> dict[str, str]:
    """Every file at the remote head: path -> content."""
    names = git("--git-dir", str(remote), "ls-tree", "-r", "--name-only", BRANCH).split()
    return {n: git("--git-dir", str(remote), "show", f"{BRANCH}:{n}") for n in names}


def changed_paths(remote: Path, commit: str) -> list[str]:
    out = git("--git-dir", str(remote), "diff-tree", "--root", "-r", "--name-only", "-z", commit)
    return sorted(p for p in out.split("\0")[1:] if p)


def assert_no_empty_commit(remote: Path) -> None:
    for sha in commits(remote):
        assert changed_paths(remote, sha), f"empty commit {sha}"


def other_clone(remote: Path, tmp_path: Path) -> Path:
    path = tmp_path / "someone-else"
    git("clone", "--quiet", "--branch", BRANCH, str(remote), str(path))
    return path


FILES = {"deployment.yaml": "kind: Deployment\n", "serviceaccount.yaml": "kind: ServiceAccount\n"}


# One change at a time.


async def test_first_apply_creates_the_branch_files_and_one_commit(remote, tmp_path) -> None:
    store = store_for(remote, tmp_path)
    message = "apply Workload team-a/hello generation 1\n\nWorkflow: workload/team-a/hello"

    result = await store.apply(Change(DIR, FILES, message))

    assert result.commit == head(remote)
    assert commit_count(remote) == 1
    assert full_log(remote).strip() == message
    assert result.written == (f"{DIR}/deployment.yaml", f"{DIR}/serviceaccount.yaml")
    assert result.removed == ()
    assert tree(remote) == {f"{DIR}/{name}": text for name, text in FILES.items()}
    assert await store.read(DIR) == FILES


async def test_the_same_change_again_makes_no_commit(remote, tmp_path) -> None:
    store = store_for(remote, tmp_path)
    await store.apply(Change(DIR, FILES, "generation 1"))
    before = head(remote)

    again = await store.apply(Change(DIR, FILES, "generation 1 again"))
    # A second worker with its own clone agrees: the content is already there.
    other = await store_for(remote, tmp_path, "other").apply(Change(DIR, FILES, "other"))

    assert again.commit is None and again.written == () and again.removed == ()
    assert other.commit is None
    assert head(remote) == before


async def test_changing_one_file_writes_only_that_file(remote, tmp_path) -> None:
    store = store_for(remote, tmp_path)
    await store.apply(Change(DIR, FILES, "generation 1"))

    edited = {**FILES, "deployment.yaml": "kind: Deployment\nreplicas: 2\n"}
    result = await store.apply(Change(DIR, edited, "generation 2"))

    assert result.written == (f"{DIR}/deployment.yaml",) and result.removed == ()
    assert changed_paths(remote, result.commit) == [f"{DIR}/deployment.yaml"]
    assert await store.read(DIR) == edited


async def test_a_file_left_out_is_deleted_and_empty_files_remove_the_directory(
    remote, tmp_path
) -> None:
    store = store_for(remote, tmp_path)
    await store.apply(Change(DIR, {**FILES, "nested/extra.yaml": "x: 1\n"}, "generation 1"))
    await store.apply(Change("dev/team-a/other", {"a.yaml": "a\n"}, "neighbour"))

    fewer = await store.apply(Change(DIR, {"deployment.yaml": FILES["deployment.yaml"]}, "gen 2"))
    assert fewer.written == ()
    assert fewer.removed == (f"{DIR}/nested/extra.yaml", f"{DIR}/serviceaccount.yaml")
    assert await store.read(DIR) == {"deployment.yaml": FILES["deployment.yaml"]}

    gone = await store.apply(Change(DIR, {}, "delete Workload team-a/hello"))
    assert gone.removed == (f"{DIR}/deployment.yaml",) and gone.commit == head(remote)
    assert await store.read(DIR) == {}
    assert tree(remote) == {"dev/team-a/other/a.yaml": "a\n"}  # the neighbour is untouched

    assert (await store.apply(Change(DIR, {}, "delete again"))).commit is None


# Files owned by different writers in one directory.

SA = frozenset({"serviceaccount.yaml"})
SEALED = frozenset({"sealedsecret-nats.yaml"})


async def test_owned_changes_leave_the_other_writers_files_alone(remote, tmp_path) -> None:
    store = store_for(remote, tmp_path)
    await store.apply(Change(DIR, {"serviceaccount.yaml": "sa: 1\n"}, "manifests", owned=SA))
    secret = await store.apply(
        Change(DIR, {"sealedsecret-nats.yaml": "sealed: 1\n"}, "deliver", owned=SEALED)
    )
    assert secret.written == (f"{DIR}/sealedsecret-nats.yaml",) and secret.removed == ()

    # The manifests step rewrites its file and does not delete the secret it does not list.
    manifests = await store.apply(
        Change(DIR, {"serviceaccount.yaml": "sa: 2\n"}, "manifests", owned=SA)
    )
    assert manifests.written == (f"{DIR}/serviceaccount.yaml",) and manifests.removed == ()
    assert changed_paths(remote, manifests.commit) == [f"{DIR}/serviceaccount.yaml"]
    assert await store.read(DIR) == {
        "serviceaccount.yaml": "sa: 2\n",
        "sealedsecret-nats.yaml": "sealed: 1\n",
    }
    unchanged = await store.apply(
        Change(DIR, {"serviceaccount.yaml": "sa: 2\n"}, "again", owned=SA)
    )
    assert unchanged.commit is None


async def test_an_owned_file_left_out_is_deleted_and_nothing_else(remote, tmp_path) -> None:
    store = store_for(remote, tmp_path)
    files = {**FILES, "sealedsecret-nats.yaml": "sealed\n", "externalsecret-nats.yaml": "es\n"}
    await store.apply(Change(DIR, files, "everything"))
    both = frozenset({"sealedsecret-nats.yaml", "externalsecret-nats.yaml"})

    # Switching deliveries: one owned file written, the other owned one deleted, one commit.
    switched = await store.apply(
        Change(DIR, {"sealedsecret-nats.yaml": "sealed 2\n"}, "switch", owned=both)
    )
    assert switched.written == (f"{DIR}/sealedsecret-nats.yaml",)
    assert switched.removed == (f"{DIR}/externalsecret-nats.yaml",)

    removed = await store.apply(Change(DIR, {}, "remove secret", owned=both))
    assert removed.removed == (f"{DIR}/sealedsecret-nats.yaml",)
    assert await store.read(DIR) == FILES
    assert (await store.apply(Change(DIR, {}, "remove again", owned=both))).commit is None

    # Without `owned` the change manages the whole directory, as before.
    gone = await store.apply(Change(DIR, {}, "delete"))
    assert gone.removed == tuple(f"{DIR}/{name}" for name in sorted(FILES))


async def test_an_owned_change_in_a_batch_with_a_whole_directory_change(remote, tmp_path) -> None:
    store = store_for(remote, tmp_path)
    await store.apply(Change(DIR, FILES, "generation 1"))
    results = await asyncio.gather(
        store.apply(Change(DIR, {"sealedsecret-nats.yaml": "s\n"}, "deliver", owned=SEALED)),
        store.apply(Change(DIR, {"serviceaccount.yaml": "sa\n"}, "manifests", owned=SA)),
    )
    assert results[0].commit == results[1].commit == head(remote)
    assert await store.read(DIR) == {
        **FILES,
        "serviceaccount.yaml": "sa\n",
        "sealedsecret-nats.yaml": "s\n",
    }


async def test_a_file_outside_the_owned_names_is_refused(remote, tmp_path) -> None:
    store = store_for(remote, tmp_path)
    with pytest.raises(PermanentError, match="not among the file names the change owns"):
        await store.apply(Change(DIR, FILES, "bad", owned=SA))
    with pytest.raises(PermanentError, match="owned file names"):
        await store.apply(Change(DIR, {}, "bad", owned=frozenset({"../x"})))
    assert commit_count(remote) == 0


async def test_drift_pushed_by_someone_else_is_repaired_with_one_commit(remote, tmp_path) -> None:
    store = store_for(remote, tmp_path)
    await store.apply(Change(DIR, FILES, "generation 1"))
    clone = other_clone(remote, tmp_path)
    (clone / DIR / "deployment.yaml").write_text("kind: Deployment\nreplicas: 99\n")
    (clone / DIR / "serviceaccount.yaml").unlink()
    (clone / DIR / "stray.yaml").write_text("hand-written\n")
    git("commit", "--quiet", "-am", "manual edit", cwd=clone)
    git("add", "--all", cwd=clone)
    git("commit", "--quiet", "-m", "add a stray file", cwd=clone)
    git("push", "--quiet", "origin", BRANCH, cwd=clone)
    before = commit_count(remote)

    result = await store.apply(Change(DIR, FILES, "generation 1, drift check"))

    assert commit_count(remote) == before + 1
    assert result.commit == head(remote)
    assert result.written == (f"{DIR}/deployment.yaml", f"{DIR}/serviceaccount.yaml")
    assert result.removed == (f"{DIR}/stray.yaml",)
    assert await store.read(DIR) == FILES


def git_commands(store: StateStore) -> list[str]:
    """The git commands `store` runs from now on, as they start."""
    calls: list[str] = []
    run_git = store._git

    async def counted(*args: str, **kwargs):
        calls.append(args[0])
        return await run_git(*args, **kwargs)

    store._git = counted  # type: ignore[method-assign]
    return calls


async def test_a_commit_after_our_own_push_needs_no_fetch_and_a_branch_moved_back_stays_back(
    remote, tmp_path
) -> None:
    store = store_for(remote, tmp_path)
    first = await store.apply(Change("dev/ns/one", {"a.yaml": "1\n"}, "one"))
    calls = git_commands(store)
    await store.apply(Change("dev/ns/two", {"a.yaml": "2\n"}, "two"))
    assert "fetch" not in calls and calls.count("push") == 1

    # Somebody moves the branch back by hand: the next commit builds on where it is now.
    git("--git-dir", str(remote), "update-ref", f"refs/heads/{BRANCH}", str(first.commit))
    calls.clear()
    third = await store.apply(Change("dev/ns/three", {"a.yaml": "3\n"}, "three"))

    assert calls.count("push") == 2 and calls.count("fetch") == 1  # the first push was refused
    assert commits(remote) == [third.commit, first.commit]
    assert await store.read("dev/ns/two") == {}
    assert await store.read("dev/ns/three") == {"a.yaml": "3\n"}


async def test_read_of_an_absent_directory_or_branch_is_empty(remote, tmp_path) -> None:
    store = store_for(remote, tmp_path)
    assert await store.read(DIR) == {}  # the branch does not exist yet
    await store.apply(Change(DIR, FILES, "generation 1"))
    assert await store.read("dev/team-a/nothing-here") == {}
    assert await store.read("dev/team-a/hell") == {}  # a prefix of a name is not the directory


async def test_reads_asked_together_share_one_look_one_listing_and_one_blob_read(
    remote, tmp_path
) -> None:
    store = store_for(remote, tmp_path)
    names = [f"w{i}" for i in range(12)]  # w1 is a prefix of w10 and w11
    await asyncio.gather(
        *(store.apply(Change(f"dev/ns/{n}", {"a.yaml": f"n: {n}\n"}, n)) for n in names)
    )
    calls = git_commands(store)
    reads = await asyncio.gather(
        *(store.read(f"dev/ns/{n}") for n in names),
        store.files(["dev/ns/w1"]),
        store.listing(Change("dev/ns/w2", {}, "nothing")),
    )

    assert reads[: len(names)] == [{"a.yaml": f"n: {n}\n"} for n in names]
    assert list(reads[-2]) == ["dev/ns/w1/a.yaml"]
    assert list(reads[-1]) == ["dev/ns/w2/a.yaml"]
    # The remote's head is our own last push, which the clone holds: no fetch.
    assert sorted(calls) == ["cat-file", "ls-remote", "ls-tree"]


async def test_a_read_fetches_only_a_head_the_clone_does_not_hold(remote, tmp_path) -> None:
    store = store_for(remote, tmp_path)
    await store.apply(Change(DIR, FILES, "generation 1"))
    calls = git_commands(store)
    assert await store.read(DIR) == FILES
    assert calls == ["ls-remote", "ls-tree", "cat-file"]

    clone = other_clone(remote, tmp_path)
    (clone / DIR / "stray.yaml").write_text("hand-written\n")
    git("add", "--all", cwd=clone)
    git("commit", "--quiet", "-m", "add a stray file", cwd=clone)
    git("push", "--quiet", "origin", BRANCH, cwd=clone)
    calls.clear()
    assert await store.read(DIR) == FILES | {"stray.yaml": "hand-written\n"}
    assert calls == ["ls-remote", "fetch", "rev-parse", "ls-tree", "cat-file"]

    # What it fetched, the tracking ref now holds.
    calls.clear()
    assert await store.read(DIR) == FILES | {"stray.yaml": "hand-written\n"}
    assert calls == ["ls-remote", "ls-tree", "cat-file"]


async def test_a_clone_that_lost_the_head_it_believed_held_fetches_it_on_the_next_read(
    remote, tmp_path
) -> None:
    store = store_for(remote, tmp_path)
    await store.apply(Change(DIR, FILES, "generation 1"))
    # Another process sharing the clone moved its refs away, and git collected the commit.
    clone = tmp_path / "work" / "clone"
    git("--git-dir", str(clone), "update-ref", "-d", "refs/idp/pending")
    for pack in (clone / "objects" / "pack").iterdir():
        pack.unlink()

    with pytest.raises(TransientError, match="ls-tree failed"):
        await store.read(DIR)
    calls = git_commands(store)
    assert await store.read(DIR) == FILES
    assert calls[:3] == ["ls-remote", "fetch", "rev-parse"]


async def test_a_clone_that_only_ever_pushes_is_still_repacked(remote, tmp_path) -> None:
    """Every commit is a pack of its own and a clone whose head is always its own push never
    fetches (which would start git's gc): the store starts it itself."""
    store = store_for(remote, tmp_path)
    for i in range(80):
        await store.apply(Change(f"dev/ns/w{i}", {"a.yaml": f"n: {i}\n"}, f"w{i}"))
    packs = list((tmp_path / "work" / "clone" / "objects" / "pack").glob("*.pack"))
    # 80 commits, 80 packs written: git repacks once there are more than 50 (gc.autoPackLimit),
    # when the store asks, every GC_EVERY_PACKS (10) packs.
    assert len(packs) <= 60
    assert await store.read("dev/ns/w0") == {"a.yaml": "n: 0\n"}


@pytest.fixture
def served(remote: Path, tmp_path: Path) -> Iterator[str]:
    """The remote as a git host serves it (`git daemon`, as the benches' stack runs it): its
    git:// URL."""
    port = free_port("127.0.0.1")
    daemon = subprocess.Popen(
        git_daemon_command("127.0.0.1", port, remote), stderr=subprocess.DEVNULL
    )
    url = f"git://127.0.0.1:{port}/{remote.name}"
    try:
        while subprocess.run(["git", "ls-remote", url], capture_output=True).returncode:
            assert daemon.poll() is None, "git daemon exited"
        yield url
    finally:
        daemon.terminate()
        daemon.wait()


async def test_a_store_served_by_git_daemon_looks_fetches_and_pushes_over_the_network(
    served, remote, tmp_path
) -> None:
    store = StateStore(served, BRANCH, tmp_path / "work" / "clone")
    first = await store.apply(Change(DIR, FILES, "generation 1"))
    assert first.commit == head(remote)
    clone = other_clone(remote, tmp_path)
    (clone / DIR / "stray.yaml").write_text("hand-written\n")
    git("add", "--all", cwd=clone)
    git("commit", "--quiet", "-m", "add a stray file", cwd=clone)
    git("push", "--quiet", "origin", BRANCH, cwd=clone)

    calls = git_commands(store)
    assert await store.read(DIR) == FILES | {"stray.yaml": "hand-written\n"}
    repaired = await store.apply(Change(DIR, FILES, "generation 1, drift check"))

    assert calls[:3] == ["ls-remote", "fetch", "rev-parse"]
    assert repaired.removed == (f"{DIR}/stray.yaml",) and repaired.commit == head(remote)


async def test_another_branch_is_created_beside_an_existing_one(remote, tmp_path) -> None:
    await store_for(remote, tmp_path).apply(Change(DIR, FILES, "on main"))
    prod = StateStore(str(remote), "env/prod", tmp_path / "work" / "prod")

    result = await prod.apply(Change("prod/hello", {"a.yaml": "a\n"}, "on env/prod"))

    assert git("--git-dir", str(remote), "rev-parse", "env/prod").strip() == result.commit
    assert await prod.read(DIR) == {}
    assert commit_count(remote) == 1


async def test_a_symlink_where_a_directory_belongs_is_replaced_not_followed(
    remote, tmp_path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store = store_for(remote, tmp_path)
    await store.apply(Change("placeholder", {"a": "a\n"}, "seed"))
    clone = other_clone(remote, tmp_path)
    (clone / "dev").symlink_to(outside)
    git("add", "dev", cwd=clone)
    git("commit", "--quiet", "-m", "a hostile symlink", cwd=clone)
    git("push", "--quiet", "origin", BRANCH, cwd=clone)

    result = await store.apply(Change(DIR, FILES, "generation 1"))

    assert list(outside.iterdir()) == []
    assert result.removed == ("dev",)
    assert await store.read(DIR) == FILES


async def test_unusual_file_names_round_trip(remote, tmp_path) -> None:
    store = store_for(remote, tmp_path)
    files = {'été "quoted" name.yaml': "ünïcode: ✓\n", "sub dir/x.yaml": "x: 1\n"}
    result = await store.apply(Change("dev/ns/odd", files, "odd names"))
    assert result.written == tuple(sorted(f"dev/ns/odd/{n}" for n in files))
    assert await store.read("dev/ns/odd") == files
    assert (await store.apply(Change("dev/ns/odd", files, "again"))).commit is None


def reject_pushes(remote: Path, *, times: int, delay: float = 0.0) -> None:
    """A pre-receive hook in the remote declining the next `times` pushes, after `delay`."""
    hook = remote / "hooks" / "pre-receive"
    counter = remote / "rejections-left"
    counter.write_text(str(times))
    hook.write_text(
        f"#!/bin/sh\nsleep {delay}\nleft=$(cat '{counter}')\n"
        f"if [ \"$left\" -gt 0 ]; then echo $((left - 1)) > '{counter}'; exit 1; fi\n"
    )
    hook.chmod(0o755)


async def test_a_rejected_push_is_retried_and_carries_changes_queued_meanwhile(
    remote, tmp_path
) -> None:
    store = store_for(remote, tmp_path)
    await store.apply(Change("dev/ns/seed", {"a.yaml": "seed\n"}, "seed"))
    reject_pushes(remote, times=1, delay=0.3)

    first = asyncio.ensure_future(store.apply(Change("dev/ns/one", {"a.yaml": "1\n"}, "one")))
    await asyncio.sleep(0.1)  # the first push is now waiting in the hook
    second = await store.apply(Change("dev/ns/two", {"a.yaml": "2\n"}, "two"))

    assert (await first).commit == second.commit == head(remote)
    assert commit_count(remote) == 2
    assert await store.read("dev/ns/two") == {"a.yaml": "2\n"}


async def test_a_push_rejected_every_time_ends_in_a_transient_error(
    remote, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(statestore, "PUSH_RETRY_SECONDS", 0.5)
    monkeypatch.setattr(statestore, "BACKOFF_BASE_SECONDS", 0.001)
    reject_pushes(remote, times=100)
    with pytest.raises(TransientError, match=r"was rejected \d+ times in 0.5s") as raised:
        await store_for(remote, tmp_path).apply(Change(DIR, FILES, "generation 1"))
    assert str(remote) in str(raised.value) and "pre-receive hook declined" in str(raised.value)
    assert commit_count(remote) == 0


# Many writers.


async def test_concurrent_applies_on_one_store_are_group_committed(remote, tmp_path) -> None:
    store = store_for(remote, tmp_path)
    changes = [
        Change(f"dev/ns/w{i:02}", {"a.yaml": f"n: {i}\n"}, f"apply Workload ns/w{i:02} gen 1")
        for i in range(50)
    ]

    results = await asyncio.gather(*(store.apply(c) for c in changes))

    assert commit_count(remote) < len(changes)
    log = full_log(remote)
    assert all(c.message in log for c in changes)
    assert {r.commit for r in results} <= set(commits(remote))
    assert tree(remote) == {f"dev/ns/w{i:02}/a.yaml": f"n: {i}\n" for i in range(50)}
    assert_no_empty_commit(remote)


async def test_a_batch_commit_names_every_change_and_no_ops_get_no_commit(remote, tmp_path) -> None:
    store = store_for(remote, tmp_path)
    await store.apply(Change("dev/ns/same", {"a.yaml": "a\n"}, "seed"))

    same, first, second = await asyncio.gather(
        store.apply(Change("dev/ns/same", {"a.yaml": "a\n"}, "unchanged")),
        store.apply(Change("dev/ns/one", {"a.yaml": "1\n"}, "apply one\n\nWorkflow: w/one")),
        store.apply(Change("dev/ns/two", {"a.yaml": "2\n"}, "apply two\n\nWorkflow: w/two")),
    )

    assert same.commit is None
    assert first.commit == second.commit == head(remote)
    message = git("--git-dir", str(remote), "log", "-1", "--format=%B", BRANCH)
    assert message.splitlines()[0] == "idp: 2 resources"
    assert "- apply one\n\n  Workflow: w/one\n- apply two\n\n  Workflow: w/two" in message
    assert "unchanged" not in message


def claiming(owner: str, directory: str, *names: str, text: str = "x\n") -> Change:
    """A change holding `names` by records under dev/.owners, as `owner`."""
    claims = tuple(Claim(f"dev/.owners/{n}", n, "pick another", record=True) for n in names)
    return Change(
        directory, {"a.yaml": text}, f"apply {directory}", None, owner, claims, "dev/.owners"
    )


async def test_in_one_batch_the_first_claim_wins_and_the_rest_still_commits(
    remote, tmp_path
) -> None:
    store = store_for(remote, tmp_path)

    first, second, bystander = await asyncio.gather(
        store.apply(claiming("w/a", "dev/ns/a", "shared")),
        store.apply(claiming("w/b", "dev/ns/b", "shared")),
        store.apply(Change("dev/ns/c", {"a.yaml": "c\n"}, "apply c")),
        return_exceptions=True,
    )

    assert isinstance(second, OwnedByAnother)
    assert str(second) == "shared is already written by w a; pick another"
    assert first.commit == bystander.commit == head(remote)
    assert tree(remote) == {
        "dev/.owners/shared": "w/a\n",
        "dev/ns/a/a.yaml": "x\n",
        "dev/ns/c/a.yaml": "c\n",
    }
    assert "dev/ns/b" not in full_log(remote)


async def test_records_no_longer_claimed_are_released(remote, tmp_path) -> None:
    store = store_for(remote, tmp_path)
    await store.apply(claiming("w/a", "dev/ns/a", "one", "two"))
    await store.apply(claiming("w/other", "dev/ns/o", "three"))

    result = await store.apply(claiming("w/a", "dev/ns/a", "two"))

    assert result.removed == ("dev/.owners/one",)
    await store.apply(Change("dev/ns/a", {}, "delete a", None, "w/a", (), "dev/.owners"))
    assert tree(remote) == {"dev/.owners/three": "w/other\n", "dev/ns/o/a.yaml": "x\n"}
    await store.apply(claiming("w/b", "dev/ns/b", "one", "two"))


async def test_a_preview_from_the_listing_agrees_with_apply(remote, tmp_path) -> None:
    store = store_for(remote, tmp_path)
    await store.apply(claiming("w/other", "dev/ns/o", "three"))
    commands: list[str] = []
    run_git = store._git

    async def counting(*args, **kwargs):
        commands.append(args[0])
        return await run_git(*args, **kwargs)

    store._git = counting  # type: ignore[method-assign]
    steps = [
        claiming("w/a", "dev/ns/a", "one", "two"),
        claiming("w/a", "dev/ns/a", "one", "two"),
        claiming("w/a", "dev/ns/a", "two", text="y\n"),
        Change("dev/ns/a", {}, "delete a", None, "w/a", (), "dev/.owners"),
    ]
    effects = []
    for change in steps:
        commands.clear()
        listing = await store.listing(change)
        # One look at the remote's head (our own last push, or what the last step fetched)
        # and one at the tree; no blob is read, and other owners' records, which the change
        # never touches, are left out.
        assert commands == ["ls-remote", "ls-tree"]
        assert "dev/.owners/three" not in listing
        written, removed = statechange.preview(change, listing)
        result = await store.apply(change)
        assert (sorted(written), sorted(removed)) == (list(result.written), list(result.removed))
        effects.append((sorted(written), sorted(removed)))

    assert effects == [
        (["dev/.owners/one", "dev/.owners/two", "dev/ns/a/a.yaml"], []),
        ([], []),
        (["dev/ns/a/a.yaml"], ["dev/.owners/one"]),
        ([], ["dev/.owners/two", "dev/ns/a/a.yaml"]),
    ]


async def test_a_preview_leaves_claims_to_apply(remote, tmp_path) -> None:
    store = store_for(remote, tmp_path)
    await store.apply(claiming("w/a", "dev/ns/a", "shared"))
    contender = claiming("w/b", "dev/ns/b", "shared")

    written, removed = statechange.preview(contender, await store.listing(contender))

    assert (sorted(written), removed) == (["dev/.owners/shared", "dev/ns/b/a.yaml"], [])
    with pytest.raises(OwnedByAnother):
        await store.apply(contender)


async def test_a_removal_of_names_held_by_another_owner_leaves_them(remote, tmp_path) -> None:
    store = store_for(remote, tmp_path)
    await store.apply(claiming("w/a", "dev/ns/a", "shared"))
    before = commit_count(remote)

    held = claiming("w/b", "dev/ns/a", "shared")
    result = await store.apply(Change("dev/ns/a", {}, "delete b", None, "w/b", held.claims, None))

    assert result.commit is None and commit_count(remote) == before
    assert tree(remote) == {"dev/.owners/shared": "w/a\n", "dev/ns/a/a.yaml": "x\n"}


async def test_eight_workers_with_their_own_clones_lose_nothing(remote, tmp_path) -> None:
    stores = [store_for(remote, tmp_path, f"worker-{w}") for w in range(8)]
    changes = {
        store: [Change(f"dev/ns/w{w}-{i}", {"a.yaml": f"{w}-{i}\n"}, f"w{w}-{i}") for i in range(5)]
        for w, store in enumerate(stores)
    }

    results = await asyncio.gather(*(s.apply(c) for s, batch in changes.items() for c in batch))

    assert tree(remote) == {
        f"dev/ns/w{w}-{i}/a.yaml": f"{w}-{i}\n" for w in range(8) for i in range(5)
    }
    assert all(r.commit for r in results)
    assert_no_empty_commit(remote)


SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from idp.statechange import Change
    from idp.statestore import StateStore

    async def main(url, workdir, worker):
        store = StateStore(url, "main", Path(workdir))
        def change(name, text):
            return Change(f"dev/ns/p{worker}-{name}", {"a.yaml": text}, f"p{worker}-{name}")

        await asyncio.gather(*(store.apply(change(i, f"{worker}-{i}\\n")) for i in range(3)))
        # A second round, after the others moved the branch on.
        await store.apply(change("late", "late\\n"))

    asyncio.run(main(*sys.argv[1:]))
    """
)


async def test_separate_processes_writing_one_repository_lose_nothing(remote, tmp_path) -> None:
    workers = 8
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SCRIPT,
            str(remote),
            str(tmp_path / f"proc-{w}"),
            str(w),
            stderr=asyncio.subprocess.PIPE,
        )
        for w in range(workers)
    ]
    outcomes = [await p.communicate() for p in processes]

    assert [p.returncode for p in processes] == [0] * workers, [e.decode() for _, e in outcomes]
    expected = {f"dev/ns/p{w}-{i}/a.yaml": f"{w}-{i}\n" for w in range(workers) for i in range(3)}
    expected |= {f"dev/ns/p{w}-late/a.yaml": "late\n" for w in range(workers)}
    assert tree(remote) == expected
    assert_no_empty_commit(remote)


# Refusals.


@pytest.mark.parametrize(
    "directory",
    ["/etc/app", "../outside", "dev/../../x", "dev/.git/hooks", ".git", "", ".", "a//b", "dev\\x"],
)
async def test_a_directory_escaping_the_repository_is_refused(remote, tmp_path, directory) -> None:
    store = store_for(remote, tmp_path)
    with pytest.raises(PermanentError, match="is not allowed: it must be a relative path"):
        await store.apply(Change(directory, FILES, "bad"))
    with pytest.raises(PermanentError, match="is not allowed"):
        await store.read(directory)
    assert commit_count(remote) == 0


@pytest.mark.parametrize(
    "name", ["../escape.yaml", "/etc/passwd", ".git/config", "a/../../b", ".GIT/x", "a\nb"]
)
async def test_a_file_name_escaping_the_directory_is_refused(remote, tmp_path, name) -> None:
    store = store_for(remote, tmp_path)
    with pytest.raises(
        PermanentError, match=r"File name .* in state store directory .* is not allowed"
    ):
        await store.apply(Change(DIR, {name: "x"}, "bad"))
    assert commit_count(remote) == 0


async def test_a_file_and_a_directory_of_the_same_name_are_refused(remote, tmp_path) -> None:
    with pytest.raises(PermanentError, match="conflict"):
        await store_for(remote, tmp_path).apply(Change(DIR, {"a": "1", "a/b": "2"}, "bad"))


async def test_a_missing_repository_is_a_permanent_error_naming_it(tmp_path) -> None:
    url = str(tmp_path / "no-such-repo.git")
    store = StateStore(url, BRANCH, tmp_path / "clone")
    with pytest.raises(PermanentError) as raised:
        await store.apply(Change(DIR, FILES, "generation 1"))
    message = str(raised.value)
    assert url in message and "does not appear to be a git repository" in message
    assert "kind: Deployment" not in message


async def test_a_relative_local_path_is_taken_from_where_the_store_was_made(
    remote, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(remote.parent)
    store = StateStore(remote.name, BRANCH, tmp_path / "clone")  # git itself runs in the clone
    monkeypatch.chdir(tmp_path / "..")
    assert (await store.apply(Change(DIR, FILES, "relative"))).commit == head(remote)


async def test_an_unreachable_server_is_transient_and_credentials_stay_out(tmp_path) -> None:
    # Port 9 on loopback: nothing listens there, so the connection is refused at once.
    store = StateStore("https://robot:s3cret@127.0.0.1:9/state.git", BRANCH, tmp_path / "clone")
    with pytest.raises(TransientError) as raised:
        await store.read(DIR)
    message = str(raised.value)
    assert "https://127.0.0.1:9/state.git" in message
    assert "s3cret" not in message and "robot" not in message


async def test_bad_urls_and_branches_are_refused(remote, tmp_path) -> None:
    with pytest.raises(PermanentError, match="is not a git URL"):
        StateStore("--upload-pack=touch /tmp/x", BRANCH, tmp_path / "clone")
    with pytest.raises(PermanentError, match="is not a valid git branch name"):
        await StateStore(str(remote), "bad..branch", tmp_path / "clone").read(DIR)


async def test_a_clone_directory_holding_something_else_is_not_overwritten(
    remote, tmp_path
) -> None:
    workdir = tmp_path / "precious"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("keep me")
    with pytest.raises(PermanentError, match="is not a git clone; refusing to overwrite it"):
        await StateStore(str(remote), BRANCH, workdir).apply(Change(DIR, FILES, "gen 1"))
    assert (workdir / "notes.txt").read_text() == "keep me"


async def test_a_caller_giving_up_does_not_stop_the_writer(remote, tmp_path) -> None:
    store = store_for(remote, tmp_path)
    abandoned = asyncio.ensure_future(store.apply(Change("dev/ns/gone", {"a": "a\n"}, "gone")))
    await asyncio.sleep(0)
    abandoned.cancel()
    result = await store.apply(Change(DIR, FILES, "still served"))
    assert result.commit == head(remote)
    assert await store.read(DIR) == FILES


def test_the_registry_shares_one_store_per_repository_and_branch(tmp_path) -> None:
    first = state_store("https://git.example.com/state.git", "main", tmp_path)
    assert state_store("https://git.example.com/state.git", "main", tmp_path) is first
    other = state_store("https://git.example.com/state.git", "prod", tmp_path)
    assert other is not first and other.workdir != first.workdir
    assert first.workdir.parent == tmp_path and len(first.workdir.name) == 16


async def test_the_registry_store_works_end_to_end(remote, tmp_path) -> None:
    store = state_store(str(remote), BRANCH, tmp_path / "cache")
    result = await store.apply(Change(DIR, FILES, "via the registry"))
    assert result.commit == head(remote)


async def test_a_lock_left_by_a_killed_git_does_not_wedge_the_clone(remote, tmp_path) -> None:
    # A worker killed together with its git children leaves git's ref lock behind; git never
    # removes it, and without help every later fetch fails on it forever.
    clone = tmp_path / "work" / "clone"
    await store_for(remote, tmp_path).apply(Change("a", {"x.yaml": "1\n"}, "first"))
    lock = clone / "refs/remotes/origin/main.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("")
    old = time.time() - NETWORK_TIMEOUT_SECONDS - 1
    os.utime(lock, (old, old))

    result = await store_for(remote, tmp_path).apply(Change("b", {"x.yaml": "2\n"}, "second"))

    assert result.commit is not None
    assert not lock.exists()
    assert tree(remote) == {"a/x.yaml": "1\n", "b/x.yaml": "2\n"}
