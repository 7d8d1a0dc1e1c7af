"""Workflow ids, built and read only here.

An id is the key a running workflow is found by, an owner record in the state store and part
of idempotency tokens (a workload's secret versions), so its shape can never change: a new
shape would orphan every running workflow and every record written under the old one.
"""

_WORKLOAD = "workload/"
_AGGREGATOR = "api-aggregator/"
_PORT_RUN = "port-run/"


def workload_id(system: str, name: str) -> str:
    return f"{_WORKLOAD}{system}/{name}"


def workload_reference(workflow_id: str) -> str:
    """`system/name`, how people and messages name a workload; given that already, unchanged."""
    return workflow_id.removeprefix(_WORKLOAD)


def parse_workload_id(workflow_id: str) -> tuple[str, str]:
    """(system, name) of a workload id or of a `system/name` reference; a part missing is ""."""
    system, _, name = workload_reference(workflow_id).partition("/")
    return system, name


def aggregator_id(hostname: str) -> str:
    return f"{_AGGREGATOR}{hostname}"


def aggregator_hostname(workflow_id: str) -> str:
    """The hostname of an aggregator id; given a hostname, unchanged."""
    return workflow_id.removeprefix(_AGGREGATOR)


def port_run_id(run_id: str) -> str:
    """PortRunWorkflow's id: the Port run id, so a run redelivered by Port is reported once."""
    return f"{_PORT_RUN}{run_id}"
