"""The vLLM adapter's logic against a fake batch shaped like vLLM V1's (vLLM itself needs CUDA)."""

import enum
import json
from dataclasses import dataclass, field

import pytest
import torch

from wmkit.errors import InputError, InvalidKeyError
from wmkit.watermark.text import KGW, Unigram
from wmkit.watermark.text.vllm import WmkitLogitsProcessor, scheme_from_env

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
V = 5000


class MoveDirectionality(enum.Enum):  # vLLM's names
    UNIDIRECTIONAL = 0
    SWAP = 1


@dataclass
class SamplingParams:
    extra_args: dict | None = None


@dataclass
class BatchUpdate:  # vLLM's BatchUpdate fields: batch_size, removed, added, moved
    batch_size: int
    removed: list = field(default_factory=list)
    added: list = field(default_factory=list)
    moved: list = field(default_factory=list)


def hf_rows(scheme, contexts, scores):
    """What the transformers processor does to each row given its full token context."""
    out = scores.clone()
    for i, ctx in enumerate(contexts):
        if ctx is not None:
            out[i] = scheme.processor()(torch.tensor([ctx], device=scores.device), scores[i : i + 1].clone())[0]
    return out


@pytest.mark.parametrize("scheme_kw", [{"context_width": 1}, {"context_width": 4, "seeding": "selfhash"}])
def test_apply_matches_transformers_processor_and_follows_batch_updates(key, scheme_kw):
    scheme = KGW(key, **scheme_kw)
    proc = WmkitLogitsProcessor(None, torch.device(DEVICE), False, scheme=scheme)
    assert proc.is_argmax_invariant() is False
    outs = [[7, 8, 9], [], [11], [3, 1, 4, 1, 5]]
    prompts = [[1, 2, 3, 4], [5, 6, 7, 8, 9], [10], [2, 7]]
    proc.update_state(BatchUpdate(4, added=[
        (0, SamplingParams(), prompts[0], outs[0]),
        (1, SamplingParams(), prompts[1], outs[1]),
        (2, SamplingParams(), prompts[2], outs[2]),
        (3, SamplingParams({"wmkit": False}), prompts[3], outs[3]),
    ]))
    h = scheme.context_width
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4, V, generator=g).to(DEVICE)

    def expected(order):
        ctxs = []
        for p, o, on in order:
            full = p + o
            ctxs.append(full if on and len(full) >= h else None)
        return hf_rows(scheme, ctxs, scores)

    got = proc.apply(scores.clone())
    assert torch.equal(got, expected([(prompts[0], outs[0], True), (prompts[1], outs[1], True),
                                      (prompts[2], outs[2], True), (prompts[3], outs[3], False)]))
    # vLLM appends to the live output lists; the next step sees the new tokens
    outs[0].append(42)
    outs[1].append(43)
    # swap rows 0 and 1, remove row 3, move row 2 -> 3
    proc.update_state(BatchUpdate(4, removed=[3], moved=[(0, 1, MoveDirectionality.SWAP), (2, 3, MoveDirectionality.UNIDIRECTIONAL)]))
    got = proc.apply(scores.clone())
    want = expected([(prompts[1], outs[1], True), (prompts[0], outs[0], True), ([], [], False), (prompts[2], outs[2], True)])
    assert torch.equal(got, want)
    buf = scores.clone()
    assert proc.apply(buf).data_ptr() == buf.data_ptr()  # in place


def test_unigram_and_no_marked_rows(key):
    proc = WmkitLogitsProcessor(None, torch.device(DEVICE), False, scheme=Unigram(key))
    scores = torch.randn(2, V).to(DEVICE)
    assert torch.equal(proc.apply(scores.clone()), scores)  # empty batch state: untouched
    proc.update_state(BatchUpdate(2, added=[(1, SamplingParams(), None, [])]))
    got = proc.apply(scores.clone())
    assert torch.equal(got[0], scores[0])
    assert torch.equal(got[1], Unigram(key).processor()(torch.zeros((1, 0), dtype=torch.long, device=DEVICE), scores[1:2])[0])
    proc.update_state(None)  # vLLM passes None when nothing changed: the rows are kept
    assert list(proc.rows) == [1] and torch.equal(proc.apply(scores.clone()), got)


def test_validate_params_and_env_config(key, monkeypatch, tmp_path):
    WmkitLogitsProcessor.validate_params(SamplingParams({"wmkit": False}))
    with pytest.raises(ValueError):
        WmkitLogitsProcessor.validate_params(SamplingParams({"wmkit": "no"}))
    keyfile = tmp_path / "k"
    keyfile.write_text(key.to_hex())
    monkeypatch.setenv("WMKIT_KEY_FILE", str(keyfile))
    monkeypatch.setenv("WMKIT_VLLM_SCHEME", json.dumps({"scheme": "kgw", "context_width": 4, "seeding": "selfhash"}))
    assert scheme_from_env() == KGW(key, context_width=4, seeding="selfhash")
    assert scheme_from_env().prf_key() == KGW(key).prf_key()
    monkeypatch.setenv("WMKIT_VLLM_SCHEME", "{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        scheme_from_env()
    monkeypatch.delenv("WMKIT_VLLM_SCHEME")
    monkeypatch.delenv("WMKIT_KEY_FILE")
    monkeypatch.delenv("WMKIT_KEY", raising=False)
    with pytest.raises(InvalidKeyError, match="no key given"):
        WmkitLogitsProcessor(None, torch.device("cpu"), False)
