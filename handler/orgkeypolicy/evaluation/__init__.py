"""Offline evaluation of a KMS key policy (or an IAM identity policy) the way AWS evaluates it.

Plain data in, plain data out, no AWS client: ``compile_policy`` once, then ``evaluate`` one
request or ``evaluate_matrix`` every principal and action. Anything the evaluator does not
implement makes the answers it could change ``Unknown`` and is named in ``unsupported``.
"""

from orgkeypolicy.evaluation.evaluator import (
    CompiledPolicy,
    compile_policy,
    evaluate,
    evaluate_identity_policy,
    evaluate_matrix,
)
from orgkeypolicy.evaluation.kms import KMS_ACTIONS
from orgkeypolicy.evaluation.model import Answer, Decision, Principal

__all__ = [
    "KMS_ACTIONS",
    "Answer",
    "CompiledPolicy",
    "Decision",
    "Principal",
    "compile_policy",
    "evaluate",
    "evaluate_identity_policy",
    "evaluate_matrix",
]
