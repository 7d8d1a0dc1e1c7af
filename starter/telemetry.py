"""What the worker tells operators about itself: Prometheus metrics and OpenTelemetry traces.

Metrics are the SDK's own (task latencies, slots, polls, activity and workflow outcomes) plus the
project's: the counters workflows emit (workflows/metrics.py) and `idp_workloads`, a gauge of
running workloads per phase that the worker refreshes from a visibility count. They are served by
the SDK's Prometheus exporter, which lives in a temporalio Runtime, so a worker with metrics
connects its client through its own Runtime.

Traces are exported only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set and the optional packages are
installed (`pip install 'idp-reconciler[otel]'`); the exporter reads the other standard `OTEL_*`
variables itself (headers, timeout, a traces-only endpoint).
"""

import asyncio
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta

from temporalio.client import Client, Interceptor
from temporalio.common import MetricMeter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import RPCError

from workflows.state import Phase

log = logging.getLogger("idp.telemetry")

METRICS_ADDRESS_ENV = "IDP_METRICS_ADDRESS"
OTLP_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
SERVICE_NAME_ENV = "OTEL_SERVICE_NAME"
# Visibility is eventually consistent and each count reads every running workload: a gauge that
# is half a minute old is as good as a fresh one for "how many workloads are Degraded".
PHASE_COUNT_INTERVAL = timedelta(seconds=30)


class TelemetryError(Exception):
    """Metrics or tracing were asked for and cannot be provided; the message says what to do."""


def metrics_address(value: str) -> str:
    """`host:port` as the Prometheus exporter needs it: an IP socket address (names resolved)."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TelemetryError(
            f"metrics address {value!r} is not host:port, e.g. 0.0.0.0:9464 or 127.0.0.1:9464"
        )
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            info = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise TelemetryError(f"metrics address {value!r}: {error.strerror}") from None
        ip = ipaddress.ip_address(info[0][4][0])
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def metrics_runtime(address: str) -> Runtime:
    """A Runtime serving Prometheus metrics on `address` (from metrics_address) at /metrics."""
    try:
        return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=address)))
    except ValueError as error:
        raise TelemetryError(f"cannot serve metrics on {address}: {error}") from None


@dataclass(frozen=True)
class Tracing:
    interceptor: Interceptor
    # Spans are batched: flush them before the process exits, or the last ones are lost.
    shutdown: Callable[[], None]


def tracing(service_name: str) -> Tracing | None:
    """OpenTelemetry tracing of the worker's activities and client calls, when configured."""
    endpoint = os.environ.get(OTLP_ENDPOINT_ENV)
    if not endpoint:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from temporalio.contrib.opentelemetry import TracingInterceptor
    except ImportError as error:
        raise TelemetryError(
            f"{OTLP_ENDPOINT_ENV} is set ({endpoint}) but the OpenTelemetry packages are not "
            f"installed ({error.name} is missing): install the project with its otel extra, "
            "`pip install 'idp-reconciler[otel]'`, or unset the variable"
        ) from None
    name = os.environ.get(SERVICE_NAME_ENV) or service_name
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    # The exporter reads the endpoint (adding /v1/traces) and any OTEL_EXPORTER_OTLP_* options.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    log.info("exporting traces to %s as service %r", endpoint, name)
    return Tracing(TracingInterceptor(provider.get_tracer("idp")), provider.shutdown)


RUNNING_WORKLOADS = "WorkflowType = 'WorkloadWorkflow' AND ExecutionStatus = 'Running'"


async def count_workloads_by_phase(
    client: Client, last: Mapping[str, int] | None = None
) -> dict[str, int]:
    """Running WorkloadWorkflows per IdpPhase.

    Visibility stores (SQL and Elasticsearch alike) only GROUP BY ExecutionStatus, not by a
    custom search attribute, and each count reads every running workload. So: the running ones
    in all, then one phase at a time, the fullest in the `last` counts first, until the counts
    add up; the phases left have none. A fleet in one phase, as a settled one is, takes two counts
    where one per phase took seven; one more for each other phase that holds a workload, and all
    eight while one has no phase yet (or every one, with search attributes off). A workload that
    changes phase between two counts is counted as it was or as it is, as it was when each phase
    had a count of its own."""
    running = (await client.count_workflows(RUNNING_WORKLOADS)).count
    counts = dict.fromkeys((phase.value for phase in Phase), 0)
    last = last or {}
    for phase in sorted(counts, key=lambda p: -last.get(p, 0)):
        if sum(counts.values()) >= running:
            break
        counts[phase] = (
            await client.count_workflows(f"{RUNNING_WORKLOADS} AND IdpPhase = '{phase}'")
        ).count
    return counts


async def report_workloads_by_phase(
    client: Client, meter: MetricMeter, interval: timedelta = PHASE_COUNT_INTERVAL
) -> None:
    """Keep the `idp_workloads{phase}` gauge current until cancelled.

    Every worker with metrics reports the same namespace-wide numbers: aggregate with max, not
    sum, across workers."""
    gauge = meter.create_gauge("idp_workloads", "Running workloads by phase (visibility count)")
    counts: dict[str, int] = {}
    while True:
        try:
            counts = await count_workloads_by_phase(client, counts)
        except RPCError as error:
            # A visibility hiccup must not stop the worker; the next round tries again.
            log.warning("cannot count workloads by phase: %s", error.message)
        else:
            for phase, count in counts.items():
                gauge.set(count, {"phase": phase})
        await asyncio.sleep(interval.total_seconds())
