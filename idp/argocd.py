"""The Argo CD objects that make each destination cluster sync exactly its own state-store tree.

`idpctl platform argocd` renders them from the platform file; docs/architecture.md ("Argo CD")
says why each setting is what it is. In short:

- **App of apps.** The platform team applies one root Application by hand. It reads a directory
  of git holding the other objects (this module's output, committed), so adding a destination
  is a commit, not a kubectl session.
- **An AppProject** (`idp`) that may read only the state stores and deploy only to the
  destinations' clusters, and may create no cluster-scoped object but a Namespace.
- **Per destination, an ApplicationSet** with a git directory generator over
  `<base>/<destination>/*`: one Application per namespace of the tree. Not one Application per
  destination, because Argo CD syncs an Application all or nothing: one object that cannot be
  applied (its namespace does not exist yet, an admission webhook refuses it) would stop every
  other namespace's sync on that cluster, a new sealed secret included, while the old key's
  revocation is already scheduled. And `CreateNamespace=true` only creates an Application's own
  destination namespace, which a per-namespace Application has and a per-destination one does
  not. The price is a generator to keep off `.idp-owners/` and a name per namespace.

Nothing here reaches a cluster or git: it is pure rendering of a validated Platform.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from idp.manifests import owner_records, resource_directory
from idp.names import Label
from idp.platform import Destination, Platform

API_VERSION = "argoproj.io/v1alpha1"
NAME = "idp"  # the root Application and the AppProject
IN_CLUSTER = "https://kubernetes.default.svc"
RESOURCES_FINALIZER = "resources-finalizer.argocd.argoproj.io"
SYNC_WAVE = "argocd.argoproj.io/sync-wave"
DESTINATION_LABEL = "idp.dev/destination"
ROOT_FILE = "root.yaml"
PROJECT_FILE = "project.yaml"
# What the git directory generator gives each namespace directory (goTemplate syntax).
NAMESPACE_PATH = "{{.path.path}}"
NAMESPACE = "{{.path.basename}}"

# A directory name that is literal in every place Argo CD reads it: no glob character (the
# generator's `path.Match` pattern), no template braces (the ApplicationSet's goTemplate), and no
# leading '.', because the generator skips hidden directories and everything below them.
_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
SEGMENT_RULE = "letters, digits, '.', '_' or '-', not starting with '.'"
# What Argo CD can clone: a URL with a scheme, or scp-like user@host:path.
_CLONABLE = re.compile(r"^([a-z][a-z0-9+.-]*://|[^/@:\s]+@[^/:\s]+:)", re.IGNORECASE)


class ArgoCdError(ValueError):
    """The platform file cannot be bootstrapped as it is. `field` is the platform file's field at
    fault, or None when the options' directory is."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


class BootstrapOptions(BaseModel):
    """Where the root Application finds the rendered objects, and Argo CD's namespace."""

    model_config = ConfigDict(frozen=True)

    repo_url: str = Field(min_length=1, description="The repository the objects are committed to.")
    revision: str = Field(min_length=1, description="Its branch, tag or commit.")
    path: str = Field(description="The directory in it that holds them.")
    namespace: Label = Field("argocd", description="The namespace Argo CD runs in.")

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        parts = [p for p in value.split("/") if p]
        if value.startswith("/") or not parts:
            raise ValueError(f"must be a directory inside the repository; got {value!r}")
        bad = [p for p in parts if not _SEGMENT.match(p)]
        if bad:
            raise ValueError(f"each directory must be {SEGMENT_RULE}; got {bad[0]!r}")
        return "/".join(parts)


@dataclass(frozen=True)
class Bootstrap:
    files: dict[str, dict[str, Any]]  # file name → object: root, project, one per destination
    warnings: tuple[str, ...]


def destination_tree(destination: Destination) -> str:
    """`<base>/<destination>`: everything the reconciler writes for the destination."""
    return resource_directory(destination.state_store.path, destination.name, "", "")


