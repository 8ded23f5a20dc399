"""Per-key calibration on a corpus the user owns (``wm calibrate``) and calibrated p-values.

A detector's p-value is exact over random keys; for the one key a deployment holds, common tokens
keep their colour in every document, so a key can be unlucky for a whole genre of text. Run the
detector with the deployed key over unmarked text of the kind it will judge: per length bucket
(tokens scored) the report gives the z mean and sd, the empirical FPR at 1e-2, 1e-3 and 1e-4 with
two-sided 95% Clopper-Pearson intervals, and flags a bucket whose interval lies above the nominal
rate (the key is miscalibrated there).

The calibration file keeps each bucket's null p-values. ``wm detect --calibration FILE`` then adds
an empirical p-value beside the exact one: ``(1 + #{null p <= p}) / (1 + n)`` over the text's
bucket -- valid when the calibration texts are exchangeable with the one judged, and never smaller
than ``1 / (1 + n)``, so a small calibration corpus gives conservative values (100 documents cannot
support a claim below 1e-2).
"""

from __future__ import annotations

import bisect
from typing import Any, Sequence, Iterable

import numpy as np

from .errors import InputError
from .stats import clopper_pearson_interval, floor_note, verdict

__all__ = ["BUCKETS", "LEVELS", "MIN_DOCS", "calibrate", "calibrated_p", "calibrated_verdict", "check_calibration"]

BUCKETS = (16, 64, 128, 256, 512)  # lower edges of the length buckets (tokens scored)
LEVELS = (1e-2, 1e-3, 1e-4)
MIN_DOCS = 100
FORMAT = "wmkit-calibration/1"
PROFILES_FORMAT = "wmkit-calibration-profiles/1"  # {"format", "profiles": {name: a FORMAT report}}


def _bucket(n: int) -> str:
    i = bisect.bisect_right(BUCKETS, n) - 1
    lo = BUCKETS[max(i, 0)]
    return f"{lo}+" if i == len(BUCKETS) - 1 else f"{lo}-{BUCKETS[i + 1] - 1}"


