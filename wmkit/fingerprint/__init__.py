"""Output-space fingerprints: is a suspect LLM derived from ours? Decided from its outputs alone.

See :mod:`.signature` (the victim's output space), :mod:`.access` (logits, log-probs, top-k and
top-1 API access) and :mod:`.verify` (the containment test and its calibration).
"""

from .access import LocalAPI, ModelAccess, Top1Recovery, TopKRecovery
from .signature import Signature, signature_from_matrix, signature_from_outputs, signature_from_weights
from .verify import (
    FingerprintReport, calibrate, centered_residuals, enroll, query_prompts, query_rows, random_init_like, round_weights,
    score_fingerprint, suspect_vectors, verify_fingerprint,
)

__all__ = [
    "round_weights",
    "centered_residuals",
    "LocalAPI",
    "ModelAccess",
    "Top1Recovery",
    "TopKRecovery",
    "Signature",
    "signature_from_matrix",
    "signature_from_outputs",
    "signature_from_weights",
    "FingerprintReport",
    "calibrate",
    "enroll",
    "query_prompts",
    "query_rows",
    "random_init_like",
    "verify_fingerprint",
    "score_fingerprint",
    "suspect_vectors",
]
