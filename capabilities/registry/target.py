"""Where a workload's registry lives and for whom: built on the worker from the workload and the
platform file, then carried in the observation so that the plan needs nothing else."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from idp.aws.ecr import validate_repository_name
from idp.aws.iam import role_name_for
from idp.errors import PermanentError
from idp.models import Model

_OIDC_PROVIDER_ARN = re.compile(r"arn:aws(?:-cn|-us-gov)?:iam::\d{12}:oidc-provider/(.+)")
# Anchored: pydantic's Field(pattern=...) searches rather than matching the whole string.
_K8S_NAME = re.compile(r"^[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?$")


class RegistryTarget(Model):
    system: str = Field(pattern=_K8S_NAME.pattern, max_length=63)
    name: str = Field(pattern=_K8S_NAME.pattern, max_length=253)
    namespace: str = Field(pattern=_K8S_NAME.pattern, max_length=63)
    service_account: str = Field(pattern=_K8S_NAME.pattern, max_length=253)
    account_id: str = Field(pattern=r"^\d{12}$")
    region: str = Field(pattern=r"^[a-z]{2,4}(-[a-z]+)+-\d+$")
    repository_prefix: str = ""
    trust: Literal["irsa", "pod-identity"] = "irsa"
    # IRSA needs the cluster's OIDC provider: give its ARN, its issuer URL, or both.
    oidc_provider_arn: str | None = None
    oidc_issuer_url: str | None = None
    deletion_policy: Literal["Retain", "Delete"] = "Retain"

    @model_validator(mode="after")
    def _check(self) -> RegistryTarget:
        if self.trust == "irsa" and not (self.oidc_provider_arn or self.oidc_issuer_url):
            raise ValueError("trust irsa needs the cluster's OIDC provider ARN or issuer URL")
        if self.oidc_provider_arn and not _OIDC_PROVIDER_ARN.fullmatch(self.oidc_provider_arn):
            raise ValueError(f"{self.oidc_provider_arn!r} is not an IAM OIDC provider ARN")
        if self.oidc_provider_arn and self.oidc_issuer_url:
            from_arn = _OIDC_PROVIDER_ARN.fullmatch(self.oidc_provider_arn)
            if from_arn and from_arn.group(1) != _issuer_host_path(self.oidc_issuer_url):
                raise ValueError("the OIDC provider ARN and the issuer URL name different issuers")
        validate_repository_name(self.repository_name)
        return self

    @property
    def repository_name(self) -> str:
        return f"{self.repository_prefix}{self.system}/{self.name}"

    @property
    def role_name(self) -> str:
        return role_name_for(self.system, self.name)

    @property
    def partition(self) -> str:
        if self.region.startswith("cn-"):
            return "aws-cn"
        if self.region.startswith("us-gov-"):
            return "aws-us-gov"
        return "aws"

    @property
    def repository_arn(self) -> str:
        # Deterministic, so the role's policy can be written without reading the repository.
        return (
            f"arn:{self.partition}:ecr:{self.region}:{self.account_id}:"
            f"repository/{self.repository_name}"
        )

    @property
    def repository_uri(self) -> str:
        """The URI ECR gives the repository: its registry is the account's in the region."""
        domain = "amazonaws.com.cn" if self.partition == "aws-cn" else "amazonaws.com"
        return f"{self.account_id}.dkr.ecr.{self.region}.{domain}/{self.repository_name}"

    @property
    def role_arn(self) -> str:
        # The role is created without a path, so it sits at the root one.
        return f"arn:{self.partition}:iam::{self.account_id}:role/{self.role_name}"

    @property
    def oidc_host_path(self) -> str:
        """The issuer without its scheme, e.g. oidc.eks.eu-west-1.amazonaws.com/id/ABC."""
        if self.oidc_issuer_url:
            return _issuer_host_path(self.oidc_issuer_url)
        match = _OIDC_PROVIDER_ARN.fullmatch(self.oidc_provider_arn or "")
        if not match:
            raise PermanentError("IRSA trust needs the cluster's OIDC provider.", reason="NoOidc")
        return match.group(1)

    @property
    def oidc_arn(self) -> str:
        return self.oidc_provider_arn or (
            f"arn:{self.partition}:iam::{self.account_id}:oidc-provider/{self.oidc_host_path}"
        )


def _issuer_host_path(url: str) -> str:
    return re.sub(r"^https?://", "", url).rstrip("/")
