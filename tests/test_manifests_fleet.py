"""The Manifests capability's fleet read against its fingerprint, with real git: what a pass in
sync records, one read of the whole state store gives back for the same head; a change by hand
changes it exactly where the workload's own pass would repair something; and the read costs the
same few git processes for 200 workloads as for three."""

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from support.stack import bare_repo, git, platform_for
from test_manifests_capability import MANIFESTS, by_hand, context, head, run_pass, workload

from activities.statestore import destination_store
from capabilities.manifests.actions import ManifestsActions
from capabilities.manifests.capability import Holding, write
from idp.capability import Context, Fingerprint
from idp.models import Workload
from idp.platform import Destination, Platform, StateStoreConfig

# Three workloads on destination dev; blog's custom ServiceAccount gives it an ownership record.
SHOP_DIRECTORY = "dev/shop/cart"
BLOG_RECORDS = "dev/.idp-owners/blog/ServiceAccount"


def member(system: str, destination: str = "dev", **spec: str) -> Workload:
    """Workload `<system>/cart` in namespace `<system>`: one directory per system."""
    return workload(system=system, namespace=system, destination=destination, **spec)


FLEET = [member("shop"), member("blog", serviceAccount="blog-sa"), member("ads")]


@pytest.fixture
def other(tmp_path: Path) -> Path:
    return bare_repo(tmp_path / "other.git")


@pytest.fixture
def platform(repo: Path, other: Path) -> Platform:
    """dev and prod share one state store (prod below a base directory); edge has its own."""

    def on(name: str, url: Path, path: str = "") -> Destination:
        return Destination(name=name, state_store=StateStoreConfig(url=str(url), path=path))

    destinations = [on("dev", repo), on("prod", repo, "clusters"), on("edge", other)]
    return platform_for(repo).model_copy(update={"destinations": destinations})


@pytest.fixture
def actions(platform: Platform, tmp_path: Path) -> ManifestsActions:
    return MANIFESTS.actions(platform, None, tmp_path / "cache")


async def apply_all(actions: ManifestsActions, contexts: list[Context]) -> None:
    await asyncio.gather(*(run_pass(actions, ctx) for ctx in contexts))


async def in_sync(actions: ManifestsActions, contexts: list[Context]) -> list[Fingerprint]:
    """What each workload's pass records when it finds itself in sync."""
    found = []
    for ctx in contexts:
        observation = await actions.observe(ctx)
        assert not MANIFESTS.plan(ctx, observation)
        fingerprint = MANIFESTS.fingerprint(ctx, observation)
        assert fingerprint is not None
        found.append(fingerprint)
    return found


async def repairs(actions: ManifestsActions, ctx: Context) -> bool:
    """Whether the workload's own pass would change anything now."""
    return bool(MANIFESTS.plan(ctx, await actions.observe(ctx)))


def seen(found: dict[str, str], fingerprint: Fingerprint) -> str:
    """How the fleet observer reads a workload: asleep ("same") or woken."""
    if fingerprint.key not in found:
        return "gone"
    return "same" if found[fingerprint.key] == fingerprint.digest else "differs"


async def test_the_fleet_read_gives_back_what_each_pass_in_sync_recorded(
    actions: ManifestsActions,
) -> None:
    fleet = [
        *FLEET,
        member("mail", "prod"),
        member("news", "prod", serviceAccount="news-sa"),
        member("chat", "edge"),
    ]
    contexts = [context(w) for w in fleet]
    await apply_all(actions, contexts)

    recorded = await in_sync(actions, contexts)

    assert recorded[0].key == "dev/shop/cart:workload/shop/cart"
    assert len({f.key for f in recorded}) == len({f.digest for f in recorded}) == len(fleet)
    assert await actions.fleet_observe([f.key for f in recorded]) == {
        f.key: f.digest for f in recorded
    }
    # Nothing to find: a workload never written, a destination the platform lacks, no key.
    strangers = ["dev/none/cart:workload/none/cart", "gone/shop/cart:workload/shop/cart", "x"]
    assert await actions.fleet_observe(strangers) == {}


