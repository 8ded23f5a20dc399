"""Invisible Entropy: the entropy tagger, its training corpus, the threshold navigator and the scheme."""

from .navigator import navigate
from .scheme import IE, IEDetector
from .tagger import TAUS, CausalTagger, EntropyTagger, PaperTagger, load_tagger, train_tagger

__all__ = ["IE", "IEDetector", "navigate", "TAUS", "EntropyTagger", "CausalTagger", "PaperTagger", "load_tagger", "train_tagger"]
