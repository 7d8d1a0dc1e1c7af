"""idp/argocd.py and `idpctl platform argocd`: the Argo CD objects that make each destination
cluster sync exactly its own tree of the state store.

Every object, and every Application an ApplicationSet would generate, is validated against the
upstream CRD schemas in the shared conformance folder (those tests skip, naming the file, when it
is absent), with unknown fields refused wherever the schema does not preserve them, as the API
server's strict field validation does. No Argo CD runs here, so what it would select is
reproduced from its source (argoproj/argo-cd at the conformance commit): the git directory
generator lists the repository's directories without hidden ones (unless the repo server
includes them) and matches them with Go's `path.Match`, and a directory source walks its path
(recursing if asked), keeps files ending in .yaml/.yml/.json/.jsonnet and drops those its
`exclude` glob matches. That selection is run over a real state store that the Manifests
capability and the aggregator's activities wrote, in a bare git repository on disk.
"""

import copy
import json
import re
from collections.abc import Iterator
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from support.cli import BIN, Result, clean_env, run
from support.conformance import load_crd_schema
from support.manifests import ManifestsWorker
from support.stack import bare_repo, git
from temporalio.testing import ActivityEnvironment

from activities.apiroutes import ApiRouteActivities, RoutesInput
from idp.argocd import (
    NAMESPACE,
    NAMESPACE_PATH,
    PROJECT_FILE,
    RESOURCES_FINALIZER,
    ROOT_FILE,
    ArgoCdError,
    BootstrapOptions,
    destination_tree,
    render,
)
from idp.gateway import aggregator_directory
from idp.manifests import workload_directory
from idp.models import ApiAggregator, Workload
from idp.platform import Platform
from idp.routes import RouteTarget

STATE = "https://git.example.com/platform/state.git"
OTHER = "ssh://git@git.example.com/platform/stage-state.git"
CRDS = {
    "Application": "argo-cd/application-crd.yaml",
    "ApplicationSet": "argo-cd/applicationset-crd.yaml",
    "AppProject": "argo-cd/appproject-crd.yaml",
}
# Argo CD's manifestFile pattern (reposerver/repository/repository.go).
MANIFEST = re.compile(r"^.*\.(yaml|yml|json|jsonnet)$")


def document(*destinations: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "idp.dev/v1alpha1",
        "kind": "Platform",
        "destinations": list(destinations),
    }


def platform(*destinations: dict[str, Any]) -> Platform:
    return Platform.model_validate(document(*destinations))


def destination(name: str, url: str = STATE, path: str = "", branch: str = "main") -> dict:
    return {"name": name, "stateStore": {"url": url, "branch": branch, "path": path}}


# dev at the repository's root, prod-eu under a base path of the same repository and branch,
# stage in a repository of its own, on another branch.
DESTINATIONS = (
    destination("dev"),
    destination("prod-eu", path="clusters"),
    destination("stage", url=OTHER, path="gitops/state", branch="live"),
)
PLATFORM = platform(*DESTINATIONS)
OPTIONS = BootstrapOptions(repo_url=STATE, revision="main", path="argocd")


def rendered(p: Platform = PLATFORM, options: BootstrapOptions = OPTIONS) -> dict[str, dict]:
    return render(p, options, p.destinations).files


def application_sets(files: dict[str, dict]) -> list[dict]:
    return [obj for obj in files.values() if obj["kind"] == "ApplicationSet"]


# ---- the CRDs -----------------------------------------------------------------------------------


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields refused wherever it lists properties and does not say
    x-kubernetes-preserve-unknown-fields: what `kubectl apply` (strict field validation) refuses
    and what the API server would otherwise silently prune."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@cache
