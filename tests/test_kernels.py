"""Triton kernels vs the torch reference, bit for bit (interpreted on the CPU, compiled on a GPU)."""

import random

import pytest
import torch

from wmkit import dedup, kernels
from wmkit.kernels import triton_green

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = [("lefthash", 0), ("lefthash", 1), ("lefthash", 3), ("lefthash", 8), ("selfhash", 1), ("selfhash", 4)]


def _inputs(seed, b=4, v=3000, length=12, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    scores = (torch.randn(b, v, generator=g) * 5).to(dtype)
    scores[0, :7] = float("-inf")
    ids = torch.randint(0, 262144, (b, length), generator=g)
    key = tuple(random.Random(seed + i).getrandbits(32) for i in range(4))
    return scores.to(DEVICE), ids.to(DEVICE), key


@pytest.mark.parametrize("seeding,h", CASES)
def test_green_bias_kernel_equals_reference(seeding, h):
    scores, ids, key = _inputs(h)
    gamma = random.Random(h).choice([0.1, 0.25, 0.5])
    want = kernels.green_bias_reference(scores, ids, key, h, seeding, gamma, 2.0)
    got = triton_green.green_bias_triton(scores, ids, key, h, seeding, gamma, 2.0)
    assert torch.equal(got, want)
    green_frac = (got != scores).float().mean().item()
    assert abs(green_frac - gamma) < 0.03


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_take_the_torch_path(dtype):
    scores, ids, key = _inputs(7, dtype=dtype)
    with pytest.raises(ValueError, match="float32"):
        triton_green.green_bias_triton(scores, ids, key, 2, "lefthash", 0.25, 1.5)
    got = kernels.green_bias(scores, ids, key, 2, "lefthash", 0.25, 1.5)
    want = torch.where(kernels.green_bias_reference(scores.float(), ids, key, 2, "lefthash", 0.25, 1.5) != scores.float(),
                       scores + 1.5, scores)
    assert got.dtype == dtype and torch.equal(got, want)


@pytest.mark.parametrize("seeding,h", [("lefthash", 1), ("selfhash", 4)])
def test_green_bias_kernel_in_place_with_row_mask(seeding, h):
    scores, ids, key = _inputs(11, b=5, v=2500)
    mask = torch.tensor([True, False, True, False, True], device=DEVICE)
    want = kernels.green_bias_reference(scores, ids, key, h, seeding, 0.25, 3.0, row_mask=mask)
    buf = scores.clone()
    out = triton_green.green_bias_triton(buf, ids, key, h, seeding, 0.25, 3.0, row_mask=mask, out=buf)
    assert out.data_ptr() == buf.data_ptr() and torch.equal(buf, want)
    assert torch.equal(buf[~mask], scores[~mask])  # skipped rows untouched


def test_green_bias_kernel_non_contiguous_rows_and_odd_vocab():
    big, ids, key = _inputs(3, b=3, v=4099)
    scores = big[:, :4097]  # row stride 4099, vocab 4097: not a multiple of the block
    want = kernels.green_bias_reference(scores, ids, key, 1, "lefthash", 0.25, 2.0)
    assert torch.equal(triton_green.green_bias_triton(scores, ids, key, 1, "lefthash", 0.25, 2.0), want)


def _batch(seed, s=5, n=300, vocab=49152):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, n + 1, (s,), generator=g)
    lengths[0] = n
    ids = torch.randint(0, vocab, (s, n), generator=g) * (torch.arange(n) < lengths.unsqueeze(1))
    ids[1, 40:80] = ids[1, 0:40]  # a repeated passage
    return ids.to(DEVICE), lengths.to(DEVICE)


@pytest.mark.parametrize("seeding,h", CASES)
def test_green_positions_kernel_equals_reference(seeding, h):
    ids, lengths = _batch(h)
    key = (0x9E3779B9, 0x7F4A7C15, 0xF39CC060, 0x5CEDC834)
    want = kernels.green_positions_reference(ids, lengths, key, h, seeding, 0.25)
    got = triton_green.green_positions_triton(ids, lengths, key, h, seeding, 0.25)
    assert torch.equal(got, want)
    assert want[0, h:].float().mean().item() == pytest.approx(0.25, abs=0.08)


@pytest.mark.parametrize("h", [0, 1, 4])
def test_first_ngram_occurrence_brute_force(h):
    ids, lengths = _batch(100 + h, vocab=7)  # a tiny vocabulary: many repeats
    got = dedup.first_ngram(ids, lengths, h).cpu()
    for s in range(ids.shape[0]):
        row, seen = ids[s].tolist(), set()
        for i in range(ids.shape[1]):
            expect = False
            if h <= i < int(lengths[s]):
                gram = tuple(row[i - h : i + 1])
                expect = gram not in seen
                seen.add(gram)
            assert bool(got[s, i]) == expect, (s, i)


