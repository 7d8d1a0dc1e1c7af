"""The bad-input corpus: every way a resource file can be wrong gets exactly one problem line.

`idpctl apply -f` prints these lines and exits without starting anything, so each one must name
the file (and, past the YAML layer, the document and the field) and say what is allowed. The static
cases live in tests/bad_inputs/, one per file, with the expected fragment of the line in
expected.yaml; mistakes in the platform file live in tests/bad_inputs/platform/ the same way.
Cases whose content would trip secret scanners, or is too large or not text, are generated here.
Every line, static or generated, is also held to what a person needs: see `assert_readable`.
"""

import importlib
import inspect
import os
import pkgutil
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path

import nkeys
import pytest
import yaml
from pydantic import BaseModel

from idp.loading import MAX_FILE_BYTES, TOO_DEEP, InputError, load
from idp.platform import Platform, PlatformError, load_platform

CORPUS = Path(__file__).parent / "bad_inputs"
EXPECTED: dict[str, str] = yaml.safe_load((CORPUS / "expected.yaml").read_text(encoding="utf-8"))
PLATFORM_CORPUS = CORPUS / "platform"
PLATFORM_EXPECTED: dict[str, str] = yaml.safe_load(
    (PLATFORM_CORPUS / "expected.yaml").read_text(encoding="utf-8")
)
# Applied alone, a file of empty documents is refused; next to real resources it adds nothing.
EMPTY_CASES = {"empty-file.yaml", "comments-only.yaml"}

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
    # The exception text is what idpctl prints; it must be exactly the problem lines.
    assert str(caught.value) == line
    assert_readable(line, path)
    return line


def platform_problem(path: Path) -> str:
    with pytest.raises(PlatformError) as caught:
        load_platform(path)
    line = str(caught.value)
    assert_readable(line, path, fields=list(Platform.model_fields))
    return line


# ---- what every line owes its reader ---------------------------------------------------------

# Where in the file: a YAML position, a document (and then usually a field path), or the file.
_WHERE = re.compile(r"(line \d+, column \d+: |document \d+: )?")
_FIELD = re.compile(r"[A-Za-z][A-Za-z0-9]*(\[\d+\])*(\.[A-Za-z0-9_-]+(\[\d+\])*)*: ")
# Problems about a whole file or document, which have no narrower field to name.
_WHOLE = re.compile(
    r"must be a mapping with|is not UTF-8|is \d+ bytes|no resources found|nests too"
)
# Words that state the rule.
_RULE = ("must", "may", "only", "needs", "allowed", "required", "at most", "at least", "valid YAML")
# Python's words for types and values, which a YAML author never wrote.
_PYTHON_WORDS = (
    "None",
    "NoneType",
    "True",
    "False",
    "dict",
    "str",
    "int",
    "float",
    "bool",
    "tuple",
)
# pydantic's phrasing, which names its own machinery.
_PYDANTIC_PHRASES = ("Input should", "instance of", "should match pattern", "after validation")
# Pieces of regular expressions.
_REGEX = re.compile(
    r"\^|\[\^?[A-Za-z0-9]-[A-Za-z0-9]|\\[dwsSbD]|\(\?[:=!]|\{\d+,\d*\}|\.\*|\$(?=$|['\")\s])"
)
# The kinds are what users write in `kind:`; every other model class name is ours alone.
_USER_FACING_CLASSES = {"Workload", "ApiAggregator", "Platform"}


@cache
def _model_class_names() -> frozenset[str]:
    names = set()
    for package in ("idp", "workflows", "starter"):
        root = importlib.import_module(package)
        for module_info in pkgutil.walk_packages(root.__path__, f"{package}."):
            module = importlib.import_module(module_info.name)
            for value in vars(module).values():
                if inspect.isclass(value) and issubclass(value, BaseModel):
                    names.add(value.__name__)
    assert {"WorkloadSpec", "RegistrySpec", "AwsConfig"} <= names  # the walk found the models
    return frozenset(names - _USER_FACING_CLASSES)


