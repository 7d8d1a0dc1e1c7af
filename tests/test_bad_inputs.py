"""The bad-input corpus: every way a resource file can be wrong gets exactly one problem line.

`idpctl apply -f` prints these lines and exits without starting anything, so each one must name
the file (and, past the YAML layer, the document and the field) and say what is allowed. The static
cases live in tests/bad_inputs/, one per file, with the expected fragment of the line in
expected.yaml.
Cases whose content would trip secret scanners, or is too large or not text, are generated here.
"""

import os
from collections.abc import Callable
from pathlib import Path

import nkeys
import pytest
import yaml

from idp.loading import MAX_FILE_BYTES, InputError, load

CORPUS = Path(__file__).parent / "bad_inputs"
EXPECTED: dict[str, str] = yaml.safe_load((CORPUS / "expected.yaml").read_text(encoding="utf-8"))

VALID = """\
apiVersion: idp.dev/v1alpha1
kind: Workload
metadata:
  name: hello
  system: demo
spec:
  owner: team-demo
  destination: dev
  namespace: demo
"""


def only_problem(path: Path) -> str:
    """The single problem line `load` reports for `path`; fails if it loads or reports more."""
    with pytest.raises(InputError) as caught:
        load([path])
    problems = caught.value.problems
    assert len(problems) == 1, f"expected one problem line for {path.name}, got {problems}"
    line = problems[0]
    assert "\n" not in line, f"a problem must be one line: {line!r}"
    assert line.startswith(f"{path}: "), f"the line must start with the file path: {line!r}"
    # The exception text is what idpctl prints; it must be exactly the problem lines.
    assert str(caught.value) == line
    return line


# ---- the static corpus -----------------------------------------------------------------------


def test_corpus_and_manifest_list_the_same_cases() -> None:
    # An unlisted file would never be checked, and a listed but missing one would silently pass.
    files = {p.name for p in CORPUS.iterdir() if p.is_file() and p.name != "expected.yaml"}
    assert files == set(EXPECTED)
    assert len(files) >= 50
    assert all(name.endswith(".yaml") for name in files)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_input_reports_one_line(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = CORPUS / name
    fragment = EXPECTED[name].replace("{file}", str(path))
    line = only_problem(path)
    assert line.count(fragment) == 1, f"{fragment!r} not in {line!r}"
    # Loading only reports: it neither prints nor writes anything of its own.
    assert capsys.readouterr() == ("", "")


def test_whole_corpus_in_one_apply_reports_every_case_and_nothing_more() -> None:
    # One apply with many bad files must list every problem, not stop at the first file, and the
    # valid documents in the corpus (duplicate cases' first documents) must not collide.
    paths = [CORPUS / name for name in sorted(EXPECTED)]
    with pytest.raises(InputError) as caught:
        load(paths)
    problems = caught.value.problems
    assert len(problems) == len(paths)
    # Duplicates are found once every file is read, so they come last: match lines by file.
    for path in paths:
        lines = [line for line in problems if line.startswith(f"{path}: ")]
        assert len(lines) == 1, (path.name, lines)
        assert EXPECTED[path.name].replace("{file}", str(path)) in lines[0]


# ---- generated cases -------------------------------------------------------------------------
# Secrets are built at run time so that no credential-shaped string is committed; the shapes are
# the ones the loader promises to refuse: nkey seeds, AWS access key ids, PEM private keys.


def _nkey_seed() -> str:
    # A real, freshly generated user seed: proves the loader catches what `nsc` actually prints.
    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()


def _account_seed() -> str:
    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT).decode()


def _aws_key_id(prefix: str = "AKIA") -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    return prefix + "".join(alphabet[b % len(alphabet)] for b in os.urandom(16))


def _pem(kind: str) -> str:
    label = f"{kind} PRIVATE KEY" if kind else "PRIVATE KEY"
    return f"-----{'BEGIN'} {label}-----\nMIIB{os.urandom(8).hex()}\n-----END {label}-----\n"


def _nats_jwt() -> str:
    return f"-----{'BEGIN'} NATS USER JWT-----\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5In0\n"


