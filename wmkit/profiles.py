"""Multi-profile detection: test a text against every configuration a deployment has served.

A profiles file is JSON::

    {"profiles": [
      {"name": "chat-2025", "config": {"scheme": "kgw", "gamma": 0.25, "context_width": 4, "seeding": "selfhash"},
       "key": {"file": "keys/chat.key"}},
      {"name": "vllm-prod", "config": {"scheme": "vllm-gumbel"}, "key": {"env": "VLLM_WATERMARK_KEY"}},
      {"name": "hf-synthid", "config": {"scheme": "synthid", "ngram_len": 5}, "key": {"env": "SYNTHID_KEYS"}}
    ]}

``config`` is a scheme config (what ``wm generate -o`` records); ``key`` is a *reference*: a key file
(relative paths are relative to the profiles file) or an environment variable holding a wmkit hex
key, vLLM's integer key, or SynthID's comma-separated keys, as the scheme takes. Inline secrets are
refused. Each text is tested against every profile; the verdict uses Holm-Bonferroni adjusted
p-values (:func:`wmkit.stats.holm`), so the chance that an unmarked text is attributed to *some*
profile stays at most the FPR whatever the number of profiles.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import InputError
from .files import read_text
from .errors import InvalidKeyError
from .keys import resolve
from .stats import Detection, check_fpr, floor_note, holm

__all__ = ["Profile", "ProfileMatch", "load_profiles", "detect_profiles"]


@dataclass(frozen=True)
class Profile:
    """A named scheme with its key, from a profiles file."""

    name: str
    scheme: Any


@dataclass(frozen=True)
class ProfileMatch:
    """The result for one text: the best profile, its Holm-adjusted p-value and every profile's."""

    profile: str
    p_value: float
    decision: bool
    detection: Detection
    per_profile: dict[str, dict[str, Any]]
    verdict: str = "not watermarked"
    note: str | None = None


def _key(ref: Any, name: str, scheme_cls: type, base: Path) -> Any:
    if not isinstance(ref, dict) or set(ref) - {"file", "env"} or len(ref) != 1:
        raise InputError(f"profile {name!r}: 'key' must be {{\"file\": PATH}} or {{\"env\": VARIABLE}} "
                         f"(inline keys are refused: a profiles file is not a secret store)")
    kind = "vllm" if getattr(scheme_cls, "key_kind", "wmkit") == "vllm" else (
        "synthid" if getattr(scheme_cls, "explicit_key_param", None) else "wmkit")
    try:
        return resolve(ref, kind, base=base)
    except InvalidKeyError as e:
        if "file" in ref:
            raise
        raise InputError(f"profile {name!r}: {e}") from None


def load_profiles(path: str | os.PathLike[str]) -> list[Profile]:
    """Read and check a profiles file (unknown schemes, inline keys, duplicates: one-line errors)."""
    from .watermark.text import SCHEMES, key_kind

    p = Path(path)
    try:
        doc = json.loads(read_text(str(p)))
    except json.JSONDecodeError as e:
        raise InputError(f"{p}: not JSON ({e.msg}, line {e.lineno})") from None
    items = doc.get("profiles") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise InputError(f"{p}: expected {{\"profiles\": [...]}} with at least one profile")
    out, names = [], set()
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("config"), dict):
            raise InputError(f"{p}: profile {i} needs a 'config' object")
        name = str(item.get("name", f"profile-{i}"))
        if name in names:
            raise InputError(f"{p}: two profiles are named {name!r}")
        names.add(name)
        config = dict(item["config"])
        scheme_name = config.pop("scheme", None)
        key_kind(scheme_name if isinstance(scheme_name, str) else "")  # an unknown scheme: one line
        cls = SCHEMES[scheme_name]
        if cls.capabilities.needs_model:
            raise InputError(f"profile {name!r}: {scheme_name} needs the generating model; profiles take key-only schemes")
        secret_fields = {"key", "keys", "secret"} & set(config)
        if secret_fields:
            raise InputError(f"profile {name!r}: {sorted(secret_fields)[0]!r} in the config (inline keys are refused; "
                             f"use \"key\": {{\"file\": ...}} or {{\"env\": ...}})")
        key = _key(item.get("key"), name, cls, p.parent)
        out.append(Profile(name, cls.from_config(config, key)))
    return out