def validator(kind: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(strict(load_crd_schema(CRDS[kind], "v1alpha1")))


def fits_crd(obj: dict[str, Any]) -> None:
    validator(obj["kind"]).validate(obj)


def generated_application(application_set: dict, directory: str) -> dict[str, Any]:
    """The Application the ApplicationSet makes for one generated directory: its template with
    the generator's goTemplate parameters filled in."""
    text = json.dumps(application_set["spec"]["template"])
    text = text.replace(NAMESPACE_PATH, directory).replace(NAMESPACE, directory.rsplit("/")[-1])
    return {"apiVersion": application_set["apiVersion"], "kind": "Application", **json.loads(text)}


def test_every_object_and_every_generated_application_fits_its_crd() -> None:
    files = rendered()
    assert [obj["kind"] for obj in files.values()] == [
        "Application",
        "AppProject",
        "ApplicationSet",
        "ApplicationSet",
        "ApplicationSet",
    ]
    for obj in files.values():
        fits_crd(obj)
    for application_set in application_sets(files):
        fits_crd(generated_application(application_set, "clusters/prod-eu/shop"))


def test_the_strict_schema_refuses_an_unknown_field() -> None:
    """Without this, a misspelt field (`selfheal`) would validate and do nothing."""
    application_set = application_sets(rendered())[0]
    broken = copy.deepcopy(application_set)
    broken["spec"]["template"]["spec"]["syncPolicy"]["automated"]["selfheal"] = True
    with pytest.raises(jsonschema.ValidationError, match="selfheal"):
        fits_crd(broken)


# ---- trees, sync policy, project --------------------------------------------------------------


def test_each_destination_reads_exactly_its_own_tree_and_no_two_overlap() -> None:
    trees = {}
    for application_set, dest in zip(
        application_sets(rendered()), PLATFORM.destinations, strict=True
    ):
        store, tree = dest.state_store, destination_tree(dest)
        [generator] = application_set["spec"]["generators"]
        git_ = generator["git"]
        source = application_set["spec"]["template"]["spec"]["source"]
        assert (git_["repoURL"], git_["revision"]) == (store.url, store.branch)
        assert (source["repoURL"], source["targetRevision"]) == (store.url, store.branch)
        # One Application per namespace directory of the tree, at that directory.
        assert git_["directories"] == [
            {"path": f"{tree}/*"},
            {"path": f"{tree}/.idp-owners", "exclude": True},
        ]
        assert source["path"] == NAMESPACE_PATH
        assert source["directory"] == {"recurse": True}
        destination_ = application_set["spec"]["template"]["spec"]["destination"]
        assert destination_ == {"name": dest.name, "namespace": NAMESPACE}
        trees[dest.name] = (store.url, store.branch, tree)
    assert trees == {
        "dev": (STATE, "main", "dev"),
        "prod-eu": (STATE, "main", "clusters/prod-eu"),
        "stage": (OTHER, "live", "gitops/state/stage"),
    }
    for a, (url_a, branch_a, tree_a) in trees.items():
        for b, (url_b, branch_b, tree_b) in trees.items():
            if a != b and (url_a, branch_a) == (url_b, branch_b):
                assert not f"{tree_a}/".startswith(f"{tree_b}/"), (a, b)


def test_children_prune_and_self_heal_and_the_root_never_prunes() -> None:
    files = rendered()
    root, project = files[ROOT_FILE], files[PROJECT_FILE]
    assert root["spec"]["syncPolicy"] == {"automated": {"prune": False, "selfHeal": True}}
    assert "finalizers" not in root["metadata"]
    assert root["spec"]["project"] == "default"
    assert root["spec"]["source"] == {
        "repoURL": STATE,
        "targetRevision": "main",
        "path": "argocd",
        "directory": {"recurse": False, "exclude": ROOT_FILE},
    }
    for application_set in application_sets(files):
        template = application_set["spec"]["template"]
        assert template["metadata"]["finalizers"] == [RESOURCES_FINALIZER]
        policy = template["spec"]["syncPolicy"]
        assert policy["automated"] == {"prune": True, "selfHeal": True}
        assert policy["syncOptions"] == ["CreateNamespace=true", "FailOnSharedResource=true"]
        assert policy["retry"]["limit"] < 0 and policy["retry"]["refresh"] is True
        assert template["spec"]["project"] == project["metadata"]["name"]
    assert project["spec"]["sourceRepos"] == sorted({STATE, OTHER})
    assert project["spec"]["destinations"] == [
        {"name": name, "namespace": "*"} for name in ("dev", "prod-eu", "stage")
    ]
    assert project["spec"]["clusterResourceWhitelist"] == [{"group": "", "kind": "Namespace"}]


def test_application_names_cannot_collide_across_destinations() -> None:
    """`dev` with namespace `a-b` and `dev-a` with namespace `b` must not share a name."""
    p = platform(destination("dev"), destination("dev-a", path="x"))
    names = {
        generated_application(s, directory)["metadata"]["name"]
        for s, directory in zip(
            application_sets(rendered(p)), ["dev/a-b", "x/dev-a/b"], strict=True
        )
    }
    assert names == {"idp-dev.a-b", "idp-dev-a.b"}


# ---- what cannot be synced exactly is refused ----------------------------------------------------


def refusal(p: Platform, options: BootstrapOptions = OPTIONS) -> ArgoCdError:
    with pytest.raises(ArgoCdError) as refused:
        render(p, options, p.destinations)
    return refused.value


def test_a_tree_inside_another_in_one_repository_and_branch_is_refused() -> None:
    error = refusal(platform(destination("dev"), destination("eu", path="dev")))
    assert error.field == "destinations[1].stateStore.path"
    assert "destination eu's tree dev/eu/ and destination dev's tree dev/" in str(error)
    # On another branch, or in another repository, the same paths are apart.
    for other in (destination("eu", path="dev", branch="eu"), destination("eu", OTHER, "dev")):
        p = platform(destination("dev"), other)
        render(p, OPTIONS, p.destinations)


@pytest.mark.parametrize("base", [".state", "clusters/*", "{{.path}}", "a/[b]"])
def test_a_base_path_argo_cd_would_not_read_literally_is_refused(base: str) -> None:
    error = refusal(platform(destination("dev", path=base)))
    assert error.field == "destinations[0].stateStore.path"
    assert "letters, digits, '.', '_' or '-', not starting with '.'" in str(error)


def test_the_root_directory_must_lie_outside_every_tree() -> None:
    p = platform(destination("argocd"))
    error = refusal(p)
    assert error.field is None
    assert "argocd/ overlaps destination argocd's tree argocd/" in str(error)
    render(p, OPTIONS.model_copy(update={"path": "bootstrap/argocd"}), p.destinations)
    with pytest.raises(ValueError, match="inside the repository"):
        BootstrapOptions(repo_url=STATE, revision="main", path="/")


def test_a_local_state_store_is_rendered_with_a_warning() -> None:
    p = platform(destination("dev", url="/srv/git/state.git"))
    bootstrap = render(p, OPTIONS, p.destinations)
    [warning] = bootstrap.warnings
    assert warning.startswith("Argo CD cannot clone /srv/git/state.git:")
    assert not render(PLATFORM, OPTIONS, PLATFORM.destinations).warnings


# ---- against a real state store ------------------------------------------------------------------


def workload(name: str, dest: str, namespace: str, **spec: Any) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": name, "system": "shop"},
            "spec": {"owner": "team", "destination": dest, "namespace": namespace, **spec},
        }
    )


