"""Sentence-level (semantic) text marks: SemStamp, k-SemStamp and PMark, alone or layered over a
token-level mark (``inner=gumbel``). They survive a paraphrase because they mark what a sentence
means, not its tokens. Generation is a sentence at a time (:mod:`.generate`); detection needs the
key and the sentence encoder, never the LM (:mod:`.detector`)."""

from .base import SentenceScheme
from .generate import generate_sentences
from .pmark import PMark
from .reference import SemanticReference, fit_reference
from .regions import KSemStamp, SemStamp
from .sentences import split_sentences

__all__ = ["SentenceScheme", "SemStamp", "KSemStamp", "PMark", "SemanticReference", "fit_reference",
           "generate_sentences", "split_sentences"]
