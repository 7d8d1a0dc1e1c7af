"""Rendering the Kubernetes objects a workload owns in the state store.

Output is stable YAML (sorted keys, no timestamps) so an unchanged resource renders byte-identical
and the state store never sees a commit that changes nothing.

Ownership. Two resources must never write one directory or one Kubernetes object: a workload
`a/web` and a workload `b/web` in one namespace of one destination would share the directory and
the ServiceAccount, and the second would silently overwrite the first. Every write therefore
claims its names (idp/statestore.py checks the claims inside its commit transaction). Who holds a
name is read from the state store itself:

- a workload's directory, and its ServiceAccount when that is named after the workload (the
  default), from the owner labels of its `serviceaccount.yaml`, which every such directory has
  always carried: directories written before ownership existed are adopted as they are, with no
  commit, and no per-workload file is added;
- every other name (a `spec.serviceAccount` of another name, an ApiAggregator's directory and
  its Gateway API objects) from a record: a file
  `<destination>/.idp-owners/<namespace>/<Kind>/<name>` holding the owner's workflow id. Argo CD
  applies only YAML and JSON files, so it never reads these.
"""

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from idp import ids
from idp.models import Workload
from idp.statechange import Claim, OwnedByAnother
from idp.yamltext import dump, load

MANAGED_BY = {"app.kubernetes.io/managed-by": "idp"}
ROLE_ARN_ANNOTATION = "eks.amazonaws.com/role-arn"
SYSTEM_LABEL = "idp.dev/system"
WORKLOAD_LABEL = "idp.dev/workload"
SERVICE_ACCOUNT_FILE = "serviceaccount.yaml"
# The delivered NATS credentials, written beside the manifests by the Credentials step (the
# files of idp.delivery.DeliveryTarget of purpose "nats").
SEALED_FILE = "sealedsecret-nats.yaml"
EXTERNAL_FILE = "externalsecret-nats.yaml"
OWNER_RECORDS = ".idp-owners"
DIRECTORY = "Directory"
WORKLOAD_REMEDY = "rename this workload or choose another namespace"
SERVICE_ACCOUNT_REMEDY = "set another spec.serviceAccount"


def digest(files: Mapping[str, str]) -> str:
    """A fingerprint of a rendered set of files, to tell drift repairs from spec changes."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return h.hexdigest()


def workload_labels(workload: Workload) -> dict[str, str]:
    return {
        **workload.metadata.labels,
        **MANAGED_BY,
        SYSTEM_LABEL: workload.metadata.system,
        WORKLOAD_LABEL: workload.metadata.name,
    }


def resource_directory(base: str, destination: str, namespace: str, name: str) -> str:
    return "/".join(p for p in (base, destination, namespace, name) if p)


def workload_directory(base: str, workload: Workload) -> str:
    spec = workload.spec
    return resource_directory(base, spec.destination, spec.namespace, workload.metadata.name)


def service_account(workload: Workload, role_arn: str | None) -> dict[str, Any]:
    annotations = {ROLE_ARN_ANNOTATION: role_arn} if role_arn else {}
    metadata: dict[str, Any] = {
        "name": workload.service_account,
        "namespace": workload.spec.namespace,
        "labels": workload_labels(workload),
    }
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata}


def render_workload(workload: Workload, *, role_arn: str | None = None) -> dict[str, str]:
    """File name → content for everything the workload keeps in its state-store directory."""
    return {SERVICE_ACCOUNT_FILE: dump(service_account(workload, role_arn))}


# Ownership (see the module docstring).


def owner_records(base: str, destination: str, namespace: str | None = None) -> str:
    """The directory of a destination's ownership records, or of one namespace's."""
    return resource_directory(base, destination, OWNER_RECORDS, namespace or "")


def owner_record(base: str, destination: str, namespace: str, kind: str, name: str) -> str:
    return f"{owner_records(base, destination, namespace)}/{kind}/{name}"


def object_subject(destination: str, namespace: str, name: str, kind: str | None = None) -> str:
    """A name as a refusal says it: "ServiceAccount shop/web on destination dev"."""
    return f"{kind + ' ' if kind else ''}{namespace}/{name} on destination {destination}"


def labelled_owner(text: str) -> str | None:
    """The workload that wrote a manifest, as its workflow id, from its owner labels. A
    manifest without them is held by nobody: it is a hand edit of ours (drift, which the next
    write restores) or was never ours, and either way no workload's work is overwritten."""
    try:
        return _owner(load(text))
    except (yaml.YAMLError, TypeError, KeyError):
        return None


def _owner(manifest: Any) -> str:
    """`labelled_owner` of a parsed manifest; TypeError or KeyError when it has no labels."""
    labels = manifest["metadata"]["labels"]
    return ids.workload_id(labels[SYSTEM_LABEL], labels[WORKLOAD_LABEL])


def service_account_owner(name: str) -> Callable[[str], str | None]:
    """Who holds ServiceAccount `name` through a workload's `serviceaccount.yaml`: its writer
    when the manifest is that ServiceAccount, nobody when it names another."""

    def holder(text: str) -> str | None:
        try:
            manifest = load(text)  # once: the name and the labels come from the same parse
            return _owner(manifest) if manifest["metadata"]["name"] == name else None
        except (yaml.YAMLError, TypeError, KeyError):
            return None

    return holder


def workload_file_claim(base: str, workload: Workload, file: str) -> Claim:
    """The workload's directory as held by one of its labelled files."""
    spec = workload.spec
    here = object_subject(spec.destination, spec.namespace, workload.metadata.name)
    directory = workload_directory(base, workload)
    return Claim(f"{directory}/{file}", here, WORKLOAD_REMEDY, labelled_owner)


def workload_claims(base: str, workload: Workload) -> tuple[Claim, ...]:
    """The names a workload's manifests hold: its directory and its ServiceAccount."""
    destination, namespace = workload.spec.destination, workload.spec.namespace
    name, account = workload.metadata.name, workload.service_account
    here = object_subject(destination, namespace, name)
    account_subject = object_subject(destination, namespace, account, "ServiceAccount")
    claims = [
        # The delivered secret is labelled like the manifests and may be written first.
        *(
            workload_file_claim(base, workload, file)
            for file in (SERVICE_ACCOUNT_FILE, SEALED_FILE, EXTERNAL_FILE)
        ),
        # An ApiAggregator named so that its directory `api-<name>` is this one.
        Claim(owner_record(base, destination, namespace, DIRECTORY, name), here, WORKLOAD_REMEDY),
    ]
    # A ServiceAccount named after its workload is held with the workload's directory; any
    # other name needs a record, and must not be the default one of the workload of that name.
    custom = account != name
    claims.append(
        Claim(
            owner_record(base, destination, namespace, "ServiceAccount", account),
            account_subject,
            SERVICE_ACCOUNT_REMEDY,
            record=custom,
        )
    )
    if custom:
        account_directory = resource_directory(base, destination, namespace, account)
        claims.append(
            Claim(
                f"{account_directory}/{SERVICE_ACCOUNT_FILE}",
                account_subject,
                SERVICE_ACCOUNT_REMEDY,
                service_account_owner(account),
            )
        )
    return tuple(claims)


def shared_name(workload: Workload, holder: Workload) -> str | None:
    """The refusal of `workload` when `holder` holds a name it would write, as the Manifests
    step words it (its first claim held); None when they share no name."""
    held = {claim.subject for claim in workload_claims("", holder)}
    for claim in workload_claims("", workload):
        if claim.subject in held:
            return str(OwnedByAnother(claim, holder.workflow_id))
    return None