def edit(path: str, text: str = "edited: 1\n") -> Callable[[Path], None]:
    def change(clone: Path) -> None:
        (clone / path).parent.mkdir(parents=True, exist_ok=True)
        (clone / path).write_text(text)

    return change


def delete(path: str) -> Callable[[Path], None]:
    def change(clone: Path) -> None:
        target = clone / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return change


def executable(path: str) -> Callable[[Path], None]:
    return lambda clone: os.chmod(clone / path, 0o755)


def symlinked(path: str) -> Callable[[Path], None]:
    """The manifest's place taken by a symlink to a file of the same text."""

    def change(clone: Path) -> None:
        target = clone / path
        (target.parent / "original.txt").write_bytes(target.read_bytes())
        target.unlink()
        target.symlink_to("original.txt")

    return change


# A change by hand, and how the fleet read sees each of FLEET after it (unnamed: "same").
CASES: dict[str, tuple[Callable[[Path], None], dict[str, str]]] = {
    "edit a manifest": (edit(f"{SHOP_DIRECTORY}/serviceaccount.yaml"), {"shop": "differs"}),
    "delete a manifest": (delete(f"{SHOP_DIRECTORY}/serviceaccount.yaml"), {"shop": "gone"}),
    "delete the directory": (delete(SHOP_DIRECTORY), {"shop": "gone"}),
    "edit another workload's manifest": (
        edit("dev/ads/cart/serviceaccount.yaml"),
        {"ads": "differs"},
    ),
    # The pass writes only the names it owns there: a stray file and the secret stay as they are.
    "add a stray file": (edit(f"{SHOP_DIRECTORY}/configmap.yaml", "kind: ConfigMap\n"), {}),
    "rotate the delivered secret": (edit(f"{SHOP_DIRECTORY}/sealedsecret-nats.yaml"), {}),
    "delete the delivered secret": (delete(f"{SHOP_DIRECTORY}/sealedsecret-nats.yaml"), {}),
    "make a manifest executable": (executable(f"{SHOP_DIRECTORY}/serviceaccount.yaml"), {}),
    "put a symlink in a manifest's place": (
        symlinked(f"{SHOP_DIRECTORY}/serviceaccount.yaml"),
        {"shop": "gone"},
    ),
    "delete an ownership record": (delete(f"{BLOG_RECORDS}/blog-sa"), {"blog": "differs"}),
    # Emptied, it holds the name for nobody, so the pass writes it again (naming another
    # holder would wake it too, to be refused: OwnedByAnother).
    "empty an ownership record": (edit(f"{BLOG_RECORDS}/blog-sa", ""), {"blog": "differs"}),
    # A revert bringing back a record the workload released: its pass deletes it again.
    "add a record of the workload": (
        edit(f"{BLOG_RECORDS}/old-sa", "workload/blog/cart\n"),
        {"blog": "differs"},
    ),
    # Records in another namespace are no business of its pass.
    "add a record of it elsewhere": (edit(f"{BLOG_RECORDS}/x", "workload/shop/cart\n"), {}),
}


