"""The fingerprint benchmark's model zoo: derivatives of the default model and unrelated models, built here.

Every trained member is trained for real (causal-LM loss, AdamW, batch 4 x 64 tokens, constant
learning rate) on text shipped with the repository or installed on the machine, and cached under
``<wmkit cache>/benchmarks/fpzoo/<name>`` so the benchmark and the slow tests build it once:

- ``ft-news-<lr>-<steps>``: full fine-tune (every weight; SmolLM2 ties its output layer to the
  embeddings, so the output layer moves too) on AG News (``benchmarks/data/agnews_10k.tsv.gz``);
- ``ft-sst2-<lr>-<steps>``: the same on SST-2 sentences (the second fine-tune a merge uses);
- ``cpt-code-<steps>``: continued pre-training on the CPython standard library's source (lr 5e-5);
- ``lora-r16-<steps>``: LoRA rank 16 on every attention and MLP projection (lr 1e-3), merged;
- ``scratch<seed>-<steps>``: the same architecture and tokenizer trained from a random
  initialization on AG News (lr 1e-3) -- an unrelated model with as many steps as the derivatives;
- ``prune50-ft-<steps>`` / ``heads25-ft-<steps>``: 50% magnitude pruning of every projection / the
  quarter of each layer's attention heads with the smallest output norm removed, then the AG News
  fine-tune (lr 1e-4) with the pruned weights held at zero;
- ``vocab1000-ft-<steps>``: 1,000 frequent AG News words added to the tokenizer (saved with the
  checkpoint), the embeddings resized (mean-initialised), then the AG News fine-tune;
- ``distill8-<steps>``: a student -- the architecture cut to 8 layers, random init -- trained (lr 1e-3)
  only on the victim's own samples (160 x 128 tokens, ``victim-samples.txt``): sequence-level
  distillation through a text-only API.

Edits that need no training (quantization round trips through GGUF Q4_0/Q8_0/Q4_K and int4 groups,
pruning, output-layer rescaling, linear and TIES merges) are functions here too; the benchmarks
build them on the fly.

One run writes checkpoints at several step counts (``--checkpoints``), so ``ft-news-1e-4-200``
and ``ft-news-1e-4-1000`` are the same run read at two points; a run resumes from its latest
checkpoint (weights and optimizer state) when asked for more steps.

    python benchmarks/fpzoo.py ft-news-1e-4:200,1000 scratch1:200,1000 ...   # build (skips what exists)
"""

from __future__ import annotations

import argparse
import copy
import gzip
import os
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

from wmkit.files import write_file  # noqa: E402
from wmkit.fingerprint import random_init_like  # noqa: E402
from wmkit.fingerprint.invasive import trainable_copy  # noqa: E402
from wmkit.models import cache_dir, save_atomically  # noqa: E402

DATA = Path(__file__).parent / "data"
ATTN_MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MLP = ("gate_proj", "up_proj", "down_proj")
BATCH, LENGTH = 4, 64


def log(msg: str) -> None:
    """A time-stamped progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def zoo_dir() -> Path:
    """Where trained zoo members are cached."""
    d = cache_dir() / "benchmarks" / "fpzoo"
    d.mkdir(parents=True, exist_ok=True)
    return d


def corpus(name: str) -> str:
    """Training text: ``news`` (AG News 10k), ``sst2`` (SST-2 train sentences) or ``code`` (CPython stdlib)."""
    if name == "news":
        with gzip.open(DATA / "agnews_10k.tsv.gz", "rt", encoding="utf-8") as f:
            return "\n".join(ln.split("\t")[0] for ln in f.read().splitlines())
    if name == "sst2":
        with gzip.open(DATA / "sst2_train.tsv.gz", "rt", encoding="utf-8") as f:
            return "\n".join(ln.split("\t")[0] for ln in f.read().splitlines()[1:])
    if name == "code":
        files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
        return "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)
    raise ValueError(f"unknown corpus {name!r}")


def batches(tok: Any, text: str, steps: int, seed: int, skip: int = 0) -> Iterator[torch.Tensor]:
    """``steps`` batches of ``BATCH`` x ``LENGTH`` random token windows of ``text`` (after ``skip`` batches)."""
    ids = torch.tensor(tok(text).input_ids)
    g = torch.Generator().manual_seed(seed)
    for i in range(skip + steps):
        starts = torch.randint(0, len(ids) - LENGTH, (BATCH,), generator=g)
        if i >= skip:
            yield torch.stack([ids[s : s + LENGTH] for s in starts])


def fresh_copy(victim: Any) -> Any:
    """A trainable transformers module holding the victim's weights (a GGUF-loaded model will not save)."""
    return trainable_copy(victim)


