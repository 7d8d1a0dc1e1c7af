"""The AWS clients and the one way idp calls them.

Every failure comes back as idp's own error classes: TransientError for what a later attempt may
fix (throttling, AWS-side trouble, an unreachable endpoint), PermanentError for what it cannot (a
refusal, a malformed request, no credentials), each with one sentence naming the service, the
operation and AWS's error code.

Plain boto3, synchronous: callers in async code run these functions in a thread.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from idp.errors import IdpError, PermanentError, TransientError

# Throttling and server-side trouble: a later attempt may well succeed.
_TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "ServiceFailure",
        "ServerException",
        "ConcurrentModification",
        "ConcurrentModificationException",
        # Only create calls raise these: someone created the resource between our look and our
        # create. The retry observes it and adopts or refuses it like any other existing one.
        "EntityAlreadyExists",
        "RepositoryAlreadyExistsException",
    }
)


@dataclass(frozen=True)
class AwsClients:
    ecr: BaseClient
    iam: BaseClient
    # The Resource Groups Tagging API: the tags of many resources in one call.
    tagging: BaseClient

    @classmethod
    def create(
        cls,
        region: str,
        *,
        endpoint_url: str | None = None,
        session: boto3.session.Session | None = None,
        max_attempts: int = 4,
    ) -> AwsClients:
        """Clients from the standard credential chain; ``endpoint_url`` points them all at moto."""
        session = session or boto3.session.Session()
        # A few quick SDK retries smooth over throttling blips; the activity's own retry policy
        # (TransientError) takes over beyond that, with its longer, capped backoff.
        config = Config(
            region_name=region,
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=5,
            read_timeout=30,
        )
        return cls(
            ecr=session.client("ecr", endpoint_url=endpoint_url, config=config),
            iam=session.client("iam", endpoint_url=endpoint_url, config=config),
            tagging=session.client(
                "resourcegroupstaggingapi", endpoint_url=endpoint_url, config=config
            ),
        )


def map_client_error(err: ClientError, service: str = "AWS") -> IdpError:
    """Turn an AWS error answer into a Transient- or PermanentError with one clear sentence."""
    error = err.response.get("Error", {})
    code = str(error.get("Code") or "Unknown")
    status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    detail = " ".join(str(error.get("Message") or "").split()).rstrip(".")
    message = f"AWS {service} {err.operation_name} failed with {code}" + (
        f": {detail}." if detail else "."
    )
    if code in _TRANSIENT_CODES or status >= 500 or status == 429:
        return TransientError(message, reason=code)
    return PermanentError(message, reason=code)


def call_aws(client: BaseClient, operation: str, **params: Any) -> dict[str, Any]:
    """Call ``client.<operation>(**params)``, mapping every failure onto idp's error classes."""
    return invoke_aws(client, operation, (), params) or {}


def lookup_aws(
    client: BaseClient, operation: str, absent: Collection[str], **params: Any
) -> dict[str, Any] | None:
    """Like ``call_aws`` but answers None when AWS says the thing does not exist."""
    return invoke_aws(client, operation, absent, params)


def invoke_aws(
    client: BaseClient,
    operation: str,
    absent: Collection[str],
    params: Mapping[str, Any],
    *,
    quiet: bool = False,
) -> dict[str, Any] | None:
    """One AWS call with its failures mapped onto idp's error classes; None when the answer's
    error code is in `absent`. `quiet` is for calls that carry a secret: botocore's own
    messages may quote the parameters, so they are left out of ours and not chained."""
    service = client.meta.service_model.service_id
    api = client.meta.method_to_api_mapping.get(operation, operation)
    try:
        return getattr(client, operation)(**params)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in absent:
            return None
        raise map_client_error(err, service) from err
    except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError):
        raise TransientError(
            f"AWS {service} {api} could not reach the endpoint.", reason="ConnectionError"
        ) from None
    except NoCredentialsError:
        raise PermanentError(
            "No AWS credentials were found in the standard credential chain.",
            reason="NoCredentials",
        ) from None
    except BotoCoreError as err:
        # Parameter validation and the like: our request is wrong, sending it again won't help.
        detail = "" if quiet else f": {err}"
        raise PermanentError(
            f"AWS {service} {api} failed before reaching AWS{detail}.", reason=type(err).__name__
        ) from (None if quiet else err)