def detect_profiles(profiles: Sequence[Profile], tokenizer: Any, texts: Sequence[str], fpr: float,
                    min_tokens: int | None = None, calibrations: dict[str, dict[str, Any]] | None = None,
                    null: str | None = None) -> list[ProfileMatch | InputError]:
    """Test each text against every profile; a text no profile can score yields the first error.

    Each profile's detector has the null a verdict uses (:func:`wmkit.watermark.text.detector.verdict_detector`:
    ``null`` for the green-list profiles, by default the per-key reference null). With
    ``calibrations`` (profile name -> its ``wm calibrate`` report), each profile's test uses its
    calibrated p-value (:func:`wmkit.calibration.calibrated_verdict`; the exact one where the
    calibration has no document of the text's length) and Holm runs over those. The verdict follows
    :func:`wmkit.stats.verdict`: "undecided" when no profile is declared and one of them could not
    have been (its smallest p-value, times the number of profiles, above ``fpr``).
    """
    from .calibration import calibrated_verdict
    from .watermark.text.detector import resolve_null, verdict_detector

    check_fpr(fpr)
    opts = {"fpr": fpr, **({"min_tokens": min_tokens} if min_tokens is not None else {})}
    if null is not None and not any(p.scheme.capabilities.reference_null for p in profiles):
        resolve_null(profiles[0].scheme.capabilities, null)  # its one-line error
    detectors = [verdict_detector(p.scheme, tokenizer, null if p.scheme.capabilities.reference_null else None, **opts)
                 for p in profiles]
    results = [d.detect_many(list(texts)) for d in detectors]
    nulls = {p.name: d.null for p, d in zip(profiles, detectors)}
    out: list[ProfileMatch | InputError] = []
    for i in range(len(texts)):
        dets = {p.name: r[i] for p, r in zip(profiles, results)}
        scored = {n: d for n, d in dets.items() if not isinstance(d, Exception)}
        if not scored:
            out.append(next(iter(dets.values())))
            continue
        names, m = list(scored), len(scored)
        used, floors, extra = {}, {}, {}
        for n in names:
            det = scored[n]
            used[n], floors[n] = det.p_value, det.p_floor
            if calibrations:
                cal = calibrated_verdict(calibrations[n], det.n_scored, det.p_value, fpr, det.p_floor)
                extra[n] = {"p_calibrated": cal["p_calibrated"]}
                if cal["p_calibrated"] is not None:
                    used[n] = cal["p_calibrated"]
                    floors[n] = max(det.p_floor, 1 / (1 + len(calibrations[n]["buckets"][cal["calibration_bucket"]]["null_p"])))
        adjusted = holm([used[n] for n in names])  # profiles that cannot score the text are not tests
        best = min(range(len(names)), key=lambda j: (adjusted[j], used[names[j]]))
        per = {n: {"p_value": scored[n].p_value, "p_holm": a, "method": scored[n].method, "null": nulls[n],
                   "p_floor": min(1.0, m * floors[n]), **extra.get(n, {})}
               for n, a in zip(names, adjusted)}
        per.update({n: {"error": str(d)} for n, d in dets.items() if isinstance(d, Exception)})
        decided = adjusted[best] <= fpr
        blind = [n for n in names if m * floors[n] > fpr]
        result, note = "watermarked" if decided else "not watermarked", None
        if not decided and blind:
            result = "undecided"
            note = floor_note(min(1.0, m * floors[blind[0]]), fpr,
                              f"profile {blind[0]!r} (Holm over {m} profiles{', calibrated' if calibrations else ''})")
        out.append(ProfileMatch(names[best], adjusted[best], decided, scored[names[best]], per, result, note))
    return out