def destination_file(destination: Destination) -> str:
    # Prefixed: a destination may well be called "root" or "project".
    return f"destination-{destination.name}.yaml"


def render(
    platform: Platform, options: BootstrapOptions, destinations: Sequence[Destination]
) -> Bootstrap:
    """The objects bootstrapping `destinations` (some or all of the platform's): raises
    ArgoCdError when a tree could not be synced exactly (see `_check_trees`)."""
    _check_trees(platform, options)
    files = {
        ROOT_FILE: root_application(options),
        PROJECT_FILE: project(destinations, options.namespace),
    }
    for destination in destinations:
        files[destination_file(destination)] = application_set(destination, options.namespace)
    urls = dict.fromkeys([options.repo_url, *(d.state_store.url for d in destinations)])
    local = [url for url in urls if not _CLONABLE.match(url)]
    warnings: list[str] = []
    if local:
        warnings.append(
            f"Argo CD cannot clone {', '.join(local)}: it needs https://..., ssh://... or "
            "user@host:path, so render from a platform file that names the repositories as "
            "Argo CD reaches them"
        )
    return Bootstrap(files, tuple(warnings))


def root_application(options: BootstrapOptions) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Application",
        # No resources finalizer: deleting the root (an Argo CD reinstall, a mistaken kubectl
        # delete) must leave the destinations' ApplicationSets, and so every cluster, alone.
        "metadata": {"name": NAME, "namespace": options.namespace},
        "spec": {
            # The root creates AppProjects, which a project of its own would have to allow
            # itself; the platform team applies it by hand, with the default project's rights.
            "project": "default",
            "source": {
                "repoURL": options.repo_url,
                "targetRevision": options.revision,
                "path": options.path,
                # root.yaml sits beside the objects but is applied by hand: were the root to
                # manage itself, a bad commit to it could unhook every destination.
                "directory": {"recurse": False, "exclude": ROOT_FILE},
            },
            "destination": {"server": IN_CLUSTER, "namespace": options.namespace},
            # prune off: a destination's file missing from the directory would otherwise delete
            # its ApplicationSet and, through the children's finalizers, every object the
            # reconciler put on that cluster. Removing a destination is a deliberate
            # `kubectl delete applicationset`; until then the root shows OutOfSync.
            "syncPolicy": {"automated": {"prune": False, "selfHeal": True}},
        },
    }


def project(destinations: Sequence[Destination], namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "AppProject",
        "metadata": {
            "name": NAME,
            "namespace": namespace,
            # Before the ApplicationSets whose Applications name it.
            "annotations": {SYNC_WAVE: "-1"},
        },
        "spec": {
            "description": "The idp reconciler's state store, one tree per destination cluster.",
            "sourceRepos": sorted({d.state_store.url for d in destinations}),
            "destinations": [{"name": d.name, "namespace": "*"} for d in destinations],
            # Only the namespaces CreateNamespace=true makes (Argo CD checks those against the
            # project too); the reconciler writes no other cluster-scoped object. Namespaced
            # kinds stay open: a plugin capability may deliver kinds this list would not know.
            "clusterResourceWhitelist": [{"group": "", "kind": "Namespace"}],
        },
    }


