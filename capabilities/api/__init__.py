"""The Api capability: a workload's `spec.api` targets, registered with the ApiAggregatorWorkflow
of each hostname they name.

Its pure half, which the workflow engine runs. The aggregator of a hostname owns its route table:
it decides conflicts when a workload registers its complete set of targets there, and renders and
writes the accepted ones (workflows/aggregator.py). This capability reads what each aggregator
holds for the workload (a query: an idle pass changes nothing and costs the aggregator no history)
and registers only where that differs from the spec, unregistering from hostnames the spec no
longer names. The outputs are each hostname's answer, so a hostname left out of the spec, or the
whole `spec.api`, is still known and unregistered from. The worker's half is in `actions`.

Its fleet read (docs/fleet.md): a pass found in sync fingerprints what each hostname it asked
holds for the workload (`FleetKey`, `api_digest`), and `ApiActions.fleet_observe` asks each
aggregator once for all the fleet's workloads on it (the `held_by` query).
"""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from idp import ids
from idp.capability import (
    Actions,
    Capability,
    Change,
    Context,
    Fingerprint,
    Plan,
    Related,
    Report,
    digest,
    dump,
)
from idp.models import ApiTarget, Model, Workload
from idp.routes import Held, RegisterTargets, Registration, TargetResult, TargetState, holder

# The Api states besides the aggregator's TargetState: waiting for the ApiAggregator to be
# applied, and accepted but not yet in the state store. Both resolve without anyone acting (the
# aggregator tells the workload to look again), each shown as the phase it waits in.
PENDING = "AggregatorPending"
UNWRITTEN = "RoutesNotWritten"
WAITING = {PENDING: "Pending", UNWRITTEN: "Provisioning"}
# Port's blueprint of a hostname (starter/port/blueprints/).
AGGREGATOR_BLUEPRINT = "idpApiAggregator"


class ApiRoute(Model):
    """Where one hostname's aggregator has this workload's targets, as it last answered."""

    hostname: str
    paths: list[str]
    state: str = Field(
        description="Accepted, PathConflict, WrongDestination, AggregatorPending or "
        "RoutesNotWritten."
    )
    reason: str | None = None
    commit: str | None = None


class ApiOutput(Model):
    routes: list[ApiRoute]


class ApiObservation(Model):
    held: dict[str, Held | None] = Field(
        description="By hostname, every one the spec names or the outputs know: None where no "
        "aggregator workflow runs (none was ever started, or it has ended), so nothing is held."
    )


class Registering(Model):
    """One `register` update: the workload's complete set of targets on a hostname."""

    hostname: str
    request: RegisterTargets


class ApiPlan(Plan):
    registrations: list[Registering] = []


