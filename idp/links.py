"""Links into the Temporal UI, as idpctl prints them and Port shows them."""

from urllib.parse import quote


def workflow_link(ui_url: str, namespace: str, workflow_id: str) -> str:
    return (
        f"{ui_url}/namespaces/{quote(namespace, safe='')}/workflows/{quote(workflow_id, safe='')}"
    )


def system_link(ui_url: str, namespace: str, system: str) -> str:
    """Every workflow of a system, by its search attribute."""
    query = quote(f"IdpSystem = '{system}'", safe="")
    return f"{ui_url}/namespaces/{quote(namespace, safe='')}/workflows?query={query}"