@pytest.mark.parametrize(("change", "expected"), CASES.values(), ids=CASES.keys())
async def test_a_change_by_hand_wakes_exactly_the_workloads_whose_pass_would_repair_it(
    actions: ManifestsActions,
    repo: Path,
    tmp_path: Path,
    change: Callable[[Path], None],
    expected: dict[str, str],
) -> None:
    contexts = [context(w) for w in FLEET]
    await apply_all(actions, contexts)
    # The Credentials step delivers its secret beside the manifests.
    by_hand(repo, tmp_path, edit(f"{SHOP_DIRECTORY}/sealedsecret-nats.yaml", "kind: Sealed\n"))
    recorded = await in_sync(actions, contexts)

    by_hand(repo, tmp_path, change)

    keys = [f.key for f in recorded]
    found = await actions.fleet_observe(keys)
    outcomes = {w.metadata.system: seen(found, f) for w, f in zip(FLEET, recorded, strict=True)}
    assert outcomes == {"shop": "same", "blog": "same", "ads": "same", **expected}
    # Woken exactly where the workload's own pass finds something to repair.
    wakes = {system: outcome != "same" for system, outcome in outcomes.items()}
    assert {w.metadata.system: await repairs(actions, context(w)) for w in FLEET} == wakes
    # Once the woken ones are repaired, the fleet read finds what each recorded last: the
    # woken ones' new fingerprints, the sleeping ones' old.
    woken = [ctx for ctx in contexts if wakes[ctx.workload.metadata.system]]
    await apply_all(actions, woken)
    latest = dict(zip(keys, recorded, strict=True))
    latest |= {f.key: f for f in await in_sync(actions, woken)}
    assert await actions.fleet_observe(keys) == {key: f.digest for key, f in latest.items()}


async def test_a_force_push_back_to_an_older_rendering_is_found(
    actions: ManifestsActions, repo: Path
) -> None:
    """No commit since the last sweep, yet the directory holds another rendering: comparing
    what is there, not which commits came, is what finds it."""
    shop = member("shop")
    await run_pass(actions, context(shop))
    older = head(repo)
    # The Registry's role went away: a new rendering, without the annotation.
    ctx = context(shop, role_arn=None)
    await run_pass(actions, ctx)
    (recorded,) = await in_sync(actions, [ctx])

    git("update-ref", "refs/heads/main", older, cwd=repo)

    assert seen(await actions.fleet_observe([recorded.key]), recorded) == "differs"
    assert await repairs(actions, ctx)


@pytest.fixture
def git_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `git` first on PATH that logs each run, then runs the real one: every git process the
    worker's stores start from now on (they take PATH when they are made), by its arguments."""
    real = shutil.which("git")
    shim, log = tmp_path / "shim", tmp_path / "git.log"
    shim.mkdir()
    (shim / "git").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nexec {real} "$@"\n')
    (shim / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ['PATH']}")
    return log


def subcommands(log: Path) -> list[str]:
    """The subcommand of each logged run, past the `-c name=value` options."""
    found = []
    for line in log.read_text().splitlines():
        words = line.split(" ")
        while words[0] == "-c":
            words = words[2:]
        found.append(words[0])
    return sorted(found)


async def test_a_fleet_read_runs_two_git_processes_per_state_store_at_any_size(
    actions: ManifestsActions, platform: Platform, tmp_path: Path, git_processes: Path
) -> None:
    spread = {"dev": 100, "prod": 60, "edge": 40}  # dev and prod share a store
    fleet = [member(f"{d}{i}", d) for d, count in spread.items() for i in range(count)]
    destinations = {d.name: d for d in platform.destinations}

    async def written(w: Workload) -> None:
        """As its pass writes it; all at once, so one group commit per store."""
        destination = destinations[w.spec.destination]
        store = destination_store(destination, tmp_path / "cache")
        await store.apply(write(context(w), destination.state_store.path))

    await asyncio.gather(*map(written, fleet))
    keys = [Holding.of(w).key for w in fleet]

    git_processes.write_text("")
    few = await actions.fleet_observe([keys[0], keys[100], keys[160]])
    for_few = subcommands(git_processes)
    git_processes.write_text("")
    found = await actions.fleet_observe(keys)

    assert len(few) == 3 and sorted(found) == sorted(keys)
    # Per store: ls-remote, which finds the head the clone holds (the workloads' own commit),
    # and one ls-tree of its destinations.
    per_store = ["ls-remote", "ls-tree"]
    assert subcommands(git_processes) == for_few == sorted(per_store * 2)
