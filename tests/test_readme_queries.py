"""Every visibility query the README documents returns what its question says, against a real
Temporal dev server, for a Ready workload, a Degraded one (a refused path) and an aggregator
refusing that path.

The README's queries span the whole namespace; the session's server is shared by every test, so
each query is narrowed to this test's workflows (`IdpSystem` for workloads, the hostname's
workflow id for aggregators) before its rows are compared.
"""

import re
from pathlib import Path

import pytest
from support.cli import eventually
from support.stack import bare_repo, platform_for, running_worker, task_queue
from temporalio.client import Client

from idp.models import ApiAggregator, Workload
from starter import operations
from workflows.messages import WaitReadyRequest
from workflows.workload import WorkloadWorkflow

README = Path(__file__).resolve().parents[1] / "README.md"


def documented_queries() -> dict[str, list[str]]:
    """question → its queries, from the README's table under "Finding workloads"."""
    section = README.read_text().split("## Finding workloads in the Temporal UI", 1)[1]
    section = section.split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([^|]+?) \| (.+) \|$", section, re.M)
    return {q: re.findall(r"`([^`]+)`", cell) for q, cell in rows if q not in ("question", "---")}


def workload(system: str, name: str, hostname: str, path: str) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": name, "system": system},
            "spec": {
                "owner": f"team-{system}",
                "destination": "dev",
                "namespace": system,
                "api": [
                    {"aggregator": hostname, "paths": [path], "service": {"name": name, "port": 80}}
                ],
            },
        }
    )


async def rows(client: Client, query: str) -> set[str]:
    return {execution.id async for execution in client.list_workflows(query)}


def test_the_readme_documents_the_queries_operators_ask() -> None:
    questions = documented_queries()
    assert "which workloads are Degraded" in questions
    assert "aggregators with refused or failing routes" in questions
    assert len(questions) >= 7, questions


async def test_every_documented_query_returns_what_it_says(client: Client, tmp_path: Path) -> None:
    queue = task_queue()
    system, hostname = queue, f"{queue}.example.com"
    async with running_worker(
        client, platform_for(bare_repo(tmp_path / "state.git")), queue, tmp_path / "cache"
    ):
        await operations.apply_aggregator(
            client,
            queue,
            ApiAggregator.model_validate(
                {
                    "metadata": {"name": "public"},
                    "spec": {
                        "hostname": hostname,
                        "gateway": {"name": "edge", "namespace": "gateways"},
                        "destination": "dev",
                        "namespace": "platform",
                    },
                }
            ),
        )
        expected_phase = {"orders": "Ready", "admin": "Degraded"}
        for name, path in (("orders", "/orders"), ("admin", "/orders/admin")):
            w = workload(system, name, hostname, path)
            await operations.apply_workload(client, queue, w)
            status = await client.get_workflow_handle(w.workflow_id).execute_update(
                WorkloadWorkflow.wait_ready, WaitReadyRequest(generation=1, timeout_seconds=60)
            )
            assert status.phase == expected_phase[name], status.conditions

        orders, admin = f"workload/{system}/orders", f"workload/{system}/admin"
        aggregator = f"api-aggregator/{hostname}"
        mine = f" AND IdpSystem = '{system}'"
        # The question, the query made concrete for this test, and the rows it must return.
        # Credentials need a NATS user, which this test has none of: those queries must run
        # and find nothing here (tests/test_nats_workflow.py covers the attribute's value).
        cases: dict[str, tuple[str, str, set[str]]] = {
            "which workloads are Degraded": ("", mine, {admin}),
            "which are not Ready (any reason)": ("", mine, {admin}),
            "whose credentials expire this week": ("", mine, set()),
            "whose credentials have expired": ("", mine, set()),
            "what runs on destination `prod-eu`": ("prod-eu", mine, {orders, admin}),
            "what a team owns / a system holds": ("", "", {orders, admin}),
            "aggregators with refused or failing routes": ("", "", {aggregator}),
        }
        queries = documented_queries()
        assert set(queries) == set(cases), "a README query without a check here"
        documented = [(q, query) for q, listed in queries.items() for query in listed]
        assert len(documented) == len(cases) + 1  # the team and the system query share a row
        for question, query in documented:
            substitute, narrow, expected = cases[question]
            if substitute:
                query = query.replace(substitute, "dev")
            if query.startswith("..."):
                # "`... AND IdpOwner = 'team-shop'`, `... AND IdpSystem = 'shop'`"
                base = "IdpKind = 'Workload' AND ExecutionStatus = 'Running'"
                query = base + query.removeprefix("...")
                query = query.replace("'team-shop'", f"'team-{system}'")
                query = query.replace("'shop'", f"'{system}'")
            query += narrow

            def narrowed(found: set[str]) -> set[str]:
                return {i for i in found if system in i}

            found = await eventually(
                lambda q=query: rows(client, q), lambda r, e=expected: narrowed(r) == e
            )
            assert narrowed(found) == expected, (question, query)


@pytest.mark.parametrize("question", sorted(documented_queries()))
def test_each_query_names_only_attributes_the_workflows_set(question: str) -> None:
    query = " ".join(documented_queries()[question])
    known = {"IdpKind", "IdpSystem", "IdpPhase", "IdpDestination", "IdpOwner"}
    known |= {"IdpCredentialsExpireAt", "ExecutionStatus"}
    assert set(re.findall(r"\b(Idp\w+|ExecutionStatus)\b", query)) <= known, query