RUNS = {
    # run name: (corpus, lr, init) with init "victim", "lora-r16" or "random:<seed>"
    "ft-news-1e-4": ("news", 1e-4, "victim"),
    "ft-news-2e-5": ("news", 2e-5, "victim"),
    "ft-sst2-2e-5": ("sst2", 2e-5, "victim"),
    "ft-sst2-1e-4": ("sst2", 1e-4, "victim"),
    "cpt-code": ("code", 5e-5, "victim"),
    "lora-r16": ("sst2", 1e-3, "lora-r16"),
    "scratch1": ("news", 1e-3, "random:1"),
    "scratch2": ("news", 1e-3, "random:2"),
    # pruned, then fine-tuned with the pruned weights held at zero
    "prune50-ft": ("news", 1e-4, "prune:0.5"),
    "heads25-ft": ("news", 1e-4, "heads:0.25"),
    # 1,000 frequent AG News words added to the tokenizer, embeddings resized, then fine-tuned
    "vocab1000-ft": ("news", 1e-4, "vocab:1000"),
    # a student (the architecture with 8 of its 30 layers, random init) trained only on the victim's samples
    "distill8": ("victim-samples", 1e-3, "student:8"),
}


def _latest(run: str, below: int) -> int:
    """The largest checkpoint step of ``run`` up to ``below`` that has optimizer state (0: none)."""
    done = [int(p.name[len(run) + 1:]) for p in zoo_dir().glob(f"{run}-*")
            if p.name[len(run) + 1:].isdigit() and (p / "optimizer.pt").is_file()]
    return max([s for s in done if s <= below], default=0)


def prune_matrices(victim: Any, fraction: float, names: Any = tuple(ATTN_MLP)) -> Any:
    """Unstructured magnitude pruning: the ``fraction`` smallest-magnitude weights of every matrix
    named in ``names`` (default: every attention and MLP projection; the embeddings and output layer
    are kept) set to zero, matrix by matrix."""
    m = fresh_copy(victim)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if any(k in name for k in names) and p.ndim == 2:
                cut = p.abs().flatten().kthvalue(int(fraction * p.numel())).values
                p.masked_fill_(p.abs() <= cut, 0.0)
    return m.eval()


def prune_heads(victim: Any, fraction: float = 0.25) -> Any:
    """Structured pruning: in every layer the ``fraction`` of attention heads whose output projection
    has the smallest norm are removed (their query rows and output-projection columns zeroed)."""
    m = fresh_copy(victim)
    cfg = m.config
    d = cfg.hidden_size // cfg.num_attention_heads
    with torch.no_grad():
        for layer in m.model.layers:
            o, q = layer.self_attn.o_proj.weight, layer.self_attn.q_proj.weight
            norms = o.reshape(o.shape[0], -1, d).norm(dim=(0, 2))
            for h in norms.argsort()[: int(fraction * cfg.num_attention_heads)].tolist():
                o[:, h * d : (h + 1) * d] = 0.0
                q[h * d : (h + 1) * d] = 0.0
    return m.eval()


def extended_tokenizer(tok: Any, n: int) -> Any:
    """A copy of ``tok`` with the ``n`` most frequent AG News words it splits into 3+ tokens added (as a
    domain adaptation adds vocabulary)."""
    import re
    from collections import Counter

    words = Counter(re.findall(r"[A-Za-z]{6,}", corpus("news")))
    new = [w for w, _ in words.most_common(20 * n) if len(tok(" " + w, add_special_tokens=False).input_ids) >= 3][:n]
    ext = copy.deepcopy(tok)
    ext.add_tokens(new)
    return ext


def vocab_extended(base: Any, tok: Any, n: int = 1000) -> tuple[Any, Any]:
    """A copy of ``base`` with :func:`extended_tokenizer`'s ``n`` words and mean-initialised new rows
    (not trained), and that tokenizer."""
    ext = extended_tokenizer(tok, n)
    m = fresh_copy(base)
    m.resize_token_embeddings(len(ext), mean_resizing=True)
    return m, ext


def student_like(victim: Any, layers: int, seed: int = 0) -> Any:
    """The victim's architecture and vocabulary cut to ``layers`` layers, freshly initialised."""
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(victim.config)
    cfg.num_hidden_layers = layers
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg)


