"""Reading state that the first version (0.x, steps wired by hand) carried across
continue-as-new, so a workload started before the capability engine survives the upgrade.

That version kept each step's outputs in a field of its own and the NATS bookkeeping at the top
of the state; the engine keeps both under the capability's name. This is the one place that
knows the old shape: it runs only on a state without `rolledOut`, which every state the engine
writes has.
"""

from typing import Any

# Where 0.1 kept each output, and the capability that holds it now.
FIRST_VERSION_OUTPUTS = {
    "registry": "Registry",
    "nats": "Nats",
    "credentials": "Credentials",
    "manifests": "Manifests",
}
_WAITING = {"AggregatorPending": "Pending", "RoutesNotWritten": "Provisioning"}


def upgrade_state(data: Any) -> Any:
    if not isinstance(data, dict) or "rolledOut" in data or "rolled_out" in data:
        return data
    data = dict(data)
    old = data.pop("outputs", None) or {}
    outputs: dict[str, Any] = {}
    # Each output kept its JSON shape; only where it lives changed.
    for key, name in FIRST_VERSION_OUTPUTS.items():
        if old.get(key) is not None:
            outputs[name] = old[key]
    if old.get("api"):
        outputs["Api"] = {"routes": old["api"]}
    memory: dict[str, Any] = {}
    nats_memory = {
        "keyRotatedAt": data.pop("keyRotatedAt", None),
        "revocations": data.pop("revocations", None) or [],
    }
    if nats_memory["keyRotatedAt"] is not None or nats_memory["revocations"]:
        memory["Nats"] = nats_memory
    requests: dict[str, Any] = {}
    rotation = data.pop("rotation", None)
    if rotation is not None:
        requests["rotate_credentials"] = {
            "reason": rotation.get("reason"),
            "revokeOld": "now" if rotation.get("revokeOldNow") else "after-grace",
        }
    data["conditions"] = [_condition(c) for c in data.get("conditions", [])]
    return {**data, "outputs": outputs, "memory": memory, "requests": requests, "rolledOut": []}


def _condition(condition: Any) -> Any:
    if isinstance(condition, dict) and condition.get("status") == "False":
        waiting = _WAITING.get(condition.get("reason", ""))
        if waiting is not None:
            return {**condition, "waiting": waiting}
    return condition
