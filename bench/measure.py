"""What the benches measure beside their own figures: the machine, CPU and memory of every
process of the local stack, and Temporal Cloud's billable actions counted from histories.

**Processes.** Read from /proc, for each process the stack started (the worker, the Temporal dev
server, moto, the Synadia emulator, the Port emulator, ...) and for the bench itself. A process's
row is its own CPU time (user + system) over the window. Its children follow on rows of their
own: those still running at the end (the Synadia emulator's nats-server, PostgreSQL's backends),
by name, and those that ran and exited inside the window, summed, from the parent's cumulative
children times (`cutime`, `cstime` in /proc/<pid>/stat: the CPU of every child the parent has
waited for, and of the children those waited for). The worker's exited children are its git
commands, each a short-lived child that asyncio reaps; the git daemon's are the remote's half
of those fetches and pushes (upload-pack, receive-pack), which a git host would run and which
a state store at a path would have put under the worker. RSS is the resident set at the end.

**Billable actions, counted from histories.** Every execution in the namespace (every workflow
type, every run, closed ones included), its history fetched and each event counted as Temporal
Cloud counts it (https://docs.temporal.io/cloud/actions, the mapping of actions to history
events):

- WorkflowExecutionStarted: 1 (client start, update-with-start, a child's start, the new run
  of a continue-as-new).
- WorkflowExecutionContinuedAsNew: 0 here, since the new run's WorkflowExecutionStarted is its
  action (Cloud's UI marks that event, not this one); counting both would count it twice.
- ActivityTaskScheduled: 1; ActivityTaskStarted: `attempt - 1` more, one per retry (Cloud's
  "retry activity": the attempt field counts every attempt, the first is no retry).
- TimerStarted: 1.
- WorkflowExecutionSignaled: 1; but 0 for the signal of a signal-with-start that started the
  workflow (event 2, right after the start), which Cloud counts once, with the start.
  SignalExternalWorkflowExecutionInitiated: 0 (its action is the Signaled event it causes).
- WorkflowExecutionUpdateAccepted: 1 (rejected updates are billable too, but never written).
- UpsertWorkflowSearchAttributes: 1, or 0 when it only sets TemporalChangeVersion.
- MarkerRecorded: every marker recorded by one workflow task together counts 1 (grouped by
  the WorkflowTaskCompleted they follow). Cloud's list says so of local activities ("all
  RecordMarkers from each Workflow Task as one action") and lists no other marker rule: a
  patch (version) or side-effect marker is one of those RecordMarkers, so a task recording only
  a patch marker counts 1, and a patch marker beside local-activity markers adds nothing.
- WorkflowTaskCompleted: `metering_metadata.nonfirst_local_activity_execution_attempts`
  (local activity retries).
- StartChildWorkflowExecutionInitiated: 1; with the child's own WorkflowExecutionStarted, in
  the child's history, that is Cloud's two actions per child.
- WorkflowExecutionOptionsUpdated, NexusOperationScheduled, NexusOperationCancelRequested: 1;
  WorkflowTaskFailed with cause RESET_WORKFLOW: 1 (a reset).
- Every other event: 0.

Billable but never in a history, so not in these counts: activity heartbeats that reach the
server, queries (other than `__temporal_workflow_metadata`), rejected updates, workflow-task
heartbeats of long local activities, schedules' own actions, exports.

**The server's `action` metric.** The dev server, given `--metrics-port`, counts actions in a
Prometheus counter `action{action_type, namespace}` at its frontend, from the requests it
answers (heartbeats and queries included). It is read before and after, beside the history
count: its total; less what histories cannot show (heartbeats, queries, rejected updates) and
less the upserts that only set TemporalChangeVersion (the Python SDK's `workflow.patched` makes
one beside each patch marker; the server counts them, Cloud does not), the rest should come
close to the history count. They differ at the edges of the window (the metric counts a request
when it is answered, the history an event at its own time) and where the server counts
differently (an activity retry when it is polled, a start only when a client's request started
it, a marker per workflow task as `command_BatchMarkers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

from starter import dev

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20
HISTORY_CONCURRENCY = 20

# ---- the machine ------------------------------------------------------------------------------


def machine_line() -> str:
    """Cores and load average, to print before a run starts: a figure measured on a busy
    machine says so."""
    one, five, fifteen = os.getloadavg()
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load average "
        f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) at start, "
        f"Python {platform.python_version()}"
    )


@contextlib.asynccontextmanager
async def progress(what: str, total: int, every: float = 30) -> AsyncIterator[Callable[[], None]]:
    """Gives a function to call once per item done, and meanwhile prints `what: done/total` on
    stderr every `every` seconds: a run of 10,000 takes most of an hour."""
    done = 0
    started = time.monotonic()

    def one() -> None:
        nonlocal done
        done += 1

    async def report() -> None:
        while True:
            await asyncio.sleep(every)
            elapsed = time.monotonic() - started
            print(f"  {what}: {done:,} of {total:,} after {elapsed:.0f} s", file=sys.stderr)

    reporter = asyncio.create_task(report())
    try:
        yield one
    finally:
        reporter.cancel()


# ---- the stack, with the dev server's metrics on a known port ---------------------------------


@dataclass
class MeteredStack(dev.Stack):
    """`idpctl dev`'s stack, whose Temporal dev server serves Prometheus metrics on a port
    chosen here (by default it picks a random one and says so nowhere we read), and whose state
    store is served by `git daemon`, as a git host serves it: the remote's half of a push or a
    fetch is then the daemon's CPU, where it would be the host's, not the worker's."""

    server_metrics_port: int = 0
    git_port: int | None = 0

    def spawn(
        self,
        name: str,
        command: list[str],
        extra_env: dict[str, str] | None = None,
        **options: Any,
    ) -> None:
        if name == "temporal" and "--metrics-port" not in command:
            if self.server_metrics_port == 0:
                self.server_metrics_port = dev.free_port(self.host)
            command = [*command, "--metrics-port", str(self.server_metrics_port)]
        super().spawn(name, command, extra_env, **options)

    @property
    def server_metrics_url(self) -> str:
        return f"http://{self.host}:{self.server_metrics_port}/metrics"


