"""Unit tests of what `idpctl apply -f` accepts and how it says no.

Covers the resource models, `idp.loading.load` (one `FILE: document N: field.path: what is
allowed` line per problem, all-or-nothing), the platform file, durations, Kubernetes names, the JSON
Schema published for editors and `temporal workflow start`, and the manifests rendered into the
state store.
No servers: everything here is pure.
"""

import copy
import json
import random
import re
import string
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from idp.durations import format_duration, parse_duration
from idp.loading import MAX_FILE_BYTES, InputError, load, resource_files
from idp.manifests import (
    ROLE_ARN_ANNOTATION,
    digest,
    render_workload,
    workload_directory,
    workload_labels,
)
from idp.models import (
    API_VERSION,
    ApiAggregator,
    DeletionPolicy,
    Workload,
    disallowed_changes,
)
from idp.names import dns1123_label, dns1123_subdomain
from idp.platform import Platform, PlatformError, load_platform
from idp.yamltext import dump

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DURATION = (
    "must be a duration such as 90s, 10m, 1h30m or 7d (whole numbers with the units d, h, m and "
    "s, in that order)"
)
LABEL = (
    "must be a DNS-1123 label: at most 63 lowercase letters, digits or '-', "
    "starting and ending with a letter or digit"
)


def workload_doc(name: str = "hello", system: str = "demo", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Workload",
        "metadata": {"name": name, "system": system},
        "spec": {"owner": "team-demo", "destination": "dev", "namespace": "demo", **spec},
    }


def aggregator_doc(name: str = "public", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ApiAggregator",
        "metadata": {"name": name},
        "spec": {
            "hostname": "api.example.com",
            "gateway": {"name": "shared", "namespace": "gateways"},
            "destination": "dev",
            "namespace": "gateways",
            **spec,
        },
    }


def target(**fields: Any) -> dict[str, Any]:
    base = {
        "aggregator": "api.example.com",
        "paths": ["/orders"],
        "service": {"name": "hello", "port": 8080},
    }
    return base | fields


def write(folder: Path, name: str, *documents: Any) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")
    return path


def problems_of(*paths: Path) -> list[str]:
    with pytest.raises(InputError) as caught:
        load(list(paths))
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def one_problem(path: Path) -> str:
    problems = problems_of(path)
    assert len(problems) == 1, problems
    return problems[0]


def workload(**spec: Any) -> Workload:
    return Workload.model_validate(workload_doc(**spec))


# ---- valid input -----------------------------------------------------------------------------


def test_example_loads_with_documented_defaults() -> None:
    [item] = load([EXAMPLES / "hello.yaml"])
    assert (item.source, item.index) == (str(EXAMPLES / "hello.yaml"), 1)
    resource = item.resource
    assert isinstance(resource, Workload)
    assert resource.workflow_id == "workload/demo/hello"
    assert resource.service_account == "hello"
    assert resource.metadata.labels == {"tier": "backend"}
    assert resource.spec.deletion_policy is DeletionPolicy.RETAIN
    registry = resource.spec.registry
    assert (registry.enabled, registry.image_tag_mutability, registry.scan_on_push) == (
        True,
        "IMMUTABLE",
        True,
    )
    assert resource.spec.nats is None
    assert resource.spec.api == []


def test_json_example_declares_the_same_workload_as_the_yaml_one() -> None:
    # hello.json is what `temporal workflow start --input` takes; it must not drift from the YAML.
    [item] = load([EXAMPLES / "hello.yaml"])
    from_json = json.loads((EXAMPLES / "hello.json").read_text())["workload"]
    assert Workload.model_validate(from_json) == item.resource


def test_every_field_loads_and_survives_a_json_round_trip(tmp_path: Path) -> None:
    doc = workload_doc(
        serviceAccount="hello-sa",
        registry={
            "enabled": True,
            "imageTagMutability": "MUTABLE",
            "scanOnPush": False,
            "encryption": "KMS",
            "kmsKey": "alias/orders",
            "lifecycle": {"keepLast": 1000, "expireUntaggedAfterDays": 1},
            "managedPolicyArns": [
                "arn:aws:iam::aws:policy/ReadOnlyAccess",
                "arn:aws-us-gov:iam::123456789012:policy/team/orders-read",
            ],
            "forceDeleteImages": True,
        },
        nats={
            "account": "orders",
            "permissions": {
                "publish": {"allow": ["orders.>"], "deny": ["orders.admin.>"]},
                "subscribe": {"allow": ["_INBOX.>"]},
                "allowResponses": True,
            },
            "credentials": {
                "ttl": "1d",
                "refreshBefore": "1h30m",
                "keyRotation": "30d",
                "rotationGrace": "90s",
                "delivery": "external-secret",
                "secretName": "hello.nats",
            },
        },
        api=[target(paths=["/orders", "/carts/v1"], rewritePrefix="/")],
        deletionPolicy="Delete",
    )
    doc["metadata"]["labels"] = {"tier": "backend", "app.kubernetes.io/part-of": "shop"}
    [item] = load([write(tmp_path, "full.yaml", doc)])
    resource = item.resource
    assert isinstance(resource, Workload)
    credentials = resource.spec.nats.credentials if resource.spec.nats else None
    assert credentials is not None
    assert credentials.refresh_before == timedelta(hours=1, minutes=30)
    assert credentials.rotation_grace == timedelta(seconds=90)
    # Workflow inputs are JSON: what the model writes must read back to the same resource, with
    # the names and duration spelling users wrote.
    dumped = resource.model_dump(mode="json")
    assert dumped["spec"]["nats"]["credentials"]["refreshBefore"] == "1h30m"
    assert (
        dumped["spec"]["registry"]["managedPolicyArns"]
        == doc["spec"]["registry"]["managedPolicyArns"]
    )
    assert Workload.model_validate_json(json.dumps(dumped)) == resource


