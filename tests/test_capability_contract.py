"""The capability contract itself: the order every worker walks, and what the activity layer
holds every capability to. The capabilities here are stand-ins that touch nothing outside: the
contract's own machinery is what is under test."""

from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.capabilities import capability_activities
from idp.capability import (
    Actions,
    Capability,
    CapabilityError,
    Context,
    Plan,
    Report,
    installed,
    order,
)
from idp.models import Model, Workload


class Seen(Model):
    pass


class Kept(Model):
    id: str


def stand_in(name: str, requires: tuple[str, ...] = (), outputs: dict | None = None) -> Any:
    class StandInActions(Actions[Seen, Plan]):
        async def observe(self, ctx: Context) -> Seen:
            return Seen()

        async def apply(self, ctx: Context, plan: Plan, observation: Seen) -> Report:
            return Report(message="done", outputs=outputs)

        async def teardown(self, ctx: Context) -> Report:
            return Report(message="gone")

    class StandIn(Capability[Seen, Plan]):
        observation_model = Seen
        outputs_model = Kept

        def plan(self, ctx: Context, observation: Seen) -> Plan:
            return Plan()

        def actions(self, platform: Any, settings: Any, cache_dir: Path) -> Actions[Seen, Plan]:
            return StandInActions()

    StandIn.name, StandIn.requires = name, requires
    return StandIn()


def test_the_walk_is_by_depth_then_name_whatever_the_install_order() -> None:
    found = [stand_in("Api", ("Manifests",)), stand_in("Manifests", ("Registry",))]
    found += [stand_in("Registry"), stand_in("Credentials", ("Nats",)), stand_in("Nats")]
    names = ["Nats", "Registry", "Credentials", "Manifests", "Api"]
    assert [c.name for c in order(found)] == names
    assert [c.name for c in order(list(reversed(found)))] == names
    # The built-in ones are installed the same way, through their entry points.
    assert [c.name for c in installed()] == names


@pytest.mark.parametrize(
    ("found", "problem"),
    [
        ([stand_in("A", ("B",))], "capability 'A' requires 'B', which is not installed"),
        ([stand_in("A", ("B",)), stand_in("B", ("A",))], "requires itself, indirectly"),
        ([stand_in("A"), stand_in("A")], "two installed capabilities are named 'A'"),
    ],
)
def test_an_impossible_set_of_capabilities_is_refused_by_name(found: list, problem: str) -> None:
    with pytest.raises(CapabilityError, match=problem):
        order(found)


async def test_outputs_the_outputs_model_refuses_fail_the_activity_not_the_workflow() -> None:
    workload = Workload.model_validate(
        {
            "metadata": {"name": "cart", "system": "shop"},
            "spec": {"owner": "team", "destination": "dev", "namespace": "shop"},
        }
    )
    ctx = Context(workload=workload, workflow_id="w", generation=1, now="2030-01-01T00:00:00Z")
    good = stand_in("Good", outputs={"id": "x"})
    reconcile, *_ = capability_activities(good, good.actions(None, None, Path()))
    assert (await ActivityEnvironment().run(reconcile, ctx)).outputs == {"id": "x"}

    bad = stand_in("Bad", outputs={"name": "x"})
    reconcile, *_ = capability_activities(bad, bad.actions(None, None, Path()))
    with pytest.raises(ApplicationError) as refused:
        await ActivityEnvironment().run(reconcile, ctx)
    assert (refused.value.type, refused.value.non_retryable) == ("InvalidOutputs", True)
    # No id, and a field the model does not have.
    assert refused.value.message == (
        "capability Bad reported outputs its outputs model refuses: 2 error(s), the first at id"
    )