# ---- processes, from /proc --------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    """One process at one moment, from /proc/<pid>/stat."""

    pid: int
    ppid: int
    name: str
    started: int  # clock ticks after boot: with the pid, names one process across pid reuse
    own: float  # CPU seconds, user + system
    children: float  # CPU seconds of the children it has waited for (cutime + cstime)
    rss: float  # MiB

    @property
    def key(self) -> tuple[int, int]:
        return self.pid, self.started

    @property
    def total(self) -> float:
        return self.own + self.children


def read_stat(pid: int) -> Stat | None:
    """None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is parenthesised and may hold spaces: split after it.
    head, _, tail = text.rpartition(")")
    fields = tail.split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return Stat(
        pid=pid,
        ppid=int(fields[1]),
        name=head.partition("(")[2],
        started=int(fields[19]),
        own=(utime + stime) / CLOCK_TICKS,
        children=(cutime + cstime) / CLOCK_TICKS,
        rss=int(fields[21]) * PAGE_MIB,
    )


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User plus system CPU time of one process, and of its children that have exited (git)."""
    stat = read_stat(pid)
    if stat is None:
        raise RuntimeError(f"process {pid} is gone")
    return stat.own, stat.children


def all_processes() -> list[Stat]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (stat := read_stat(int(entry.name))) is not None:
            found.append(stat)
    return found


def descendants(pid: int, table: Sequence[Stat]) -> list[Stat]:
    below: dict[int, list[Stat]] = defaultdict(list)
    for stat in table:
        below[stat.ppid].append(stat)
    found, queue = [], [pid]
    while queue:
        for child in below.get(queue.pop(), []):
            found.append(child)
            queue.append(child.pid)
    return found


@dataclass
class Snapshot:
    at: float  # time.monotonic()
    roots: dict[str, Stat]
    below: dict[str, list[Stat]]  # each root's live descendants


@dataclass(frozen=True)
class Row:
    label: str
    cpu: float
    rss: float | None  # None: nothing left running


# Exited children named where we know who they are.
EXITED_CHILDREN = {"worker": "git", "git-daemon": "upload-pack and receive-pack"}
LABELS = {
    "temporal": "temporal (dev server)",
    "git-daemon": "git daemon (the state store's host)",
    "moto": "moto (AWS)",
    "synadia": "synadia (emulator)",
    "port": "port (emulator)",
}


