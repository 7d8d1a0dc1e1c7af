"""The external-secret delivery: the credentials in AWS Secrets Manager, and an External Secrets
Operator `ExternalSecret` in the workload's state-store directory that copies them into the
cluster."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Collection, Mapping
from datetime import timedelta
from typing import Any

from botocore.client import BaseClient
from pydantic import SecretStr

from idp.aws.client import call_aws, invoke_aws
from idp.aws.grants import AwsGrant, ownership_condition, partition
from idp.aws.tags import MANAGED_BY, SYSTEM_TAG, WORKLOAD_TAG
from idp.delivery import (
    NATS,
    CredentialMetadata,
    Delivered,
    DeliveryState,
    DeliveryTarget,
    can_resume,
    check_annotations,
    credential_annotations,
    credential_metadata,
    git_object_id,
    metadata_from,
    parse_manifest,
    revealed,
)
from idp.errors import PermanentError, TransientError
from idp.models import Delivery
from idp.platform import Platform, SecretStoreConfig
from idp.statestore import StateStore
from idp.synadia import parse_creds
from idp.yamltext import dump

log = logging.getLogger(__name__)

# botocore writes every request and response body to these loggers at DEBUG, and Secrets Manager
# bodies hold the credentials: however verbose the process is, they stop at INFO.
for _name in ("botocore.endpoint", "botocore.parsers"):
    if logging.getLogger(_name).level < logging.INFO:
        logging.getLogger(_name).setLevel(logging.INFO)

EXTERNAL_SECRETS_API = "external-secrets.io/v1"
# ListSecrets' largest page, and the most values one of its filters takes.
_LIST_PAGE = 100
_FILTER_VALUES = 10
# Fixed for all time: request tokens derived from it must stay the same across releases.
_TOKEN_NAMESPACE = uuid.UUID("5b0f8a4e-2f49-4c1e-9d8e-6a1c1d1e0b7a")


def secret_id(target: DeliveryTarget) -> str:
    return f"idp/{target.system}/{target.workload}/{target.purpose}"


def request_token(owner: str, purpose: str, version: int) -> str:
    """Secrets Manager's ClientRequestToken (and so the VersionId) of one credential version:
    the same for every retry of the activity, so a retry never makes a second version."""
    return str(uuid.uuid5(_TOKEN_NAMESPACE, f"{owner}/{purpose}-credentials/{version}"))


def secret_string(target: DeliveryTarget, data: Mapping[str, SecretStr]) -> str:
    """What Secrets Manager holds: a single key's value as it is, several as a JSON object
    whose properties the ExternalSecret reads one by one."""
    values = revealed(target, data)
    if len(values) == 1:
        return next(iter(values.values()))
    return json.dumps(values)


def go_duration(value: timedelta) -> str:
    """A Go duration string as External Secrets expects ("1h0m0s"): Go has no days."""
    seconds = int(value.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def render_external_secret(
    target: DeliveryTarget, credential: CredentialMetadata, store: SecretStoreConfig
) -> dict[str, Any]:
    """The ExternalSecret; its annotations change with every version, and an annotation change
    makes the operator re-read the secret at once rather than at the next refresh."""
    several = len(target.keys) > 1
    data = [
        {
            "secretKey": key,
            "remoteRef": {"key": secret_id(target), **({"property": key} if several else {})},
        }
        for key in target.keys
    ]
    return {
        "apiVersion": EXTERNAL_SECRETS_API,
        "kind": "ExternalSecret",
        "metadata": {
            "name": target.secret_name,
            "namespace": target.namespace,
            "labels": dict(sorted(target.labels.items())),
            "annotations": credential_annotations(credential),
        },
        "spec": {
            "refreshInterval": go_duration(store.refresh_interval),
            "secretStoreRef": {"kind": "ClusterSecretStore", "name": store.name},
            "target": {"name": target.secret_name, "creationPolicy": "Owner"},
            "data": data,
        },
    }


def current_version(stages: Mapping[str, list[str]]) -> str | None:
    """The version AWSCURRENT labels, of a secret's versions and their stages (DescribeSecret's
    VersionIdsToStages, ListSecrets' SecretVersionsToStages); None when none is."""
    return next((version for version, labels in stages.items() if "AWSCURRENT" in labels), None)


