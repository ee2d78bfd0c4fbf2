"""What ``probe`` concludes: each observed outcome against the evaluator's prediction. Pure.

A row agrees unless an observation contradicts the prediction: an Allow that KMS refused, a
deny that KMS allowed, or a call that failed otherwise (neither allowed nor refused). A call
that was not made (no ciphertext to decrypt, a role that could not be assumed) and a request
the evaluator cannot decide contradict nothing; they are listed, with why, not counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orgkeypolicy.cli.principals import PrincipalRecord
from orgkeypolicy.evaluation import Answer, CompiledPolicy, Decision, Principal, evaluate_matrix

ENCRYPT = "kms:Encrypt"
DECRYPT = "kms:Decrypt"
GENERATE_DATA_KEY = "kms:GenerateDataKey"
ACTIONS = (ENCRYPT, DECRYPT, GENERATE_DATA_KEY)

ALLOWED = "Allow"
NOT_TESTED = "NotTested"
ROLE_NOT_ASSUMED = "RoleNotAssumed"
REFUSALS = frozenset({"AccessDeniedException", "AccessDenied"})
ORG_ID_KEY = "aws:PrincipalOrgID"
ORG_PATHS_KEY = "aws:PrincipalOrgPaths"

# Failures that are neither an Allow nor a refusal, and what they usually mean.
_HINTS = {
    "DisabledException": "the key is disabled",
    "KMSInvalidStateException": "the key's state forbids it (pending deletion or import)",
    "NotFoundException": "the account cannot find the key in its region",
    "InvalidKeyUsageException": "the key is not a symmetric encryption key",
    "KeyUnavailableException": "the key's custom key store is unavailable",
    "ThrottlingException": "KMS throttled the account, even after retries",
}


@dataclass(frozen=True)
class AccountProbe:
    """What one account's role observed: per action ``Allow``, the error code, or
    ``NotTested``. ``refusal`` says why the role could not be assumed (then nothing was
    called). ``org_id`` is the organization the account itself reports, when asked
    (``org_known``): None then means it is in none."""

    account: str
    role_arn: str
    outcomes: Mapping[str, str] = field(default_factory=dict)
    refusal: str | None = None
    org_id: str | None = None
    org_known: bool = False


@dataclass(frozen=True)
class Result:
    """One action in one account; ``finding`` says what a row that is not plain agreement
    means."""

    account: str
    action: str
    expected: str
    observed: str
    agrees: bool
    finding: str = ""

    @property
    def counted(self) -> bool:
        """Whether an observation was set against a prediction."""
        return self.expected != Decision.UNKNOWN.value and self.observed not in (
            NOT_TESTED,
            ROLE_NOT_ASSUMED,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "action": self.action,
            "expected": self.expected,
            "observed": self.observed,
            "agrees": self.agrees,
        }


def principal_for(record: PrincipalRecord | None, probe: AccountProbe) -> Principal:
    """The principal KMS sees: the role (its sessions' ARN carries no path, the role's does).

    With the organization read, ``record`` holds the account's org ID and OU path. Without
    it, the org ID is what the account reported about itself, and its OU path is unknown:
    conditions on what is unknown are undecidable, never guessed false.
    """
    if record is not None:
        return Principal(probe.role_arn, record.org_id, record.org_paths)
    unknown: tuple[str, ...] = ()
    if not probe.org_known:
        unknown = (ORG_ID_KEY, ORG_PATHS_KEY)
    elif probe.org_id is not None:
        unknown = (ORG_PATHS_KEY,)
    return Principal(probe.role_arn, probe.org_id, unknown=unknown)


def predict(compiled: CompiledPolicy, principal: Principal, key_arn: str) -> dict[str, Answer]:
    """The evaluator's answer for each probed action, for a request with no encryption
    context (the probe sends none)."""
    answers = evaluate_matrix(compiled, [principal], ACTIONS, key_arn)
    return {answer.action: answer for answer in answers}


def compare(account: str, answer: Answer, observed: str, *, cross_account: bool) -> Result:
    """One observation against its prediction, with the finding for anything but agreement."""
    expected = answer.decision

    def result(agrees: bool, finding: str = "") -> Result:
        return Result(account, answer.action, expected.value, observed, agrees, finding)

    if observed == NOT_TESTED:
        return result(True, "not tested: neither Encrypt nor GenerateDataKey gave a ciphertext")
    if expected is Decision.UNKNOWN:
        reasons = "; ".join(answer.unsupported) or "undecidable"
        return result(True, f"no prediction ({reasons})")
    allowed, refused = observed == ALLOWED, observed in REFUSALS
    if expected is Decision.ALLOW:
        if allowed:
            return result(True)
        if refused:
            return result(False, _refused_finding(account, answer, cross_account=cross_account))
        return result(False, _failed_finding(observed))
    if refused:
        return result(True)
    if allowed:
        if expected is Decision.EXPLICIT_DENY:
            return result(
                False,
                f"KMS allowed what the key policy denies ({', '.join(answer.statements)}): "
                "the policy changed since it was read, or the evaluator is wrong",
            )
        return result(
            False,
            "KMS allowed what the key policy does not grant: a grant on the key allows it "
            "(see ListGrants), or the evaluator is wrong",
        )
    return result(False, _failed_finding(observed))


def _refused_finding(account: str, answer: Answer, *, cross_account: bool) -> str:
    action = answer.action
    if answer.delegated:
        return (
            f"the key policy grants {action} to account {account} as a whole (delegated), "
            f"not to the role: the role lacks an IAM policy allowing {action} on the key, "
            "or an SCP or permissions boundary denies it"
        )
    if cross_account:
        return (
            f"the key policy grants the role, but a call from another account also needs the "
            f"role's IAM policy to allow {action} on the key; or an SCP or permissions "
            "boundary denies it"
        )
    return (
        "the key policy grants the role, yet KMS refused: an SCP, a permissions boundary or a "
        "session policy denies it, or the evaluator is wrong"
    )


def _failed_finding(observed: str) -> str:
    hint = f" ({_HINTS[observed]})" if observed in _HINTS else ""
    return f"the call failed with {observed}{hint}: neither allowed nor refused"


def results(
    probes: Iterable[AccountProbe],
    records: Mapping[str, PrincipalRecord | None],
    compiled: CompiledPolicy,
    key_arn: str,
) -> list[Result]:
    """Every account's rows, actions in the order of ``ACTIONS``."""
    key_account = key_arn.split(":")[4]
    rows: list[Result] = []
    for probe in probes:
        answers = predict(compiled, principal_for(records.get(probe.account), probe), key_arn)
        for action in ACTIONS:
            answer = answers[action]
            if probe.refusal is not None:
                rows.append(
                    Result(
                        probe.account,
                        action,
                        answer.decision.value,
                        ROLE_NOT_ASSUMED,
                        True,
                        f"not tested: {probe.role_arn} could not be assumed ({probe.refusal})",
                    )
                )
                continue
            rows.append(
                compare(
                    probe.account,
                    answer,
                    probe.outcomes[action],
                    cross_account=probe.account != key_account,
                )
            )
    return rows


@dataclass(frozen=True)
class Tally:
    agree: int
    disagree: int
    not_counted: int
    roles_not_assumed: int

    @classmethod
    def of(cls, rows: Sequence[Result]) -> Tally:
        return cls(
            agree=sum(row.agrees and row.counted for row in rows),
            disagree=sum(not row.agrees for row in rows),
            not_counted=sum(not row.counted for row in rows),
            roles_not_assumed=len(
                {row.account for row in rows if row.observed == ROLE_NOT_ASSUMED}
            ),
        )
