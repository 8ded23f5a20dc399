"""Embedding watermarks for Embeddings-as-a-Service: EmbMarker and ESpeW, the ownership test, attacks.

>>> from wmkit.keys import SecretKey
>>> sorted(SCHEMES)
['embmarker', 'espew']
"""

from .attacks import BagOfWordsStealer, TransformedEncoder, cse_clean, lsa_reference
from ...encoders import Encoder, RemoteEncoder, SentenceEncoder, load_encoder
from .schemes import SCHEMES, EaaSScheme, EmbMarker, ESpeW, WatermarkedEncoder, make_scheme
from .triggers import count_triggers, default_vocabulary, select_triggers
from .verify import OwnershipReport, ownership_queries, score_ownership, verification_texts, verify_ownership

__all__ = [
    "BagOfWordsStealer",
    "TransformedEncoder",
    "cse_clean",
    "lsa_reference",
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
]
