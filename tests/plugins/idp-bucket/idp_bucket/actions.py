"""The Bucket capability's worker half: the S3 calls, made inside idp's activities.

boto3 blocks, so every call runs in a thread (`asyncio.to_thread`) and the worker's event loop
keeps heartbeating. The calls go through idp's AWS helpers, which turn S3's answers into
PermanentError (a refusal: not retried) or TransientError (throttling, an outage: retried).
"""

from __future__ import annotations

import asyncio
from typing import Any

import boto3
from botocore.client import BaseClient
from botocore.config import Config

from idp.aws.client import call_aws, lookup_aws
from idp.capability import Actions, Context, Outcome, Report, dump
from idp.errors import PermanentError
from idp.models import DeletionPolicy
from idp_bucket.capability import (
    OWNER_TAG,
    BucketObservation,
    BucketOutput,
    BucketPlan,
    BucketSettings,
    bucket_name,
)


class BucketActions(Actions[BucketObservation, BucketPlan]):
    """Made once per worker, with the platform file's `buckets` section."""

    def __init__(self, settings: BucketSettings | None) -> None:
        self._settings = settings
        self._client: BaseClient | None = None

    @property
    def settings(self) -> BucketSettings:
        # The engine runs a capability only where the platform offers it, so this is a
        # platform file changed under a running worker.
        if self._settings is None:
            raise PermanentError("the platform file has no buckets section", reason="NoBuckets")
        return self._settings

    def _s3(self) -> BaseClient:
        if self._client is None:
            # Credentials from the standard AWS chain, never from the platform file. Path-style
            # addressing when an endpoint is set: S3-compatible stores (and moto) expect it.
            settings = self.settings
            style = "path" if settings.endpoint_url else "auto"
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=settings.endpoint_url,
                config=Config(region_name=settings.region, s3={"addressing_style": style}),
            )
        return self._client

    def _name(self, ctx: Context) -> str:
        metadata = ctx.workload.metadata
        return bucket_name(self.settings.prefix, metadata.system, metadata.name)

    async def observe(self, ctx: Context) -> BucketObservation:
        return await asyncio.to_thread(_observe, self._s3(), self._name(ctx))

    async def apply(self, ctx: Context, plan: BucketPlan, observation: BucketObservation) -> Report:
        region = self.settings.region
        await asyncio.to_thread(_apply, self._s3(), plan, region, ctx.workflow_id)
        output = BucketOutput.of(plan.bucket)
        if plan.create:
            reason, message = Outcome.CREATED, f"created S3 bucket {plan.bucket}"
        else:
            reason, message = Outcome.APPLIED, plan.summary()
        return Report(reason=reason, changed=True, message=message, outputs=dump(output))

    async def teardown(self, ctx: Context) -> Report:
        # The bucket this workflow recorded, not one computed from today's settings: a prefix
        # changed since must not make us forget (or delete) another bucket.
        name = BucketOutput.model_validate(ctx.outputs).name if ctx.outputs else self._name(ctx)
        if ctx.workload.spec.deletion_policy == DeletionPolicy.RETAIN:
            message = f"kept S3 bucket {name} (deletionPolicy Retain)"
        else:
            message = await asyncio.to_thread(_delete, self._s3(), name, ctx.workflow_id)
        return Report(reason=Outcome.DELETED, message=message)


def _exists(s3: BaseClient, name: str) -> bool:
    return (
        lookup_aws(s3, "head_bucket", {"404", "NoSuchBucket", "NotFound"}, Bucket=name) is not None
    )


def _owner(s3: BaseClient, name: str) -> str | None:
    tagging = lookup_aws(s3, "get_bucket_tagging", {"NoSuchTagSet"}, Bucket=name) or {}
    return next((t["Value"] for t in tagging.get("TagSet", []) if t["Key"] == OWNER_TAG), None)


def _observe(s3: BaseClient, name: str) -> BucketObservation:
    if not _exists(s3, name):
        return BucketObservation(name=name, exists=False)
    versioning = call_aws(s3, "get_bucket_versioning", Bucket=name).get("Status")
    return BucketObservation(name=name, exists=True, owner=_owner(s3, name), versioning=versioning)


def _apply(s3: BaseClient, plan: BucketPlan, region: str, owner: str) -> None:
    """The plan's writes; a retry after a crash mid-way finishes the job instead of failing."""
    name = plan.bucket
    if plan.create:
        params: dict[str, Any] = {"Bucket": name}
        if region != "us-east-1":  # S3's one region that takes no location constraint
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        # Ours already when a first attempt got this far: carry on and tag it.
        lookup_aws(s3, "create_bucket", {"BucketAlreadyOwnedByYou"}, **params)
        tags = {"TagSet": [{"Key": OWNER_TAG, "Value": owner}]}
        call_aws(s3, "put_bucket_tagging", Bucket=name, Tagging=tags)
    if plan.versioning is not None:
        configuration = {"Status": plan.versioning}
        call_aws(s3, "put_bucket_versioning", Bucket=name, VersioningConfiguration=configuration)


def _delete(s3: BaseClient, name: str, owner: str) -> str:
    """Delete the bucket if it is ours and empty; objects are never deleted for anyone."""
    if not _exists(s3, name):
        return f"S3 bucket {name} was already gone"
    if _owner(s3, name) != owner:
        return f"kept S3 bucket {name}: it is not tagged {OWNER_TAG}={owner}"
    if lookup_aws(s3, "delete_bucket", {"BucketNotEmpty"}, Bucket=name) is None:
        raise PermanentError(
            f"S3 bucket {name} still holds objects; empty it, or set deletionPolicy: Retain "
            "to keep it.",
            reason="BucketNotEmpty",
        )
    return f"deleted S3 bucket {name}"
