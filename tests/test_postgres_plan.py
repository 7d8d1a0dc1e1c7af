"""The Postgres plugin's pure half: the plan a pass carries out, from what observe found. No
server: these are the decisions (when a password is set, which login takes over, what counts as
drift, what is refused) that the real-server tests then watch happen."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from idp.capability import Context, dump
from idp.credentials import IssueReason
from idp.delivery import DeliveryState
from idp.errors import PermanentError
from idp.models import Delivery, Workload
from idp_postgres.capability import Postgres, claim, problems
from idp_postgres.models import (
    DATABASE_MAX,
    Connection,
    DatabaseView,
    PostgresObservation,
    PostgresOutputs,
    PostgresSettings,
    PostgresSpec,
    RoleView,
    delivery_digest,
)
from idp_postgres.names import names

NOW = datetime(2026, 12, 1, tzinfo=UTC)
POSTGRES = Postgres()
WORKFLOW = "workload-shop-orders"
CONNECTION = Connection(
    server="main", host="db", port=5432, database="shop_orders", sslmode="require"
)
DIGEST = delivery_digest(Delivery.SEALED_SECRET, "orders-postgres", CONNECTION)
SETTINGS = PostgresSettings.model_validate(
    {
        "servers": [{"name": "main", "host": "db", "admin": {"passwordEnv": "PG_ADMIN"}}],
        "extensions": ["citext"],
    }
)


def workload(name: str = "orders", **postgres: Any) -> Workload:
    return Workload.model_validate(
        {
            "metadata": {"name": name, "system": "shop"},
            "spec": {
                "owner": "team",
                "destination": "dev",
                "namespace": "shop",
                "postgres": {"server": "main", **postgres},
            },
        }
    )


def role(name: str, login: bool = False, member: bool = True, **extra: Any) -> RoleView:
    values: dict[str, Any] = {
        "name": name,
        "login": login,
        "inherit": True,
        "privileged": [],
        "valid_until": None,
        "comment": claim(WORKFLOW),
        "member_of_owner": member,
        "runs_as_owner": member,
        **extra,
    }
    return RoleView(**values)


def outputs(version: int = 1, login: str = "shop_orders_login1", **extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "version": version,
        "public_key": login,
        "issued_at": NOW - timedelta(days=1),
        "expires_at": NOW + timedelta(days=6),
        "fingerprint": "f" * 64,
        "server": "main",
        "host": "db",
        "port": 5432,
        "database": "shop_orders",
        "owner": "shop_orders_owner",
        "delivery": Delivery.SEALED_SECRET,
        "location": "dev/shop/orders/sealedsecret-postgres.yaml",
        "secret_name": "orders-postgres",
        "delivery_digest": DIGEST,
        "next_refresh_at": NOW + timedelta(days=3),
        "reason": IssueReason.INITIAL,
        **extra,
    }
    return dump(PostgresOutputs(**values)) or {}


def in_sync(**changes: Any) -> PostgresObservation:
    """What observe finds when everything is as the first issuance left it."""
    roles = {
        "shop_orders_owner": role("shop_orders_owner", member=False),
        "shop_orders_login1": role(
            "shop_orders_login1", login=True, valid_until=NOW + timedelta(days=6)
        ),
        "shop_orders_login2": role("shop_orders_login2"),
    }
    database = DatabaseView(
        owner="shop_orders_owner",
        connection_limit=20,
        public_connect=False,
        comment=claim(WORKFLOW),
        extensions=[],
    )
    values: dict[str, Any] = {
        "connection": CONNECTION,
        "delivery_digest": DIGEST,
        "database": database,
        "roles": roles,
        "delivered": DeliveryState(in_place=True),
        **changes,
    }
    return PostgresObservation(**values)


def context(w: Workload | None = None, **extra: Any) -> Context:
    return Context(workload=w or workload(), workflow_id=WORKFLOW, generation=1, now=NOW, **extra)


def test_a_first_pass_makes_the_owner_both_logins_the_database_and_issues_on_the_first() -> None:
    plan = POSTGRES.plan(
        context(),
        PostgresObservation(connection=CONNECTION, delivery_digest=DIGEST, database=None, roles={}),
    )
    assert [r.name for r in plan.roles] == [
        "shop_orders_owner",
        "shop_orders_login1",
        "shop_orders_login2",
    ]
    assert plan.database == "create"
    assert plan.issue is not None
    assert (plan.issue.version, plan.issue.login, plan.issue.reason) == (
        1,
        "shop_orders_login1",
        IssueReason.INITIAL,
    )
    assert plan.issue.retire is None


def test_a_pass_that_finds_everything_in_order_changes_nothing_and_sets_no_password() -> None:
    plan = POSTGRES.plan(context(outputs=outputs()), in_sync())
    assert not plan
    assert plan.issue is None


def test_a_refresh_goes_to_the_idle_login_and_the_old_one_keeps_working_for_the_grace() -> None:
    ctx = context(outputs=outputs(next_refresh_at=NOW))
    plan = POSTGRES.plan(ctx, in_sync())
    assert plan.issue is not None
    assert (plan.issue.login, plan.issue.reason) == ("shop_orders_login2", IssueReason.REFRESH)
    assert plan.issue.retire is not None
    assert plan.issue.retire.login == "shop_orders_login1"
    assert plan.issue.retire.at == NOW + timedelta(hours=1)


def test_a_request_to_revoke_now_retires_the_old_login_in_the_same_pass() -> None:
    request = {"rotate_credentials": {"reason": "leaked", "revokeOld": "now"}}
    plan = POSTGRES.plan(context(outputs=outputs(), requests=request), in_sync())
    assert plan.issue is not None
    assert plan.issue.reason == IssueReason.REQUESTED
    assert plan.issue.retire is not None and plan.issue.retire.at == NOW


def test_a_scheduled_rotation_sets_a_new_password_before_the_refresh_would() -> None:
    w = workload(credentials={"keyRotation": "12h"})
    plan = POSTGRES.plan(context(w, outputs=outputs()), in_sync())
    assert plan.issue is not None and plan.issue.reason == IssueReason.KEY_ROTATION


def test_a_dropped_active_login_is_recreated_idle_and_the_other_takes_over() -> None:
    observed = in_sync()
    roles = {k: v for k, v in observed.roles.items() if k != "shop_orders_login1"}
    plan = POSTGRES.plan(context(outputs=outputs()), in_sync(roles=roles))
    assert plan.issue is not None
    assert (plan.issue.login, plan.issue.reason) == (
        "shop_orders_login2",
        IssueReason.USER_RECREATED,
    )
    recreated = next(r for r in plan.roles if r.name == "shop_orders_login1")
    assert recreated.login is False


@pytest.mark.parametrize(
    ("drift", "expected"),
    [
        ({"database": None}, "create database shop_orders"),
        ({"shop_orders_owner": {"privileged": ["SUPERUSER"]}}, "update role shop_orders_owner"),
        ({"shop_orders_login2": {"login": True}}, "update role shop_orders_login2"),
        ({"shop_orders_login1": {"member_of_owner": False}}, "update role shop_orders_login1"),
        ({"connection_limit": 99}, "update database shop_orders"),
        ({"public_connect": True}, "update database shop_orders"),
        ({"owner": "postgres"}, "update database shop_orders"),
    ],
)
def test_drift_is_put_back_without_a_new_password(drift: dict[str, Any], expected: str) -> None:
    observed = in_sync()
    if "database" in drift:
        observed = in_sync(database=None)
    elif set(drift) <= {"connection_limit", "public_connect", "owner"}:
        assert observed.database is not None
        observed = in_sync(database=observed.database.model_copy(update=drift))
    else:
        ((name, change),) = drift.items()
        roles = {**observed.roles, name: observed.roles[name].model_copy(update=change)}
        observed = in_sync(roles=roles)
    plan = POSTGRES.plan(context(outputs=outputs()), observed)
    assert [f"{c.action} {c.subject}" for c in plan.changes] == [expected]
    assert plan.issue is None


def test_a_delivered_secret_gone_is_a_new_password_saying_why() -> None:
    gone = DeliveryState(in_place=False, problem="the file is missing from the state store")
    plan = POSTGRES.plan(context(outputs=outputs()), in_sync(delivered=gone))
    assert plan.issue is not None and plan.issue.reason == IssueReason.DELIVERY_DRIFT
    assert plan.issue.problem == gone.problem


def test_new_connection_details_are_a_new_delivery() -> None:
    plan = POSTGRES.plan(context(outputs=outputs()), in_sync(delivery_digest="changed"))
    assert plan.issue is not None and plan.issue.reason == IssueReason.DELIVERY_CHANGED


def test_a_login_whose_grace_is_over_is_retired() -> None:
    memory = {"retiring": [{"login": "shop_orders_login2", "at": NOW}]}
    plan = POSTGRES.plan(context(outputs=outputs(), memory=memory), in_sync())
    assert plan.retire == ["shop_orders_login2"]
    assert POSTGRES.deadline(context(outputs=outputs(), memory=memory)) == NOW


def test_a_database_another_workload_made_is_refused_naming_it() -> None:
    observed = in_sync()
    assert observed.database is not None
    foreign = observed.database.model_copy(update={"comment": claim("workload-other-orders")})
    with pytest.raises(PermanentError, match="belongs to workload workload-other-orders"):
        POSTGRES.plan(context(), in_sync(database=foreign, roles={}))


def test_a_database_is_never_renamed() -> None:
    w = workload(database="orders_v2")
    with pytest.raises(PermanentError, match="never renamed"):
        POSTGRES.plan(context(w, outputs=outputs()), in_sync())


def test_the_platform_file_decides_servers_and_extensions() -> None:
    spec = PostgresSpec(server="other", extensions=["citext", "plpython3u"])
    assert problems(spec, SETTINGS) == [
        "spec.postgres.server: 'other' is not a server of the platform configuration; "
        "allowed: main",
        "spec.postgres.extensions[1]: 'plpython3u' is not an extension the platform allows; "
        "allowed: citext",
    ]
    assert problems(PostgresSpec(server="main"), None)[0].startswith("spec.postgres: the platform")


def test_a_long_database_name_is_shortened_with_a_stable_hash() -> None:
    long = workload("a" * 60)
    first = names(long, PostgresSpec(server="main"))
    again = names(long, PostgresSpec(server="main"))
    assert first == again
    assert len(first.database) == DATABASE_MAX
    assert all(len(n.encode()) <= 63 for n in (first.owner, *first.logins))


def test_a_new_connection_limit_in_the_spec_is_applied_not_reported_as_drift() -> None:
    memory = {"connectionLimit": 20}
    w = workload(connectionLimit=50)
    plan = POSTGRES.plan(context(w, outputs=outputs(), memory=memory), in_sync())
    assert [c.why for c in plan.changes] == ["spec.postgres.connectionLimit is 50"]
    assert plan.database == "repair" and not plan.drift
    edited = in_sync()
    assert edited.database is not None
    edited = in_sync(database=edited.database.model_copy(update={"connection_limit": 3}))
    plan = POSTGRES.plan(context(outputs=outputs(), memory=memory), edited)
    assert [c.why for c in plan.changes] == ["connection limit drifted (now 3)"]
    assert plan.drift
