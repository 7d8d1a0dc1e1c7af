"""What Port shows of a workload: its entities, made from the workload's status alone, and a
digest of them.

Pure and beside the status model, so the workflow can tell from its own state whether Port needs
publishing and the activity upserts exactly what that digest was taken of, without the workflow
reaching into an activity module or the activity into the workflow.
"""

import hashlib
import json
from typing import Any

from idp.capability import installed
from idp.models import API_VERSION, Workload
from idp.port import PortEntity
from idp.yamltext import dump
from workflows.messages import WorkloadStatus

WORKLOAD_BLUEPRINT = "idpWorkload"
SYSTEM_BLUEPRINT = "idpSystem"


def port_entities(
    status: WorkloadStatus, workload_link: str, system_link: str
) -> list[tuple[str, PortEntity]]:
    """The entities a workload's status shows in Port, each after the ones it relates to."""
    workload = status.workload
    system = workload.metadata.system
    found: list[tuple[str, PortEntity]] = [
        (
            SYSTEM_BLUEPRINT,
            PortEntity(identifier=system, title=system, properties={"workflows": system_link}),
        )
    ]
    relations: dict[str, Any] = {"system": system}
    for capability in installed():
        for related in capability.port_related(workload):
            found += [(related.blueprint, PortEntity(**e)) for e in related.entities]
            relations[related.relation] = [e["identifier"] for e in related.entities]
    properties = {
        "phase": status.phase.value,
        "owner": workload.spec.owner,
        "destination": workload.spec.destination,
        "namespace": workload.spec.namespace,
        "generation": status.generation,
        "observedGeneration": status.observed_generation,
        **capability_properties(status),
        "conditions": conditions_text(status),
        "temporal": workload_link,
        "spec": spec_yaml(workload),
    }
    found.append(
        (
            WORKLOAD_BLUEPRINT,
            PortEntity(
                identifier=entity_identifier(system, workload.metadata.name),
                title=f"{system}/{workload.metadata.name}",
                properties=properties,
                relations=relations,
            ),
        )
    )
    return found


def capability_properties(status: WorkloadStatus) -> dict[str, Any]:
    """What each installed capability shows of its outputs on the workload's entity."""
    shown: dict[str, Any] = {}
    for capability in installed():
        shown |= capability.port_properties(status.outputs.get(capability.name))
    return shown


def port_view(status: WorkloadStatus) -> str:
    """A digest of what the workload's entities show, so its workflow publishes only changes
    (links are left out: they depend on configuration, not on the workload)."""
    shown = port_entities(status, workload_link="", system_link="")
    body = json.dumps([(b, e.model_dump(mode="json")) for b, e in shown], sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def conditions_text(status: WorkloadStatus) -> str:
    return "\n".join(
        f"- {c.type}: {c.status.value} ({c.reason}) {c.message}" for c in status.conditions
    )


def spec_yaml(workload: Workload) -> str:
    """The applied document as a person would write it: defaults left out, so that pasting it
    back into Update workload applies the same spec."""
    body = workload.model_dump(mode="json", exclude_defaults=True)
    document = {"apiVersion": API_VERSION, "kind": "Workload", **body}
    return dump(document, sort_keys=False, allow_unicode=False)


def entity_identifier(system: str, name: str) -> str:
    """`<system>.<name>`: DNS labels hold no dots, so it splits back unambiguously."""
    return f"{system}.{name}"
