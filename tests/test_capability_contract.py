"""The capability contract itself: the order every worker walks, what the activity layer
holds every capability to, and the entry points that run a capability's `check`. The
capabilities here are stand-ins that touch nothing outside: the contract's own machinery is what
is under test."""

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import idp.capability
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
from starter import idpctl
from starter.port_bridge import Bridge, BridgeSettings, Rejected, WebhookBody


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
    # The built-in ones are installed the same way, through their entry points, and walked in
    # the same order beside the plugins installed here (Postgres).
    assert [c.name for c in installed() if c.name in names] == names


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


# ---- check: what only the platform file can tell, refused before anything starts --------------


class WidgetSpec(Model):
    server: str


class WidgetSettings(Model):
    servers: list[str]


class Widget(Capability[Seen, Plan]):
    """A capability whose section names a server the platform file lists."""

    name = "Widget"
    spec_field = "widget"
    spec_model = WidgetSpec
    settings_field = "widgets"
    settings_model = WidgetSettings
    observation_model = Seen

    def check(self, section: WidgetSpec, settings: WidgetSettings | None) -> list[str]:
        servers = settings.servers if settings else []
        if section.server in servers:
            return []
        return [
            f"spec.widget.server: {section.server!r} is not a server of the platform "
            f"configuration; allowed: {', '.join(servers) or 'none'}"
        ]

    def plan(self, ctx: Context, observation: Seen) -> Plan:
        return Plan()

    def actions(self, platform: Any, settings: Any, cache_dir: Path) -> Actions[Seen, Plan]:
        raise AssertionError("no worker runs here")


@pytest.fixture
def widget(monkeypatch: pytest.MonkeyPatch) -> Widget:
    """Widget installed beside the built-in capabilities, for this test only."""
    found = (*installed(), Widget())
    monkeypatch.setattr(idp.capability, "installed", lambda: found)
    return found[-1]


def widget_workload(name: str, server: str, destination: str = "dev") -> dict[str, Any]:
    return {
        "apiVersion": "idp.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": name, "system": "shop"},
        "spec": {
            "owner": "team",
            "destination": destination,
            "namespace": "shop",
            "widget": {"server": server},
        },
    }


async def test_idpctl_apply_refuses_what_a_check_finds_and_starts_nothing(
    widget: Widget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform = tmp_path / "platform.yaml"
    document = {
        "apiVersion": "idp.dev/v1alpha1",
        "kind": "Platform",
        "destinations": [{"name": "dev", "stateStore": {"url": "state"}}],
        "widgets": {"servers": ["main"]},
    }
    platform.write_text(yaml.safe_dump(document))
    file = tmp_path / "workloads.yaml"
    documents = [
        widget_workload("fine", "main"),
        widget_workload("lost", "other"),
        widget_workload("astray", "other", destination="nowhere"),
    ]
    file.write_text(yaml.safe_dump_all(documents))

    async def connect(*args: Any) -> Any:
        raise AssertionError("idpctl reached Temporal")

    monkeypatch.setattr(idpctl, "_connect", connect)
    args = idpctl.parser().parse_args(["--platform", str(platform), "apply", "-f", str(file)])
    with pytest.raises(idpctl.UsageError) as refused:
        await args.run(args)
    assert str(refused.value).splitlines() == [
        f"{file}: document 2: spec.widget.server: 'other' is not a server of the platform "
        "configuration; allowed: main",
        f"{file}: document 3: spec.destination: 'nowhere' is not a destination of the platform "
        "configuration; allowed: dev",
        f"{file}: document 3: spec.widget.server: 'other' is not a server of the platform "
        "configuration; allowed: main",
    ]


async def test_the_port_bridge_refuses_what_a_check_finds_before_temporal(
    widget: Widget,
) -> None:
    settings = BridgeSettings(
        task_queue="q",
        namespace="default",
        ui_url="http://ui",
        secret=SecretStr("s"),
        window=timedelta(minutes=5),
        destinations=("dev",),
        # Not offered: the platform file has no widgets section.
        capabilities={widget.name: None},
    )
    bridge = Bridge(temporal=None, port=None, settings=settings)  # type: ignore[arg-type]
    body = WebhookBody.model_validate(
        {
            "action": "idp_create_workload",
            "runId": "r_1",
            "inputs": {"spec": yaml.safe_dump(widget_workload("lost", "main"))},
        }
    )
    with pytest.raises(Rejected) as refused:
        await bridge._apply(body, "create")
    assert (refused.value.status, refused.value.message) == (
        400,
        "spec.widget.server: 'main' is not a server of the platform configuration; allowed: none",
    )