class Api(Capability[ApiObservation, ApiPlan]):
    name = "Api"
    # Routes lead to the workload: claimed once its manifests are written (a workload refused
    # its ServiceAccount claims no path), and released first on delete.
    requires = ("Manifests",)
    spec_field = "api"
    observation_model = ApiObservation
    plan_model = ApiPlan
    outputs_model = ApiOutput
    summary = "API routes with the aggregators of its hostnames"

    def wanted(self, ctx: Context) -> bool:
        # Outputs are kept only while some aggregator holds a route of this workload: a spec
        # that drops its last target still gets the pass that unregisters them.
        return bool(ctx.workload.spec.api) or ctx.outputs is not None

    def plan(self, ctx: Context, observation: ApiObservation) -> ApiPlan:
        return registrations(
            ctx, observation, by_hostname(ctx.workload.spec.api), "spec.api no longer names it"
        )

    def expect(
        self, ctx: Context, plan: ApiPlan, observation: ApiObservation
    ) -> dict[str, Any] | None:
        # What a registration brings is the aggregator's to answer; without one, the pass
        # reports what the aggregators hold now.
        return None if plan else report(ctx, answers_of(observation, {})).outputs

    def fingerprint(self, ctx: Context, observation: ApiObservation) -> Fingerprint | None:
        """Keyed by the hostnames observe asked (`FleetKey`), the digest of what each holds for
        the workload (`api_digest`): what the fleet read gives for the same aggregators."""
        key = FleetKey.of(ctx.workload, observation.held)
        if key is None:
            return None
        return Fingerprint(key=key.text, digest=api_digest(observation.held))

    def describe(self, outputs: Mapping[str, Any]) -> list[str]:
        return [
            f"api:         {', '.join(r.paths)} on {r.hostname} {r.state}"
            + (f": {r.reason}" if r.reason else "")
            for r in ApiOutput.model_validate(outputs).routes
        ]

    def port_related(self, workload: Workload) -> list[Related]:
        # Each hostname is an entity of its own, so Port shows who shares it.
        entities = [
            {"identifier": h, "title": h, "properties": {"hostname": h}}
            for h in sorted(by_hostname(workload.spec.api))
        ]
        return [
            Related(relation="apiAggregators", blueprint=AGGREGATOR_BLUEPRINT, entities=entities)
        ]

    def actions(self, platform: Any, settings: Any, cache_dir: Path) -> Actions[Any, Any]:
        # Imported here: the workflow imports this module, and the actions hold the client.
        from capabilities.api.actions import ApiActions

        return ApiActions()


def by_hostname(targets: list[ApiTarget]) -> dict[str, list[ApiTarget]]:
    found: dict[str, list[ApiTarget]] = {}
    for target in targets:
        found.setdefault(target.aggregator, []).append(target)
    return found


def hostnames(ctx: Context) -> list[str]:
    """The hostnames a pass looks at: those the spec names and those the outputs know."""
    known = ctx.own(ApiOutput)
    named = by_hostname(ctx.workload.spec.api).keys()
    return sorted(named | {r.hostname for r in (known.routes if known else [])})


def request(workload: Workload, targets: list[ApiTarget]) -> RegisterTargets:
    return RegisterTargets(
        system=workload.metadata.system,
        workload=workload.metadata.name,
        namespace=workload.spec.namespace,
        destination=workload.spec.destination,
        targets=targets,
    )


def registrations(
    ctx: Context,
    observation: ApiObservation,
    wanted: dict[str, list[ApiTarget]],
    gone: str,
) -> ApiPlan:
    """Register `wanted` on each hostname whose aggregator holds something else, and register
    nothing (unregister) where it holds targets no longer wanted, `gone` saying why."""
    changes, registering = [], []
    for hostname in hostnames(ctx):
        registration = request(ctx.workload, wanted.get(hostname, []))
        why = _why(registration, observation.held.get(hostname), gone)
        if why is None:
            continue
        registering.append(Registering(hostname=hostname, request=registration))
        if registration.targets:
            subject = f"{len(registration.targets)} target(s) with {hostname}"
            changes.append(Change(action="register", subject=subject, why=why))
        else:
            changes.append(Change(action="unregister", subject=f"from {hostname}", why=why))
    return ApiPlan(changes=changes, registrations=registering)


def _why(registration: RegisterTargets, held: Held | None, gone: str) -> str | None:
    if held is None or not held.targets:
        return "not registered yet" if registration.targets else None
    if not registration.targets:
        return gone
    if (held.targets, held.destination) != (registration.route_targets(), registration.destination):
        return "the targets changed"
    refused = [t for t in held.registration.targets if t.state != TargetState.ACCEPTED]
    if refused:
        # A refusal is decided when the targets arrive; the aggregator tells a refused workload
        # when a path it wanted is released, and only registering again claims it.
        return f"{refused[0].state.value} is decided anew at each registration"
    return None


def answers_of(
    observation: ApiObservation, registered: Mapping[str, Registration]
) -> list[Registration]:
    """Each hostname's answer, by hostname: the one a registration of this pass got, else
    the one its aggregator holds (none where no aggregator runs)."""
    return [
        registered[hostname] if hostname in registered else held.registration
        for hostname, held in sorted(observation.held.items())
        if hostname in registered or held is not None
    ]