def _summary(z: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    n = len(p)
    out: dict[str, Any] = {"docs": n, "z_mean": float(z.mean()), "z_sd": float(z.std(ddof=1)) if n > 1 else None,
                           "fpr": {}}
    for level in LEVELS:
        k = int((p <= level).sum())
        lo, hi = clopper_pearson_interval(k, n)
        out["fpr"][f"{level:g}"] = {"observed": k / n, "ci95": [lo, hi], "miscalibrated": lo > level}
    return out


def calibrate(results: Iterable[Any], header: dict[str, Any]) -> dict[str, Any]:
    """The calibration report of detections on unmarked text (``InputError`` items are skipped and counted).

    ``header`` (scheme config, key id, ...) is stored as is. Raises :class:`InputError` below
    :data:`MIN_DOCS` scored documents.
    """
    rows: dict[str, list[tuple[float, float]]] = {}
    skipped = 0
    for det in results:
        if isinstance(det, Exception):
            skipped += 1
            continue
        rows.setdefault(_bucket(det.n_scored), []).append((float(det.details.get("z", det.statistic)), float(det.p_value)))
    total = sum(map(len, rows.values()))
    if total < MIN_DOCS:
        raise InputError(f"corpus too small to calibrate: {total} document(s) could be scored ({skipped} too short or "
                         f"unreadable); at least {MIN_DOCS} are "
                         f"needed (and about 10 / FPR for an FPR: 1,000 for 1e-2, 10,000 for 1e-3)")
    buckets = {}
    for name in sorted(rows, key=lambda b: int(b.split("-")[0].rstrip("+"))):
        z, p = (np.array(v) for v in zip(*rows[name]))
        buckets[name] = {**_summary(z, p), "null_p": sorted(float(x) for x in p)}
    allz, allp = (np.array(v) for v in zip(*[x for v in rows.values() for x in v]))
    return {"format": FORMAT, **header, "documents": total, "skipped": skipped, "overall": _summary(allz, allp),
            "buckets": buckets}


def calibrated_p(calibration: dict[str, Any], n_scored: int, p_value: float) -> tuple[float, str] | None:
    """``(empirical p, bucket)`` for a text with ``n_scored`` tokens and exact ``p_value``, or ``None``
    when the calibration has no document of that length bucket."""
    name = _bucket(n_scored)
    bucket = calibration["buckets"].get(name)
    if bucket is None:
        return None
    null = bucket["null_p"]
    return (1 + bisect.bisect_right(null, p_value)) / (1 + len(null)), name


def calibrated_verdict(calibration: dict[str, Any], n_scored: int, p_value: float, fpr: float,
                       p_floor: float = 0.0) -> dict[str, Any]:
    """The verdict with a calibration: on the calibrated p-value over the text's bucket (whose floor
    ``1 / (1 + documents)`` makes the verdict "undecided" when it is above ``fpr``), or on the exact
    p-value, said in ``note``, when the calibration has no document of the text's length.
    Returns ``p_calibrated``, ``calibration_bucket``, ``verdict`` and, where there is one, ``note``."""
    cal = calibrated_p(calibration, n_scored, p_value)
    if cal is None:
        return {"p_calibrated": None, "calibration_bucket": None, "verdict": verdict(p_value, fpr, p_floor),
                "note": f"the calibration has no document of {n_scored} scored tokens: verdict on the exact p-value"}
    p, bucket = cal
    floor = max(p_floor, 1 / (1 + len(calibration["buckets"][bucket]["null_p"])))
    out: dict[str, Any] = {"p_calibrated": p, "calibration_bucket": bucket, "verdict": verdict(p, fpr, floor)}
    if out["verdict"] == "undecided":
        docs = len(calibration["buckets"][bucket]["null_p"])
        out["note"] = floor_note(floor, fpr, f"a calibration bucket of {docs} documents ({bucket} tokens)")
    return out


def check_calibration(calibration: Any, config: dict[str, Any], key_id: str, null: str | None = None) -> None:
    """The calibration file must be for this scheme config, key and (when given) null: its p-values
    are of that test (one-line errors otherwise; a file from before the null was recorded was made
    with the plain test, ``gamma``, for a green-list scheme)."""
    if not isinstance(calibration, dict) or calibration.get("format") != FORMAT:
        raise InputError("not a wmkit calibration file (wm calibrate writes one)")
    if calibration.get("scheme") != config:
        raise InputError("the calibration was made with another scheme configuration; recalibrate or pass its settings")
    if calibration.get("key_id") != key_id:
        raise InputError(f"the calibration was made with key id {calibration.get('key_id')}, not {key_id}")
    if null is not None:
        made = calibration.get("null", "exact" if null == "exact" else "gamma")
        if made != null:
            raise InputError(f"the calibration was made with the {made} null, and this test uses the {null} null; "
                             f"pass --null {made} or recalibrate")


def profile_calibrations(calibration: Any, profiles: Sequence[Any], key_ids: Sequence[str],
                         nulls: Sequence[str | None] | None = None) -> dict[str, dict[str, Any]]:
    """The per-profile calibrations of a ``wm calibrate --profiles`` file, each checked against its
    profile's scheme config and key id; a profile the file does not cover is an :class:`InputError`."""
    if not isinstance(calibration, dict) or calibration.get("format") != PROFILES_FORMAT:
        raise InputError("not a multi-profile calibration file (wm calibrate --profiles writes one)")
    out = {}
    for prof, kid, null in zip(profiles, key_ids, nulls or [None] * len(profiles), strict=True):
        cal = calibration["profiles"].get(prof.name)
        if cal is None:
            raise InputError(f"the calibration has no profile {prof.name!r}; recalibrate with this profiles file")
        try:
            check_calibration(cal, prof.scheme.config(), kid, null)
        except InputError as e:
            raise InputError(f"profile {prof.name!r}: {e}") from None
        out[prof.name] = cal
    return out
