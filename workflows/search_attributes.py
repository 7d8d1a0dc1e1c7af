"""Search attributes the workflows maintain, so operators can ask "which workloads are Degraded"
or "what runs on destination X" in the Temporal UI and `temporal workflow list --query`."""

from typing import Any

from temporalio import workflow
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.common import (
    SearchAttributeIndexedValueType,
    SearchAttributeKey,
    SearchAttributeUpdate,
)

from idp.capability import installed

KIND = SearchAttributeKey.for_keyword("IdpKind")
SYSTEM = SearchAttributeKey.for_keyword("IdpSystem")
PHASE = SearchAttributeKey.for_keyword("IdpPhase")
DESTINATION = SearchAttributeKey.for_keyword("IdpDestination")
OWNER = SearchAttributeKey.for_keyword("IdpOwner")
# What the fleet observer must find for a sleeping workload (workflows/engine.py, fleet_entries).
FLEET = SearchAttributeKey.for_keyword_list("IdpFleet")

# The workflow's own, then those its installed capabilities keep (credentials expiry, say).
ALL: list[SearchAttributeKey] = [
    KIND,
    SYSTEM,
    PHASE,
    DESTINATION,
    OWNER,
    FLEET,
    *(key for capability in installed() for key in capability.search_attributes),
]


def upsert_changed(desired: list[SearchAttributeUpdate[Any]]) -> None:
    """From workflow code: upsert only the attributes whose value differs, so an unchanged pass
    adds no event to history."""
    current = workflow.info().typed_search_attributes
    changed = [pair for pair in desired if current.get(pair.key) != pair.value]
    if changed:
        workflow.upsert_search_attributes(changed)


_TYPE_NAMES = {
    SearchAttributeIndexedValueType.KEYWORD: "Keyword",
    SearchAttributeIndexedValueType.KEYWORD_LIST: "KeywordList",
    SearchAttributeIndexedValueType.DATETIME: "Datetime",
}


def dev_server_args() -> list[str]:
    """`temporal server start-dev` flags that register every attribute."""
    args = []
    for key in ALL:
        args += ["--search-attribute", f"{key.name}={_TYPE_NAMES[key.indexed_value_type]}"]
    return args


async def missing(client: Client, namespace: str) -> list[str]:
    """The attributes the namespace lacks, by name."""
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    return [key.name for key in ALL if key.name not in existing.custom_attributes]


async def register(client: Client, namespace: str) -> list[str]:
    """Register every attribute that is missing on the server; returns the names added.

    What `idpctl platform init` runs against a self-hosted cluster (Temporal Cloud namespaces are
    configured in its UI or tcld instead)."""
    absent = set(await missing(client, namespace))
    added = {
        key.name: IndexedValueType.ValueType(key.indexed_value_type.value)
        for key in ALL
        if key.name in absent
    }
    if added:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=added)
        )
    return sorted(added)
