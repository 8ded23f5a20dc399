"""Embedding watermarks for Embeddings-as-a-Service: EmbMarker, ESpeW, WARDEN and WET, the ownership test, attacks.

>>> from wmkit.keys import SecretKey
>>> sorted(SCHEMES)
['embmarker', 'espew', 'warden', 'wet']
"""

from .attacks import (
    BagOfWordsStealer,
    TransformedEncoder,
    add_noise,
    cse_clean,
    lsa_reference,
    paraphrased_answers,
    pca_project,
    spa_spot,
)
from ...encoders import Encoder, RemoteEncoder, SentenceEncoder, load_encoder
from .schemes import SCHEMES, EaaSScheme, EmbMarker, ESpeW, Warden, WatermarkedEncoder, make_scheme
from .triggers import count_triggers, default_vocabulary, select_triggers
from .verify import (
    OwnershipReport,
    ownership_queries,
    plan_budget,
    score_ownership,
    sequential_ownership,
    verification_texts,
    verify_ownership,
    verify_warden,
)
from .wet import WET, verify_wet

__all__ = [
    "BagOfWordsStealer",
    "TransformedEncoder",
    "cse_clean",
    "lsa_reference",
    "spa_spot",
    "pca_project",
    "add_noise",
    "paraphrased_answers",
    "Encoder",
    "RemoteEncoder",
    "SentenceEncoder",
    "load_encoder",
    "SCHEMES",
    "EaaSScheme",
    "EmbMarker",
    "ESpeW",
    "WatermarkedEncoder",
    "make_scheme",
    "count_triggers",
    "default_vocabulary",
    "select_triggers",
    "OwnershipReport",
    "verification_texts",
    "verify_ownership",
    "ownership_queries",
    "score_ownership",
    "plan_budget",
    "sequential_ownership",
    "WET",
    "Warden",
    "verify_warden",
    "verify_wet",
]
