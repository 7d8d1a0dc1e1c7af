"""The platform configuration file: where things go and how to reach the systems we drive.

It holds no secret itself: credentials are read from environment variables it names.
"""

import fnmatch
import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)

from idp import sections
from idp.durations import Duration
from idp.errors import PermanentError
from idp.loading import TOO_DEEP, YamlLoader, describe_errors, yaml_problem
from idp.models import API_VERSION, Delivery, Model, policy_arn_pattern
from idp.names import Label, Matches, Subdomain, shown
from idp.sealing import CertificateSource

EnvName = Annotated[
    str,
    Matches(
        r"^[A-Za-z_][A-Za-z0-9_]*$",
        "an environment variable name: letters, digits and '_', not starting with a digit",
    ),
]


class StateStoreConfig(Model):
    url: str = Field(description="Anything git can push to; a relative path is read from the file.")
    branch: str = "main"
    path: str = Field("", description="Base directory inside the repository.")

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        parts = [p for p in value.split("/") if p]
        if value.startswith("/") or ".." in parts or ".git" in parts:
            raise ValueError(f"must be a relative directory inside the repository; got {value!r}")
        return "/".join(parts)


class ClusterIdentity(Model):
    """How pods on the destination cluster assume their workload's IAM role."""

    trust: Literal["irsa", "pod-identity"] = "irsa"
    oidc_provider_arn: str | None = Field(None, description="IRSA: the cluster's OIDC provider.")
    oidc_issuer_url: str | None = Field(None, description="IRSA: or its issuer URL.")

    @model_validator(mode="after")
    def _irsa_needs_oidc(self) -> "ClusterIdentity":
        if self.trust == "irsa" and not (self.oidc_provider_arn or self.oidc_issuer_url):
            raise ValueError("trust irsa needs oidcProviderArn or oidcIssuerUrl")
        return self


class SecretStoreConfig(Model):
    """How the destination's External Secrets Operator reads AWS Secrets Manager."""

    name: Subdomain = Field(description="The ClusterSecretStore an ExternalSecret refers to.")
    refresh_interval: Duration = Field(
        timedelta(hours=1),
        json_schema_extra={"default": "1h"},
        description="How often the operator re-reads the secret (spec.refreshInterval).",
    )
    recovery_window_days: int | None = Field(
        None, ge=7, le=30, description="Days a deleted secret can be restored (AWS default 30)."
    )
    force_delete: bool = Field(False, description="Delete secrets at once, without recovery.")

    @model_validator(mode="after")
    def _one_deletion_mode(self) -> "SecretStoreConfig":
        if self.force_delete and self.recovery_window_days is not None:
            raise ValueError("set recoveryWindowDays or forceDelete, not both")
        if self.refresh_interval < timedelta(seconds=1) or self.refresh_interval.microseconds:
            raise ValueError("refreshInterval must be whole seconds, at least 1s")
        return self


class GatewayConfig(Model):
    """A Gateway on the destination cluster that ApiAggregators attach their routes to."""

    name: Label
    namespace: Label
    implementation: Literal["envoy-gateway", "nginx-gateway-fabric"] = Field(
        "envoy-gateway",
        description="Decides how maxRequestBodySize is rendered: an Envoy Gateway "
        "BackendTrafficPolicy or an NGINX Gateway Fabric ClientSettingsPolicy.",
    )
    allowed_routes_from: Literal["All", "Same", "Selector"] = Field(
        description="What the listener's allowedRoutes.namespaces.from says. Routes live in the "
        "workloads' namespaces, so anything but All needs care; `idpctl describe apiaggregator` "
        "warns about routes the listener will not accept."
    )


class Destination(Model):
    name: Label
    state_store: StateStoreConfig
    cluster: ClusterIdentity | None = Field(None, description="Needed when aws is configured.")
    default_delivery: Delivery = Delivery.SEALED_SECRET
    sealing: CertificateSource | None = Field(
        None,
        description="Where the sealed-secrets controller's certificate comes from; needed by "
        "workloads delivering sealed-secret.",
    )
    secret_store: SecretStoreConfig | None = Field(
        None, description="Needed by workloads delivering external-secret (with aws)."
    )
    kube_context: str | None = Field(
        None,
        description="kubeconfig context of the cluster, for delivery kubernetes (in-cluster "
        "config when unset).",
    )
    gateways: list[GatewayConfig] = Field(
        [], description="The Gateways ApiAggregators on this destination attach to."
    )

    def gateway(self, name: str, namespace: str) -> GatewayConfig | None:
        return next((g for g in self.gateways if (g.name, g.namespace) == (name, namespace)), None)


