"""The Bucket capability's pure half: what a workload's bucket should be, and the plan that gets
it there from what observe found.

Everything here runs inside WorkloadWorkflow (this capability sets `one_activity = False`, so
its plan runs in the workflow, between the observe and apply activities): no boto3, no clock,
no randomness. The worker's half is in actions.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from idp.capability import Capability, Change, Context, Plan, Report, dump
from idp.errors import PermanentError
from idp.models import Model, Workload
from idp.names import Matches

if TYPE_CHECKING:
    from idp_bucket.actions import BucketActions

# The tag that says which workflow made a bucket. It lives on the bucket itself, so it survives
# workflow resets and shows in the console; plan refuses a bucket without ours, and teardown
# never deletes one.
OWNER_TAG = "idp.owner"

Versioning = Literal["Enabled", "Suspended"]


class BucketSpec(Model):
    """`spec.bucket`: optional. Every workload gets a bucket where the platform offers them;
    this section only tunes it."""

    versioning: bool = Field(False, description="Keep every version of every object.")


class BucketSettings(Model):
    """The platform file's `buckets` section; without it the platform offers no buckets."""

    # idp's `Matches` says what is allowed in words in the error, not as a regular expression.
    prefix: Annotated[
        str,
        Matches(
            r"^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$",
            "up to 20 lowercase letters, digits or '-', starting and ending with a letter or "
            "digit, such as acme",
        ),
    ] = Field(description="Starts every bucket name: <prefix>-<system>-<name>.")
    region: Annotated[
        str, Matches(r"^[a-z]{2,4}(-[a-z]+)+-\d+$", "an AWS region such as eu-west-1")
    ]
    endpoint_url: str | None = Field(None, description="Override, e.g. a local moto server.")


class BucketOutput(Model):
    name: str
    arn: str

    @classmethod
    def of(cls, name: str) -> BucketOutput:
        return cls(name=name, arn=f"arn:aws:s3:::{name}")


class BucketObservation(Model):
    """What observe found: read-only calls, recorded in history as the plan's input."""

    name: str = Field(description="The workload's bucket name, from the platform's prefix.")
    exists: bool
    owner: str | None = Field(None, description=f"Its {OWNER_TAG} tag.")
    versioning: Versioning | None = Field(None, description="None: never enabled.")


class BucketPlan(Plan):
    """The changes, plus exactly what apply needs to carry them out."""

    bucket: str
    create: bool = False
    versioning: Versioning | None = Field(None, description="Put this status; None: leave it.")


def bucket_name(prefix: str, system: str, name: str) -> str:
    """`<prefix>-<system>-<name>`, within S3's rules: system and name are DNS labels already
    (lowercase letters, digits, '-'), so only the length may need help. A name longer than 63
    characters is cut and ends in a hash of the whole, so two long names never collide."""
    full = f"{prefix}-{system}-{name}"
    if len(full) <= 63:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    return f"{full[:54].rstrip('-')}-{digest}"


def spec_of(workload: Workload) -> BucketSpec:
    return workload.spec.section("bucket") or BucketSpec()


def plan_bucket(ctx: Context, observed: BucketObservation) -> BucketPlan:
    """The writes that make the bucket match `spec.bucket`; none when it does already."""
    name, spec = observed.name, spec_of(ctx.workload)
    subject = f"S3 bucket {name}"
    if observed.exists and observed.owner != ctx.workflow_id:
        # Bucket names are global: this one may be another workload's, another team's, or a
        # create of ours cut short before its tag (apply's own retry finishes those). Never
        # take it over silently; a person who knows it is ours can tag it to adopt it.
        holder = f"is tagged {OWNER_TAG}={observed.owner}" if observed.owner else "has no owner"
        raise PermanentError(
            f"{subject} exists but {holder}, not {ctx.workflow_id}; tag it "
            f"{OWNER_TAG}={ctx.workflow_id} to adopt it, or rename the workload.",
            reason="ForeignBucket",
        )
    changes: list[Change] = []
    if not observed.exists:
        changes.append(Change(action="create", subject=subject, why="missing"))
    # S3 cannot turn versioning off once it was on, only suspend it.
    current = observed.versioning
    wanted: Versioning | None = "Enabled" if spec.versioning else None
    if not spec.versioning and current == "Enabled":
        wanted = "Suspended"
    if wanted is not None and wanted != current:
        changes.append(
            Change(
                action="update",
                subject=f"versioning of {subject}",
                why=f"from {current or 'never enabled'} to {wanted}",
            )
        )
    else:
        wanted = None
    return BucketPlan(changes=changes, bucket=name, create=not observed.exists, versioning=wanted)


class Bucket(Capability[BucketObservation, BucketPlan]):
    name = "Bucket"
    spec_field = "bucket"
    spec_model = BucketSpec
    settings_field = "buckets"
    settings_model = BucketSettings
    observation_model = BucketObservation
    plan_model = BucketPlan
    outputs_model = BucketOutput
    # Observe as an activity, plan here in the workflow, apply only when the plan is not empty:
    # a steady-state pass is one read-only activity and no write at all.
    one_activity = False
    summary = "S3 bucket"

    def wanted(self, ctx: Context) -> bool:
        # Every workload gets one where the platform offers buckets (`offered`, from the
        # `buckets` section): `spec.bucket` is optional, so rolling this out needs no re-apply.
        return True

    def plan(self, ctx: Context, observation: BucketObservation) -> BucketPlan:
        return plan_bucket(ctx, observation)

    def in_sync(self, ctx: Context, observation: BucketObservation) -> Report:
        output = BucketOutput.of(observation.name)
        return Report(message=f"S3 bucket {output.name}", outputs=dump(output))

    def describe(self, outputs: Mapping[str, Any]) -> list[str]:
        return [f"bucket:      {BucketOutput.model_validate(outputs).name}"]

    def port_properties(self, outputs: Mapping[str, Any] | None) -> dict[str, Any]:
        output = None if outputs is None else BucketOutput.model_validate(outputs)
        return {"bucketName": output and output.name}

    def port_schema(self) -> dict[str, dict[str, Any]]:
        return {"bucketName": {"type": "string", "title": "S3 bucket"}}

    def actions(
        self, platform: Any, settings: BucketSettings | None, cache_dir: Path
    ) -> BucketActions:
        # Imported here: boto3 belongs to the worker, never to the workflow.
        from idp_bucket.actions import BucketActions

        return BucketActions(settings)
