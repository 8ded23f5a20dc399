"""The default model: offline loading, the converted cache, and --model path checks."""

import pytest
import torch

from wmkit.errors import InputError
from wmkit.models import default_lm_path, load_lm, load_tokenizer, resolve_lm_path


def test_default_gguf_is_installed():
    p = default_lm_path()
    assert p.suffix == ".gguf" and p.stat().st_size > 50_000_000


def test_model_argument_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        resolve_lm_path(tmp_path / "nope")
    with pytest.raises(InputError, match="no config.json"):
        resolve_lm_path(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(InputError, match="neither a model folder nor a .gguf"):
        resolve_lm_path(tmp_path / "weights.bin")


def test_tokenizer_cache_round_trip(tmp_path):
    fresh = load_tokenizer(cache=tmp_path)  # from the GGUF file, then written to the cache
    assert any((tmp_path / "tokenizers").iterdir())
    cached = load_tokenizer(cache=tmp_path)
    text = "Hello wörld — naïve café, 12345 tokens!"
    assert len(fresh) == len(cached) == 49152
    assert fresh(text)["input_ids"] == cached(text)["input_ids"]


@pytest.mark.slow
def test_cached_model_equals_gguf_model(tmp_path):
    from transformers import AutoModelForCausalLM

    gguf = default_lm_path()
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    first, tok = load_lm(cache=tmp_path)  # converts and writes the cache
    folder = next((tmp_path / "models").iterdir())
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    second, _ = load_lm(folder)  # a converted folder loads as a plain model folder
    ids = tok("The lighthouse keeper", return_tensors="pt").input_ids
    with torch.no_grad():
        want = reference(ids).logits
        assert torch.equal(first(ids).logits, want)
        assert torch.equal(second(ids).logits, want)


def test_an_incomplete_model_folder_is_one_line_not_a_traceback(tmp_path, tokenizer):
    """A config without tokenizer files, then without weights: each an InputError naming what is missing."""
    from wmkit.models import load_lm

    (tmp_path / "config.json").write_text('{"model_type": "llama", "vocab_size": 64}')
    with pytest.raises(InputError, match="cannot load its tokenizer"):
        load_lm(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(InputError, match=r"cannot load its model \(.*model.safetensors"):
        load_lm(tmp_path)