def test_dispatch_uses_torch_on_cpu_and_validates():
    scores, ids, key = (t.cpu() if isinstance(t, torch.Tensor) else t for t in _inputs(5))
    assert torch.equal(kernels.green_bias(scores, ids, key, 2, "selfhash", 0.25, 2.0),
                       kernels.green_bias_reference(scores, ids, key, 2, "selfhash", 0.25, 2.0))
    out = scores.clone()
    kernels.green_bias(out, ids, key, 2, "lefthash", 0.25, 2.0, out=out)
    assert torch.equal(out, kernels.green_bias_reference(scores, ids, key, 2, "lefthash", 0.25, 2.0))
    with pytest.raises(ValueError, match="seeding"):
        kernels.green_bias(scores, ids, key, 2, "minhash", 0.25, 2.0)
    with pytest.raises(ValueError, match="row_mask"):
        kernels.green_bias(scores, ids, key, 2, "lefthash", 0.25, 2.0, row_mask=torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="context width"):
        kernels.green_bias(scores, ids[:, :1], key, 2, "lefthash", 0.25, 2.0)


@pytest.mark.parametrize("seeding,h", [("lefthash", 1), ("selfhash", 4)])
def test_batched_detection_equals_the_pure_python_reference(key, seeding, h):
    """Padded batch detection (on the GPU when there is one) against a per-token loop over the
    pure-Python PRF spec and a set of seen n-grams: not against itself."""
    from helpers import VocabOnly, green_ref
    from wmkit.watermark.text import KGW

    scheme = KGW(key, context_width=h, seeding=seeding)
    det = scheme.detector(VocabOnly(), min_tokens=1)
    g = torch.Generator().manual_seed(h)
    seqs = [torch.randint(0, 49152, (n,), generator=g) for n in (300, 17, 120, 64)]
    seqs[2][60:] = seqs[2][:60]  # repeated n-grams
    batched = det.detect_many(seqs, device=DEVICE)
    for seq, got in zip(seqs, batched, strict=True):
        row, seen, scored, green = seq.tolist(), set(), [], []
        for i in range(len(row)):
            gram = tuple(row[i - h : i + 1])
            scored.append(i >= h and gram not in seen)
            seen.add(gram)
            green.append(scored[-1] and green_ref(scheme, row[:i], row[i]))
        assert got.evidence == {"token_ids": row, "scored": scored, "green": green}
        assert (got.n_scored, got.details["green"]) == (sum(scored), sum(green))


def test_first_occurrence_brute_force():
    from wmkit.dedup import first_seen

    g = torch.Generator().manual_seed(3)
    keys = torch.randint(0, 6, (4, 40), generator=g)
    valid = torch.rand(4, 40, generator=g) > 0.3
    rows = torch.arange(4).repeat_interleave(40)
    got = first_seen(keys.flatten(), rows, valid.flatten()).view(4, 40)  # the rows packed, one group each
    for r in range(4):
        seen = set()
        for i in range(40):
            want = bool(valid[r, i]) and int(keys[r, i]) not in seen
            if valid[r, i]:
                seen.add(int(keys[r, i]))
            assert bool(got[r, i]) == want


