"""The git state store: make one directory per resource hold exactly its rendered manifests.

Argo CD reads the branch, so the store writes only real differences and never an empty commit.

Changes submitted concurrently to one store are group-committed: a single writer task turns
everything queued into one commit and one push, which is what keeps a thousand workloads from
costing a thousand pushes. Several workers (each with its own clone) share a branch safely: a
rejected push means another worker won the race, and because every change is a desired state,
re-applying the batch onto the new remote head is the correct rebase.

The clone is bare and the commit is built with plumbing (ls-tree to see the head, fast-import to
write blobs, trees and the commit on top of it) rather than in a checked-out work tree: it is the
same "reset to the remote head, apply, commit" but costs a few milliseconds instead of a scan of
every file, which keeps the window in which another worker can win the push race small. No
checkout also means a symlink somebody committed can never redirect a write outside the clone.

Two resources must never write one directory or object, so a change may claim names (`Claim`):
the check runs on the head each attempt is planned on, so it is decided exactly like the push
race itself, and a refused change leaves the branch untouched while the rest of its batch commits.

What a change would do can be told without doing it, by the same planning: `listing` reads the
object ids that planning looks at (one look at the remote, no blob read) and `preview` plans on
them, claims aside, which is how a capability's plan stays pure and a pass in sync costs no more
than that. `files` reads the same ids below whole directories, so that one read tells a fleet
observer what every resource kept there holds now.

A look at the remote asks for the branch's head alone (`ls-remote`) and fetches only a head the
clone does not hold already: most often the head is our own last push, or what the last look
fetched.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fcntl
import hashlib
import logging
import os
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idp.errors import PermanentError, TransientError
from idp.statechange import (
    CONTROL_CHARACTERS,
    REGULAR_FILE_MODES,
    Change,
    ChangeResult,
    Entry,
    OwnedByAnother,
    Plan,
    ancestors,
    change_result,
    own_blobs,
    paths_read,
    plan_batch,
    record_id,
    validated,
    validated_directory,
)

log = logging.getLogger(__name__)

MAX_BATCH = 200
# Lost races are normal when several workers push at once; give up only after this long (the
# activity heartbeats meanwhile, and its own retry follows).
PUSH_RETRY_SECONDS = 60.0
BACKOFF_BASE_SECONDS = 0.05
BACKOFF_CAP_SECONDS = 1.0
NETWORK_TIMEOUT_SECONDS = 60.0
# Each commit is written as a pack of its own, and every git command looks through every pack.
# A fetch would start git's `gc --auto`, but a clone whose head is always its own last push
# never fetches: so the store asks for one itself after this many packs. It costs a process
# that finds nothing to do until git's own limit (gc.autoPackLimit, 50 packs) is passed.
GC_EVERY_PACKS = 10

# Answers from git that retrying cannot fix: wrong URL, missing or refused credentials.
_PERMANENT_GIT_ERRORS = re.compile(
    r"authentication failed|permission denied|repository not found|could not read username"
    r"|does not appear to be a git repository|returned error: (401|403|404)",
    re.IGNORECASE,
)
_URL_CREDENTIALS = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
# Commits are assembled on this private ref, then pushed by sha; the branch is never local.
_PENDING_REF = "refs/idp/pending"

# Variables that would point our git commands at somebody else's repository.
_INHERITED_GIT_VARIABLES = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
)
_Queued = tuple[Change, asyncio.Future[ChangeResult]]


@dataclass(frozen=True)
class _Found:
    entries: dict[str, Entry]  # every entry below the paths read: path -> entry
    texts: dict[str, str]  # object id -> text, for each regular file among them when asked


@dataclass(frozen=True)
class _Read:
    wanted: int  # the look at the remote it must see: the first to begin after it was asked for
    paths: tuple[str, ...]
    texts: bool  # also the text of each regular file below the paths


_QueuedRead = tuple[_Read, asyncio.Future[_Found]]


@dataclass(frozen=True)
class _Run:
    returncode: int
    stdout: bytes
    stderr: str


class StateStore:
    def __init__(
        self,
        url: str,
        branch: str,
        workdir: Path,
        *,
        author: str = "idp-reconciler",
        email: str = "idp@localhost",
    ) -> None:
        if not isinstance(url, str) or not url.strip() or url.startswith("-"):
            raise PermanentError(f"State store URL {redact_url(str(url))!r} is not a git URL.")
        if CONTROL_CHARACTERS.search(url + branch + author + email) or re.search(
            "[<>]", author + email
        ):
            raise PermanentError(
                f"State store {redact_url(url)!r}: the URL, branch, author or e-mail contains "
                "control characters or angle brackets."
            )
        self.url = url
        self.branch = branch
        self.workdir = Path(workdir).absolute()
        self._safe_url = redact_url(url)
        # git runs inside the clone, so a relative local path must be anchored here and now.
        self._git_url = url if _is_remote_url(url) else os.path.abspath(url)
        self._committer = f"{author} <{email}>"
        self._lockfile = self.workdir.parent / f".{self.workdir.name}.lock"
        self._env = {k: v for k, v in os.environ.items() if k not in _INHERITED_GIT_VARIABLES}
        self._env.update(GIT_TERMINAL_PROMPT="0", GIT_LITERAL_PATHSPECS="1", LC_ALL="C")
        self._branch_checked = False
        # Whether git may have left a lock behind: at start (another process may have been
        # killed with its children), after we kill a git, after one fails on a lock, and until a
        # sweep finds none. Walking the whole clone on every operation cost more than the git.
        self._locks_suspect = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()
        # Reads share looks at the remote: each needs the head as found after it was asked
        # for, and onboarding queues hundreds of them behind one another (`_at_head`).
        self._looks_begun = 0
        self._looked = 0  # which of them last succeeded
        self._head: str | None = None
        self._reads: list[_QueuedRead] = []
        self._reader: asyncio.Task[None] | None = None
        self._pending: list[_Queued] = []
        self._writer: asyncio.Task[None] | None = None
        self._pushed: str | None = None  # the branch head our last commit left, if it was
        # The commits the clone's own refs hold: the tracking ref's, the pending ref's.
        self._tracked: str | None = None
        self._pending_commit: str | None = None
        self._packs_written = 0  # since the last gc

    async def apply(self, change: Change) -> ChangeResult:
        """Make `change.directory` hold exactly `change.files` (of the names in `change.owned`,
        when given); writes only what differs."""
        change = validated(change)
        loop = self._bind_loop()
        future: asyncio.Future[ChangeResult] = loop.create_future()
        self._pending.append((change, future))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._drain())
        return await future

    async def read(self, directory: str) -> dict[str, str]:
        """The directory's files at the remote branch head: relative name -> text."""
        directory = validated_directory(directory)
        found = await self._at_head((directory,), texts=True)
        prefix = directory + "/"
        return {
            path.removeprefix(prefix): found.texts[oid]
            for path, (mode, oid) in sorted(found.entries.items())
            if mode in REGULAR_FILE_MODES and path.startswith(prefix)
        }

    async def listing(self, change: Change) -> dict[str, str]:
        """What `preview` needs to tell what `apply(change)` would do, read at the remote branch
        head: path -> object id of the regular files in the change's directory, at its claims
        and among its owner's records. One look at the remote, and no blob is read."""
        change = validated(change)
        entries = (await self._at_head(paths_read(change))).entries
        prefix = change.directory + "/"
        claimed = {claim.path for claim in change.claims}
        mine = record_id(change.owner) if change.owner is not None else None
        # Other owners' records are never this change's business, and a namespace may hold many.
        return {
            path: oid
            for path, (mode, oid) in sorted(entries.items())
            if mode in REGULAR_FILE_MODES
            and (path.startswith(prefix) or path in claimed or oid == mine)
        }

    async def files(self, directories: Sequence[str]) -> dict[str, str]:
        """Path -> object id of every regular file below `directories` at the remote branch
        head, as `listing` reads them: one look at the remote and one ls-tree however many
        directories, so that one read answers for every resource kept below them. No blob is
        read."""
        directories = [validated_directory(directory) for directory in directories]
        if not directories:
            return {}  # ls-tree without a path would list the whole repository
        entries = (await self._at_head(directories)).entries
        return {path: oid for path, (mode, oid) in entries.items() if mode in REGULAR_FILE_MODES}

    async def _at_head(self, paths: Sequence[str], *, texts: bool = False) -> _Found:
        """Every entry below `paths` at the remote head as found by a look that began after
        this was asked for, so a read sees every push that ended before it. The reads waiting
        for the clone together share that look, one ls-tree and one cat-file: onboarding asks
        for hundreds at once, and each git process costs more than what it reads."""
        loop = self._bind_loop()
        answer: asyncio.Future[_Found] = loop.create_future()
        self._reads.append((_Read(self._looks_begun + 1, tuple(paths), texts), answer))
        if self._reader is None or self._reader.done():
            self._reader = loop.create_task(self._drain_reads())
        return await answer

    async def _drain_reads(self) -> None:
        while self._reads:
            async with self._exclusive():
                batch = [(r, f) for r, f in self._reads[:MAX_BATCH] if not f.done()]
                del self._reads[:MAX_BATCH]
                if batch:
                    await _answer_batch(batch, self._answer([read for read, _ in batch]))

    async def _answer(self, batch: Sequence[_Read]) -> list[_Found]:
        """What each read of the batch asked for, the clone held."""
        await self._prepare()
        # The look that begins now began after every read of the batch was asked for.
        if self._looked < max(read.wanted for read in batch):
            self._looks_begun += 1
            begun = self._looks_begun
            self._head = await self._remote_head()
            self._looked = begun
        if not self._head:
            return [_Found({}, {}) for _ in batch]
        listed = await self._entries(self._head, sorted({p for read in batch for p in read.paths}))
        ordered = sorted(listed)
        entries = [_below(listed, ordered, read.paths) for read in batch]
        blobs = sorted(
            {
                oid
                for read, found in zip(batch, entries, strict=True)
                if read.texts
                for mode, oid in found.values()
                if mode in REGULAR_FILE_MODES
            }
        )
        texts = dict(zip(blobs, await self._texts(blobs), strict=True)) if blobs else {}
        pairs = zip(batch, entries, strict=True)
        return [_Found(found, texts if read.texts else {}) for read, found in pairs]

    async def _texts(self, oids: Sequence[str]) -> list[str]:
        """The text of each blob, in order."""
        request = "".join(f"{oid}\n" for oid in oids).encode()
        return _split_batch((await self._git("cat-file", "--batch", input=request)).stdout)

    # The writer side.

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        # The registry outlives event loops (asyncio.run per CLI command, test loops), and a
        # lock or writer task from a finished loop cannot be awaited in a new one.
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._lock = asyncio.Lock()
            self._reads = []
            self._reader = None
            self._pending = []
            self._writer = None
        return loop

    async def _drain(self) -> None:
        while self._pending:
            batch: list[_Queued] = []
            await _answer_batch(batch, self._commit(batch))

    def _take(self, batch: list[_Queued]) -> None:
        """Move queued changes into the batch, up to its cap; callers that gave up are skipped."""
        room = MAX_BATCH - len(batch)
        batch += [(c, f) for c, f in self._pending[:room] if not f.done()]
        del self._pending[:room]

    async def _commit(self, batch: list[_Queued]) -> list[ChangeResult | OwnedByAnother]:
        """One commit for what is queued once the clone is ours (into `batch`, empty when
        called); results follow the batch, which may grow while retrying."""
        async with self._exclusive():
            # What was queued while a read held the clone rides along, costing no push of its own.
            self._take(batch)
            if not batch:
                return []  # every caller gave up
            await self._prepare()
            rejection = ""
            deadline = asyncio.get_running_loop().time() + PUSH_RETRY_SECONDS
            attempt = 0
            # Our last push is most often still the branch head: plan on it without asking the
            # remote, and let the push's lease say whether it still is. Only a plan to change
            # something can be checked that way.
            guess, self._pushed = self._pushed, None
            while attempt == 0 or asyncio.get_running_loop().time() < deadline:
                if guess is None:
                    attempt += 1
                    if attempt > 1:
                        ceiling = min(
                            BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** min(attempt, 8)
                        )
                        await asyncio.sleep(random.uniform(0, ceiling))
                # So does whatever was queued meanwhile: a lost race costs no extra push.
                self._take(batch)
                changes = [change for change, _ in batch]
                head = guess or await self._remote_head()
                plan = await self._plan(head, changes)
                if plan.deletions or plan.writes:
                    commit = await self._write_commit(head, plan)
                    rejection = await self._push(commit, head)
                    if not rejection:
                        self._pushed = commit
                        return [change_result(commit, effect) for effect in plan.effects]
                    if guess is None:
                        log.info("push to %s lost a race (%s); retrying", self._safe_url, rejection)
                elif guess is None:
                    return [change_result(None, effect) for effect in plan.effects]
                guess = None
            raise TransientError(
                f"Pushing to branch {self.branch!r} of state store {self._safe_url} was rejected "
                f"{attempt} times in {PUSH_RETRY_SECONDS:g}s (last: {rejection}): other writers "
                "kept winning the race or the remote refuses our pushes.",
                reason="PushRejected",
            )

    async def _plan(self, head: str | None, changes: Sequence[Change]) -> Plan:
        directories = sorted({path for change in changes for path in paths_read(change)})
        tree = await self._entries(head, directories) if head else {}
        # A file standing where a resource needs a directory is in the way; only a resource
        # whose directory is still empty can meet one, so ask git about those alone.
        creating = [
            c.directory
            for c in changes
            if c.files and not any(p.startswith(c.directory + "/") for p in tree)
        ]
        if head and creating:
            tree |= await self._files_among(head, {a for d in creating for a in ancestors(d)})
        return plan_batch(tree, changes, await self._claim_texts(tree, changes))

    async def _claim_texts(
        self, tree: dict[str, Entry], changes: Sequence[Change]
    ) -> dict[str, str]:
        """The text of every claimed path at the head that is not already known to be the
        claimant's own (its record, or exactly a file it writes): object id -> text. In the
        steady state that is none, so a pass that changes nothing reads no blob."""
        unknown = set()
        for change in changes:
            own = own_blobs(change)
            unknown |= {
                tree[c.path][1]
                for c in change.claims
                if c.path in tree and tree[c.path][1] not in own
            }
        if not unknown:
            return {}
        ordered = sorted(unknown)
        return dict(zip(ordered, await self._texts(ordered), strict=True))

    async def _entries(self, head: str, directories: Sequence[str]) -> dict[str, Entry]:
        """Every entry below the directories at `head`: path -> (mode, object id)."""
        listing = await self._git("ls-tree", "-r", "-z", head, "--", *directories)
        found: dict[str, Entry] = {}
        for record in filter(None, listing.stdout.decode(errors="surrogateescape").split("\0")):
            meta, _, path = record.partition("\t")
            mode, _, oid = meta.split(" ")
            found[path] = (mode, oid)
        return found

    async def _files_among(self, head: str, paths: set[str]) -> dict[str, Entry]:
        """Those of `paths` that are files (not directories) at `head`."""
        ordered = sorted(paths)
        query = "".join(f"{head}:{p}\n" for p in ordered).encode()
        answer = await self._git("cat-file", "--batch-check", input=query)
        found: dict[str, Entry] = {}
        for path, line in zip(ordered, answer.stdout.decode().splitlines(), strict=True):
            if line.endswith(" missing"):
                continue
            oid, kind, _ = line.split(" ")
            if kind != "tree":
                found[path] = (kind, oid)  # not a regular mode, so never "already as desired"
        return found

    async def _write_commit(self, head: str | None, plan: Plan) -> str:
        message = _commit_message(plan.messages).encode()
        stream = bytearray(f"reset {_PENDING_REF}\ncommit {_PENDING_REF}\nmark :1\n".encode())
        stream += f"committer {self._committer} now\ndata {len(message)}\n".encode() + message
        stream += f"\nfrom {head}\n".encode() if head else b"\n"
        for path in plan.deletions:
            stream += f"D {_quoted(path)}\n".encode(errors="surrogateescape")
        for path, data in plan.writes.items():
            stream += f"M 100644 inline {_quoted(path)}\ndata {len(data)}\n".encode() + data + b"\n"
        stream += b"\nget-mark :1\n"
        written = await self._git(
            "fast-import", "--quiet", "--force", "--date-format=now", input=bytes(stream)
        )
        self._pending_commit = written.stdout.decode().strip()
        self._packs_written += 1
        return self._pending_commit

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        # The asyncio lock orders this process's users; the file lock keeps out any other
        # process that was handed the same clone directory.
        async with self._lock:
            self._lockfile.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._lockfile, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        await asyncio.sleep(0.02)
                yield
            finally:
                os.close(fd)

    async def _prepare(self) -> None:
        if not (self.workdir / "HEAD").is_file():
            if self.workdir.exists() and any(self.workdir.iterdir()):
                raise PermanentError(
                    f"The clone directory {self.workdir} for state store {self._safe_url} exists "
                    "and is not a git clone; refusing to overwrite it."
                )
            self.workdir.mkdir(parents=True, exist_ok=True)
            await self._git("init", "--quiet", "--bare")
            # A new clone holds none of them.
            self._pushed = self._tracked = self._pending_commit = None
        if self._locks_suspect:
            self._locks_suspect = self._clear_stale_locks()
        if self._packs_written >= GC_EVERY_PACKS:
            self._packs_written = 0
            collected = await self._git("gc", "--auto", "--quiet", check=False)
            if collected.returncode != 0:
                log.warning(
                    "git gc in the clone of state store %s failed: %s",
                    self._safe_url,
                    _git_reason(collected.stderr),
                )
        if not self._branch_checked:
            valid = await self._git("check-ref-format", f"refs/heads/{self.branch}", check=False)
            if valid.returncode != 0:
                raise PermanentError(
                    f"Branch {self.branch!r} of state store {self._safe_url} is not a valid git "
                    "branch name."
                )
            self._branch_checked = True

    def _clear_stale_locks(self) -> bool:
        """Remove git's *.lock files left by a git process killed mid-update (a worker killed
        with its children): git never removes them itself, and every later fetch or commit
        would fail on them. Only old ones: a live git holds its lock for far less than this,
        and other processes sharing the clone are kept out by the file lock we hold. True when
        a lock too young to remove is left."""
        cutoff = time.time() - NETWORK_TIMEOUT_SECONDS
        left = False
        for lock in self.workdir.rglob("*.lock"):
            with contextlib.suppress(FileNotFoundError):
                if lock.is_file() and lock.stat().st_mtime < cutoff:
                    log.warning("removing stale git lock %s", lock)
                    lock.unlink()
                elif lock.is_file():
                    left = True
        return left

    async def _remote_head(self) -> str | None:
        """The branch's head at the remote, fetched unless the clone holds it already (our last
        push's commit, at the pending ref, or what we fetched last, at the tracking ref); None
        when the remote has no such branch yet. Asking costs one git process that reads the
        remote's refs alone, where the fetch and its rev-parse are two more."""
        tracking = f"refs/remotes/origin/{self.branch}"
        refspec = f"+refs/heads/{self.branch}:{tracking}"
        fetch = ("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", self._git_url, refspec)
        ls_remote = ("ls-remote", self._git_url, f"refs/heads/{self.branch}")
        for _ in range(3):
            listed = await self._git(*ls_remote, network=True, check=False)
            if listed.returncode != 0:
                raise self._error("fetch", listed.stderr)
            if not listed.stdout.strip():
                await self._git("update-ref", "-d", tracking, check=False)
                self._tracked = None
                return None
            head = listed.stdout.split()[0].decode()
            if head in (self._tracked, self._pending_commit):
                return head
            fetched = await self._git(*fetch, network=True, check=False)
            if fetched.returncode == 0:
                tracked = await self._git("rev-parse", "--verify", tracking)
                self._tracked = tracked.stdout.decode().strip()
                return self._tracked
            # Another writer deleted the branch between our look and our fetch: look again.
        raise self._error("fetch", fetched.stderr)

    async def _push(self, commit: str, parent: str | None) -> str:
        """Push the commit, planned on `parent` (None: on no branch); "" on success, else why
        the remote refused: another writer won, or the branch is no longer at `parent`."""
        branch = f"refs/heads/{self.branch}"
        # The lease makes "still at parent" exact: a branch moved back to an older commit (by
        # hand) is not at parent either, and fast-forwarding it would undo that move.
        lease = f"--force-with-lease={branch}:{parent or ''}"
        push = ("push", "--porcelain", "--no-verify", lease, self._git_url, f"{commit}:{branch}")
        pushed = await self._git(*push, network=True, check=False)
        if pushed.returncode == 0:
            return ""
        report = pushed.stdout.decode(errors="replace")
        if "[rejected]" in report or "[remote rejected]" in report:
            lines = [line for line in report.splitlines() if "rejected]" in line]
            return redact_url(lines[0].split("\t")[-1]) if lines else "rejected"
        raise self._error("push", pushed.stderr)

    def _error(self, action: str, stderr: str) -> PermanentError | TransientError:
        reason = _git_reason(stderr)
        text = (
            f"Could not {action} branch {self.branch!r} of state store {self._safe_url}: {reason}."
        )
        if _PERMANENT_GIT_ERRORS.search(stderr):
            return PermanentError(text, reason="StateStoreUnreachable")
        return TransientError(text, reason="StateStoreUnavailable")

    async def _git(
        self, *args: str, input: bytes | None = None, check: bool = True, network: bool = False
    ) -> _Run:
        # No background gc racing our next command for the clone's locks, and never the
        # command-running ext:: transport, whatever the user's own configuration says. A commit
        # is written as one pack, never as loose objects: git's default for a commit of fewer
        # than 100 objects, which made every later fast-import several times dearer.
        process = await asyncio.create_subprocess_exec(
            "git",
            *("-c", "gc.autoDetach=false", "-c", "protocol.ext.allow=never"),
            *("-c", "fastimport.unpackLimit=0"),
            *args,
            cwd=self.workdir,
            env=self._env,
            stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            timeout = NETWORK_TIMEOUT_SECONDS if network else None
            stdout, stderr = await asyncio.wait_for(process.communicate(input), timeout)
        except BaseException as error:
            # Never leave a git process writing into the clone behind us.
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            self._locks_suspect = True
            if isinstance(error, TimeoutError):
                raise TransientError(
                    f"git {args[0]} against state store {self._safe_url} timed out after "
                    f"{NETWORK_TIMEOUT_SECONDS:.0f} seconds.",
                    reason="StateStoreTimeout",
                ) from None
            raise
        run = _Run(process.returncode or 0, stdout, stderr.decode(errors="replace"))
        if run.returncode != 0 and ".lock" in run.stderr:
            self._locks_suspect = True
        if check and run.returncode != 0:
            # Another process sharing the clone may have moved its refs, and git may then have
            # collected a commit we believed held: the next attempt fetches.
            self._tracked = self._pending_commit = None
            raise TransientError(
                f"git {args[0]} failed in the clone of state store {self._safe_url} at "
                f"{self.workdir}: {_git_reason(run.stderr)}.",
                reason="StateStoreCloneFailed",
            )
        return run


async def _answer_batch(
    batch: Sequence[tuple[object, asyncio.Future[Any]]], work: Awaitable[Sequence[object]]
) -> None:
    """Give each caller of the batch still waiting its answer from `work`, in batch order: an
    answer that is an exception, or the failure of `work` itself, is raised to the caller. The
    batch may grow while `work` runs (a commit retried takes what was queued meanwhile)."""
    try:
        answers = await work
    except asyncio.CancelledError:
        for _, future in batch:
            future.cancel()
        raise
    except Exception as error:
        answers = [error] * len(batch)
    for (_, future), answer in zip(batch, answers, strict=True):
        if future.done():
            continue  # its caller gave up
        if isinstance(answer, Exception):
            future.set_exception(answer)
        else:
            future.set_result(answer)


def _below(
    entries: Mapping[str, Entry], ordered: Sequence[str], paths: Sequence[str]
) -> dict[str, Entry]:
    """Those of `entries` (their paths `ordered`) that `git ls-tree -r -- paths` would list."""
    found = {path: entries[path] for path in paths if path in entries}
    for path in paths:
        # What lies below `path` sorts from `path/` up to `path0`, "0" coming right after "/".
        start = bisect.bisect_left(ordered, path + "/")
        end = bisect.bisect_left(ordered, path + "0", start)
        found.update((p, entries[p]) for p in ordered[start:end])
    return found


def _quoted(path: str) -> str:
    # fast-import's C-style quoting; deletions may name paths somebody else committed.
    escaped = path.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _commit_message(messages: Sequence[str]) -> str:
    if len(messages) == 1:
        return messages[0] + "\n"
    lines = [f"idp: {len(messages)} resources", ""]
    for message in messages:
        first, *rest = message.splitlines()
        lines.append(f"- {first}")
        lines += [f"  {line}" if line.strip() else "" for line in rest]
    return "\n".join(lines) + "\n"


def _split_batch(output: bytes) -> list[str]:
    """Contents from `git cat-file --batch`: "<id> <type> <size>\\n<bytes>\\n" per object."""
    contents: list[str] = []
    position = 0
    while position < len(output):
        header_end = output.index(b"\n", position)
        size = int(output[position:header_end].split()[2])
        start = header_end + 1
        contents.append(output[start : start + size].decode(errors="replace"))
        position = start + size + 1
    return contents


def _is_remote_url(url: str) -> bool:
    if _URL_SCHEME.match(url):
        return True
    # scp-like user@host:path has a colon before any slash.
    head, colon, _ = url.partition(":")
    return bool(colon) and "/" not in head


def redact_url(text: str) -> str:
    """The URL (or any text holding URLs) without user:password@, fit for messages and logs."""
    return _URL_CREDENTIALS.sub(r"\1", text)


def _git_reason(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    chosen = next((ln for ln in lines if ln.startswith(("fatal:", "error:"))), None)
    chosen = chosen or (lines[-1] if lines else "git gave no reason")
    for prefix in ("fatal: ", "error: "):
        chosen = chosen.removeprefix(prefix)
    return redact_url(chosen).rstrip(".")[:300]


# The process-wide registry: one store (one queue, one clone) per repository branch.

_stores: dict[tuple[str, str], StateStore] = {}
_stores_guard = threading.Lock()


def state_store(url: str, branch: str, cache_dir: Path) -> StateStore:
    """The shared store for (url, branch), cloned under cache_dir/<hash of url and branch>."""
    with _stores_guard:
        store = _stores.get((url, branch))
        if store is None:
            key = hashlib.sha256(f"{url}\0{branch}".encode()).hexdigest()[:16]
            store = StateStore(url, branch, Path(cache_dir) / key)
            _stores[(url, branch)] = store
        return store