def test_aggregator_loads(tmp_path: Path) -> None:
    [item] = load([write(tmp_path, "agg.yaml", aggregator_doc(maxRequestBodySize="10Mi"))])
    assert isinstance(item.resource, ApiAggregator)
    assert item.resource.workflow_id == "api-aggregator/api.example.com"


def test_directory_reads_its_yaml_and_yml_files_in_name_order_and_nothing_else(
    tmp_path: Path,
) -> None:
    write(tmp_path, "b.yml", workload_doc("bravo"))
    write(tmp_path, "a.yaml", workload_doc("alpha"))
    (tmp_path / "notes.txt").write_text("kind: nonsense\n")
    (tmp_path / "hello.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "c.yaml", {"kind": "Nonsense"})
    assert resource_files(tmp_path) == [tmp_path / "a.yaml", tmp_path / "b.yml"]
    loaded = load([tmp_path])
    assert [i.resource.metadata.name for i in loaded] == ["alpha", "bravo"]


def test_empty_documents_are_skipped_but_keep_their_place_in_the_numbering(tmp_path: Path) -> None:
    path = tmp_path / "multi.yaml"
    path.write_text("---\n# nothing here\n---\n" + yaml.safe_dump(workload_doc()), encoding="utf-8")
    [item] = load([path])
    assert item.index == 2


def test_same_name_in_another_system_or_kind_is_not_a_duplicate(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "many.yaml",
        workload_doc("hello", "demo"),
        workload_doc("hello", "shop"),
        aggregator_doc("hello"),
    )
    assert len(load([path])) == 3


def test_file_of_exactly_the_size_limit_loads(tmp_path: Path) -> None:
    path = tmp_path / "limit.yaml"
    text = yaml.safe_dump(workload_doc()) + "#"
    path.write_text(text + "x" * (MAX_FILE_BYTES - len(text) - 1) + "\n", encoding="utf-8")
    assert path.stat().st_size == MAX_FILE_BYTES
    assert len(load([path])) == 1


def test_merge_keys_may_override_what_they_merge(tmp_path: Path) -> None:
    # Duplicate keys are refused, but a `<<:` merge exists to be overridden; that must still work.
    path = tmp_path / "merge.yaml"
    path.write_text(
        "apiVersion: idp.dev/v1alpha1\nkind: Workload\n"
        "metadata:\n  name: hello\n  system: demo\n"
        "spec:\n  <<: {owner: someone, destination: dev}\n  owner: team-demo\n  namespace: demo\n",
        encoding="utf-8",
    )
    [item] = load([path])
    assert isinstance(item.resource, Workload)
    assert item.resource.spec.owner == "team-demo"


# ---- one line per problem --------------------------------------------------------------------

# (case, document, the line after "FILE: document 1: ") — exact lines, so any change in what a
# user reads is a deliberate one.
INVALID: list[tuple[str, Any, str]] = [
    (
        "unknown top-level field",
        workload_doc() | {"status": {"phase": "Ready"}},
        "status: unknown field; allowed fields are apiVersion, kind, metadata, spec",
    ),
    (
        "unknown field in a list item",
        workload_doc(api=[target(weight=3)]),
        "spec.api[0].weight: unknown field; allowed fields are aggregator, paths, service, "
        "rewritePrefix",
    ),
    (
        "unknown field deep in nats",
        workload_doc(nats={"credentials": {"ttl": "1d", "lifetime": "2d"}}),
        "spec.nats.credentials.lifetime: unknown field; allowed fields are ttl, refreshBefore, "
        "keyRotation, rotationGrace, delivery, secretName",
    ),
    (
        "unknown field in the aggregator's gateway",
        aggregator_doc(gateway={"name": "shared", "namespace": "gateways", "kind": "Gateway"}),
        "spec.gateway.kind: unknown field; allowed fields are name, namespace, sectionName",
    ),
    (
        "uppercase name",
        workload_doc("Hello"),
        f"metadata.name: {LABEL}; got 'Hello'",
    ),
    (
        "64-character name",
        workload_doc("a" * 64),
        f"metadata.name: {LABEL}; got '{'a' * 64}'",
    ),
    (
        "dots in a label",
        workload_doc(destination="eu.dev"),
        f"spec.destination: {LABEL}; got 'eu.dev'",
    ),
    (
        "subdomain with an underscore",
        workload_doc(serviceAccount="hello_sa"),
        "spec.serviceAccount: must be a DNS-1123 subdomain: at most 253 lowercase letters, "
        "digits, '-' or '.', each part starting and ending with a letter or digit; got 'hello_sa'",
    ),
    (
        "list where a mapping belongs",
        workload_doc(registry=["enabled"]),
        "spec.registry: must be a mapping with the fields enabled, imageTagMutability, "
        "scanOnPush, encryption, kmsKey, lifecycle, managedPolicyArns, forceDeleteImages; "
        "got a list",
    ),
    (
        "number where a string belongs",
        workload_doc(namespace=7),
        "spec.namespace: must be text; got the number 7, so quote it",
    ),
    (
        "string where a list belongs",
        workload_doc(api=[target(paths="/orders")]),
        "spec.api[0].paths: must be a list (one '- item' per line, or [a, b]); got '/orders'",
    ),
    (
        "missing owner",
        {**workload_doc(), "spec": {"destination": "dev", "namespace": "demo"}},
        "spec.owner: required field is missing",
    ),
    (
        "missing port in a list item",
        workload_doc(api=[target(service={"name": "hello"})]),
        "spec.api[0].service.port: required field is missing",
    ),
    (
        "enum value",
        workload_doc(deletionPolicy="Orphan"),
        "spec.deletionPolicy: must be Retain or Delete; got 'Orphan'",
    ),
    (
        "duration without a unit",
        workload_doc(nats={"credentials": {"ttl": "10"}}),
        f"spec.nats.credentials.ttl: {DURATION}; got '10'",
    ),
    (
        "negative duration",
        workload_doc(nats={"credentials": {"keyRotation": -3600}}),
        f"spec.nats.credentials.keyRotation: {DURATION}; got the number -3600",
    ),
    (
        "duration past what a timedelta holds",
        workload_doc(nats={"credentials": {"ttl": 10**20}}),
        f"spec.nats.credentials.ttl: {DURATION}; got the number {10**20}",
    ),
    (
        "ttl under five minutes",
        workload_doc(nats={"credentials": {"ttl": "4m59s"}}),
        "spec.nats.credentials: ttl must be at least 5m",
    ),
    (
        "refreshBefore not shorter than ttl",
        workload_doc(nats={"credentials": {"ttl": "1h", "refreshBefore": "60m"}}),
        "spec.nats.credentials: refreshBefore must be shorter than ttl",
    ),
    (
        "path without a leading slash",
        workload_doc(api=[target(paths=["/ok", "orders"])]),
        "spec.api[0].paths[1]: must start with '/'; got 'orders'",
    ),
    (
        "path with an encoded slash",
        workload_doc(api=[target(paths=["/a%2Fb"])]),
        "spec.api[0].paths[0]: must not contain '%2f'; got '/a%2Fb'",
    ),
    (
        "path of 1025 characters",
        workload_doc(api=[target(paths=["/" + "p" * 1024])]),
        "spec.api[0].paths[0]: must be at most 1024 characters",
    ),
    (
        "too many paths",
        workload_doc(api=[target(paths=[f"/p{i}" for i in range(17)])]),
        "spec.api[0].paths: must have at most 16 items; got 17",
    ),
    (
        "port out of range",
        workload_doc(api=[target(service={"name": "hello", "port": 65536})]),
        "spec.api[0].service.port: must be a whole number from 1 to 65535; got the number 65536",
    ),
    (
        "managed policy ARN of a role",
        workload_doc(registry={"managedPolicyArns": ["arn:aws:iam::123456789012:role/x"]}),
        "spec.registry.managedPolicyArns[0]: must be an IAM policy ARN "
        "(arn:aws:iam::ACCOUNT:policy/NAME); got 'arn:aws:iam::123456789012:role/x'",
    ),
    (
        "kmsKey without KMS",
        workload_doc(registry={"kmsKey": "alias/orders"}),
        "spec.registry: kmsKey is allowed only with encryption: KMS",
    ),
    (
        "wrong apiVersion",
        workload_doc() | {"apiVersion": "idp.dev/v1beta1"},
        "apiVersion: must be idp.dev/v1alpha1; got 'idp.dev/v1beta1'",
    ),
    (
        "wrong kind",
        workload_doc() | {"kind": "Service"},
        "kind: must be Workload or ApiAggregator; got 'Service'",
    ),
    (
        "a list document",
        ["apiVersion", "kind"],
        "must be a mapping with apiVersion, kind, metadata and spec; got a list",
    ),
    (
        "a number document",
        42,
        "must be a mapping with apiVersion, kind, metadata and spec; got the number 42",
    ),
]


@pytest.mark.parametrize(
    ("document", "expected"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_document_gets_one_line_naming_file_document_field_and_rule(
    tmp_path: Path, document: Any, expected: str
) -> None:
    path = write(tmp_path, "bad.yaml", document)
    assert one_problem(path) == f"{path}: document 1: {expected}"


def test_each_problem_in_a_document_gets_its_own_line(tmp_path: Path) -> None:
    doc = workload_doc(deletionPolicy="Never", registry={"encryption": "RSA"})
    doc["metadata"]["name"] = "Hello"
    path = write(tmp_path, "bad.yaml", doc)
    assert sorted(problems_of(path)) == sorted(
        [
            f"{path}: document 1: metadata.name: {LABEL}; got 'Hello'",
            f"{path}: document 1: spec.registry.encryption: must be AES256 or KMS; got 'RSA'",
            f"{path}: document 1: spec.deletionPolicy: must be Retain or Delete; got 'Never'",
        ]
    )


def test_problems_in_several_files_and_documents_are_all_reported_and_nothing_loads(
    tmp_path: Path,
) -> None:
    good = write(tmp_path, "good.yaml", workload_doc("fine"))
    bad = write(tmp_path, "bad.yaml", workload_doc("ok-too"), workload_doc(owner="a b"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [\n", encoding="utf-8")
    problems = problems_of(good, bad, broken)
    assert problems == [
        f"{bad}: document 2: spec.owner: must name a team or person: up to 128 letters, digits, "
        "'.', '_', '@' or '-'; got 'a b'",
        f"{broken}: line 2, column 1: not valid YAML (expected the node content, but found "
        "'<stream end>')",
    ]


def test_duplicate_across_files_names_both_places(tmp_path: Path) -> None:
    first = write(tmp_path, "first.yaml", workload_doc("other"), workload_doc())
    second = write(tmp_path, "second.yaml", workload_doc(owner="someone-else"))
    assert problems_of(first, second) == [
        f"{second}: document 1: metadata.name: Workload 'demo/hello' is already declared in "
        f"{first} document 2; each resource may appear once per apply"
    ]


def test_the_same_file_given_twice_is_a_duplicate(tmp_path: Path) -> None:
    # `apply -f dir -f dir/hello.yaml` would otherwise apply the workload twice.
    path = write(tmp_path, "hello.yaml", workload_doc())
    assert problems_of(tmp_path, path) == [
        f"{path}: document 1: metadata.name: Workload 'demo/hello' is already declared in "
        f"{path} document 1; each resource may appear once per apply"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "kind: Workload\nmetadata:\n\tname: hello\n",
            "line 3, column 1: not valid YAML (found character '\\t' that cannot start any token)",
        ),
        (
            'kind: Workload\nspec:\n  owner: "team\n  namespace: demo\n',
            "line 5, column 1: not valid YAML (found unexpected end of stream)",
        ),
        (
            "kind: Workload\nmetadata:\n  name: a\n name: b\n",
            "line 4, column 2: not valid YAML "
            "(expected <block end>, but found '<block mapping start>')",
        ),
        (
            "kind: Workload\nmetadata:\n  name: a\n  system: b\n  name: c\n",
            "line 5, column 3: not valid YAML (key 'name' is given twice in one mapping)",
        ),
        (
            "kind: Workload\nspec: {owner: a, owner: b}\n",
            "line 2, column 18: not valid YAML (key 'owner' is given twice in one mapping)",
        ),
    ],
    ids=["tab", "unclosed-quote", "bad-indentation", "duplicate-key", "duplicate-flow-key"],
)
def test_malformed_yaml_gives_line_and_column(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    assert one_problem(path) == f"{path}: {expected}"


def test_self_referencing_alias_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(workload_doc()) + "status: &s\n  self: *s\n", encoding="utf-8")
    assert one_problem(path) == (
        f"{path}: line 11, column 9: the alias *s is inside the value it repeats, so the document "
        "would contain itself; an alias may only repeat a value that ends before it"
    )


def test_non_utf8_and_oversized_files_are_refused(tmp_path: Path) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(
        yaml.safe_dump(workload_doc(owner="équipe"), allow_unicode=True).encode("latin-1")
    )
    big = tmp_path / "big.yaml"
    big.write_text("#" * MAX_FILE_BYTES + "\n", encoding="utf-8")
    assert problems_of(latin, big) == [
        f"{latin}: is not UTF-8 text; it must be saved as UTF-8",
        f"{big}: is {MAX_FILE_BYTES + 1} bytes; at most {MAX_FILE_BYTES} bytes are allowed",
    ]


def test_secret_is_reported_instead_of_validation_errors_that_would_echo_it(
    tmp_path: Path,
) -> None:
    # Validation messages quote the bad value ("got ..."); a credential pasted into a field that
    # also fails validation must still never be quoted back.
    seed = "SU" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"[::-1] * 2
    seed = seed[:58]
    doc = workload_doc(owner=seed, deletionPolicy="Never")
    doc["spec"]["nats"] = {"permissions": {"subscribe": {"deny": ["x", f"token {seed} end"]}}}
    path = write(tmp_path, "pasted.yaml", doc)
    problems = problems_of(path)
    assert problems == [
        f"{path}: document 1: spec.owner: looks like an NATS nkey seed; specs must not hold "
        "credentials (the reconciler issues and delivers them)",
        f"{path}: document 1: spec.nats.permissions.subscribe.deny[1]: looks like an NATS nkey "
        "seed; specs must not hold credentials (the reconciler issues and delivers them)",
    ]
    assert seed not in "\n".join(problems)


def test_empty_directory_and_missing_path_are_problems(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert problems_of(empty, tmp_path / "missing.yaml") == [
        f"{empty}: no such file, or a directory with no .yaml/.yml files",
        f"{tmp_path / 'missing.yaml'}: no such file, or a directory with no .yaml/.yml files",
    ]


# ---- changes a live workload may not take ----------------------------------------------------


def test_moving_a_live_workload_is_disallowed_with_the_way_out() -> None:
    current = workload()
    assert disallowed_changes(current, workload(destination="prod")) == [
        "spec.destination cannot change on a live workload (it is 'dev', the new spec says "
        "'prod'); delete the workload and apply it again to move it"
    ]
    both = disallowed_changes(current, workload(destination="prod", namespace="shop"))
    assert [line.split(" ", 1)[0] for line in both] == ["spec.destination", "spec.namespace"]


def test_other_changes_are_allowed() -> None:
    current = workload()
    changed = workload(
        owner="team-other",
        serviceAccount="other",
        registry={"scanOnPush": False},
        nats={"credentials": {"ttl": "1d"}},
        api=[target()],
        deletionPolicy="Delete",
    )
    assert disallowed_changes(current, changed) == []
    assert disallowed_changes(current, current) == []


# ---- models ----------------------------------------------------------------------------------


def test_resources_are_immutable() -> None:
    # Workflow state holds these; an in-place edit would bypass validation and `apply`.
    resource = workload()
    with pytest.raises(ValidationError):
        resource.spec.owner = "someone"  # type: ignore[misc]


def test_credential_windows_at_their_limits_are_allowed() -> None:
    creds = workload(nats={"credentials": {"ttl": "5m", "refreshBefore": "4m59s"}})
    assert creds.spec.nats is not None
    assert creds.spec.nats.credentials.ttl == timedelta(minutes=5)


# ---- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("10m", timedelta(minutes=10)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("7d", timedelta(days=7)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        (" 10m ", timedelta(minutes=10)),
        ("0s", timedelta(0)),
        (300, timedelta(minutes=5)),
        (1.5, timedelta(seconds=1.5)),
        (timedelta(hours=2), timedelta(hours=2)),
    ],
)
def test_parse_duration(value: object, expected: timedelta) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "10",
        "1w",
        "1.5h",
        "10 m",
        "30m1h",
        "1H",
        "P7D",
        "-5m",
        -1,
        float("nan"),
        float("inf"),
        True,
        None,
        "99999999999d",
        10**20,
        [1],
    ],
)
def test_parse_duration_refuses_with_the_allowed_forms(value: object) -> None:
    with pytest.raises(ValueError, match=rf"^{re.escape(DURATION)}; got "):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(days=7), "7d"),
        (timedelta(days=1, seconds=1), "1d1s"),
    ],
)
def test_format_duration_writes_what_parse_reads(value: timedelta, text: str) -> None:
    assert format_duration(value) == text
    assert parse_duration(text) == value


