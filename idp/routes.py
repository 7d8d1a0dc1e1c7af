"""The route table of one API hostname: which workload holds which path, and who is refused.

Gateway API accepts two HTTPRoutes that claim the same hostname and path prefix, marks both
`Accepted=True`, and silently lets the older one win. The aggregator therefore refuses a claim
before anything is rendered: a path conflicts with another workload's path on the same hostname
when one covers the other element by element (`/abc` covers `/abc/def`, not `/abcd`; a trailing
slash changes nothing). Claims on different hostnames never conflict, wildcards included: Gateway
API ranks an exact hostname above a wildcard that also matches, so neither shadows the other.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from pydantic import Field

from idp.models import ApiTarget, HttpPath, Model, ServiceRef
from idp.names import Label


class RouteTarget(Model):
    """One `spec.api` entry of a workload, as the aggregator of its hostname holds it."""

    system: Label
    workload: Label
    namespace: Label = Field(description="The workload's namespace; its HTTPRoute lives there.")
    index: int = Field(ge=0, description="Position among the workload's targets on this hostname.")
    paths: list[HttpPath] = Field(min_length=1, max_length=16)
    service: ServiceRef
    rewrite_prefix: HttpPath | None = None

    @property
    def holder(self) -> str:
        return holder(self.system, self.workload)

    @property
    def service_namespace(self) -> str:
        return self.service.namespace or self.namespace

    @classmethod
    def of(
        cls, system: str, workload: str, namespace: str, index: int, target: ApiTarget
    ) -> "RouteTarget":
        return cls(
            system=system,
            workload=workload,
            namespace=namespace,
            index=index,
            paths=target.paths,
            service=target.service,
            rewrite_prefix=target.rewrite_prefix,
        )


def holder(system: str, workload: str) -> str:
    """How messages name a workload: `system/name`."""
    return f"{system}/{workload}"


def segments(path: str) -> tuple[str, ...]:
    """The path's elements; `/abc/` and `/abc` are the same prefix to Gateway API."""
    return tuple(part for part in path.split("/") if part)


def covers(prefix: str, path: str) -> bool:
    """True when a PathPrefix match on `prefix` also matches `path`."""
    outer, inner = segments(prefix), segments(path)
    return inner[: len(outer)] == outer


def overlap(a: str, b: str) -> bool:
    return covers(a, b) or covers(b, a)


@dataclass(frozen=True)
class Conflict:
    path: str
    held_path: str
    held_by: str

    def message(self, hostname: str) -> str:
        if segments(self.path) == segments(self.held_path):
            how = "is already routed"
        elif covers(self.held_path, self.path):
            how = f"would be shadowed by {self.held_path}"
        else:
            how = f"would shadow {self.held_path}"
        return f"path {self.path} on {hostname} {how} to workload {self.held_by}"


def conflicts(candidate: RouteTarget, accepted: Iterable[RouteTarget]) -> list[Conflict]:
    """Every way `candidate`'s paths collide with paths other workloads hold on this hostname.

    A workload's own targets never conflict with each other: it may split one prefix between
    two of its services, and only it can be surprised by which one wins.
    """
    found = []
    for other in accepted:
        if other.holder == candidate.holder:
            continue
        for path in candidate.paths:
            for held in other.paths:
                if overlap(path, held):
                    found.append(Conflict(path=path, held_path=held, held_by=other.holder))
    return found


# ---- what a workload and an aggregator say to each other --------------------------------


class TargetState(StrEnum):
    """Accepted, or why not."""

    ACCEPTED = "Accepted"
    PATH_CONFLICT = "PathConflict"
    WRONG_DESTINATION = "WrongDestination"


class RegisterTargets(Model):
    """A workload's complete set of targets on one hostname; an empty list unregisters it."""

    system: Label
    workload: Label
    namespace: Label
    destination: Label
    targets: list[ApiTarget] = []

    @property
    def holder(self) -> str:
        return holder(self.system, self.workload)

    def route_targets(self) -> list[RouteTarget]:
        return [
            RouteTarget.of(self.system, self.workload, self.namespace, index, target)
            for index, target in enumerate(self.targets)
        ]


class TargetResult(Model):
    paths: list[str]
    state: TargetState
    reason: str | None = None


class Registration(Model):
    """What the aggregator made of a workload's targets.

    `aggregator` is None while no ApiAggregator for the hostname has been applied: the targets
    are held (and conflicts decided) but nothing is rendered yet. `written` says the accepted
    routes are in the state store; `problem` says why not, when the aggregator cannot write.
    """

    hostname: str
    aggregator: str | None
    targets: list[TargetResult]
    written: bool
    directory: str | None = None
    commit: str | None = None
    problem: str | None = None


class Held(Model):
    """What the aggregator of a hostname holds for one workload, read without changing it: the
    targets as last registered (to compare with what the workload would register now) and the
    answer `register` would give."""

    registration: Registration
    targets: list[RouteTarget] = []
    destination: str | None = Field(None, description="The one they were registered from.")
