"""What a change to the git state store is, and what it does to a head: pure, no git.

A `Change` makes one directory hold exactly its files; `plan_batch` applies a batch of them, in
order, to a head's tree entries and keeps only real differences, deciding claims (`Claim`) as
the commit they go into will: a change sees the records and files of the changes before it, so
one batch decides a race like two pushes. `preview` plans one change on the object ids a
listing read, which is how a capability's plan stays pure (idp/statestore.py runs the git).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import cast

from idp.errors import PermanentError

CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
REGULAR_FILE_MODES = ("100644", "100755")


def record_holder(text: str) -> str | None:
    """The holder an ownership record names: its one line, the owner's id."""
    return text.strip() or None


def _record(owner: str) -> bytes:
    return f"{owner}\n".encode()


def record_id(owner: str) -> str:
    """The object id of every record `owner` holds: its records are found by id, unread."""
    return blob_id(_record(owner))


@dataclass(frozen=True)
class Claim:
    """A name a change must hold alone (a directory, a Kubernetes object), and the path that
    says who holds it: nobody while the path is absent, else `holder` of its text (None: the
    text leaves the name free).

    A `record` claim is written by the change: the path then holds the owner's id and nothing
    else, which is how every other writer finds it. Any other claim is only read: the path is
    written by its holder as part of its own files (a manifest's owner labels, say).
    """

    path: str
    subject: str  # what the name is, as a refusal says it: "shop/web on destination dev"
    remedy: str  # what the refused author can do about it
    holder: Callable[[str], str | None] = record_holder
    record: bool = False


class OwnedByAnother(PermanentError):
    """A change refused because another owner holds one of its claims."""

    def __init__(self, claim: Claim, holder: str) -> None:
        # Owners are workflow ids, `<kind>/<key>`: "workload/a/web" reads "workload a/web".
        named = holder.replace("/", " ", 1)
        super().__init__(
            f"{claim.subject} is already written by {named}; {claim.remedy}",
            reason="OwnedByAnother",
        )
        self.claim = claim
        self.holder = holder


@dataclass(frozen=True)
class Change:
    """Make `directory` hold `files`.

    `owned` names the files this change manages when several writers share one directory (a
    workload's manifests beside its delivered secret): only those names are written or deleted
    and every other file is left alone. None manages the whole directory: files not in `files`
    are deleted.

    With an `owner`, the change holds its `claims` or does nothing: checked against the head it
    is applied to, inside the fetch-rebase-retry loop, so of two writers racing for one name the
    one whose push lands first wins and the other, re-applied on top of it, is refused with
    OwnedByAnother. A removal (no files) whose names another owner holds leaves them alone and
    succeeds, since nothing there is its own. Records of the owner below `records` that the
    change no longer claims (all of them, for a removal) are deleted: that frees the names.
    """

    directory: str
    files: Mapping[str, str]
    message: str
    owned: frozenset[str] | None = None
    owner: str | None = None
    claims: tuple[Claim, ...] = ()
    records: str | None = None


@dataclass(frozen=True)
class ChangeResult:
    commit: str | None
    written: tuple[str, ...]
    removed: tuple[str, ...]


_NO_OP = ChangeResult(commit=None, written=(), removed=())

# A tree entry: (mode, object id).
Entry = tuple[str, str]


# What one change did: (written, removed) paths, or why it was refused.
Effect = tuple[list[str], list[str]] | OwnedByAnother


@dataclass
class Plan:
    """What a batch does to the head: per-change effects, then the net edit for the commit."""

    effects: list[Effect]
    deletions: list[str]
    writes: dict[str, bytes]
    messages: list[str]