def listed_versions(secrets: BaseClient, names: Collection[str]) -> dict[str, str | None]:
    """The current version (`current_version`) of each of `names` that exists and is not
    scheduled for deletion, from ListSecrets, which shows no value: ceil(S/100) calls for the S
    secrets its name filter matches (`_name_prefixes`). For a fleet read; like every listing it
    is eventually consistent, so a change of the last minutes may show only in the next one."""
    wanted = set(names)
    if not wanted:
        return {}
    found: dict[str, str | None] = {}
    filters = [{"Key": "name", "Values": _name_prefixes(wanted)}]
    params: dict[str, Any] = {"MaxResults": _LIST_PAGE, "Filters": filters}
    while True:
        page = call_aws(secrets, "list_secrets", **params)
        for entry in page.get("SecretList") or []:
            # Without IncludePlannedDeletion AWS leaves those out; so does this, either way.
            if entry.get("Name") in wanted and not entry.get("DeletedDate"):
                stages = entry.get("SecretVersionsToStages") or {}
                found[entry["Name"]] = current_version(stages)
        if not page.get("NextToken"):
            return found
        params["NextToken"] = page["NextToken"]


def _name_prefixes(names: Collection[str]) -> list[str]:
    """At most 10 name prefixes (ListSecrets' limit for one filter; its name filter matches the
    start of a name, case-sensitively) that cover `names`, as narrow as that allows: the names
    themselves, else their systems' (`idp/<system>/`), else all of idp's (`idp/`). Their own
    names are made of DNS labels, which the filter's pattern allows."""
    systems = sorted({"/".join(name.split("/")[:2]) + "/" for name in names})
    return next((p for p in (sorted(names), systems) if len(p) <= _FILTER_VALUES), ["idp/"])


def _tags(described: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in described.get("Tags") or []}


def _ownership(target: DeliveryTarget) -> dict[str, str]:
    return {MANAGED_BY: "idp", SYSTEM_TAG: target.system, WORKLOAD_TAG: target.workload}


def aws_grants(platform: Platform) -> list[AwsGrant]:
    """The IAM statements this delivery needs: on the secrets `secret_id` names, with ``*`` for
    every part, when a destination has a secret store (nothing delivers this way otherwise).
    Creates must carry the ownership tag; reads of a value and changes need it on the secret,
    which the code only touches once it has found it tagged as ours."""
    aws = platform.aws
    if aws is None or all(d.secret_store is None for d in platform.destinations):
        return []
    every = dict.fromkeys(("owner", "system", "workload", "namespace"), "*")
    target = DeliveryTarget(**every, secret_name="*", directory="*", labels={}, purpose="*")
    where = f"{partition(aws.region)}:secretsmanager:{aws.region}:{aws.account_id}"
    secret = (f"arn:{where}:secret:{secret_id(target)}",)
    owner = _ownership(target)
    return [
        AwsGrant(
            "ExternalSecretDeliveryObserveSecrets", ("secretsmanager:DescribeSecret",), secret
        ),
        # The fleet read of the Credentials capability (`listed_versions`). ListSecrets takes no
        # resource, so this lets the worker list the names, tags and version ids of every
        # secret in the region; never a value.
        AwsGrant("ExternalSecretDeliveryFleetRead", ("secretsmanager:ListSecrets",), ("*",)),
        # TagResource only as CreateSecret's tags: the code never tags a secret afterwards.
        AwsGrant(
            "ExternalSecretDeliveryCreateSecrets",
            ("secretsmanager:CreateSecret", "secretsmanager:TagResource"),
            secret,
            ownership_condition("Request", owner),
        ),
        AwsGrant(
            "ExternalSecretDeliveryChangeOwnedSecrets",
            (
                "secretsmanager:DeleteSecret",
                "secretsmanager:GetSecretValue",
                "secretsmanager:PutSecretValue",
                "secretsmanager:UpdateSecretVersionStage",
            ),
            secret,
            ownership_condition("Resource", owner),
        ),
    ]