def directories(files: list[str], *, include_hidden: bool) -> Iterator[str]:
    """What the repo server's GetGitDirectories lists: every directory, hidden ones (and all
    below them) only when it is started to include them."""
    seen: set[str] = set()
    for file in files:
        parts = file.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            if not include_hidden and parts[depth - 1].startswith("."):
                break
            seen.add("/".join(parts[:depth]))
    return iter(sorted(seen))


def path_match(pattern: str, name: str) -> bool:
    """Go's path.Match: like fnmatch, but no wildcard crosses a '/'."""
    patterns, names = pattern.split("/"), name.split("/")
    return len(patterns) == len(names) and all(map(fnmatchcase, names, patterns))


def generated(application_set: dict, files: list[str], *, include_hidden: bool) -> list[str]:
    """The directories the git generator turns into Applications (GitGenerator.filterApps)."""
    [generator] = application_set["spec"]["generators"]
    items = generator["git"]["directories"]
    chosen = []
    for directory in directories(files, include_hidden=include_hidden):
        matches = [i for i in items if path_match(i["path"], directory)]
        if any(not i.get("exclude") for i in matches) and not any(
            i.get("exclude") for i in matches
        ):
            chosen.append(directory)
    return chosen


def selected(application: dict, files: list[str]) -> set[str]:
    """The files a directory source reads (getPotentiallyValidManifests). Its exclude is a
    gobwas glob without separators, where '*' does cross '/': fnmatch, for the plain patterns
    rendered here."""
    source = application["spec"]["source"]
    directory, root = source["directory"], source["path"]
    chosen = set()
    for file in files:
        if not file.startswith(f"{root}/"):
            continue
        relative = file.removeprefix(f"{root}/")
        if "/" in relative and not directory.get("recurse"):
            continue
        if not MANIFEST.match(relative.rsplit("/")[-1]):
            continue
        if directory.get("exclude") and fnmatchcase(relative, directory["exclude"]):
            continue
        chosen.add(file)
    return chosen


