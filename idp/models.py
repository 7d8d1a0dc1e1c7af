"""The resources platform engineers declare: `Workload` and `ApiAggregator` (v1alpha1).

The same models are the JSON that `temporal workflow start/update` takes, so every field keeps its
camelCase name on the wire, and unknown fields are errors rather than silently ignored.
"""

import re
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    model_validator,
)
from pydantic.alias_generators import to_camel

from idp import ids, sections
from idp.durations import Duration
from idp.names import Hostname, Label, Matches, Subdomain

API_VERSION = "idp.dev/v1alpha1"


class Model(BaseModel):
    """Base for every boundary model: camelCase on the wire, strict about unknown fields."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        frozen=True,
    )


_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
# RFC 3986 path characters, as the HTTPRoute CRD's validation rule allows them.
_PATH_CHARACTERS = re.compile(r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+$")


def policy_arn_pattern(*, wildcards: bool = False) -> str:
    """An IAM managed policy's ARN; with `wildcards`, a pattern of them as IAM's ArnLike reads
    it, where * in the account or the name stands for any characters."""
    star = r"\*" if wildcards else ""
    account = r"(\d{12}|aws|\*)" if wildcards else r"(\d{12}|aws)"
    return rf"^arn:aws[a-z-]*:iam::{account}:policy/[\w+=,.@/{star}-]{{1,512}}$"


_ARN = re.compile(policy_arn_pattern())


def _owner(value: str) -> str:
    if not _OWNER.match(value):
        raise ValueError(
            "must name a team or person: up to 128 letters, digits, '.', '_', '@' or '-'; "
            f"got {value!r}"
        )
    return value


def _managed_policy_arn(value: str) -> str:
    if not _ARN.match(value):
        raise ValueError(
            f"must be an IAM policy ARN (arn:aws:iam::ACCOUNT:policy/NAME); got {value!r}"
        )
    return value


def _path(value: str) -> str:
    # The CRD's CEL rules are not evaluated offline, so the path rules Gateway API enforces
    # in the API server are checked here, before anything is written.
    if not value.startswith("/"):
        raise ValueError(f"must start with '/'; got {value!r}")
    if len(value) > 1024:
        raise ValueError("must be at most 1024 characters")
    lowered = value.lower()
    for bad in ("//", "/./", "/../", "%2f", "#"):
        if bad in lowered:
            raise ValueError(f"must not contain {bad!r}; got {value!r}")
    if value.endswith(("/.", "/..")):
        raise ValueError(f"must not end with '/.' or '/..'; got {value!r}")
    if not _PATH_CHARACTERS.match(value):
        raise ValueError(
            "must contain only URL path characters (letters, digits, /-._~!$&'()*+,;=:@ or "
            f"%XX escapes); got {value!r}"
        )
    return value


Owner = Annotated[str, AfterValidator(_owner)]
HttpPath = Annotated[str, AfterValidator(_path)]
Size = Annotated[
    str,
    Matches(
        r"^\d+(Ki|Mi|Gi)?$",
        "a size such as 50Mi: a whole number of bytes, or of the units Ki, Mi or Gi",
    ),
]


class DeletionPolicy(StrEnum):
    RETAIN = "Retain"
    DELETE = "Delete"


class Delivery(StrEnum):
    SEALED_SECRET = "sealed-secret"
    EXTERNAL_SECRET = "external-secret"
    KUBERNETES = "kubernetes"


class LifecycleSpec(Model):
    keep_last: int = Field(30, ge=1, le=1000, description="Images to keep, newest first.")
    expire_untagged_after_days: int = Field(14, ge=1, le=3650)


class RegistrySpec(Model):
    """`spec.registry`: the workload's ECR repository and the IAM role its pods assume."""

    enabled: bool = True
    image_tag_mutability: Literal["MUTABLE", "IMMUTABLE"] = "IMMUTABLE"
    scan_on_push: bool = True
    encryption: Literal["AES256", "KMS"] = "AES256"
    kms_key: str | None = Field(None, description="KMS only; the aws/ecr key when unset.")
    lifecycle: LifecycleSpec = LifecycleSpec()
    managed_policy_arns: list[Annotated[str, AfterValidator(_managed_policy_arn)]] = Field(
        [], max_length=20
    )
    force_delete_images: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> "RegistrySpec":
        if self.kms_key and self.encryption != "KMS":
            raise ValueError("kmsKey is allowed only with encryption: KMS")
        if len(set(self.managed_policy_arns)) != len(self.managed_policy_arns):
            raise ValueError("managedPolicyArns must not repeat")
        return self


class SubjectRules(Model):
    allow: list[str] = []
    deny: list[str] = []


class NatsPermissions(Model):
    publish: SubjectRules = SubjectRules()
    subscribe: SubjectRules = SubjectRules()
    allow_responses: bool = False