def preview(change: Change, files: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """The paths `apply(change)` would write and remove on a head holding `files` (as `listing`
    answers). Pure. Claims are not judged: `apply` decides who holds a name on the head it
    commits on, as it decides every race."""
    tree = {path: (REGULAR_FILE_MODES[0], oid) for path, oid in files.items()}
    (effect,) = plan_batch(tree, [validated(change)], None).effects
    return cast(tuple[list[str], list[str]], effect)


def plan_batch(
    tree: dict[str, Entry], changes: Sequence[Change], texts: Mapping[str, str] | None
) -> Plan:
    """Apply the changes, in order, to the head's entries; only real differences survive.

    `texts` holds the claimed paths' contents by object id (None: claims are not judged); a
    change in the batch sees the records and files of the changes before it, so one batch
    decides a race like two pushes.
    """
    state = dict(tree)
    contents: dict[str, bytes] = {}
    effects: list[Effect] = []
    for change in changes:
        taken = None if texts is None else _taken(change, state, contents, texts)
        if taken is not None and change.files:
            effects.append(taken)
            continue
        written: list[str] = []
        removed: list[str] = []
        desired = {} if taken else desired_files(change)
        records = record_files(change) if change.files else {}
        for path in sorted(_released(change, state, records)):
            del state[path]
            removed.append(path)
        prefix = change.directory + "/"
        if desired:
            for ancestor in ancestors(change.directory):
                if state.pop(ancestor, None):
                    removed.append(ancestor)
        for path in sorted(p for p in state if p.startswith(prefix) and p not in desired):
            # A removal of names another owner holds must not take that owner's files along.
            if taken or (
                change.owned is not None and path.removeprefix(prefix) not in change.owned
            ):
                continue
            del state[path]
            removed.append(path)
        for path, data in sorted((desired | records).items()):
            mode, oid = state.get(path, ("", ""))
            if mode in REGULAR_FILE_MODES and oid == blob_id(data):
                continue
            state[path] = ("100644", blob_id(data))
            contents[path] = data
            written.append(path)
        effects.append((written, removed))
    deletions = sorted(p for p in tree if p not in state)
    writes = {p: contents[p] for p in sorted(state) if state[p] != tree.get(p)}
    messages = [
        c.message
        for c, effect in zip(changes, effects, strict=True)
        if not isinstance(effect, OwnedByAnother) and any(effect)
    ]
    return Plan(effects, deletions, writes, messages)


def desired_files(change: Change) -> dict[str, bytes]:
    """The files the change writes in its directory: path -> content."""
    prefix = change.directory + "/"
    return {prefix + name: text.encode() for name, text in change.files.items()}


def record_files(change: Change) -> dict[str, bytes]:
    """The record files the change writes: path -> the owner's record."""
    if change.owner is None:
        return {}
    return {c.path: _record(change.owner) for c in change.claims if c.record}


def own_blobs(change: Change) -> set[str]:
    """Object ids whose text names the change's owner as holder of anything it claims: its
    record, and its own files (which carry whatever marks it as their owner)."""
    own = {blob_id(text.encode()) for text in change.files.values()}
    if change.owner is not None:
        own.add(record_id(change.owner))
    return own


def _taken(
    change: Change, state: dict[str, Entry], contents: dict[str, bytes], texts: Mapping[str, str]
) -> OwnedByAnother | None:
    """The first claim of the change that another owner holds in `state`."""
    own = own_blobs(change)
    for claim in change.claims:
        if claim.path not in state:
            continue
        _, oid = state[claim.path]
        if oid in own:
            continue
        written = contents.get(claim.path)
        holder = claim.holder(written.decode() if written is not None else texts[oid])
        if holder is not None and holder != change.owner:
            return OwnedByAnother(claim, holder)
    return None


def _released(change: Change, state: dict[str, Entry], kept: Mapping[str, bytes]) -> list[str]:
    """The owner's records below `change.records` that the change no longer claims. A record
    is recognised by its object id alone: it holds nothing but the owner's id."""
    if change.owner is None or change.records is None:
        return []
    prefix, mine = change.records + "/", record_id(change.owner)
    return [
        p for p, (_, oid) in state.items() if p.startswith(prefix) and oid == mine and p not in kept
    ]


def paths_read(change: Change) -> list[str]:
    """What the plan of a change needs to see of the head: its directory, its claims, and its
    owner's records."""
    return [change.directory, *(c.path for c in change.claims), *filter(None, [change.records])]


def change_result(commit: str | None, effect: Effect) -> ChangeResult | OwnedByAnother:
    if isinstance(effect, OwnedByAnother):
        return effect
    written, removed = effect
    if commit is None or (not written and not removed):
        return _NO_OP
    return ChangeResult(commit, tuple(sorted(written)), tuple(sorted(removed)))


def blob_id(data: bytes) -> str:
    """The object id git gives this content (SHA-1 repositories, git's default)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def ancestors(directory: str) -> list[str]:
    """'a/b/c' -> ['a', 'a/b', 'a/b/c']."""
    parts = directory.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


# Validation and messages.


def validated(change: Change) -> Change:
    directory = validated_directory(change.directory)
    if not isinstance(change.files, Mapping):
        raise PermanentError(
            f"The files for state store directory {directory!r} must be a mapping."
        )
    for name, text in change.files.items():
        if not _is_safe_relative(name):
            raise PermanentError(
                f"File name {name!r} in state store directory {directory!r} is not allowed: it "
                "must be a relative path inside the directory, without '..', '.git' or empty "
                "segments."
            )
        try:
            text.encode()
        except (AttributeError, UnicodeError):
            raise PermanentError(f"File {directory}/{name} must be given as UTF-8 text.") from None
    for name in change.files:
        for parent in PurePosixPath(name).parents:
            if str(parent) in change.files:
                raise PermanentError(
                    f"File names {str(parent)!r} and {name!r} in state store directory "
                    f"{directory!r} conflict: one path cannot be both a file and a directory."
                )
    owned = change.owned
    if owned is not None:
        if not isinstance(owned, frozenset | set) or not all(map(_is_safe_relative, owned)):
            raise PermanentError(
                f"The owned file names for state store directory {directory!r} must be a set of "
                "relative paths inside the directory."
            )
        strays = sorted(set(change.files) - owned)
        if strays:
            # A change writing a file it does not claim could never delete it again.
            raise PermanentError(
                f"File(s) {', '.join(map(repr, strays))} in state store directory {directory!r} "
                "are not among the file names the change owns."
            )
        owned = frozenset(owned)
    message = change.message.strip() if isinstance(change.message, str) else ""
    return Change(
        directory,
        dict(change.files),
        message or f"idp: update {directory}",
        owned,
        *_validated_ownership(change),
    )


def _validated_ownership(change: Change) -> tuple[str | None, tuple[Claim, ...], str | None]:
    owner, claims = change.owner, tuple(change.claims)
    if owner is None:
        if claims or change.records is not None:
            raise PermanentError(
                f"The change of state store directory {change.directory!r} claims names but "
                "says no owner to hold them."
            )
        return None, (), None
    if not owner.strip() or CONTROL_CHARACTERS.search(owner):
        raise PermanentError(
            f"The owner {owner!r} of state store directory {change.directory!r} must be one line "
            "of text."
        )
    claims = tuple(replace(c, path=validated_directory(c.path)) for c in claims)
    records = None if change.records is None else validated_directory(change.records)
    return owner, claims, records


def validated_directory(directory: str) -> str:
    trimmed = directory.rstrip("/") if isinstance(directory, str) else ""
    if not _is_safe_relative(trimmed):
        raise PermanentError(
            f"State store directory {directory!r} is not allowed: it must be a relative path "
            "inside the repository, without '..', '.git' or empty segments."
        )
    return trimmed


def _is_safe_relative(path: object) -> bool:
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        return False
    if CONTROL_CHARACTERS.search(path):
        return False
    # git itself refuses .GIT, ".git." and friends; so do we, before anything is written.
    return all(
        segment not in ("", ".", "..") and segment.lower().rstrip(". ") != ".git"
        for segment in path.split("/")
    )