def commit_directory(repo: Path, directory: str, files: dict[str, str], work: Path) -> None:
    """Commit files the way the platform team does: a clone, a commit, a push."""
    git("clone", "--quiet", str(repo), str(work))
    (work / directory).mkdir(parents=True)
    for name, text in files.items():
        (work / directory / name).write_text(text)
    git("add", ".", cwd=work)
    git("commit", "--quiet", "-m", "Argo CD bootstrap", cwd=work)
    git("push", "--quiet", "origin", "HEAD:main", cwd=work)


async def test_on_a_real_store_each_destination_selects_exactly_its_manifests(
    tmp_path: Path,
) -> None:
    repo = bare_repo(tmp_path / "state.git")
    url = str(repo)
    p = platform(destination("dev", url), destination("prod-eu", url, path="clusters"))
    workloads = [
        workload("cart", "dev", "shop"),
        # Another ServiceAccount name: held by a record under dev/.idp-owners/.
        workload("orders", "dev", "shop", serviceAccount="orders-runner"),
        workload("front", "dev", "web"),
        workload("cart", "prod-eu", "shop"),
    ]
    manifests = ManifestsWorker(p, tmp_path / "cache")
    for w in workloads:
        await manifests.reconcile(w)
    # An aggregator in namespace platform routing to cart in shop: its HTTPRoute lives in shop
    # but is written under dev/platform/api-public/, with records for every object it holds.
    aggregator = ApiAggregator.model_validate(
        {
            "metadata": {"name": "public"},
            "spec": {
                "hostname": "api.example.com",
                "gateway": {"name": "edge", "namespace": "gateways"},
                "destination": "dev",
                "namespace": "platform",
                "maxRequestBodySize": "1Mi",
            },
        }
    )
    cart = RouteTarget.model_validate(
        {
            "system": "shop",
            "workload": "cart",
            "namespace": "shop",
            "index": 0,
            "paths": ["/cart"],
            "service": {"name": "cart", "port": 8080},
        }
    )
    routes = ApiRouteActivities(p, tmp_path / "routes-cache")
    request = RoutesInput(
        aggregator=aggregator, targets=[cart], generation=1, workflow_id=aggregator.workflow_id
    )
    await ActivityEnvironment().run(routes.write_api_routes, request)
    # The bootstrap itself, committed beside the trees as `idpctl platform argocd` suggests.
    options = BootstrapOptions(repo_url=url, revision="main", path="argocd")
    bootstrap = render(p, options, p.destinations)
    texts = {name: yaml.safe_dump(obj) for name, obj in bootstrap.files.items()}
    commit_directory(repo, "argocd", texts, tmp_path / "work")

    files = git("ls-tree", "-r", "--name-only", "main", cwd=repo).split()
    records = [f for f in files if "/.idp-owners/" in f]
    assert any(f.startswith("dev/.idp-owners/shop/ServiceAccount/") for f in records)
    assert any(f.startswith("dev/.idp-owners/platform/") for f in records)
    aggregator_dir = aggregator_directory("", aggregator)
    expected = {
        "dev": {f"{workload_directory('', w)}/serviceaccount.yaml" for w in workloads[:3]}
        | {f for f in files if f.startswith(f"{aggregator_dir}/")},
        "prod-eu": {f"{workload_directory('clusters', workloads[3])}/serviceaccount.yaml"},
    }
    assert any("httproute" in f for f in expected["dev"])
    namespaces = {
        "dev": ["dev/platform", "dev/shop", "dev/web"],
        "prod-eu": ["clusters/prod-eu/shop"],
    }

    for application_set, dest in zip(
        application_sets(bootstrap.files), p.destinations, strict=True
    ):
        for include_hidden in (False, True):
            apps = generated(application_set, files, include_hidden=include_hidden)
            assert apps == namespaces[dest.name]
            chosen: set[str] = set()
            for directory in apps:
                application = generated_application(application_set, directory)
                fits_crd(application)
                mine = selected(application, files)
                assert not chosen & mine, "two Applications would manage one file"
                chosen |= mine
            assert chosen == expected[dest.name]
            assert not any(".idp-owners" in f for f in chosen)
    # Without its exclude entry, a repo server that lists hidden directories would make
    # dev/.idp-owners an Application (namespace ".idp-owners", which cannot exist).
    dev_set = copy.deepcopy(application_sets(bootstrap.files)[0])
    dev_set["spec"]["generators"][0]["git"]["directories"].pop()
    assert "dev/.idp-owners" in generated(dev_set, files, include_hidden=True)
    # The root reads the bootstrap objects and nothing else, never itself.
    root = bootstrap.files[ROOT_FILE]
    assert selected(root, files) == {
        f"argocd/{name}" for name in bootstrap.files if name != ROOT_FILE
    }