class ReconcileSettings(Model):
    drift_interval: Duration = timedelta(minutes=10)
    min_backoff: Duration = timedelta(seconds=10)
    max_backoff: Duration = timedelta(minutes=10)
    search_attributes: bool = Field(
        True,
        description="Maintain the Idp* search attributes; turn off only for a namespace where "
        "they cannot be registered (workflow tasks fail on undefined attributes).",
    )
    fleet_observer: bool | None = Field(
        None,
        description="Observe the fleet in one read per capability and state store or account "
        "each drift interval, and let a workload found in sync sleep until a deadline or a "
        "change instead of checking itself (docs/fleet.md). Unset: on where the namespace has "
        "the IdpFleet search attribute, else off with a warning; true: a worker refuses to "
        "start without it; false: every workload checks itself each drift interval.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> "ReconcileSettings":
        if self.drift_interval < timedelta(seconds=1):
            raise ValueError("driftInterval must be at least 1s")
        if not timedelta(0) < self.min_backoff <= self.max_backoff:
            raise ValueError("minBackoff must be positive and at most maxBackoff")
        if self.fleet_observer and not self.search_attributes:
            # Watched workloads publish what the observer must find in a search attribute.
            raise ValueError("fleetObserver: true needs searchAttributes: true")
        return self


class AwsConfig(Model):
    """Where registries and roles live. Credentials come from the standard AWS chain."""

    region: Annotated[
        str, Matches(r"^[a-z]{2,4}(-[a-z]+)+-\d+$", "an AWS region such as eu-west-1")
    ]
    account_id: Annotated[
        str, Matches(r"^\d{12}$", "a 12-digit AWS account id such as 123456789012")
    ]
    endpoint_url: str | None = Field(None, description="Override, e.g. a local moto server.")
    repository_prefix: Annotated[
        str,
        Matches(
            r"^([a-z0-9][a-z0-9._-]*/)?$",
            "empty or one path segment ending in '/' such as team/ (lowercase letters, digits, "
            "'.', '_' or '-', starting with a letter or digit)",
        ),
    ] = ""
    attachable_policies: list[
        Annotated[
            str,
            Matches(
                policy_arn_pattern(wildcards=True),
                "an IAM policy ARN such as arn:aws:iam::aws:policy/ReadOnlyAccess, where * "
                "stands for any characters (arn:aws:iam::123456789012:policy/team-a/*)",
            ),
        ]
    ] = Field(
        [],
        max_length=100,
        description="The managed policies a workload may attach to its role through "
        "spec.registry.managedPolicyArns. Empty, the default: none, so whoever writes a workload "
        "cannot give its role more than its own repository. The worker's IAM policy (idpctl "
        "platform iam-policy) grants AttachRolePolicy for these alone.",
    )

    def attachable(self, arn: str) -> bool:
        """Whether `arn` is among `attachable_policies`, with IAM's ArnLike reading of *."""
        return any(fnmatch.fnmatchcase(arn, pattern) for pattern in self.attachable_policies)


LOCAL_ACCOUNTS_FIELD = "synadia.local.accounts"


def _require_unique(what: str, names: list[str]) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what} names must be unique; repeated: {', '.join(repeated)}")


class LocalAccount(Model):
    """An application account the local Synadia emulator creates, with its signing key groups."""

    name: Annotated[
        str,
        Matches(
            r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$",
            "an account name: up to 63 letters, digits, '_' or '-', starting with a letter or "
            "digit",
        ),
    ]
    signing_key_groups: list[str] = Field(
        ["Default"],
        min_length=1,
        description="Groups the emulator creates in the account; users are signed by the first "
        "(or by synadia.signingKeyGroup).",
    )

    @field_validator("signing_key_groups")
    @classmethod
    def _distinct_groups(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value) or not all(g and g == g.strip() for g in value):
            raise ValueError(f"must be distinct, non-blank names; got {value}")
        return value


class LocalSynadia(Model):
    """What the local Synadia emulator (`idpctl dev`) sets up. Its presence marks `url` as the
    emulator: Synadia Cloud has no such list, accounts are made in its UI."""

    accounts: list[LocalAccount] = Field(
        min_length=1,
        description="Application accounts the emulator creates on start (it adds, never "
        "removes), each a real account of its nats-server.",
    )

    @field_validator("accounts")
    @classmethod
    def _distinct_accounts(cls, value: list[LocalAccount]) -> list[LocalAccount]:
        _require_unique("account", [a.name for a in value])
        return value