# ---- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "0", "a-b", "a" * 63, "1abc", "a--b"])
def test_valid_labels(name: str) -> None:
    assert dns1123_label(name) == name


@pytest.mark.parametrize("name", ["", "A", "a" * 64, "-a", "a-", "a.b", "a_b", "a b", "é"])
def test_invalid_labels_say_what_is_allowed(name: str) -> None:
    with pytest.raises(ValueError) as caught:
        dns1123_label(name)
    assert str(caught.value) == f"{LABEL}; got {name!r}"


@pytest.mark.parametrize("name", ["a", "a.b", "api.example.com", ("a" * 63 + ".") * 3 + "a" * 61])
def test_valid_subdomains(name: str) -> None:
    assert dns1123_subdomain(name) == name


@pytest.mark.parametrize(
    "name", ["", ".a", "a.", "a..b", "A.b", "a_b.c", "-a.b", "a-.b", "a" * 254, "a:443"]
)
def test_invalid_subdomains(name: str) -> None:
    with pytest.raises(ValueError, match="must be a DNS-1123 subdomain: at most 253"):
        dns1123_subdomain(name)


# ---- JSON Schema -----------------------------------------------------------------------------


def _properties(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every object's property names, by definition name ("" for the root)."""
    found = {"": schema.get("properties", {})}
    for name, definition in schema.get("$defs", {}).items():
        found[name] = definition.get("properties", {})
    return found


@pytest.mark.parametrize("model", [Workload, ApiAggregator])
def test_json_schema_uses_the_camel_case_names_users_write(
    model: type[Workload] | type[ApiAggregator],
) -> None:
    schema = model.model_json_schema(by_alias=True)
    for definition, properties in _properties(schema).items():
        for name in properties:
            assert "_" not in name, f"{definition}.{name} is not camelCase"
    spec = schema["$defs"][f"{model.__name__}Spec"]
    assert spec["additionalProperties"] is False
    if model is Workload:
        assert {"serviceAccount", "deletionPolicy"} <= set(spec["properties"])
        assert set(spec["required"]) == {"owner", "destination", "namespace"}
        credentials = schema["$defs"]["NatsCredentials"]["properties"]
        assert {"refreshBefore", "keyRotation", "rotationGrace", "secretName"} <= set(credentials)
        assert schema["properties"]["apiVersion"]["const"] == API_VERSION
    else:
        assert "maxRequestBodySize" in spec["properties"]
    # Unknown fields are errors in the schema too, at every level.
    for name, definition in schema["$defs"].items():
        if definition.get("type") == "object":
            assert definition.get("additionalProperties") is False, name


def test_json_schema_accepts_the_example_and_rejects_unknown_fields() -> None:
    schema = Workload.model_json_schema(by_alias=True)
    example = yaml.safe_load((EXAMPLES / "hello.yaml").read_text())
    jsonschema.validate(example, schema)
    bad = copy.deepcopy(example)
    bad["spec"]["replicas"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_json_schema_defaults_are_written_the_way_users_write_them() -> None:
    # An editor or the portal fills defaults in; they must pass the schema and the loader.
    schema = Workload.model_json_schema(by_alias=True)
    credentials = schema["$defs"]["NatsCredentials"]["properties"]
    assert credentials["ttl"]["default"] == "7d"
    assert credentials["rotationGrace"]["default"] == "1h"
    for definition in schema["$defs"].values():
        for prop in definition.get("properties", {}).values():
            if "default" in prop:
                rules = {k: v for k, v in prop.items() if k != "default"}
                jsonschema.validate(prop["default"], rules | {"$defs": schema["$defs"]})
    full = workload_doc(nats={"credentials": {"ttl": "7d", "rotationGrace": "1h"}})
    defaults = workload_doc(nats={})
    assert Workload.model_validate(full) == Workload.model_validate(defaults)


# ---- manifests -------------------------------------------------------------------------------


def test_render_is_byte_stable_and_sorted() -> None:
    labels_one_way = workload_doc()
    labels_one_way["metadata"]["labels"] = {"zone": "a", "tier": "backend"}
    labels_other_way = workload_doc()
    labels_other_way["metadata"]["labels"] = {"tier": "backend", "zone": "a"}
    first = render_workload(Workload.model_validate(labels_one_way), role_arn="arn:aws:iam::1:r")
    again = render_workload(Workload.model_validate(labels_one_way), role_arn="arn:aws:iam::1:r")
    reordered = render_workload(
        Workload.model_validate(labels_other_way), role_arn="arn:aws:iam::1:r"
    )
    # The state store commits on any byte change: equal input must give equal bytes.
    assert first == again == reordered
    assert digest(first) == digest(again)
    text = first["serviceaccount.yaml"]
    assert "\t" not in text and not any(c in text for c in "{}")
    parsed = yaml.safe_load(text)
    assert text == yaml.safe_dump(parsed, sort_keys=True, default_flow_style=False)
    top_keys = [line.split(":")[0] for line in text.splitlines() if not line.startswith(" ")]
    assert top_keys == sorted(top_keys)


_ASCII_WORD = "".join(c for c in string.printable if c.isprintable() and c != " ")


def _document(rnd: random.Random, characters: str, depth: int = 0) -> Any:
    """A random document of strings drawn from `characters`, some 80 long or more (where an
    emitter folds), some near 128 (where it stops writing a key plainly), some that YAML would
    read as another type (so are quoted), and numbers."""

    def text() -> str:
        if rnd.random() < 0.2:
            return rnd.choice(["true", "No", "null", "~", "0x1F", "1e3", "12:30", "@a", "a: b"])
        size = rnd.choice([1, 8, 40, 80, 81, 119, 120, 125, 128, 700])
        return "".join(rnd.choice(characters) for _ in range(size))

    roll = rnd.random()
    if depth > 3 or roll < 0.5:
        return text() if rnd.random() < 0.85 else rnd.choice([None, True, 0, -3, 1.5])
    if roll < 0.8:
        return {text(): _document(rnd, characters, depth + 1) for _ in range(rnd.randint(1, 4))}
    return [_document(rnd, characters, depth + 1) for _ in range(rnd.randint(1, 3))]


@pytest.mark.parametrize(
    ("characters", "count"),
    [
        # What the worker's manifests hold: libyaml writes these, where PyYAML has it, unless a
        # key is long.
        (_ASCII_WORD, 400),
        # Accents, and words with escapes, which libyaml escapes and folds at other places.
        (_ASCII_WORD + "éü€" * 5, 200),
        (string.printable + " " * 20 + "\x85\u2028", 200),
    ],
    ids=["printable ASCII", "accents", "words and escapes"],
)
@pytest.mark.parametrize(
    "options",
    [{}, {"sort_keys": False, "allow_unicode": False}],
    ids=["a manifest", "Port's spec text"],
)
def test_manifests_are_written_as_pure_python_pyyaml_writes_them(
    characters: str, count: int, options: dict[str, bool]
) -> None:
    # Every worker writes the same bytes, and the bytes earlier versions wrote: else a worker
    # would rewrite every manifest another had written, and a workflow would find the spec it
    # shows in Port changed (workflows/portview.py), publishing it again.
    if not yaml.__with_libyaml__:
        pytest.skip("this PyYAML has no libyaml: dump writes pure Python, there is no other")
    rnd = random.Random(17)
    pure = {"sort_keys": True, "allow_unicode": True, **options}
    for _ in range(count):
        document = {"kind": _document(rnd, characters), "spec": _document(rnd, characters)}
        written = yaml.dump(document, Dumper=yaml.SafeDumper, default_flow_style=False, **pure)
        assert dump(document, **options) == written


def test_service_account_labels_and_role_annotation() -> None:
    doc = workload_doc(serviceAccount="hello-runner")
    doc["metadata"]["labels"] = {"tier": "backend", "app.kubernetes.io/managed-by": "helm"}
    resource = Workload.model_validate(doc)
    files = render_workload(resource, role_arn="arn:aws:iam::123456789012:role/idp-demo-hello")
    assert list(files) == ["serviceaccount.yaml"]
    account = yaml.safe_load(files["serviceaccount.yaml"])
    assert account["apiVersion"] == "v1"
    assert account["kind"] == "ServiceAccount"
    assert account["metadata"]["name"] == "hello-runner"
    assert account["metadata"]["namespace"] == "demo"
    # The reconciler finds its objects by these; a user label must not take them over.
    assert account["metadata"]["labels"] == {
        "tier": "backend",
        "app.kubernetes.io/managed-by": "idp",
        "idp.dev/system": "demo",
        "idp.dev/workload": "hello",
    }
    assert account["metadata"]["labels"] == workload_labels(resource)
    assert account["metadata"]["annotations"] == {
        ROLE_ARN_ANNOTATION: "arn:aws:iam::123456789012:role/idp-demo-hello"
    }
    assert ROLE_ARN_ANNOTATION == "eks.amazonaws.com/role-arn"


def test_service_account_without_a_role_has_no_annotations() -> None:
    # An empty annotation map would still differ from the cluster's object and churn commits.
    account = yaml.safe_load(render_workload(workload())["serviceaccount.yaml"])
    assert "annotations" not in account["metadata"]
    assert account["metadata"]["name"] == "hello"


def test_digest_changes_with_content_and_names_but_not_order() -> None:
    files = {"a.yaml": "x: 1\n", "b.yaml": "y: 2\n"}
    assert digest(files) == digest(dict(reversed(files.items())))
    assert digest(files) != digest({"a.yaml": "x: 2\n", "b.yaml": "y: 2\n"})
    # The separator keeps name and content apart: moving a character across must not collide.
    assert digest({"ab": "c"}) != digest({"a": "bc"})


def test_workload_directory() -> None:
    resource = workload()
    assert workload_directory("", resource) == "dev/demo/hello"
    assert workload_directory("clusters", resource) == "clusters/dev/demo/hello"


# ---- the platform file -----------------------------------------------------------------------


def platform_doc(**overrides: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Platform",
        "destinations": [{"name": "dev", "stateStore": {"url": "state"}}],
        **overrides,
    }


def write_platform(folder: Path, document: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "platform.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def platform_error(path: Path) -> str:
    with pytest.raises(PlatformError) as caught:
        load_platform(path)
    return str(caught.value)


def test_relative_state_store_resolves_against_the_file_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    destinations = [
        {"name": "dev", "stateStore": {"url": "state"}},
        {"name": "stage", "stateStore": {"url": "../shared/state.git"}},
        {"name": "abs", "stateStore": {"url": str(tmp_path / "abs")}},
        {"name": "https", "stateStore": {"url": "https://git.example.com/state.git"}},
        {"name": "scp", "stateStore": {"url": "git@git.example.com:org/state.git"}},
        {"name": "ssh", "stateStore": {"url": "ssh://git@git.example.com/state.git"}},
        {"name": "file", "stateStore": {"url": "file:///srv/state.git"}},
    ]
    path = write_platform(tmp_path / "config", platform_doc(destinations=destinations))
    platform = load_platform(Path("..") / "config" / "platform.yaml")
    urls = {d.name: d.state_store.url for d in platform.destinations}
    assert urls == {
        "dev": str(path.parent.resolve() / "state"),
        "stage": str(tmp_path.resolve() / "shared" / "state.git"),
        "abs": str(tmp_path / "abs"),
        "https": "https://git.example.com/state.git",
        "scp": "git@git.example.com:org/state.git",
        "ssh": "ssh://git@git.example.com/state.git",
        "file": "file:///srv/state.git",
    }


def test_platform_defaults_and_lookup(tmp_path: Path) -> None:
    platform = load_platform(write_platform(tmp_path, platform_doc()))
    assert platform.reconcile.drift_interval == timedelta(minutes=10)
    assert (platform.reconcile.min_backoff, platform.reconcile.max_backoff) == (
        timedelta(seconds=10),
        timedelta(minutes=10),
    )
    dev = platform.destination("dev")
    assert dev is not None
    assert (dev.state_store.branch, dev.state_store.path) == ("main", "")
    assert dev.default_delivery == "sealed-secret"
    assert platform.destination("prod") is None


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"destinations": [{"name": "dev", "stateStore": {"url": "a"}}] * 2},
            "destination names must be unique; repeated: dev",
        ),
        ({"destinations": []}, "destinations: must have at least 1 item; got none"),
        (
            {"destinations": [{"name": "Dev", "stateStore": {"url": "a"}}]},
            f"destinations[0].name: {LABEL}; got 'Dev'",
        ),
        (
            {"reconcile": {"driftInterval": "10 minutes"}},
            f"reconcile.driftInterval: {DURATION}; got '10 minutes'",
        ),
        (
            {"reconcile": {"minBackoff": "1h", "maxBackoff": "1m"}},
            "reconcile: minBackoff must be positive and at most maxBackoff",
        ),
        (
            {"reconcile": {"minBackoff": "0s"}},
            "reconcile: minBackoff must be positive and at most maxBackoff",
        ),
        ({"reconcile": {"driftInterval": "0s"}}, "reconcile: driftInterval must be at least 1s"),
        (
            {"reconcile": {"fleetObserver": True, "searchAttributes": False}},
            "reconcile: fleetObserver: true needs searchAttributes: true",
        ),
        (
            {
                "destinations": [
                    {"name": "dev", "stateStore": {"url": "a", "branch": "main", "x": 1}}
                ]
            },
            "destinations[0].stateStore.x: unknown field; allowed fields are url, branch, path",
        ),
    ],
    ids=[
        "duplicate-destinations",
        "no-destinations",
        "destination-name",
        "bad-duration",
        "backoff-order",
        "zero-backoff",
        "zero-drift-interval",
        "observer-without-search-attributes",
        "unknown-field",
    ],
)
def test_invalid_platform_names_file_and_field(
    tmp_path: Path, overrides: dict[str, Any], expected: str
) -> None:
    path = write_platform(tmp_path, platform_doc(**overrides))
    message = platform_error(path)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    assert expected in message


