"""Search attributes the workflows maintain, so operators can ask "which workloads are Degraded"
or "what runs on destination X" in the Temporal UI and `temporal workflow list --query`."""

from temporalio.common import SearchAttributeIndexedValueType, SearchAttributeKey

KIND = SearchAttributeKey.for_keyword("IdpKind")
SYSTEM = SearchAttributeKey.for_keyword("IdpSystem")
PHASE = SearchAttributeKey.for_keyword("IdpPhase")
DESTINATION = SearchAttributeKey.for_keyword("IdpDestination")
OWNER = SearchAttributeKey.for_keyword("IdpOwner")
CREDENTIALS_EXPIRE_AT = SearchAttributeKey.for_datetime("IdpCredentialsExpireAt")

ALL: list[SearchAttributeKey] = [KIND, SYSTEM, PHASE, DESTINATION, OWNER, CREDENTIALS_EXPIRE_AT]

_TYPE_NAMES = {
    SearchAttributeIndexedValueType.KEYWORD: "Keyword",
    SearchAttributeIndexedValueType.DATETIME: "Datetime",
}


def dev_server_args() -> list[str]:
    """`temporal server start-dev` flags that register every attribute."""
    args = []
    for key in ALL:
        args += ["--search-attribute", f"{key.name}={_TYPE_NAMES[key.indexed_value_type]}"]
    return args
