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
  initialization on AG News (lr 1e-3) -- an unrelated model with as many steps as the derivatives.

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
}


def _latest(run: str, below: int) -> int:
    """The largest checkpoint step of ``run`` up to ``below`` that has optimizer state (0: none)."""
    done = [int(p.name[len(run) + 1:]) for p in zoo_dir().glob(f"{run}-*")
            if p.name[len(run) + 1:].isdigit() and (p / "optimizer.pt").is_file()]
    return max([s for s in done if s <= below], default=0)


def train_run(run: str, checkpoints: list[int], victim: Any, tok: Any) -> None:
    """Train ``run`` and save a checkpoint (``<run>-<steps>``) at each of ``checkpoints`` (missing ones only)."""
    text_name, lr, init = RUNS[run]
    todo = [c for c in sorted(checkpoints) if not (zoo_dir() / f"{run}-{c}").is_dir()]
    if not todo:
        return
    start = _latest(run, todo[0])
    if init == "lora-r16":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(fresh_copy(victim), LoraConfig(r=16, lora_alpha=32, target_modules=ATTN_MLP))
    elif init.startswith("random:"):
        model = random_init_like(victim, int(init.split(":")[1]))
    else:
        model = fresh_copy(victim)
    if init != "lora-r16":
        for p in model.parameters():
            p.requires_grad_(True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    if start:
        folder = zoo_dir() / f"{run}-{start}"
        state = torch.load(folder / "optimizer.pt", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        log(f"{run}: resumed at step {start}")
    model.train()
    text = corpus(text_name)
    t0, step = time.time(), start
    for x in batches(tok, text, todo[-1] - start, seed=sum(map(ord, run)), skip=start):
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            log(f"{run}: step {step}, loss {loss.item():.3f}, {(time.time() - t0) / (step - start):.2f} s/step")
        if step in todo:
            save_checkpoint(run, step, model, opt)
    model.eval()


class _ResumeState:
    """A run's weights and optimizer state, saved beside a checkpoint's weights as ``optimizer.pt``."""

    def __init__(self, model: Any, opt: Any) -> None:
        self.state = {"model": model.state_dict(), "optimizer": opt.state_dict()}

    def save_pretrained(self, folder: str | os.PathLike[str]) -> None:
        write_file(Path(folder) / "optimizer.pt", lambda f: torch.save(self.state, f))


def save_checkpoint(run: str, step: int, model: Any, opt: Any) -> None:
    """``<run>-<step>``: the (merged) weights as a transformers folder, plus the state to resume from,
    written together and atomically (:func:`wmkit.models.save_atomically`)."""
    folder = zoo_dir() / f"{run}-{step}"
    out = copy.deepcopy(model).merge_and_unload() if hasattr(model, "merge_and_unload") else model
    save_atomically(folder, out, _ResumeState(model, opt))
    log(f"{run}: saved {folder.name}")


def load_member(name: str) -> Any:
    """A cached trained member (float32, eval mode); a clear error when it has not been built."""
    from transformers import AutoModelForCausalLM

    folder = zoo_dir() / name
    if not folder.is_dir():
        raise FileNotFoundError(f"{name} is not built: python benchmarks/fpzoo.py {name.rsplit('-', 1)[0]}:{name.rsplit('-', 1)[1]}")
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def q4_0_round_trip(victim: Any) -> Any:
    """Every 2-D weight matrix through GGUF's Q4_0 (blocks of 32 weights, one float16 scale each) and back,
    with the ``gguf`` package's own quantizer: what a llama.cpp deployment of the model computes with."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    m = fresh_copy(victim)
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 2 and p.shape[1] % 32 == 0:
                w = p.detach().numpy().astype(np.float32)
                p.copy_(torch.from_numpy(dequantize(quantize(w, GGMLQuantizationType.Q4_0), GGMLQuantizationType.Q4_0)))
    return m.eval()


def prune_mlp(victim: Any, fraction: float = 0.3) -> Any:
    """Magnitude pruning: the ``fraction`` smallest-magnitude weights of every MLP matrix set to zero."""
    m = fresh_copy(victim)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if any(k in name for k in MLP) and p.ndim == 2:
                cut = p.abs().flatten().kthvalue(int(fraction * p.numel())).values
                p.masked_fill_(p.abs() <= cut, 0.0)
    return m.eval()


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