@pytest.mark.parametrize("seeding,h", [("lefthash", 1), ("selfhash", 2)])
def test_compiled_detection_prf_is_bit_exact(seeding, h, monkeypatch):
    """A batch of COMPILE_MIN_TOKENS tokens or more goes through torch.compile: same bits as eager.
    (The tests run eager elsewhere -- conftest sets WMKIT_COMPILE=0 -- so a fresh machine compiles
    only the graphs these tests check; selfhash at h=2, whose graph compiles in a fraction of h=4's time.)"""
    from wmkit import kernels

    monkeypatch.setenv("WMKIT_COMPILE", "1")

    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 49152, (2, kernels.COMPILE_MIN_TOKENS // 2 + 5), generator=g)
    lengths = torch.tensor([ids.shape[1], ids.shape[1] - 3])
    key = (0xDEADBEEF, 0x12345678, 0xCAFEF00D, 0x0BADBEEF)
    compiled = kernels.green_positions(ids, lengths, key, h, seeding, 0.25)
    assert ("positions", h, seeding == "selfhash") not in kernels._COMPILE_FAILED
    monkeypatch.setenv("WMKIT_COMPILE", "0")
    assert torch.equal(compiled, kernels.green_positions(ids, lengths, key, h, seeding, 0.25))


@pytest.mark.parametrize("seeding,h", CASES)
def test_native_cpu_kernel_equals_reference(seeding, h):
    """The C kernel (cpu_kernels.c), built here, bit for bit against the torch reference: a vocabulary
    that ends inside a block, rows with a stride, in place with a row mask, and into ``out``."""
    from wmkit.kernels import native

    assert native.available(), native._FAILED
    big, ids, key = (t.cpu() if isinstance(t, torch.Tensor) else t for t in _inputs(20 + h, b=6, v=5003))
    scores = big[:, :4999]  # row stride 5003; 4999 = 19 full blocks of 256 entries + 135
    want = kernels.green_bias_reference(scores, ids, key, h, seeding, 0.25, 2.0)
    assert torch.equal(native.green_bias_native(scores, ids, key, h, seeding, 0.25, 2.0), want)
    mask = torch.tensor([True, False, True, True, False, True])
    want_masked = kernels.green_bias_reference(scores, ids, key, h, seeding, 0.25, 2.0, row_mask=mask)
    buf = scores.clone()
    assert native.green_bias_native(buf, ids, key, h, seeding, 0.25, 2.0, row_mask=mask, out=buf).data_ptr() == buf.data_ptr()
    assert torch.equal(buf, want_masked)
    dst = torch.full_like(scores, 7.0)
    native.green_bias_native(scores, ids, key, h, seeding, 0.25, 2.0, row_mask=mask, out=dst)
    assert torch.equal(dst, want_masked)  # skipped rows copied


def test_native_kernel_declines_what_it_cannot_take(monkeypatch):
    """bfloat16 logits, a column-strided tensor and selfhash beyond 64 take the torch path; the
    dispatcher's result still equals the reference."""
    from wmkit.kernels import native

    monkeypatch.setenv("WMKIT_COMPILE", "0")  # eager: compiling 65 selfhash states would take minutes

    scores, ids, key = (t.cpu() if isinstance(t, torch.Tensor) else t for t in _inputs(9, b=2, v=700, length=70))
    assert not native.accepts(scores.bfloat16(), None, 1, "lefthash")
    assert not native.accepts(scores.t().contiguous().t(), None, 1, "lefthash")
    assert not native.accepts(scores, None, 65, "selfhash")
    assert not native.accepts(scores, torch.empty(2, 699), 1, "lefthash")
    with pytest.raises(ValueError, match="native kernel"):
        native.green_bias_native(scores, ids, key, 65, "selfhash", 0.25, 2.0)
    assert torch.equal(kernels.green_bias(scores, ids, key, 65, "selfhash", 0.25, 2.0),
                       kernels.green_bias_reference(scores, ids, key, 65, "selfhash", 0.25, 2.0))


def test_without_a_compiler_generation_falls_back_to_torch(tmp_path):
    """No C compiler: ``available()`` is False and ``green_bias`` still gives the reference's bits."""
    import subprocess
    import sys

    code = (
        "import torch; from wmkit import kernels; from wmkit.kernels import native\n"
        "s = torch.randn(3, 1000); ids = torch.randint(0, 1000, (3, 4)); k = (1, 2, 3, 4)\n"
        "print(native.available(), native._FAILED is not None,"
        " torch.equal(kernels.green_bias(s, ids, k, 1, 'lefthash', 0.25, 2.0),"
        " kernels.green_bias_reference(s, ids, k, 1, 'lefthash', 0.25, 2.0)))\n"
    )
    env = {**__import__("os").environ, "CC": str(tmp_path / "no-such-cc"), "WMKIT_CACHE": str(tmp_path / "cache"),
           "WMKIT_COMPILE": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["False", "True", "True"], out.stderr[-2000:]


def test_native_kernel_works_in_a_forked_child():
    """The row threads' pool does not survive fork; a child that generates makes its own (without
    the at-fork reset it waits forever on threads that exist only in the parent)."""
    import subprocess
    import sys

    code = (
        "import os, torch; torch.set_num_threads(2)\n"
        "from wmkit import kernels\n"
        "s = torch.randn(8, 1000); ids = torch.randint(0, 1000, (8, 4)); k = (1, 2, 3, 4)\n"
        "a = kernels.green_bias(s, ids, k, 1, 'lefthash', 0.25, 2.0)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0 if torch.equal(a, kernels.green_bias(s, ids, k, 1, 'lefthash', 0.25, 2.0)) else 3)\n"
        "print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "0", out.stderr[-2000:]
