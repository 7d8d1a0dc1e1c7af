"""The credential policy alone: every reason to issue, and no issuance without one."""

from datetime import UTC, datetime, timedelta

import pytest

from idp import credentials as policy
from idp.credentials import IssueReason
from idp.models import NatsSpec

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def spec(**credentials: object) -> NatsSpec:
    return NatsSpec.model_validate({"credentials": {"ttl": "7d", **credentials}})


def issued(s: NatsSpec, **changes: object) -> policy.Issued:
    base = {
        "public_key": "UKEY",
        "permissions_digest": policy.permissions_digest(s),
        "delivery_digest": policy.delivery_digest(s),
        "next_refresh_at": policy.next_refresh(s.credentials, NOW),
    }
    return policy.Issued(**{**base, **changes})


def reason(s: NatsSpec, current: policy.Issued | None, **kw: object) -> IssueReason | None:
    args = {"public_key": "UKEY", "key_reason": None, "spec": s, "now": NOW}
    return policy.issue_reason(current, **{**args, **kw})


def test_nothing_to_issue_when_everything_is_as_recorded() -> None:
    s = spec()
    assert reason(s, issued(s)) is None
    # ...right up to the refresh deadline, and not a moment before.
    deadline = policy.next_refresh(s.credentials, NOW)
    assert reason(s, issued(s), now=deadline - timedelta(seconds=1)) is None
    assert reason(s, issued(s), now=deadline) == IssueReason.REFRESH


def test_refresh_defaults_to_a_third_of_ttl_before_expiry() -> None:
    s = spec()
    assert policy.next_refresh(s.credentials, NOW) == NOW + timedelta(days=7) * 2 / 3
    explicit = spec(refreshBefore="1d")
    assert policy.next_refresh(explicit.credentials, NOW) == NOW + timedelta(days=6)


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"public_key": "UNEW", "key_reason": IssueReason.REQUESTED}, IssueReason.REQUESTED),
        ({"public_key": "UNEW", "key_reason": IssueReason.KEY_ROTATION}, IssueReason.KEY_ROTATION),
        (
            {"public_key": "UNEW", "key_reason": IssueReason.USER_RECREATED},
            IssueReason.USER_RECREATED,
        ),
        ({"public_key": "UOTHER"}, IssueReason.KEY_CHANGED),
        # Why a key was new no longer matters once it is the delivered one.
        ({"key_reason": IssueReason.KEY_ROTATION}, None),
    ],
)
def test_each_event_is_its_own_reason(kw: dict, expected: IssueReason) -> None:
    s = spec()
    assert reason(s, issued(s), **kw) == expected


def test_first_issuance_is_initial() -> None:
    assert reason(spec(), None) == IssueReason.INITIAL


def test_permission_and_delivery_changes_reissue_but_ttl_changes_wait_for_refresh() -> None:
    s = spec()
    tighter = NatsSpec.model_validate({"permissions": {"publish": {"allow": ["orders.>"]}}})
    assert reason(tighter, issued(s)) == IssueReason.PERMISSIONS_CHANGED
    moved = spec(delivery="external-secret")
    assert reason(moved, issued(s)) == IssueReason.DELIVERY_CHANGED
    assert reason(spec(ttl="30d"), issued(s)) is None


def test_key_rotation_schedule() -> None:
    s = spec(keyRotation="30d")
    assert not policy.key_rotation_due(s.credentials, NOW, NOW + timedelta(days=29))
    assert policy.key_rotation_due(s.credentials, NOW, NOW + timedelta(days=30))
    assert not policy.key_rotation_due(spec().credentials, NOW, NOW + timedelta(days=365))


def test_thirty_days_of_ten_minute_passes_issue_only_the_scheduled_refreshes() -> None:
    s = spec()
    current, count, now = None, 0, NOW
    while now < NOW + timedelta(days=30):
        if reason(s, current, now=now) is not None:
            count += 1
            current = issued(s, next_refresh_at=policy.next_refresh(s.credentials, now))
        now += timedelta(minutes=10)
    # One initial issuance, then one every 7d * 2/3 = 4d16h: at 0, 4.67, 9.33, ... 28 days.
    assert count == 7