def assert_readable(line: str, path: Path, fields: list[str] | None = None) -> None:
    """One sentence naming the file and where in it, and what is allowed, in the reader's terms.

    `fields` are the top-level fields a message about the whole file may name instead of a
    field path (the platform file's cross-field rules)."""
    assert "\n" not in line, f"a problem must be one line: {line!r}"
    assert line.startswith(f"{path}: "), f"the line must start with the file path: {line!r}"
    rest = line.removeprefix(f"{path}: ")
    where = _WHERE.match(rest)
    assert where is not None
    message = rest[where.end() :]
    if not where.group(0).startswith("line ") and not _WHOLE.match(message):
        field = _FIELD.match(message)
        # "destination names must be unique" names `destinations`.
        names_a_field = fields is not None and any(f.rstrip("s") in message for f in fields)
        assert field is not None or names_a_field, f"no field path in {line!r}"
        if field is not None:
            message = message[field.end() :]
    assert any(word in message for word in _RULE), f"{line!r} does not say what is allowed"
    assert not re.search(r"[.!?]\s+[A-Z]", message), f"{line!r} is more than one sentence"
    for phrase in _PYDANTIC_PHRASES:
        assert phrase not in message, f"{line!r} speaks pydantic"
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", message))
    python = words & {*_PYTHON_WORDS, *_model_class_names()}
    assert not python, f"{line!r} names Python types or classes: {sorted(python)}"
    assert not _REGEX.search(message), f"{line!r} shows a regular expression"


# ---- the static corpus -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("corpus", "expected", "least"),
    [(CORPUS, EXPECTED, 150), (PLATFORM_CORPUS, PLATFORM_EXPECTED, 30)],
)
def test_corpus_and_manifest_list_the_same_cases(
    corpus: Path, expected: dict[str, str], least: int
) -> None:
    # An unlisted file would never be checked, and a listed but missing one would silently pass.
    files = {p.name for p in corpus.iterdir() if p.is_file() and p.name != "expected.yaml"}
    assert files == set(expected)
    assert len(files) >= least
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
    paths = [CORPUS / name for name in sorted(EXPECTED) if name not in EMPTY_CASES]
    with pytest.raises(InputError) as caught:
        load(paths)
    problems = caught.value.problems
    assert len(problems) == len(paths)
    # Duplicates are found once every file is read, so they come last: match lines by file.
    for path in paths:
        lines = [line for line in problems if line.startswith(f"{path}: ")]
        assert len(lines) == 1, (path.name, lines)
        assert EXPECTED[path.name].replace("{file}", str(path)) in lines[0]
        assert_readable(lines[0], path)


@pytest.mark.parametrize("name", sorted(PLATFORM_EXPECTED))
def test_bad_platform_file_reports_one_readable_line(name: str) -> None:
    path = PLATFORM_CORPUS / name
    assert platform_problem(path) == f"{path}: {PLATFORM_EXPECTED[name]}"


def test_the_readability_rules_catch_what_pydantic_and_python_say(tmp_path: Path) -> None:
    # The rules above guard every line; they must reject the messages this corpus replaced.
    path = tmp_path / "bad.yaml"
    for line in [
        "document 1: spec: Input should be a valid dictionary or instance of WorkloadSpec",
        "document 1: kind: must be one of Workload, ApiAggregator; got None",
        "document 1: spec.maxRequestBodySize: must match '^\\d+(Ki|Mi|Gi)?$'",
        "document 1: metadata.name: must match [a-z0-9]+",
        "document 1: spec.owner: must be a str",
        "document 1: contains itself through a YAML alias (*name)",
        "document 1: spec.owner: required field is missing. Add it.",
    ]:
        with pytest.raises(AssertionError):
            assert_readable(f"{path}: {line}", path)


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
    assert only_problem(path) == f"{path}: is not UTF-8 text; it must be saved as UTF-8"


def test_control_character_is_reported_on_one_line_with_its_position(tmp_path: Path) -> None:
    # PyYAML's own message for this spans three lines and names "<unicode string>", not the file.
    path = tmp_path / "control-character.yaml"
    path.write_text(VALID.replace("owner: team-demo", "owner: team\adem"), encoding="utf-8")
    line = only_problem(path)
    assert line == f"{path}: line 7, column 14: not valid YAML (character #x0007 is not allowed)"


def test_nesting_too_deep_to_read_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(VALID + "  registry: " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    assert only_problem(path) == f"{path}: {TOO_DEEP}"


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
