"""One generation engine for ``wm generate``, ``wm serve`` and the benchmarks (:mod:`.core`): the
sampling filters (:mod:`.sampling`), penalties and logit bias (:class:`.job.Job`), watermark
processors, stop strings (:mod:`.stops`), per-prompt seeding, batching with a shared KV cache
(:mod:`.rows`) and prompt scoring (:mod:`.echo`); :func:`generate_completions` runs it over a
list of prompts. The library path stays transformers' ``generate`` with a scheme's processor,
which gives the same tokens for the same seed and settings."""

from .batch import TextScheme, generate_completions
from .core import Generator
from .job import Job, request
from .sampling import Sampling

__all__ = ["Generator", "Job", "Sampling", "TextScheme", "generate_completions", "request"]