class ExternalSecretDelivery:
    """Secrets Manager plus an ExternalSecret manifest. Steady-state check: one DescribeSecret
    and one read of the state store."""

    kind = Delivery.EXTERNAL_SECRET
    # Its look refuses another's secret and discards one an earlier workload left.
    resume_readies = True

    def __init__(self, store: StateStore, secrets: BaseClient, config: SecretStoreConfig) -> None:
        self._store = store
        self._secrets = secrets
        self._config = config

    async def _call(
        self,
        operation: str,
        *,
        absent: tuple[str, ...] = (),
        secret_bearing: bool = False,
        **params: Any,
    ) -> dict[str, Any] | None:
        return await asyncio.to_thread(
            _call_aws, self._secrets, operation, absent, secret_bearing, params
        )

    async def _describe(self, target: DeliveryTarget) -> dict[str, Any] | None:
        return await self._call(
            "describe_secret", absent=("ResourceNotFoundException",), SecretId=secret_id(target)
        )

    def _refuse_foreign(self, target: DeliveryTarget, described: Mapping[str, Any]) -> None:
        tags = _tags(described)
        if any(tags.get(k) != v for k, v in _ownership(target).items()):
            raise PermanentError(
                f"Secrets Manager secret {secret_id(target)} already exists but is not managed by "
                f"idp for workload {target.system}/{target.workload} (its tags say otherwise); "
                "delete it or tag it to adopt it.",
                reason="ForeignResource",
            )

    async def _discard(self, target: DeliveryTarget, why: str) -> None:
        """Delete a secret left by an earlier workload of this name: its versions (and request
        tokens) belong to credentials that no longer exist."""
        log.info("deleting Secrets Manager secret %s at once: %s", secret_id(target), why)
        await self._call(
            "delete_secret",
            absent=("ResourceNotFoundException",),
            SecretId=secret_id(target),
            ForceDeleteWithoutRecovery=True,
        )

    async def resume(
        self, target: DeliveryTarget, version: int, public_key: str, message: str
    ) -> Delivered | None:
        described = await self._describe(target)
        if described is None:
            return None
        self._refuse_foreign(target, described)
        if described.get("DeletedDate"):
            await self._discard(target, "it was scheduled for deletion by an earlier workload")
            return None
        token = request_token(target.owner, target.purpose, version)
        if token not in (described.get("VersionIdsToStages") or {}):
            return None
        found = await self._stored_metadata(target, token, version)
        if not can_resume(found, version, public_key):
            await self._discard(target, f"its version {version} is of another or an expired key")
            return None
        assert found is not None
        stages = described.get("VersionIdsToStages") or {}
        delivered = await self._finish(target, found, stages, message)
        return delivered.model_copy(update={"resumed": True})

    async def _stored_metadata(
        self, target: DeliveryTarget, token: str, version: int
    ) -> CredentialMetadata | None:
        if target.purpose != NATS:
            # Only NATS credentials describe themselves. Of any other, the ExternalSecret's
            # annotations tell, written once the secret is stored: a version stored by an attempt
            # that wrote no manifest is issued again.
            return await self.current(target)
        # Read back only to describe it: the text goes no further than this function.
        stored = await self._call("get_secret_value", SecretId=secret_id(target), VersionId=token)
        try:
            creds = parse_creds(str((stored or {}).get("SecretString", "")))
        except ValueError:
            return None
        return credential_metadata(creds, version, timedelta(0))

    async def deliver(
        self,
        target: DeliveryTarget,
        data: Mapping[str, SecretStr],
        credential: CredentialMetadata,
        message: str,
    ) -> Delivered:
        value = secret_string(target, data)
        name = secret_id(target)
        token = request_token(target.owner, target.purpose, credential.version)
        described = await self._describe(target)
        # Put makes the new version AWSCURRENT; a put repeating an earlier one changes nothing.
        stages = {token: ["AWSCURRENT"]}
        if described is not None:
            self._refuse_foreign(target, described)
            if described.get("DeletedDate"):
                await self._discard(target, "it was scheduled for deletion by an earlier workload")
                described = None
        if described is not None:
            existing = described.get("VersionIdsToStages") or {}
            if token in existing:
                stages = existing
            try:
                await self._call(
                    "put_secret_value",
                    secret_bearing=True,
                    SecretId=name,
                    SecretString=value,
                    ClientRequestToken=token,
                )
            except PermanentError as error:
                if error.reason != "ResourceExistsException":
                    raise
                # Another credential holds this version's token (an earlier workload of this
                # name never removed its secret): versions cannot change, so start afresh.
                await self._discard(target, f"its version {credential.version} is stale")
                described, stages = None, {token: ["AWSCURRENT"]}
        if described is None:
            tags = [{"Key": k, "Value": v} for k, v in sorted(_ownership(target).items())]
            await self._call(
                "create_secret",
                secret_bearing=True,
                Name=name,
                Description=f"{target.purpose.upper()} credentials of workload "
                f"{target.system}/{target.workload} (managed by idp)",
                SecretString=value,
                ClientRequestToken=token,
                Tags=tags,
            )
        return await self._finish(target, credential, stages, message)

    async def _finish(
        self,
        target: DeliveryTarget,
        credential: CredentialMetadata,
        stages: Mapping[str, list[str]],
        message: str,
    ) -> Delivered:
        """Make our version AWSCURRENT (unless it is) and write the ExternalSecret that points
        the cluster at the secret."""
        token = request_token(target.owner, target.purpose, credential.version)
        if "AWSCURRENT" not in stages.get(token, []):
            current = next((v for v, s in stages.items() if "AWSCURRENT" in s), None)
            params: dict[str, Any] = {"RemoveFromVersionId": current} if current else {}
            await self._call(
                "update_secret_version_stage",
                SecretId=secret_id(target),
                VersionStage="AWSCURRENT",
                MoveToVersionId=token,
                **params,
            )
        manifest = dump(render_external_secret(target, credential, self._config))
        change = target.change({target.external_file: manifest}, message)
        result = await self._store.apply(change)
        # Our version is AWSCURRENT now, and the manifest is the one written.
        left = DeliveryState(in_place=True, file_id=git_object_id(manifest), secret_version=token)
        return Delivered(
            credential=credential,
            delivery=self.kind,
            location=f"{secret_id(target)} (Secrets Manager) via "
            f"{target.path(target.external_file)}",
            commit=result.commit,
            detail=token,
            left=left,
        )

    async def check(self, target: DeliveryTarget, credential: CredentialMetadata) -> DeliveryState:
        name = secret_id(target)
        described = await self._describe(target)
        problem: str | None = None
        version: str | None = None
        if described is None:
            problem = f"Secrets Manager secret {name} does not exist"
        elif described.get("DeletedDate"):
            problem = f"Secrets Manager secret {name} is scheduled for deletion"
        else:
            stages = described.get("VersionIdsToStages") or {}
            version = current_version(stages)
            token = request_token(target.owner, target.purpose, credential.version)
            if "AWSCURRENT" not in stages.get(token, []):
                problem = (
                    f"the current version of Secrets Manager secret {name} is not credential "
                    f"version {credential.version}"
                )
        file_id: str | None = None
        if problem is None:
            files = await self._store.read(target.directory)
            text = files.get(target.external_file)
            problem = self._manifest_problem(target, credential, text)
            file_id = git_object_id(text)
        # Which version is current and the manifest's id: what a fleet read compares.
        return DeliveryState(
            in_place=problem is None, problem=problem, file_id=file_id, secret_version=version
        )

    async def current(self, target: DeliveryTarget) -> CredentialMetadata | None:
        files = await self._store.read(target.directory)
        manifest, _ = parse_manifest(
            files.get(target.external_file), target.path(target.external_file), "ExternalSecret"
        )
        return metadata_from(((manifest or {}).get("metadata") or {}).get("annotations") or {})

    def _manifest_problem(
        self, target: DeliveryTarget, credential: CredentialMetadata, text: str | None
    ) -> str | None:
        path = target.path(target.external_file)
        manifest, problem = parse_manifest(text, path, "ExternalSecret")
        if manifest is None:
            return problem
        # What decides which secret reaches the pods; labels and refreshInterval do not.
        expected = render_external_secret(target, credential, self._config)
        metadata = manifest.get("metadata") or {}
        spec = manifest.get("spec") or {}
        for key in ("secretStoreRef", "data"):
            if spec.get(key) != expected["spec"][key]:
                return f"{path} has another spec.{key} than the one written"
        if (spec.get("target") or {}).get("name") != target.secret_name or (
            metadata.get("name"),
            metadata.get("namespace"),
        ) != (target.secret_name, target.namespace):
            return f"{path} names another secret than {target.secret_name}"
        return check_annotations(metadata.get("annotations") or {}, credential, path)

    async def remove(self, target: DeliveryTarget, message: str) -> list[str]:
        removed: list[str] = []
        described = await self._describe(target)
        if described is not None and not described.get("DeletedDate"):
            tags = _tags(described)
            if any(tags.get(k) != v for k, v in _ownership(target).items()):
                log.warning("leaving Secrets Manager secret %s alone: not ours", secret_id(target))
            else:
                params: dict[str, Any] = (
                    {"ForceDeleteWithoutRecovery": True}
                    if self._config.force_delete
                    else {"RecoveryWindowInDays": self._config.recovery_window_days}
                    if self._config.recovery_window_days
                    else {}
                )
                await self._call(
                    "delete_secret",
                    absent=("ResourceNotFoundException",),
                    SecretId=secret_id(target),
                    **params,
                )
                removed.append(secret_id(target))
        result = await self._store.apply(target.change({}, message))
        return removed + list(result.removed)


def _call_aws(
    client: BaseClient,
    operation: str,
    absent: tuple[str, ...],
    secret_bearing: bool,
    params: dict[str, Any],
) -> dict[str, Any] | None:
    try:
        return invoke_aws(client, operation, absent, params, quiet=secret_bearing)
    except PermanentError as err:
        if err.reason == "InvalidRequestException" and "deletion" in str(err).lower():
            # AWS frees a force-deleted secret's name a few seconds later.
            raise TransientError(str(err), reason="SecretBeingDeleted") from None
        raise
