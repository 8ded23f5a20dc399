"""Test helpers: perfectly marked token sequences and texts, built with the pure-Python PRF."""

import contextlib
import os
import socket
import subprocess
import sys
import time

import numpy as np

import prf_reference as ref

V = 49152


def tiny_llama(vocab_size: int = V, layers: int = 1):
    """A random Llama of ``layers`` layers (seeded, eval mode): a stand-in LM for the servers' tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, eos_token_id=0)
    return LlamaForCausalLM(cfg).eval()


class IdTokenizer:
    """Token ids in, "<id>" strings out: enough for token-id prompts."""

    eos_token_id = 0

    def decode(self, ids, skip_special_tokens=False):
        return "".join(f"<{i}>" for i in ids)


class VocabOnly:
    """A tokenizer stand-in for token-id detection: only its size is used."""

    def __len__(self):
        return V


def green_ref(scheme, context, token):
    """Is ``token`` green after ``context`` under ``scheme``, by the independent reference?"""
    h, seeding = scheme.seeding_params()
    return ref.is_green(list(context[len(context) - h :]) if h else [], token, scheme.prf_key(), scheme.gamma, seeding)


def marked_ids(scheme, n, rng, pool=None):
    """``n`` token ids whose every token after the first ``h`` is green (from ``pool`` if given)."""
    h = scheme.seeding_params()[0]
    ids = list(pool[:h]) if pool is not None else list(range(1, h + 1))
    while len(ids) < n:
        t = int(pool[int(rng.integers(len(pool)))]) if pool is not None else int(rng.integers(V))
        if green_ref(scheme, ids, t):
            ids.append(t)
    return ids


def marked_text(scheme, tokenizer, n=120, seed=0):
    """A text of ``n`` green whole-word tokens; it re-tokenizes to the same ids."""
    words = sorted(
        i for t, i in tokenizer.get_vocab().items()
        if t.startswith("Ġ") and t[1:].isalpha() and t[1:].islower() and 3 <= len(t) <= 9
    )
    return tokenizer.decode(marked_ids(scheme, n, np.random.default_rng(seed), pool=words))


def agnews_jsonl(path, n):
    """The first ``n`` AG News articles (benchmarks/data) as a JSON-lines corpus ``{"text": ...}`` at ``path``."""
    import gzip
    import json
    from pathlib import Path

    with gzip.open(Path(__file__).parent.parent / "benchmarks" / "data" / "agnews_10k.tsv.gz", "rt", encoding="utf-8") as f:
        human = [line.split("\t")[0] for _, line in zip(range(n), f)]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in human))
    return path


@contextlib.contextmanager
def wm_server(*args):
    """``wm ARGS --port P`` (a server command) as a separate process on a free loopback port, offline;
    yields its URL once ``/health`` answers (at most 120 s), and stops it afterwards."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "wmkit.cli.main", *args, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                raise RuntimeError("server exited: " + proc.stdout.read().decode(errors="replace")[-2000:])
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise RuntimeError("server did not start in 120 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def wm_cli(*args, cwd=None, timeout=600):
    """``wm ARGS`` in a subprocess (offline), its output captured."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "wmkit.cli.main", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=cwd)