def application_set(destination: Destination, namespace: str) -> dict[str, Any]:
    store, tree = destination.state_store, destination_tree(destination)
    return {
        "apiVersion": API_VERSION,
        "kind": "ApplicationSet",
        "metadata": {
            "name": f"{NAME}-{destination.name}",
            "namespace": namespace,
            "labels": {DESTINATION_LABEL: destination.name},
        },
        "spec": {
            "goTemplate": True,
            "goTemplateOptions": ["missingkey=error"],
            "generators": [
                {
                    "git": {
                        "repoURL": store.url,
                        "revision": store.branch,
                        "directories": [
                            # `*` stops at '/': namespace directories only, never a workload's.
                            {"path": f"{tree}/*"},
                            # Skipped anyway as hidden, unless the repo server is started with
                            # hidden directories included; then it would become an Application.
                            {"path": owner_records(store.path, destination.name), "exclude": True},
                        ],
                    }
                }
            ],
            "template": {
                "metadata": {
                    # '.' cannot occur in a destination or namespace name, so no two
                    # (destination, namespace) pairs share an Application name.
                    "name": f"{NAME}-{destination.name}.{NAMESPACE}",
                    "labels": {DESTINATION_LABEL: destination.name},
                    # When a namespace's last workload is deleted its directory goes, the
                    # generator drops its Application, and this finalizer deletes the objects
                    # (prune cannot: the Application itself is gone).
                    "finalizers": [RESOURCES_FINALIZER],
                },
                "spec": {
                    "project": NAME,
                    "source": {
                        "repoURL": store.url,
                        "targetRevision": store.branch,
                        "path": NAMESPACE_PATH,
                        # Workload and aggregator directories lie below the namespace. The
                        # directory source reads only .yaml, .yml, .json (and .jsonnet) files;
                        # the reconciler writes nothing else there.
                        "directory": {"recurse": True},
                    },
                    # The cluster as registered in Argo CD: under the destination's name.
                    "destination": {"name": destination.name, "namespace": NAMESPACE},
                    "syncPolicy": {
                        # prune: a file the reconciler removed is how a deletion reaches the
                        # cluster. selfHeal: the store is the truth, so hand edits are reverted.
                        "automated": {"prune": True, "selfHeal": True},
                        # FailOnSharedResource: an object another Application already manages
                        # is refused, not taken over (one name, one owner, as in the store).
                        "syncOptions": ["CreateNamespace=true", "FailOnSharedResource=true"],
                        # A failed sync is otherwise not retried until the next commit. A route
                        # written before its workload's namespace exists succeeds once that
                        # namespace's Application has created it; retry with the newest commit,
                        # with capped backoff, as the reconciler does.
                        "retry": {
                            "limit": -1,
                            "refresh": True,
                            "backoff": {"duration": "10s", "factor": 2, "maxDuration": "5m"},
                        },
                    },
                },
            },
        },
    }


def _check_trees(platform: Platform, options: BootstrapOptions) -> None:
    """Refuse what would make a cluster sync another's files or miss its own: a base path Argo
    CD would not read literally, two destinations' trees one inside the other in one
    repository and branch, or the root's directory inside (or around) a tree."""
    destinations = platform.destinations
    for index, destination in enumerate(destinations):
        base = destination.state_store.path
        bad = [p for p in base.split("/") if p and not _SEGMENT.match(p)]
        if bad:
            raise ArgoCdError(
                f"destinations[{index}].stateStore.path",
                f"for Argo CD each directory must be {SEGMENT_RULE}; got {bad[0]!r}",
            )
    for index, destination in enumerate(destinations):
        tree, store = destination_tree(destination), destination.state_store
        for other in destinations[:index]:
            if (other.state_store.url, other.state_store.branch) != (store.url, store.branch):
                continue
            outer = destination_tree(other)
            if _nested(tree, outer) or _nested(outer, tree):
                raise ArgoCdError(
                    f"destinations[{index}].stateStore.path",
                    f"destination {destination.name}'s tree {tree}/ and destination "
                    f"{other.name}'s tree {outer}/ lie one inside the other in the same "
                    "repository and branch, so one cluster would apply the other's manifests; "
                    "choose base paths that keep them apart",
                )
        same_repo = (options.repo_url, options.revision) == (store.url, store.branch)
        if same_repo and (_nested(options.path, tree) or _nested(tree, options.path)):
            raise ArgoCdError(
                None,
                f"the directory {options.path}/ overlaps destination {destination.name}'s "
                f"tree {tree}/ in the same repository and branch; choose another directory "
                "for the Argo CD objects",
            )


def _nested(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer + "/")
