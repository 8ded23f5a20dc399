"""Watermarks: ``text`` (logits processors and detectors) and, later, ``embedding``."""
