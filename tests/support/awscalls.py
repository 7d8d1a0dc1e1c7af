"""Counting the AWS calls a pass makes, to check that a steady-state pass reads and never writes."""

from __future__ import annotations

from typing import Any

from idp.aws.client import AwsClients

_READ_PREFIXES = ("Describe", "Get", "List", "BatchGet", "BatchCheck")
# What a steady-state pass of the Registry capability calls (without managed policies): its
# observe, then nothing, since the plan is empty.
REGISTRY_READS = [
    "ecr:DescribeRepositories",
    "ecr:ListTagsForResource",
    "ecr:GetLifecyclePolicy",
    "iam:GetRole",
    "iam:GetRolePolicy",
]


class CallCounter:
    """Records every AWS API call the clients make, as ``"ecr:DescribeRepositories"``.

    Hooks botocore's ``before-call`` event, which fires once per API call (SDK retries of the
    same call are not counted again). Use as a context manager so the hook is removed after.
    """

    def __init__(self, clients: AwsClients) -> None:
        self._clients = (clients.ecr, clients.iam, clients.tagging)
        self._hook_id = f"idp-call-counter-{id(self)}"
        self.calls: list[str] = []
        for client in self._clients:
            client.meta.events.register("before-call", self._record, unique_id=self._hook_id)

    def _record(self, model: Any, **_: Any) -> None:
        self.calls.append(f"{model.service_model.service_name}:{model.name}")

    @property
    def writes(self) -> list[str]:
        return [call for call in self.calls if not call.split(":")[1].startswith(_READ_PREFIXES)]

    def reset(self) -> None:
        self.calls.clear()

    def close(self) -> None:
        for client in self._clients:
            client.meta.events.unregister("before-call", unique_id=self._hook_id)

    def __enter__(self) -> CallCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