def victim_samples(victim: Any, tok: Any, n: int = 160, tokens: int = 128) -> str:
    """``n`` of the victim's own samples (temperature 1, ``tokens`` new tokens each, continuing the first
    six words of AG News headlines), cached as ``victim-samples.txt``: the distilled student's only
    training text (the prompts are not in it)."""
    path = zoo_dir() / "victim-samples.txt"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    heads = [" ".join(ln.split()[:6]) for ln in corpus("news").splitlines()[:n]]
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    out, t0 = [], time.time()
    torch.manual_seed(0)
    with torch.inference_mode():
        for i in range(0, n, 32):
            enc = tok(heads[i : i + 32], return_tensors="pt", padding=True)
            gen = victim.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=tokens,
                                  pad_token_id=tok.pad_token_id)
            out += tok.batch_decode(gen[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
            log(f"victim samples: {len(out)}/{n}, {time.time() - t0:.0f} s")
    text = "\n".join(out)
    write_file(path, text)
    return text


def start(init: str, victim: Any, tok: Any) -> tuple[Any, Any, dict[str, torch.Tensor]]:
    """A run's starting model, the tokenizer its text is read with, and the masks (parameter name ->
    which weights may be non-zero) that hold pruned weights at zero while it trains."""
    masks: dict[str, torch.Tensor] = {}
    kind, _, arg = init.partition(":")
    if kind == "lora-r16":
        from peft import LoraConfig, get_peft_model

        return get_peft_model(fresh_copy(victim), LoraConfig(r=16, lora_alpha=32, target_modules=ATTN_MLP)), tok, masks
    if kind == "random":
        model = random_init_like(victim, int(arg))
    elif kind == "student":
        model = student_like(victim, int(arg))
    elif kind in ("prune", "heads"):
        model = prune_matrices(victim, float(arg)) if kind == "prune" else prune_heads(victim, float(arg))
        names = ("q_proj", "o_proj") if kind == "heads" else ATTN_MLP
        masks = {n: p != 0 for n, p in model.named_parameters() if p.ndim == 2 and any(k in n for k in names)}
    elif kind == "vocab":
        model, tok = vocab_extended(victim, tok, int(arg))
    else:
        model = fresh_copy(victim)
    for p in model.parameters():
        p.requires_grad_(True)
    return model, tok, masks


def train_run(run: str, checkpoints: list[int], victim: Any, tok: Any) -> None:
    """Train ``run`` and save a checkpoint (``<run>-<steps>``) at each of ``checkpoints`` (missing ones only)."""
    text_name, lr, init = RUNS[run]
    todo = [c for c in sorted(checkpoints) if not (zoo_dir() / f"{run}-{c}").is_dir()]
    if not todo:
        return
    start_step = _latest(run, todo[0])
    model, run_tok, masks = start(init, victim, tok)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    if start_step:
        state = torch.load(zoo_dir() / f"{run}-{start_step}" / "optimizer.pt", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        log(f"{run}: resumed at step {start_step}")
    model.train()
    text = victim_samples(victim, tok) if text_name == "victim-samples" else corpus(text_name)
    params = dict(model.named_parameters())
    t0, step = time.time(), start_step
    for x in batches(run_tok, text, todo[-1] - start_step, seed=sum(map(ord, run)), skip=start_step):
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for n, keep in masks.items():
                params[n].mul_(keep)
        step += 1
        if step % 100 == 0:
            log(f"{run}: step {step}, loss {loss.item():.3f}, {(time.time() - t0) / (step - start_step):.2f} s/step")
        if step in todo:
            save_checkpoint(run, step, model, opt, run_tok if run_tok is not tok else None)
    model.eval()


class _ResumeState:
    """A run's weights and optimizer state, saved beside a checkpoint's weights as ``optimizer.pt``."""

    def __init__(self, model: Any, opt: Any) -> None:
        self.state = {"model": model.state_dict(), "optimizer": opt.state_dict()}

    def save_pretrained(self, folder: str | os.PathLike[str]) -> None:
        write_file(Path(folder) / "optimizer.pt", lambda f: torch.save(self.state, f))


def save_checkpoint(run: str, step: int, model: Any, opt: Any, tok: Any = None) -> None:
    """``<run>-<step>``: the (merged) weights as a transformers folder, plus the state to resume from
    (and the run's own tokenizer when it has one), written together and atomically
    (:func:`wmkit.models.save_atomically`)."""
    folder = zoo_dir() / f"{run}-{step}"
    out = copy.deepcopy(model).merge_and_unload() if hasattr(model, "merge_and_unload") else model
    save_atomically(folder, out, _ResumeState(model, opt), *([tok] if tok is not None else []))
    log(f"{run}: saved {folder.name}")


def load_member(name: str) -> Any:
    """A cached trained member (float32, eval mode); a clear error when it has not been built."""
    from transformers import AutoModelForCausalLM

    folder = zoo_dir() / name
    if not folder.is_dir():
        raise FileNotFoundError(f"{name} is not built: python benchmarks/fpzoo.py {name.rsplit('-', 1)[0]}:{name.rsplit('-', 1)[1]}")
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def _each_matrix(victim: Any, fn: Any, width: int = 32) -> Any:
    """A copy with ``fn`` (float32 ``[rows, cols]`` array -> array) applied to every 2-D weight whose
    row length is a multiple of ``width`` (all of SmolLM2's, the tied embeddings/output layer included)."""
    import numpy as np

    m = fresh_copy(victim)
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 2 and p.shape[1] % width == 0:
                p.copy_(torch.from_numpy(fn(p.detach().numpy().astype(np.float32))))
    return m.eval()


def gguf_round_trip(victim: Any, qtype: str = "Q4_0") -> Any:
    """Every weight matrix through GGUF's ``qtype`` (``Q4_0``: blocks of 32 weights with one float16
    scale; ``Q8_0``: the same at 8 bits) and back, with the ``gguf`` package's own quantizer: what a
    llama.cpp deployment of the model computes with."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    t = GGMLQuantizationType[qtype]
    return _each_matrix(victim, lambda w: dequantize(quantize(w, t), t))


def q4_0_round_trip(victim: Any) -> Any:
    """:func:`gguf_round_trip` at Q4_0."""
    return gguf_round_trip(victim, "Q4_0")


def int4_group_round_trip(victim: Any, group: int = 64) -> Any:
    """Weight-only int4 as GPTQ/AWQ checkpoints store it, without their calibration (round to nearest):
    each group of ``group`` weights of a row gets its own scale and zero point (asymmetric, 0..15).
    Groups of 64: SmolLM2's 576-wide rows are nine of them (128, the other common size, does not divide 576)."""
    import numpy as np

    def rtn(w: Any) -> Any:
        g = w.reshape(w.shape[0], -1, group)
        lo, hi = g.min(axis=2, keepdims=True), g.max(axis=2, keepdims=True)
        scale = np.maximum(hi - lo, 1e-12) / 15
        q = np.clip(np.round((g - lo) / scale), 0, 15)
        return (q * scale + lo).reshape(w.shape).astype(np.float32)

    return _each_matrix(victim, rtn, group)


def q4_k_pack(w: Any) -> Any:
    """GGUF Q4_K blocks (``block_q4_K``, 144 bytes per 256 weights) of ``w`` ``[rows, cols]``, cols a
    multiple of 256: per 32-weight sub-block a min-max 4-bit grid, its scale and min coded in 6 bits
    against the block's float16 ``d`` and ``dmin``. A plain min-max quantizer (llama.cpp's
    ``make_qkx2_quants`` also searches the grid); the layout is the format's, so ``gguf``'s own
    dequantizer decodes it -- that is the round trip's check."""
    import numpy as np

    x = w.reshape(-1, 8, 32).astype(np.float32)  # super-blocks of 8 sub-blocks
    lo = np.minimum(x.min(axis=2), 0.0)
    scale = (x.max(axis=2) - lo) / 15
    d = (scale.max(axis=1) / 63).astype(np.float16)
    dmin = ((-lo).max(axis=1) / 63).astype(np.float16)
    df, dmf = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    sc = np.clip(np.round(np.divide(scale, df, out=np.zeros_like(scale), where=df > 0)), 0, 63).astype(np.uint8)
    mn = np.clip(np.round(np.divide(-lo, dmf, out=np.zeros_like(lo), where=dmf > 0)), 0, 63).astype(np.uint8)
    step, off = (df * sc)[:, :, None], (dmf * mn)[:, :, None]
    q = np.clip(np.round(np.divide(x + off, step, out=np.zeros_like(x), where=step > 0)), 0, 15).astype(np.uint8)
    packed = np.zeros((len(x), 12), np.uint8)  # get_scale_min_k4's layout of 8 six-bit scales and mins
    packed[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = (mn[:, 0:4] & 63) | ((mn[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:8] & 15) | ((mn[:, 4:8] & 15) << 4)
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(len(x), 128)  # sub-blocks 2j (low nibble), 2j+1 (high)
    blocks = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), packed, qs], axis=1)
    return blocks.reshape(w.shape[0], -1)


def q4_k_round_trip(victim: Any) -> Any:
    """Every weight matrix as llama.cpp's Q4_K quantizes it: through :func:`q4_k_pack` and ``gguf``'s
    Q4_K dequantizer where its rows are a multiple of 256 long, else through Q5_0 (llama.cpp's fallback
    for such tensors; SmolLM2's 576-wide rows take it, the 1,536-wide down projections are Q4_K)."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize, quantize

    def k_quant(w: Any) -> Any:
        if w.shape[1] % 256 == 0:
            return dequantize(q4_k_pack(w), T.Q4_K)
        return dequantize(quantize(w, T.Q5_0), T.Q5_0)

    return _each_matrix(victim, k_quant)


def prune_mlp(victim: Any, fraction: float = 0.3) -> Any:
    """Magnitude pruning of the MLP matrices only (:func:`prune_matrices`)."""
    return prune_matrices(victim, fraction, MLP)


def _untied(victim: Any) -> Any:
    """A copy whose output layer is its own parameter (no longer the input embeddings)."""
    m = fresh_copy(victim)
    m.config.tie_word_embeddings = False
    m.lm_head.weight = torch.nn.Parameter(m.lm_head.weight.detach().clone())
    return m


def rescale_head(victim: Any, temperature: float = 0.7) -> Any:
    """The final norm's gain folded into the (untied) output layer, scaled by ``1 / temperature``:
    ``W' = W diag(g) / T``, ``g := 1``. Same vocabulary, same ranking of tokens, sharper distribution."""
    m = _untied(victim)
    with torch.no_grad():
        g = m.model.norm.weight.detach().clone()
        m.lm_head.weight.mul_(g[None, :] / temperature)
        m.model.norm.weight.fill_(1.0)
    return m.eval()


def rowscale_head(victim: Any, spread: float = 1.25, seed: int = 0) -> Any:
    """An adversarial edit: each token's output row scaled by its own factor, log-uniform in
    ``[1/spread, spread]`` (``W' = diag(d) W``): the vocabulary is kept but the output space moves."""
    m = _untied(victim)
    g = torch.Generator().manual_seed(seed)
    d = torch.exp((torch.rand(m.lm_head.weight.shape[0], generator=g) * 2 - 1) * torch.log(torch.tensor(spread)))
    with torch.no_grad():
        m.lm_head.weight.mul_(d[:, None])
    return m.eval()


def linear_merge(a: Any, b: Any, weight: float = 0.5) -> Any:
    """``weight * a + (1 - weight) * b``, parameter by parameter (a model-soup / task-arithmetic merge)."""
    m = copy.deepcopy(a)
    pb = dict(b.named_parameters())
    with torch.no_grad():
        for k, v in m.named_parameters():  # tied weights are listed once
            v.mul_(weight).add_(pb[k], alpha=1 - weight)
    return m.eval()


def ties_merge(base: Any, a: Any, b: Any, weight: float = 0.5, density: float = 0.5) -> Any:
    """TIES merging (Yadav et al., arXiv 2306.01708) of two fine-tunes of ``base``, weighted as mergekit
    weights them: task vectors ``t_a = a - base`` and ``t_b = b - base``, each trimmed to its top
    ``density`` of magnitudes (tensor by tensor); per weight the sign of ``weight * t_a + (1 - weight) * t_b``
    is elected, and the entries that agree with it are averaged with their weights; ``base + merged``."""
    m = copy.deepcopy(base)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    with torch.no_grad():
        for k, v in m.named_parameters():
            ts = []
            for t in (pa[k] - v, pb[k] - v):
                cut = t.abs().flatten().kthvalue(max(1, int((1 - density) * t.numel()))).values
                ts.append(torch.where(t.abs() > cut, t, torch.zeros_like(t)))
            ws = (weight, 1 - weight)
            sign = torch.sign(ws[0] * ts[0] + ws[1] * ts[1])
            num, den = torch.zeros_like(v), torch.zeros_like(v)
            for w, t in zip(ws, ts):
                agree = (torch.sign(t) == sign) & (t != 0)
                num += w * t * agree
                den += w * agree
            v.add_(num / den.clamp_min(1e-12))
    return m.eval()


def main() -> None:
    """Build the runs named on the command line (``run:step,step,...``), in order."""
    from wmkit.models import load_lm

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help=f"run:steps,... with run one of {', '.join(RUNS)}")
    args = ap.parse_args()
    victim, tok = load_lm()
    for spec in args.runs:
        run, _, steps = spec.partition(":")
        if run not in RUNS or not steps:
            sys.exit(f"fpzoo: {spec!r}: expected RUN:STEPS[,STEPS] with RUN one of {', '.join(RUNS)}")
        train_run(run, [int(s) for s in steps.split(",")], victim, tok)


if __name__ == "__main__":
    main()