class NatsCredentials(Model):
    # pydantic writes a timedelta default as ISO 8601 ("P7D") in the JSON Schema, which the
    # schema's own pattern and the loader reject; state it the way users write it.
    ttl: Duration = Field(timedelta(days=7), json_schema_extra={"default": "7d"})
    refresh_before: Duration | None = Field(
        None, description="Refresh this long before expiry; one third of ttl when unset."
    )
    key_rotation: Duration | None = Field(None, description="Rotate the nkey this often.")
    rotation_grace: Duration = Field(timedelta(hours=1), json_schema_extra={"default": "1h"})
    delivery: Delivery | None = Field(None, description="Platform default when unset.")
    secret_name: Subdomain | None = Field(None, description="<workload>-nats when unset.")

    @model_validator(mode="after")
    def _refresh_inside_ttl(self) -> "NatsCredentials":
        if self.ttl < timedelta(minutes=5):
            raise ValueError("ttl must be at least 5m")
        if self.refresh_before is not None and self.refresh_before >= self.ttl:
            raise ValueError("refreshBefore must be shorter than ttl")
        return self


class NatsSpec(Model):
    account: str | None = Field(None, description="Synadia account; platform default when unset.")
    permissions: NatsPermissions = NatsPermissions()
    credentials: NatsCredentials = NatsCredentials()


class ServiceRef(Model):
    name: Label
    namespace: Label | None = Field(None, description="The workload's namespace when unset.")
    port: int = Field(ge=1, le=65535)


class ApiTarget(Model):
    aggregator: Hostname = Field(description="The hostname of the ApiAggregator to join.")
    paths: list[HttpPath] = Field(min_length=1, max_length=16)
    service: ServiceRef
    rewrite_prefix: HttpPath | None = None


class WorkloadSpec(Model):
    """`spec`: the built-in capabilities' sections are fields; an installed plugin's section is
    accepted and validated by its own model (idp/sections.py)."""

    # Extra sections only as installed plugins own them (the validator below); the schema says
    # so, and `idpctl schema` adds the plugins' sections.
    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": False})

    owner: Owner
    destination: Label
    namespace: Label
    service_account: Subdomain | None = Field(None, description="metadata.name when unset.")
    registry: RegistrySpec = RegistrySpec()
    nats: NatsSpec | None = None
    api: list[ApiTarget] = []
    deletion_policy: DeletionPolicy = DeletionPolicy.RETAIN

    @model_validator(mode="wrap")
    @classmethod
    def _plugin_sections(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        from idp.capability import plugin_sections  # the capabilities import this module

        return sections.validate_with_sections(cls, data, handler, plugin_sections(cls, "spec"))

    def section(self, field: str) -> Any:
        """The section `field` (as users write it: `registry`, `nats`, a plugin's) or None."""
        return sections.get(self, field)


class WorkloadMetadata(Model):
    name: Label
    system: Label
    labels: dict[str, str] = {}


class Workload(Model):
    api_version: Literal["idp.dev/v1alpha1"] = API_VERSION
    kind: Literal["Workload"] = "Workload"
    metadata: WorkloadMetadata
    spec: WorkloadSpec

    @property
    def workflow_id(self) -> str:
        return ids.workload_id(self.metadata.system, self.metadata.name)

    @property
    def service_account(self) -> str:
        return self.spec.service_account or self.metadata.name


class ParentRef(Model):
    name: Label
    namespace: Label
    section_name: Label | None = None


class ApiAggregatorSpec(Model):
    hostname: Hostname
    gateway: ParentRef
    destination: Label
    namespace: Label = Field(description="Namespace the aggregator's shared objects live in.")
    max_request_body_size: Size | None = Field(None, description="A quantity such as 10Mi.")
    rewrite_prefix: HttpPath | None = None


class AggregatorMetadata(Model):
    name: Label
    labels: dict[str, str] = {}


class ApiAggregator(Model):
    api_version: Literal["idp.dev/v1alpha1"] = API_VERSION
    kind: Literal["ApiAggregator"] = "ApiAggregator"
    metadata: AggregatorMetadata
    spec: ApiAggregatorSpec

    @property
    def workflow_id(self) -> str:
        return ids.aggregator_id(self.spec.hostname)


Resource = Workload | ApiAggregator
KINDS: dict[str, type[Workload] | type[ApiAggregator]] = {
    "Workload": Workload,
    "ApiAggregator": ApiAggregator,
}


IMMUTABLE_WORKLOAD_FIELDS = ("destination", "namespace")


def disallowed_changes(current: Workload, new: Workload) -> list[str]:
    """Why `new` may not replace a live `current`; empty when the change is allowed."""
    problems = []
    for field in IMMUTABLE_WORKLOAD_FIELDS:
        before, after = getattr(current.spec, field), getattr(new.spec, field)
        if before != after:
            problems.append(
                f"spec.{field} cannot change on a live workload (it is {before!r}, the new spec "
                f"says {after!r}); delete the workload and apply it again to move it"
            )
    return problems


def disallowed_aggregator_changes(current: ApiAggregator, new: ApiAggregator) -> list[str]:
    """Why `new` may not replace a live `current`: its routes live under the name, destination
    and namespace, so moving them means deleting and applying again."""
    problems = []
    for field, before, after in (
        ("metadata.name", current.metadata.name, new.metadata.name),
        ("spec.destination", current.spec.destination, new.spec.destination),
        ("spec.namespace", current.spec.namespace, new.spec.namespace),
    ):
        if before != after:
            problems.append(
                f"{field} cannot change on a live ApiAggregator (it is {before!r}, the new spec "
                f"says {after!r}); delete the ApiAggregator and apply it again to move it"
            )
    return problems
