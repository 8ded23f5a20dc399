"""The peers the benchmarks and interop tests compare against, loaded from a wheel on disk when
they are not installed (``make install`` downloads the wheels into ``.cache/wheels``)."""

from __future__ import annotations

import glob
import importlib
import sys
from pathlib import Path
from types import ModuleType

WHEELS = Path(__file__).resolve().parents[1] / ".cache" / "wheels"
SENTENCE_TRANSFORMERS = "sentence-transformers==6.0.1"


def sentence_transformers() -> ModuleType:
    """``sentence_transformers``: the installed package, else the pure-Python wheel in ``.cache/wheels``
    (on ``sys.path``: a wheel is a zip archive Python imports from)."""
    try:
        return importlib.import_module("sentence_transformers")
    except ImportError:
        pass
    found = sorted(glob.glob(str(WHEELS / "sentence_transformers-6.0.1-*.whl")))
    if not found:
        raise FileNotFoundError(f"{SENTENCE_TRANSFORMERS} is missing: make install downloads its wheel to {WHEELS}")
    sys.path.insert(0, found[-1])
    return importlib.import_module("sentence_transformers")