class SynadiaConfig(Model):
    """Synadia Cloud (or the local emulator): where NATS users live. The token is read from the
    environment variable `tokenEnv`, never from this file."""

    url: str = Field(description="Control-plane URL, e.g. https://cloud.synadia.com.")
    token_env: EnvName = "SYNADIA_TOKEN"
    system: str = Field(min_length=1, description="The NATS system, by name or id.")
    default_account: str = Field(
        min_length=1, description="Account of workloads that name none, by name or id."
    )
    signing_key_group: str | None = Field(
        None, description="Signing key group users are created with (the account's first)."
    )
    local: LocalSynadia | None = Field(
        None, description="Only for the local emulator: the accounts it creates."
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL; got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _default_account_is_local(self) -> "SynadiaConfig":
        if self.local is not None:
            names = [a.name for a in self.local.accounts]
            if self.default_account not in names:
                raise ValueError(
                    f"defaultAccount {self.default_account!r} must be one of "
                    f"{LOCAL_ACCOUNTS_FIELD} ({', '.join(names)})"
                )
        return self

    def missing_account_advice(self, name: str) -> str:
        """What to do about an account the system does not have, here or in Synadia Cloud."""
        if self.local is None:
            return "create it or correct spec.nats.account (or synadia.defaultAccount)."
        return (
            f"on the local stack, add `- name: {name}` under {LOCAL_ACCOUNTS_FIELD} in the "
            "platform file (.idp/platform.yaml) and restart `idpctl dev`, or correct "
            "spec.nats.account."
        )


PORT_REGIONS = {"eu": "https://api.getport.io", "us": "https://api.us.getport.io"}


class PortConfig(Model):
    """Port.io, the developer portal (or the local emulator): where self-service actions come
    from and where runs and entities are reported. The client id and secret are read from the
    environment variables named here, never from this file; the secret also verifies webhooks."""

    region: Literal["eu", "us"] | None = Field(
        None, description="Port's API region (eu when neither region nor url is set)."
    )
    url: str | None = Field(None, description="API base URL instead of a region (an emulator).")
    client_id_env: EnvName = "PORT_CLIENT_ID"
    client_secret_env: EnvName = "PORT_CLIENT_SECRET"
    webhook_window: Duration = Field(
        timedelta(minutes=5),
        json_schema_extra={"default": "5m"},
        description="How old (or how far in the future) a signed webhook may be.",
    )
    ui_url: str | None = Field(
        None,
        description="Temporal UI address for the links Port shows, when Port's users reach it "
        "by another address than temporal.uiUrl.",
    )

    @field_validator("url", "ui_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL; got {value!r}")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _one_endpoint(self) -> "PortConfig":
        if self.region and self.url:
            raise ValueError("set region or url, not both")
        if self.webhook_window < timedelta(seconds=1):
            raise ValueError("webhookWindow must be at least 1s")
        return self

    @property
    def api_url(self) -> str:
        return self.url or PORT_REGIONS[self.region or "eu"]


class TemporalTls(Model):
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    server_name: str | None = None


class TemporalConfig(Model):
    address: str = "localhost:7233"
    namespace: str = "default"
    task_queue: str = "idp"
    api_key_env: str = Field("TEMPORAL_API_KEY", description="Variable holding an API key, if any.")
    tls: TemporalTls | None = None
    ui_url: str = Field("http://localhost:8233", description="Used for links in status and Port.")


class Platform(Model):
    """The platform file. An installed capability's settings are a section of their own, which
    its model validates (idp/sections.py)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": False})

    api_version: str = API_VERSION
    kind: str = "Platform"
    destinations: list[Destination] = Field(min_length=1)
    reconcile: ReconcileSettings = ReconcileSettings()
    temporal: TemporalConfig = TemporalConfig()
    aws: AwsConfig | None = Field(None, description="Without it, workloads get no registry.")
    synadia: SynadiaConfig | None = Field(None, description="Without it, no NATS users.")
    port: PortConfig | None = Field(None, description="Without it, no Port.io bridge.")

    @model_validator(mode="after")
    def _unique_destinations(self) -> "Platform":
        if self.synadia is not None:
            for destination in self.destinations:
                _check_default_delivery(destination, self.aws is not None)
        if self.aws is not None:
            missing = [d.name for d in self.destinations if d.cluster is None]
            if missing:
                raise ValueError(
                    f"with aws configured, every destination needs cluster (trust and OIDC "
                    f"provider); missing on: {', '.join(missing)}"
                )
        _require_unique("destination", [d.name for d in self.destinations])
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _plugin_sections(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        from idp.capability import plugin_sections  # the capabilities import this module

        return sections.validate_with_sections(cls, data, handler, plugin_sections(cls, "settings"))

    def section(self, field: str) -> Any:
        """The section `field` (`aws`, `synadia`, a plugin's) or None when absent."""
        return sections.get(self, field)

    def destination(self, name: str) -> Destination | None:
        return next((d for d in self.destinations if d.name == name), None)

    def require_destination(self, name: str) -> Destination:
        """The destination, or the permanent error a step reports when the spec names another."""
        destination = self.destination(name)
        if destination is None:
            known = ", ".join(d.name for d in self.destinations)
            raise PermanentError(
                f"destination {name!r} is not defined in the platform configuration "
                f"(defined: {known})",
                reason="UnknownDestination",
            )
        return destination


def _check_default_delivery(destination: Destination, aws: bool) -> None:
    """The destination's default delivery must be usable; a workload choosing another delivery
    is checked when its credentials are delivered, naming the missing field."""
    name, delivery = destination.name, destination.default_delivery
    if delivery == Delivery.SEALED_SECRET and destination.sealing is None:
        raise ValueError(
            f"destination {name}: defaultDelivery sealed-secret needs sealing (file, url or "
            "cluster of the controller certificate)"
        )
    if delivery == Delivery.EXTERNAL_SECRET and (destination.secret_store is None or not aws):
        raise ValueError(
            f"destination {name}: defaultDelivery external-secret needs secretStore and the aws "
            "section"
        )


class PlatformError(Exception):
    """The platform file cannot be used; the message names the file and the field."""


DEFAULT_ENV = "IDP_PLATFORM_CONFIG"


def platform_path(explicit: str | None = None) -> Path | None:
    value = explicit or os.environ.get(DEFAULT_ENV)
    return Path(value) if value else None


def load_platform(path: Path) -> Platform:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise PlatformError(f"{path}: cannot be read ({error.strerror})") from None
    except UnicodeDecodeError:
        raise PlatformError(f"{path}: is not UTF-8 text; it must be saved as UTF-8") from None
    try:
        document = yaml.load(text, Loader=YamlLoader)
    except yaml.YAMLError as error:
        raise PlatformError(f"{path}: {yaml_problem(error, text)}") from None
    except RecursionError:
        raise PlatformError(f"{path}: {TOO_DEEP}") from None
    if not isinstance(document, dict):
        raise PlatformError(
            f"{path}: must be a mapping with kind: Platform and destinations; got {shown(document)}"
        )
    if "kind" not in document:
        raise PlatformError(f"{path}: kind: required field is missing; it must be Platform")
    if document["kind"] != "Platform":
        raise PlatformError(f"{path}: kind: must be Platform; got {shown(document['kind'])}")
    try:
        platform = Platform.model_validate(document)
    except ValidationError as error:
        lines = describe_errors(error, Platform)
        raise PlatformError("\n".join(f"{path}: {line}" for line in lines)) from None
    return _resolve_local_paths(platform, path.parent.resolve())


def _resolve_local_paths(platform: Platform, base: Path) -> Platform:
    """Make relative state-store paths relative to the platform file, not to the caller's cwd."""
    destinations = []
    for destination in platform.destinations:
        url = destination.state_store.url
        if not _is_remote(url) and not Path(url).is_absolute():
            store = destination.state_store.model_copy(update={"url": str((base / url).resolve())})
            destination = destination.model_copy(update={"state_store": store})
        sealing = destination.sealing
        if sealing is not None and sealing.file is not None and not sealing.file.is_absolute():
            source = CertificateSource(file=(base / sealing.file).resolve())
            destination = destination.model_copy(update={"sealing": source})
        destinations.append(destination)
    return platform.model_copy(update={"destinations": destinations})


def _is_remote(url: str) -> bool:
    # git treats "host:path" (scp-like) and "scheme://" as remote; everything else is a path.
    head = url.split("/", 1)[0]
    return "://" in url or (":" in head and not head.endswith(":"))