@dataclass
class ProcessMeter:
    """CPU and memory of named processes and their children over a window: begin(), sample()
    as often as wanted (RSS over time), end(), then rows()."""

    pids: dict[str, int]
    # The bench: its running children are the stack, each on rows of its own; what it ran and
    # reaped inside the window (the plain run's git) is still its row's exited children.
    without_children: frozenset[str] = frozenset()
    start: Snapshot | None = None
    stop: Snapshot | None = None
    rss: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def of_stack(cls, stack: dev.Stack, *, bench: bool = True) -> ProcessMeter:
        pids = {name: process.pid for name, process in stack.processes.items()}
        if bench:
            pids["bench (this process)"] = os.getpid()
            return cls(pids, frozenset({"bench (this process)"}))
        return cls(pids)

    def snapshot(self) -> Snapshot:
        table = all_processes()
        by_pid = {stat.pid: stat for stat in table}
        roots, below = {}, {}
        for name, pid in self.pids.items():
            if pid not in by_pid:
                raise RuntimeError(f"{name} (process {pid}) is gone")
            roots[name] = by_pid[pid]
            below[name] = [] if name in self.without_children else descendants(pid, table)
        return Snapshot(time.monotonic(), roots, below)

    def sample(self) -> Snapshot:
        snapshot = self.snapshot()
        for name, stat in snapshot.roots.items():
            self.rss[name].append(stat.rss)
        return snapshot

    def begin(self) -> None:
        self.rss.clear()
        self.start, self.stop = self.sample(), None

    def end(self) -> None:
        self.stop = self.sample()

    @property
    def seconds(self) -> float:
        assert self.start is not None and self.stop is not None
        return self.stop.at - self.start.at

    def own(self, name: str) -> float:
        assert self.start is not None and self.stop is not None
        return self.stop.roots[name].own - self.start.roots[name].own

    def children(self, name: str) -> float:
        """CPU of every descendant of `name` over the window, running or exited."""
        return sum(r.cpu for r in self.rows_of(name)[1:])

    def rows_of(self, name: str) -> list[Row]:
        assert self.start is not None and self.stop is not None
        first, last = self.start.roots[name], self.stop.roots[name]
        label = LABELS.get(name, name)
        rows = [Row(label, last.own - first.own, last.rss)]
        before = {stat.key: stat.total for stat in self.start.below[name]}
        running: dict[str, list[Stat]] = defaultdict(list)
        for stat in self.stop.below[name]:
            running[stat.name].append(stat)
        for child, stats in sorted(running.items()):
            cpu = sum(s.total - before.get(s.key, 0.0) for s in stats)
            count = f" x{len(stats)}" if len(stats) > 1 else ""
            rows.append(Row(f"{label} > {child}{count}", cpu, sum(s.rss for s in stats)))
        # Reaped inside the window: their whole CPU landed in `children`; what they had used
        # before the window began is not the window's.
        still = {stat.key for stat in self.stop.below[name]}
        gone = sum(total for key, total in before.items() if key not in still)
        exited = last.children - first.children - gone
        if name in EXITED_CHILDREN or exited >= 0.05:
            what = f"{EXITED_CHILDREN[name]}, " if name in EXITED_CHILDREN else ""
            rows.append(Row(f"{label} > {what}exited children (summed)", exited, None))
        return rows

    def rows(self) -> list[Row]:
        return [row for name in self.pids for row in self.rows_of(name)]

    def table(self, title: str) -> str:
        rows = self.rows()
        width = max(40, *(len(r.label) + 2 for r in rows))
        lines = [
            f"{title}: CPU per process over {self.seconds:.0f} s",
            f"{'process':<{width}} {'cpu-s':>8} {'% of one core':>14} {'RSS MiB (end)':>14}",
        ]
        for row in rows:
            rss = "-" if row.rss is None else f"{row.rss:.0f}"
            percent = 100 * row.cpu / self.seconds
            lines.append(f"{row.label:<{width}} {row.cpu:>8.1f} {percent:>14.1f} {rss:>14}")
        total = sum(r.cpu for r in rows)
        rss_total = sum(r.rss or 0 for r in rows)
        lines.append(
            f"{'total':<{width}} {total:>8.1f} {100 * total / self.seconds:>14.1f} "
            f"{rss_total:>14.0f}"
        )
        return "\n".join(lines)

    def rss_max(self, name: str) -> float:
        return max(self.rss[name])

    def rss_median(self, name: str) -> float:
        return statistics.median(self.rss[name])


# ---- billable actions, from histories ---------------------------------------------------------