def explain_routes(
    plan: ApiPlan, observation: ApiObservation, would: Mapping[str, Registration | str]
) -> list[str]:
    """What `idpctl diff` shows beneath the plan: the paths an unregistration releases, and
    each registered path with the state the aggregator's answer gives it (`would`, by
    hostname; the sentence refusing the registration itself where it would be refused), a
    refused path naming the workload that holds it."""
    lines = []
    for registering in plan.registrations:
        hostname = registering.hostname
        if not registering.request.targets:
            held = observation.held[hostname]
            assert held is not None  # only what an aggregator holds is unregistered
            released = [path for target in held.targets for path in target.paths]
            lines.append(f"{', '.join(released)} on {hostname}: released")
            continue
        answer = would[hostname]
        if isinstance(answer, str):
            lines.append(f"{hostname}: refused: {answer}")
            continue
        lines += [
            f"{', '.join(route.paths)} on {hostname}: {route.state}"
            + (f" ({route.reason})" if route.reason else "")
            for route in routes_of(answer)
        ]
    return lines


def unheld(registering: Registering) -> Registration:
    """The answer of the aggregator a registration starts where none runs: it holds nothing
    else, so every target is accepted, and held until its ApiAggregator is applied."""
    return Registration(
        hostname=registering.hostname,
        aggregator=None,
        targets=[
            TargetResult(paths=target.paths, state=TargetState.ACCEPTED)
            for target in registering.request.targets
        ],
        written=False,
    )


def report(ctx: Context, answers: list[Registration]) -> Report:
    """The pass's outcome from each hostname's answer, registered now or observed unchanged.

    A refused target is the user's to fix and an aggregator not applied yet or not done writing
    resolves by itself: the condition says which. An aggregator that cannot write is a failure,
    retried like any other, which still keeps where the targets are registered (so a later
    unregistration or teardown finds every hostname)."""
    routes = [route for answer in answers for route in routes_of(answer)]
    outputs = dump(ApiOutput(routes=routes)) if routes else None
    for answer in answers:
        if answer.problem:
            message = f"{answer.hostname} cannot write its routes: {answer.problem}"
            return Report(
                status="Failed", reason="AggregatorFailing", message=message, outputs=outputs
            )
    previous = ctx.own(ApiOutput)
    changed = _route_view(routes) != _route_view(previous.routes if previous else [])
    problems = [r for r in routes if r.state != TargetState.ACCEPTED]
    if problems:
        # Refusals first: they are what a person has to act on.
        problems.sort(key=lambda r: r.state in WAITING)
        reason = problems[0].state
        phase = WAITING.get(reason)
        return Report(
            status="Waiting" if phase else "Blocked",
            phase=phase,
            reason=reason,
            message="; ".join(r.reason or "" for r in problems),
            changed=changed,
            outputs=outputs,
        )
    if routes:
        message = "; ".join(f"{', '.join(r.paths)} on {r.hostname}" for r in routes)
        return Report(reason="Routed", message=message, changed=changed, outputs=outputs)
    return Report(reason="Unrouted", message="no API targets", changed=changed, outputs=outputs)


def routes_of(answer: Registration) -> list[ApiRoute]:
    """The workload's view of one hostname: Pending until the ApiAggregator is applied and
    the accepted routes are written."""
    routes = []
    for target in answer.targets:
        state, reason = target.state.value, target.reason
        if target.state == TargetState.ACCEPTED and answer.aggregator is None:
            state = PENDING
            reason = (
                f"no ApiAggregator for {answer.hostname} has been applied yet; the targets are "
                "held until it is"
            )
        elif target.state == TargetState.ACCEPTED and not answer.written:
            state = UNWRITTEN
            reason = f"accepted; {answer.hostname} has not written them yet"
        routes.append(
            ApiRoute(
                hostname=answer.hostname,
                paths=target.paths,
                state=state,
                reason=reason,
                commit=answer.commit,
            )
        )
    return routes