# ---- the command ---------------------------------------------------------------------------------


async def idpctl(*args: str) -> Result:
    return await run(str(BIN / "idpctl"), *args, env=clean_env())


def write_platform(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


async def test_the_command_prints_the_objects_as_yaml(tmp_path: Path) -> None:
    file = write_platform(tmp_path / "platform.yaml", document(*DESTINATIONS))
    result = await idpctl("platform", "argocd", "-f", str(file), "--repo-url", STATE)
    assert result.code == 0, result
    assert result.stderr == ""
    printed = list(yaml.safe_load_all(result.stdout))
    assert printed == list(rendered().values())
    for obj in printed:
        fits_crd(obj)

    only = await idpctl("platform", "argocd", "-f", str(file), "--destination", "stage")
    assert only.code == 0, only
    root, project, stage = yaml.safe_load_all(only.stdout)
    # The root's repository defaults to the one state store of the chosen destinations.
    assert (root["spec"]["source"]["repoURL"], root["spec"]["source"]["targetRevision"]) == (
        OTHER,
        "live",
    )
    assert project["spec"]["destinations"] == [{"name": "stage", "namespace": "*"}]
    assert stage["metadata"]["name"] == "idp-stage"


async def test_the_command_writes_one_file_per_object(tmp_path: Path) -> None:
    file = write_platform(tmp_path / "platform.yaml", document(*DESTINATIONS))
    out = tmp_path / "argocd"
    result = await idpctl(
        "platform", "argocd", "-f", str(file), "-o", str(out), "--repo-url", STATE
    )
    assert result.code == 0, result
    names = [
        "root.yaml",
        "project.yaml",
        *(f"destination-{n}.yaml" for n in ("dev", "prod-eu", "stage")),
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for name, obj in rendered().items():
        assert yaml.safe_load((out / name).read_text()) == obj
        assert f"wrote {out / name}: {obj['kind']} {obj['metadata']['name']}" in result.stdout
    assert f"commit {out}/ to {STATE} at main as argocd/" in result.stdout


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (document(destination("Dev")), "destinations[0].name: must be a DNS-1123 label"),
        (
            document(destination("dev"), destination("eu", path="dev")),
            "destinations[1].stateStore.path: destination eu's tree dev/eu/ and destination dev's",
        ),
    ],
)
async def test_a_bad_platform_file_is_one_sentence_and_writes_nothing(
    tmp_path: Path, doc: dict, expected: str
) -> None:
    file = write_platform(tmp_path / "platform.yaml", doc)
    out = tmp_path / "argocd"
    result = await idpctl("platform", "argocd", "-f", str(file), "-o", str(out))
    assert result.code == 2, result
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {file}: {expected}")
    assert not out.exists()
