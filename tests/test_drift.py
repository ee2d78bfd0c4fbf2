"""What a re-sync reports: the difference between a key's statements and the wanted ones, and
the summary and report built from it."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from orgkeypolicy.drift import (
    Difference,
    KeyReport,
    Report,
    ResourceReport,
    Status,
    compare,
)
from orgkeypolicy.properties import PrincipalMode, parse_properties
from orgkeypolicy.statements import Grantees, Statement, build_statements, sid_prefix

PREFIX = sid_prefix("arn:aws:cloudformation:us-east-1:123456789012:stack/s/uuid", "Share")
SPEC = parse_properties(
    {"KeyIds": ["alias/x"], "OrganizationalUnitIds": ["ou-ab12-11111111"], "AllowGrants": "true"}
)
ACCOUNTS = st.sets(st.from_regex(r"[1-9]\d{11}", fullmatch=True), max_size=6)


def statements(accounts: set[str] | frozenset[str]) -> list[Statement]:
    grantees = Grantees("o-abcdefghij", "aws", tuple(sorted(accounts)))
    return build_statements(SPEC, PREFIX, grantees, PrincipalMode.ACCOUNTS)


@settings(max_examples=60, deadline=None)
@given(before=ACCOUNTS, after=ACCOUNTS)
def test_a_change_of_members_is_told_by_accounts_alone(before: set[str], after: set[str]) -> None:
    difference = compare(statements(before), statements(after))
    assert set(difference.accounts_to_add) == after - before
    assert set(difference.accounts_to_remove) == before - after
    assert list(difference.accounts_to_add) == sorted(difference.accounts_to_add)
    # No statement is there when no account is granted: going to or from none is a statement
    # appearing or going, not an edit of one.
    assert difference.statements_missing == (bool(after) and not before)
    assert difference.statements_edited == (bool(before) and not after)


def test_the_same_statements_make_no_difference() -> None:
    wanted = statements({"111111111111", "222222222222"})
    assert compare(copy.deepcopy(wanted), wanted) == Difference()


def test_a_removed_statement_is_missing_and_an_edited_one_is_edited() -> None:
    wanted = statements({"111111111111"})
    use, grants = wanted
    assert compare([use], wanted) == Difference(statements_missing=True)
    widened = copy.deepcopy(grants)
    widened["Action"] = ["kms:CreateGrant"]
    assert compare([use, widened], wanted) == Difference(statements_edited=True)
    extra = dict(use, Sid=f"{PREFIX}Extra")
    assert compare([*wanted, extra], wanted) == Difference(statements_edited=True)


def test_a_principal_added_by_hand_is_an_edit_as_well_as_an_account() -> None:
    wanted = statements({"111111111111"})
    edited = copy.deepcopy(wanted)
    for statement in edited:
        statement["Principal"]["AWS"] = [
            "arn:aws:iam::111111111111:root",
            "arn:aws:iam::333333333333:role/ops",
            "444444444444",
        ]
    difference = compare(edited, wanted)
    assert difference.accounts_to_remove == ("444444444444",)
    assert difference.statements_edited


def _report() -> Report:
    fixed = ResourceReport("stack-a", "A", "OrgKeyPolicyaaaaaaaaaaaaaaaa")
    fixed.keys = [
        KeyReport("k1", Status.DRIFT, Difference(("1", "2"), ("3",)), rewritten=True),
        KeyReport("k2", Status.DRIFT, Difference(("2",), ()), rewritten=True),
        KeyReport("k3", Status.KEY_GONE, reason="k3 no longer exists"),
        KeyReport("k4", Status.IN_SYNC),
    ]
    gone = ResourceReport("stack-b", "B", "OrgKeyPolicybbbbbbbbbbbbbbbb")
    gone.keys = [KeyReport("k5", Status.STACK_GONE, reason="stack gone")]
    gone.settle(Status.STACK_GONE, "stack gone")
    dry = ResourceReport("stack-c", "C", "OrgKeyPolicycccccccccccccccc")
    dry.settle(Status.DRY_RUN, "DryRun")
    return Report([fixed, gone, dry], applied=True)


def test_the_summary_counts_what_was_done_and_lists_what_needs_attention() -> None:
    report = _report()
    assert report.summary() == {
        "resources": 3,
        "keys_checked": 3,
        "keys_rewritten": 2,
        "accounts_added": 2,
        "accounts_removed": 1,
        "failures": [
            {
                "sid_prefix": "OrgKeyPolicyaaaaaaaaaaaaaaaa",
                "key_arn": "k3",
                "reason": "k3 no longer exists",
            },
            {"sid_prefix": "OrgKeyPolicybbbbbbbbbbbbbbbb", "key_arn": None, "reason": "stack gone"},
        ],
    }
    assert report.drifted
    assert [r.status for r in report.resources] == [
        Status.KEY_GONE,
        Status.STACK_GONE,
        Status.DRY_RUN,
    ]


def test_the_detail_has_the_command_lines_shape() -> None:
    detail = _report().detail()
    [first, *_] = detail["resources"]
    assert set(first) >= {"stack_id", "logical_id", "sid_prefix", "keys"}
    assert set(first["keys"][0]) >= {
        "key_arn",
        "status",
        "accounts_to_add",
        "accounts_to_remove",
        "statements_missing",
    }
    assert first["keys"][0]["status"] == "drift"
    assert first["keys"][0]["accounts_to_add"] == ["1", "2"]


def test_nothing_to_do_is_not_drift() -> None:
    quiet = ResourceReport("s", "L", "OrgKeyPolicydddddddddddddddd")
    quiet.keys = [KeyReport("k", Status.IN_SYNC)]
    assert not Report([quiet], applied=False).drifted