@pytest.mark.parametrize("path", ["../outside", "a/../../outside", "/etc", ".git/hooks", "a/.git"])
def test_state_store_path_cannot_escape_the_repository(tmp_path: Path, path: str) -> None:
    destinations = [{"name": "dev", "stateStore": {"url": "state", "path": path}}]
    config = write_platform(tmp_path, platform_doc(destinations=destinations))
    assert platform_error(config) == (
        f"{config}: destinations[0].stateStore.path: must be a relative directory inside the "
        f"repository; got {path!r}"
    )


def test_state_store_path_is_normalised(tmp_path: Path) -> None:
    destinations = [{"name": "dev", "stateStore": {"url": "state", "path": "clusters//eu/"}}]
    platform = load_platform(write_platform(tmp_path, platform_doc(destinations=destinations)))
    assert platform.destinations[0].state_store.path == "clusters/eu"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"kind: Platform\ndestinations: [\n", "line 3, column 1: not valid YAML"),
        (b"kind: Platform\nkind: Platform\n", "line 2, column 1: not valid YAML (key 'kind' is "),
        (
            b"kind: Platform\ndestinations: caf\xe9\n",
            "is not UTF-8 text; it must be saved as UTF-8",
        ),
        (
            b"- kind: Platform\n",
            "must be a mapping with kind: Platform and destinations; got a list",
        ),
        (b"kind: Workload\n", "kind: must be Platform"),
        (b"kind: Platform\nowner\x07: x\n", "line 2, column 6: not valid YAML (character #x0007"),
    ],
    ids=["unclosed-flow", "duplicate-key", "latin-1", "a-list", "wrong-kind", "control-char"],
)
def test_unreadable_platform_file_is_one_line_naming_the_file(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "platform.yaml"
    path.write_bytes(content)
    message = platform_error(path)
    assert message.startswith(f"{path}: {expected}")
    assert "\n" not in message
    assert "<unicode string>" not in message


def test_missing_platform_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert platform_error(path) == f"{path}: cannot be read (No such file or directory)"


def test_fields_checked_in_words_keep_their_pattern_for_editors() -> None:
    # The loader's messages describe these fields in words; editors still get the expression.
    spec = ApiAggregator.model_json_schema(by_alias=True)["$defs"]["ApiAggregatorSpec"]
    size = spec["properties"]["maxRequestBodySize"]
    assert {"type": "string", "pattern": r"^\d+(Ki|Mi|Gi)?$"} in size["anyOf"]
    aws = TypeAdapter(Platform).json_schema(by_alias=True)["$defs"]["AwsConfig"]["properties"]
    assert aws["accountId"] == {"type": "string", "pattern": r"^\d{12}$", "title": "Accountid"}


def test_aliases_that_repeat_a_few_values_still_load(tmp_path: Path) -> None:
    subjects = "[orders.>, payments.>]"
    text = yaml.safe_dump(workload_doc()) + (
        f"  nats:\n    permissions:\n      publish:\n        allow: &subjects {subjects}\n"
        "      subscribe:\n        allow: *subjects\n"
    )
    path = tmp_path / "aliases.yaml"
    path.write_text(text, encoding="utf-8")
    [item] = load([path])
    assert isinstance(item.resource, Workload)
    nats = item.resource.spec.nats
    assert nats is not None
    assert nats.permissions.subscribe.allow == ["orders.>", "payments.>"]