E = EventType
SIMPLE_ACTIONS = {
    E.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED: "start",
    E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED: "activity",
    E.EVENT_TYPE_TIMER_STARTED: "timer",
    E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED: "update",
    E.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED: "child",
    E.EVENT_TYPE_WORKFLOW_EXECUTION_OPTIONS_UPDATED: "options",
    E.EVENT_TYPE_NEXUS_OPERATION_SCHEDULED: "nexus",
    E.EVENT_TYPE_NEXUS_OPERATION_CANCEL_REQUESTED: "nexus",
}
# Columns, in this order, when any is nonzero.
ACTION_KINDS = [
    "start",
    "activity",
    "retry",
    "timer",
    "signal",
    "update",
    "upsert",
    "markers",
    "LA retry",
    "child",
    "options",
    "nexus",
    "reset",
]
CHANGE_VERSION = "TemporalChangeVersion"
RESET = WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_RESET_WORKFLOW


@dataclass
class Tally:
    """One workflow type's histories: runs, events and billable actions by kind."""

    runs: int = 0
    events: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    markers: Counter[str] = field(default_factory=Counter)  # marker events by marker name
    version_upserts: int = 0  # upserts of TemporalChangeVersion alone: not billed

    @property
    def total(self) -> int:
        return sum(self.actions.values())

    def add(self, other: Tally) -> None:
        self.runs += other.runs
        self.events += other.events
        self.actions.update(other.actions)
        self.markers.update(other.markers)
        self.version_upserts += other.version_upserts


def tally(events: Iterable[HistoryEvent], since_ns: int = 0, until_ns: int | None = None) -> Tally:
    """One run's history, counted as the module's docstring says; only events whose time is
    in [since_ns, until_ns] (nanoseconds since the epoch)."""
    counted = Tally(runs=1)
    marker_tasks: set[int] = set()
    for event in events:
        at = event.event_time.ToNanoseconds()
        if at < since_ns or (until_ns is not None and at > until_ns):
            continue
        counted.events += 1
        kind = event.event_type
        if kind in SIMPLE_ACTIONS:
            counted.actions[SIMPLE_ACTIONS[kind]] += 1
        elif kind == E.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attempt = event.activity_task_started_event_attributes.attempt
            counted.actions["retry"] += max(attempt - 1, 0)
        elif kind == E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            # Signal-with-start writes the signal as event 2, in the start's own transaction.
            counted.actions["signal"] += event.event_id != 2
        elif kind == E.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            attributes = event.upsert_workflow_search_attributes_event_attributes
            keys = set(attributes.search_attributes.indexed_fields)
            if keys <= {CHANGE_VERSION}:
                counted.version_upserts += 1
            else:
                counted.actions["upsert"] += 1
        elif kind == E.EVENT_TYPE_MARKER_RECORDED:
            attributes = event.marker_recorded_event_attributes
            marker_tasks.add(attributes.workflow_task_completed_event_id)
            counted.markers[attributes.marker_name] += 1
        elif kind == E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            metering = event.workflow_task_completed_event_attributes.metering_metadata
            counted.actions["LA retry"] += metering.nonfirst_local_activity_execution_attempts
        elif kind == E.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            counted.actions["reset"] += event.workflow_task_failed_event_attributes.cause == RESET
    counted.actions["markers"] += len(marker_tasks)
    return counted


async def history_actions(
    client: Client, since_ns: int = 0, until_ns: int | None = None
) -> dict[str, Tally]:
    """Every execution of the client's namespace, counted by workflow type."""
    executions = [execution async for execution in client.list_workflows()]
    gate = asyncio.Semaphore(HISTORY_CONCURRENCY)

    async def one(workflow_id: str, run_id: str) -> Tally:
        async with gate:
            handle = client.get_workflow_handle(workflow_id, run_id=run_id)
            history = await handle.fetch_history()
        return tally(history.events, since_ns, until_ns)

    counts = await asyncio.gather(*(one(e.id, e.run_id) for e in executions))
    by_type: dict[str, Tally] = defaultdict(Tally)
    for execution, counted in zip(executions, counts, strict=True):
        by_type[execution.workflow_type].add(counted)
    return dict(sorted(by_type.items()))