SECRETS: dict[str, tuple[Callable[[], str], str]] = {
    "nkey-user-seed": (_nkey_seed, "an NATS nkey seed"),
    "nkey-account-seed": (_account_seed, "an NATS nkey seed"),
    "aws-access-key-id": (_aws_key_id, "an AWS access key id"),
    "aws-session-key-id": (lambda: _aws_key_id("ASIA"), "an AWS access key id"),
    "pem-private-key": (lambda: _pem(""), "a private key"),
    "pem-rsa-private-key": (lambda: _pem("RSA"), "a private key"),
    "pem-openssh-private-key": (lambda: _pem("OPENSSH"), "a private key"),
    "nats-user-jwt": (_nats_jwt, "a NATS user JWT"),
}


def _with_label(secret: str) -> str:
    # A block scalar, so multi-line PEM text survives YAML as it would if pasted.
    body = "".join(f"      {line}\n" for line in secret.splitlines())
    return VALID.replace("  system: demo\n", f"  system: demo\n  labels:\n    note: |\n{body}")


# Where a secret may be pasted, and the field path the problem line must name.
PLACES: dict[str, tuple[Callable[[str], str], str]] = {
    "label": (_with_label, "metadata.labels.note"),
    "owner": (
        lambda s: VALID.replace("owner: team-demo", f"owner: {s.splitlines()[0]!r}"),
        "spec.owner",
    ),
    "subject-list": (
        lambda s: (
            VALID + "  nats:\n    permissions:\n      publish:\n        allow:\n"
            f"          - orders.>\n          - {s.splitlines()[0]!r}\n"
        ),
        "spec.nats.permissions.publish.allow[1]",
    ),
}


@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize("secret_kind", sorted(SECRETS))
def test_secret_pasted_into_a_spec_is_refused_without_echoing_it(
    tmp_path: Path, secret_kind: str, place: str
) -> None:
    make_secret, what = SECRETS[secret_kind]
    secret = make_secret()
    render, field = PLACES[place]
    path = tmp_path / f"secret-{secret_kind}-in-{place}.yaml"
    path.write_text(render(secret), encoding="utf-8")
    line = only_problem(path)
    assert line == (
        f"{path}: document 1: {field}: looks like {what}; specs must not hold credentials "
        "(the reconciler issues and delivers them)"
    )
    # The error goes to terminals, CI logs and Port: it must not repeat the credential.
    for part in secret.splitlines():
        if len(part) > 8:
            assert part not in line


def test_oversized_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "oversized.yaml"
    # Valid YAML all the way, so only the size can be the reason.
    padding = "# padding\n" * (MAX_FILE_BYTES // 10 + 1)
    path.write_text(VALID + padding, encoding="utf-8")
    size = path.stat().st_size
    assert size > MAX_FILE_BYTES
    line = only_problem(path)
    assert line == f"{path}: is {size} bytes; at most {MAX_FILE_BYTES} bytes are allowed"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("latin-1.yaml", VALID.replace("team-demo", "équipe-demo").encode("latin-1")),
        ("utf-16.yaml", VALID.encode("utf-16")),
        ("binary.yaml", bytes(range(128, 256))),
    ],
)
def test_non_utf8_file_is_refused(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert only_problem(path) == f"{path}: is not UTF-8 text"


def test_control_character_is_reported_on_one_line_with_its_position(tmp_path: Path) -> None:
    # PyYAML's own message for this spans three lines and names "<unicode string>", not the file.
    path = tmp_path / "control-character.yaml"
    path.write_text(VALID.replace("owner: team-demo", "owner: team\adem"), encoding="utf-8")
    line = only_problem(path)
    assert line == f"{path}: line 7, column 14: not valid YAML (character #x0007 is not allowed)"


def test_nesting_too_deep_to_read_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(VALID + "  registry: " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    assert only_problem(path) == (
        f"{path}: nests too deeply to read; no resource is shaped like that"
    )


def test_directory_without_yaml_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "resources"
    folder.mkdir()
    (folder / "README.md").write_text("not a resource\n")
    (folder / "hello.json").write_text("{}\n")
    (folder / "nested").mkdir()
    (folder / "nested" / "hello.yaml").write_text(VALID)  # not read: apply -f is not recursive
    with pytest.raises(InputError) as caught:
        load([folder])
    assert caught.value.problems == [
        f"{folder}: no such file, or a directory with no .yaml/.yml files"
    ]


def test_missing_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    with pytest.raises(InputError) as caught:
        load([path])
    assert caught.value.problems == [
        f"{path}: no such file, or a directory with no .yaml/.yml files"
    ]
