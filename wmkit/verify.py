"""Verification as one library call: a :class:`Verifier` built from a scheme (or a generation record),
with the FPR, the null, an optional calibration, returns the rows ``wm detect`` prints -- verdict,
p-value, counts, key id, null, note -- so a script that imports wmkit gets exactly what the CLI
shows, and the CLI only parses and prints.

>>> from wmkit.keys import SecretKey
>>> from wmkit.watermark.text import KGW
>>> from wmkit.models import load_tokenizer
>>> v = Verifier(KGW(key=SecretKey(bytes(32))), load_tokenizer(), fpr=1e-4)  # doctest: +SKIP
>>> (row,) = v.check(["some text ..."])  # doctest: +SKIP
>>> row["verdict"], row["key_id"], row["null"]  # doctest: +SKIP
('not watermarked', '...', 'reference')
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Optional, Sequence

from .calibration import calibrated_verdict, check_calibration
from .errors import InputError, WmkitError
from .files import display_path, read_text
from .keys import VLLM_KEY_ENV, resolve
from .stats import Detection, floor_note
from .watermark.text import SCHEMES, key_kind
from .watermark.text.detector import (
    DEFAULT_FPR, DEFAULT_MIN_TOKENS, each, resolve_null, verdict_detector,
)

__all__ = ["Verifier", "key_id", "read_record", "scheme_from_config"]


def key_id(scheme: Any) -> str:
    """The public id of the scheme's key (never the key): the scheme's own ``key_id()`` if it has one
    (vLLM keys, synthid's explicit keys: a memory-hard KDF), else the wmkit key's fingerprint."""
    if hasattr(scheme, "key_id"):
        return scheme.key_id()
    return scheme.key.fingerprint()


def read_record(path: Path) -> tuple[dict[str, Any], str | None]:
    """The scheme config in ``path``: a JSON config, or generation records (lines of ``wm generate -o``).
    Records of more than one configuration or key are refused (which one was meant is not known).
    Returns the config and the records' key id, if any."""
    text = read_text(str(path))
    try:
        objs = [json.loads(text)]  # a JSON config (or a one-line record)
    except json.JSONDecodeError:
        objs = []
        for i, line in enumerate(ln for ln in text.splitlines() if ln.strip()):
            try:
                objs.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise InputError(f"{path}: line {i + 1} is not a JSON config or generation record ({e.msg})") from None
    configs, ids = set(), set()
    for obj in objs:
        if isinstance(obj, dict) and isinstance(obj.get("config"), dict):
            configs.add(json.dumps(obj["config"], sort_keys=True))
            ids.add(obj.get("key_id"))
        elif isinstance(obj, dict) and "scheme" in obj:
            obj = dict(obj)
            ids.add(obj.pop("key_id", None))
            configs.add(json.dumps(obj, sort_keys=True))
        else:
            raise InputError(f"{path}: expected a scheme config (with 'scheme') or a wm generate record (with 'config')")
    ids.discard(None)  # a record without a key id says nothing against the others'
    if len(configs) > 1 or len(ids) > 1:
        schemes = sorted({json.loads(c).get("scheme", "?") for c in configs})
        what = f"{len(configs)} different configurations" if len(configs) > 1 else f"{len(ids)} different key ids"
        raise InputError(f"{path}: its records hold {what} ({', '.join(schemes)}); pass a file of one configuration")
    return json.loads(configs.pop()), (ids.pop() if ids else None)


def scheme_from_config(config: dict[str, Any], key_file: Optional[Path], vllm_key: Optional[str]) -> Any:
    """The scheme a config names, with the user's key (the config's parameters exactly)."""
    config = dict(config)
    name = config.pop("scheme", None)
    if not isinstance(name, str):
        raise InputError("the config names no scheme")
    explicit = getattr(SCHEMES[name], "explicit_key_param", None)
    if explicit is not None and explicit in config:  # transformers' explicit keys stand for the key file
        if key_file is not None:
            raise InputError(f"{name}: give the key file (-k) or -P {explicit}=..., not both")
        return SCHEMES[name].from_config(config, resolve(config.pop(explicit), "synthid"))
    if key_kind(name) == "vllm":
        if key_file is not None:
            raise InputError(f"{name} takes vLLM's integer key (--vllm-key N or ${VLLM_KEY_ENV}), not a wmkit key file")
        key: Any = resolve(vllm_key, "vllm")
    else:
        if vllm_key is not None:
            raise InputError(f"--vllm-key applies to the vllm-* schemes; {name} takes a wmkit key file (-k FILE)")
        key = resolve(Path(key_file) if key_file is not None else None)
    return SCHEMES[name].from_config(config, key)


class Verifier:
    """A scheme's verdicts as rows: what ``wm detect`` (and a script) reports for each text.

    ``null`` is the green-list null (default: the per-key reference null, see
    :func:`~wmkit.watermark.text.detector.resolve_null`); ``calibration`` a ``wm calibrate`` file's
    content for this scheme, key and null (checked here; the verdict is then on its calibrated
    p-value); ``model`` the generating model for the baselines that need it (sweet, ewd). Rows hold
    ``scheme``, ``method``, ``tokens_scored``, ``green_fraction``, ``statistic``, ``z``, ``p_value``,
    ``fpr``, ``verdict`` (watermarked / not watermarked / undecided), ``watermarked``, ``null``,
    ``key_id`` (``scheme_key_id=`` gives it when the caller has computed it: a vLLM key's id costs a
    memory-hard KDF) and, where they apply, ``null_rate``, ``note``, the calibration's fields and the
    windowed scan's location; a text that cannot be scored gives ``{"file", "error"}``.
    """

    def __init__(self, scheme: Any, tokenizer: Any, fpr: float = DEFAULT_FPR, min_tokens: int = DEFAULT_MIN_TOKENS,
                 null: str | None = None, calibration: dict[str, Any] | None = None,
                 ignore_repeated_ngrams: bool = True, model: Any = None, scheme_key_id: str | None = None) -> None:
        caps = scheme.capabilities
        self.scheme, self.tokenizer = scheme, tokenizer
        self.key_id = scheme_key_id if scheme_key_id is not None else key_id(scheme)
        self.null = self.checked_null(scheme, null, calibration, self.key_id)
        self.calibration = calibration
        if caps.needs_model and model is None:
            raise InputError(f"{scheme.name} is a baseline whose detector runs the generating model: pass it (--model)")
        opts: dict[str, Any] = {"fpr": fpr, "ignore_repeated_ngrams": ignore_repeated_ngrams, "min_tokens": min_tokens}
        if caps.needs_model:
            opts["model"] = model
        self.detector = verdict_detector(scheme, tokenizer, self.null, **opts)

    @staticmethod
    def checked_null(scheme: Any, null: str | None = None, calibration: dict[str, Any] | None = None,
                     scheme_key_id: str | None = None) -> str:
        """The null a verdict on ``scheme`` uses, with ``calibration`` (if any) checked to be for this
        scheme, key and null: what the constructor checks, callable before a model is loaded."""
        name = resolve_null(scheme.capabilities, null)
        if calibration is not None:
            check_calibration(calibration, scheme.config(), scheme_key_id or key_id(scheme), name)
        return name

    @classmethod
    def from_record(cls, record: str | Path | dict[str, Any], tokenizer: Any, key_file: Optional[Path] = None,
                    vllm_key: Optional[str] = None, **options: Any) -> "Verifier":
        """The verifier of a ``wm generate`` record file or a scheme config, with the user's key; a
        key whose id differs from the one the records name is refused (a wrong key finds no mark)."""
        config, recorded = read_record(Path(record)) if isinstance(record, (str, Path)) else (dict(record), None)
        scheme = scheme_from_config(config, key_file, vllm_key)
        if recorded is not None and recorded != key_id(scheme):
            raise InputError(f"{record} was generated with key id {recorded}, but this key's id is {key_id(scheme)}: "
                             "a wrong key finds no mark")
        return cls(scheme, tokenizer, **options)

    def row(self, det: Detection, name: str = "-") -> dict[str, Any]:
        """The row of one detection of the text called ``name``."""
        d = det.details
        extra = {"tau": d["tau"], "p_uncorrected": d["p_uncorrected"]} if "tau" in d else {}  # ie: the navigator's choice
        n = det.n_scored
        if "span_scored" in d:  # windowed: the located passage's own counts, beside its location
            n = d["span_scored"]
            green: float | None = d["span_green"] / (n * d.get("trials", 1))
        else:
            green = d.get("green_fraction")  # None for the Gumbel family: it scores -log(1 - u), not green tokens
        row: dict[str, Any] = {
            "file": display_path(name), "scheme": self.scheme.name, "method": det.method, "tokens_scored": n,
            "green_fraction": green, "statistic": det.statistic, "z": d.get("z", det.statistic), "p_value": det.p_value,
            "fpr": det.fpr, "verdict": det.verdict, "watermarked": det.verdict == "watermarked",
            "null": d.get("null", "exact"), **extra,
        }
        if d.get("null") in ("gamma", "reference"):  # the p-value's green rate: gamma, or max(gamma, this key's rate)
            row["null_rate"] = d["gamma"]
        if det.verdict == "undecided":
            draws = d.get("null_samples") or d.get("null_draws")
            row["note"] = (floor_note(det.p_floor, det.fpr, f"{det.method}'s test" + (f" with {draws} null draws" if draws else ""))
                           + ("; more draws (-P n_resamples) give finer p-values" if draws else ""))
        if "span_scored" in d:  # windowed: where the most significant passage is
            row.update(text_tokens_scored=det.n_scored, window_tokens=[d["token_start"], d["token_end"]], window_scored=n,
                       window_tests=d["n_tests"], passage=self.tokenizer.decode(d["window_ids"]))
        if "start_sentence" in d:  # sentence windows: the most significant run of sentences
            row.update(window_sentences=[d["start_sentence"], d["end_sentence"]], window_tests=d["n_tests"])
        if "sentence_layer" in d:  # layered: each layer's p-value beside the Holm verdict
            row.update(p_sentence_layer=d["sentence_layer"]["p_value"], p_token_layer=d["token_layer"]["p_value"])
        row["key_id"] = self.key_id
        if self.calibration is not None and "span_scored" not in d:
            row.pop("note", None)
            row.update(calibrated_verdict(self.calibration, det.n_scored, det.p_value, det.fpr, det.p_floor))
            row["watermarked"] = row["verdict"] == "watermarked"
        return row

    def detect(self, texts: Sequence[Any], prompt: str | None = None, windowed: bool = False,
               device: str = "cpu", evidence: bool = True) -> list[Detection | WmkitError]:
        """The detections of ``texts`` (strings or token ids); one that cannot be scored gives its error.
        ``evidence=False`` skips the per-token lists where a detector can (a corpus scan needs none)."""
        prompts = [prompt] * len(texts)
        if windowed:
            if self.calibration is not None:
                raise InputError("a calibration calibrates whole-text p-values, not the windowed scan's")
            if not self.scheme.capabilities.windowed:
                raise InputError(f"windowed detection is not available for {self.scheme.name}")
            return each(self.detector.detect_windowed, texts, prompts)
        kw: dict[str, Any] = {} if device == "cpu" else {"device": device}
        if not evidence and "evidence" in inspect.signature(self.detector.detect_many).parameters:
            kw["evidence"] = False
        return self.detector.detect_many(texts, prompts, **kw)

    def check(self, texts: Sequence[Any], names: Sequence[str] | None = None, prompt: str | None = None,
              windowed: bool = False) -> list[dict[str, Any]]:
        """One row per text (:meth:`row`), or ``{"file", "error"}`` for a text that cannot be scored."""
        names = list(names) if names is not None else [f"text {i + 1}" for i in range(len(texts))]
        if len(names) != len(texts):
            raise InputError(f"{len(names)} names for {len(texts)} texts")
        return [{"file": display_path(n), "error": str(det)} if isinstance(det, WmkitError) else self.row(det, n)
                for n, det in zip(names, self.detect(texts, prompt, windowed))]