def actions_table(
    by_type: dict[str, Tally], workloads: int, *, per_day_window: float | None = None
) -> str:
    """By workflow type, then the total and the total per workload; with `per_day_window`
    (the window's seconds), the total per workload scaled to 24 hours too."""
    total = Tally()
    for counted in by_type.values():
        total.add(counted)
    kinds = [k for k in ACTION_KINDS if total.actions[k]]
    width = max(24, *(len(name) + 2 for name in by_type))
    head = f"{'workflow type':<{width}} {'runs':>6} {'events':>9} {'actions':>9} |"
    lines = [head + "".join(f" {k:>8}" for k in kinds)]

    def line(name: str, runs: str, counted: Tally, scale: float = 1.0, digits: int = 0) -> str:
        cells = f"{counted.events * scale:>9.{digits}f} {counted.total * scale:>9.{digits}f} |"
        kinds_cells = "".join(f" {counted.actions[k] * scale:>8.{digits}f}" for k in kinds)
        return f"{name:<{width}} {runs:>6} {cells}{kinds_cells}"

    for name, counted in by_type.items():
        lines.append(line(name, str(counted.runs), counted))
    lines.append(line("total", str(total.runs), total))
    if workloads:
        lines.append(line(f"per workload (/{workloads})", "", total, 1 / workloads, 1))
    if workloads and per_day_window is not None:
        scale = 86400 / per_day_window / workloads
        lines.append(line("per workload per day", "", total, scale, 0))
    if total.markers:
        names = ", ".join(f"{name} {count}" for name, count in total.markers.most_common())
        lines.append(f"marker events (counted once per workflow task): {names}")
    if total.version_upserts:
        lines.append(
            f"upserts of TemporalChangeVersion alone (workflow.patched), not billed: "
            f"{total.version_upserts}"
        )
    return "\n".join(lines)


NOT_IN_HISTORY = (
    "billable but in no history, so not counted above: activity heartbeats that reach the "
    "server, queries, rejected updates, workflow-task heartbeats"
)

# ---- the server's action metric ---------------------------------------------------------------

_SAMPLE = re.compile(r"^action\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


async def server_actions(url: str, namespace: str) -> Counter[str] | None:
    """The dev server's `action` counter by action_type for `namespace`; None when the
    server exports no `action` metric at all."""
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(url)).text
    if not re.search(r"^# TYPE action counter", text, re.MULTILINE):
        return None
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if match := _SAMPLE.match(line):
            labels = dict(_LABEL.findall(match["labels"]))
            if labels.get("namespace") == namespace:
                counts[labels.get("action_type", "?")] += round(float(match["value"]))
    return counts


def _not_in_history(action_type: str) -> bool:
    return (
        action_type.startswith("grpc_RecordActivityTaskHeartbeat")
        or action_type == "grpc_QueryWorkflow"
        # Prometheus spells message_UpdateWorkflowExecution:Rejection with an underscore.
        or action_type.endswith(("_Rejection", ":Rejection"))
    )


def metric_lines(
    before: Counter[str] | None, after: Counter[str] | None, history: dict[str, Tally]
) -> list[str]:
    """The metric's change beside the history count."""
    history_total = sum(t.total for t in history.values())
    version_upserts = sum(t.version_upserts for t in history.values())
    if before is None or after is None:
        return ["server action metric: the dev server exports none (no `action` counter)"]
    delta = Counter({k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)})
    if "command_BatchMarkers" in delta:
        # Servers that count markers per batch also count each marker alone, to pick from;
        # Cloud bills the batch.
        for action_type in [k for k in delta if k.startswith("command_RecordMarker_")]:
            del delta[action_type]
    hidden = sum(v for k, v in delta.items() if _not_in_history(k))
    total = sum(delta.values())
    comparable = total - hidden - version_upserts
    types = ", ".join(f"{k} {v}" for k, v in sorted(delta.items()))
    return [
        f"server action metric (the dev server's Prometheus `action` counter over the same "
        f"time): {total}; less what histories cannot show (heartbeats, queries, rejected "
        f"updates: {hidden}) and the TemporalChangeVersion-only upserts it counts and Cloud "
        f"does not ({version_upserts}): {comparable}, beside {history_total} from histories",
        f"  by action_type: {types or 'none'}",
    ]


# ---- the worker's activity slots --------------------------------------------------------------

_SLOTS = re.compile(
    r'^temporal_worker_task_slots_(available|used)\{[^}]*worker_type="ActivityWorker"[^}]*\}'
    r"\s+(\S+)",
    re.MULTILINE,
)


async def activity_slots(worker_metrics_url: str, timeout: float = 30) -> int:
    """How many activities the running worker runs at once: its activity slots, available plus
    used, from its own Prometheus metrics. worker.py's `build_worker` decides them (with no
    `max_concurrent_activities` or tuner it is the SDK's default); reading the running worker
    follows whatever it decides rather than copying a number."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            try:
                text = (await http.get(worker_metrics_url)).text
            except httpx.TransportError:
                text = ""
            values = dict(_SLOTS.findall(text))
            if "available" in values:
                return round(float(values["available"]) + float(values.get("used", 0)))
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"no temporal_worker_task_slots_available for the ActivityWorker at "
                    f"{worker_metrics_url}"
                )
            await asyncio.sleep(0.5)