def _route_view(routes: list[ApiRoute]) -> list[tuple[str, list[str], str]]:
    return sorted((r.hostname, r.paths, r.state) for r in routes)


# ---- the fleet read's half that is pure: key and digest ---------------------------------------

# The most a fingerprint key may hold (Fingerprint's pattern): it goes in a search attribute.
KEY_LIMIT = 400
# What labels and hostnames are made of (idp/names.py), loosely: enough to refuse a key that is
# not ours before asking an aggregator about it.
_LABEL_CHARS = re.compile(r"[a-z0-9-]+")
_HOSTNAME_CHARS = re.compile(r"[a-z0-9.*-]+")


@dataclass(frozen=True)
class FleetKey:
    """What a workload's Api fingerprint is keyed by: the workload, and the hostnames its observe
    asked, so that the fleet read asks the same aggregators what they hold for it:
    `workload/<system>/<name>@<hostname>,<hostname>` (sorted). No label or hostname holds '@'
    or ',', nor any whitespace.

    A workload id takes up to 136 characters and a hostname up to 253, so two long hostnames
    would not fit the 400 characters of a key: such a workload keeps its own drift checks.
    """

    system: str
    name: str
    hostnames: tuple[str, ...] = ()

    NAMED: ClassVar[str] = "@"

    @classmethod
    def of(cls, workload: Workload, hostnames: Iterable[str]) -> "FleetKey | None":
        """None when the key would not fit."""
        key = cls(workload.metadata.system, workload.metadata.name, tuple(sorted(hostnames)))
        return key if len(key.text) <= KEY_LIMIT else None

    @property
    def holder(self) -> str:
        """How the aggregators name the workload (what observe asks `held` about)."""
        return holder(self.system, self.name)

    @property
    def text(self) -> str:
        workflow_id = ids.workload_id(self.system, self.name)
        return f"{workflow_id}{self.NAMED}{','.join(self.hostnames)}"

    @classmethod
    def parse(cls, key: str) -> "FleetKey | None":
        """None for a key of another form (a newer worker's, say)."""
        workflow_id, named, listed = key.partition(cls.NAMED)
        hostnames = tuple(listed.split(",")) if listed else ()
        workload = _workload(workflow_id)
        if not named or workload is None or not all(map(_HOSTNAME_CHARS.fullmatch, hostnames)):
            return None
        return cls(*workload, hostnames=hostnames)


def _workload(workflow_id: str) -> tuple[str, str] | None:
    """(system, name) of a workload's workflow id; None for anything else."""
    system, name = ids.parse_workload_id(workflow_id)
    labels = _LABEL_CHARS.fullmatch(system) and _LABEL_CHARS.fullmatch(name)
    if not labels or ids.workload_id(system, name) != workflow_id:
        return None
    return system, name


def api_digest(held: Mapping[str, Held | None]) -> str:
    """The digest of a fingerprint, which observe's `ApiObservation.held` and the fleet read's
    answers both give for the same aggregators: per hostname, None where no aggregator runs,
    else what it holds for the workload.

    All of `Held` but the aggregator's own last commit and its directory: those change with
    every write of the hostname, so with every other workload's routes on it, and a pass acts
    on neither (the plan never reads them; the report only copies the commit into the outputs,
    where a watched workload's stays the one of its last pass). Everything the plan reads is in:
    the targets as registered and where from, and the answer (the aggregator applied or not,
    each target's state and reason, written, the problem when it cannot write)."""
    return digest({hostname: _compared(found) for hostname, found in held.items()})


def _compared(held: Held | None) -> dict[str, Any] | None:
    if held is None:
        return None
    return held.model_dump(mode="json", exclude={"registration": {"commit", "directory"}})
