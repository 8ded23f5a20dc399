"""Robustness targets on the real default model (slow): deletion survival and splice location."""

import gzip
import random
from pathlib import Path

import pytest

from wmkit.keys import SecretKey
from wmkit.watermark.text import KGW
from wmkit.watermark.text.attacks import WordDeletion
from wmkit.engine import generate_completions

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parent.parent
PROMPTS = [ln for ln in (ROOT / "tests" / "data" / "prompts.txt").read_text().splitlines() if ln.strip()]
SCHEME = KGW(SecretKey.from_hex("a11ce" * 8), gamma=0.25, delta=2.0, context_width=4, seeding="selfhash")


@pytest.fixture(scope="module")
def marked(default_lm):
    lm, tok = default_lm
    return generate_completions(lm, tok, PROMPTS[:12], SCHEME, max_new_tokens=250, min_new_tokens=250,
                                temperature=1.0, seed=7, batch_size=12)


def test_selfhash_h4_survives_30_percent_word_deletion(default_lm, marked):
    _, tok = default_lm
    det = SCHEME.detector(tok, fpr=0.01, min_tokens=1)
    first200 = [tok.decode(r["completion_ids"][:200]) for r in marked]
    attacked = WordDeletion(0.3)(first200, random.Random(0))
    hits = [d.decision for d in det.detect_many(attacked)]
    assert sum(hits) / len(hits) >= 0.8


def test_windowed_detection_finds_a_25_percent_splice(default_lm, marked):
    _, tok = default_lm
    with gzip.open(ROOT / "benchmarks" / "data" / "agnews_3000.tsv.gz", "rt", encoding="utf-8") as f:
        human_text = " ".join(line.split("\t")[0] for _, line in zip(range(300), f))
    human = tok(human_text, add_special_tokens=False)["input_ids"]
    det = SCHEME.detector(tok, fpr=0.01)
    rng = random.Random(1)
    for i, r in enumerate(marked[:4]):
        h = human[i * 1000 : i * 1000 + 750]
        cut = rng.randrange(751)
        doc = h[:cut] + r["completion_ids"] + h[cut:]
        assert len(doc) == 1000
        win = det.detect_windowed(doc)
        assert win.decision, win
        # located: at least 70% of the window is the passage, and it covers at least 70% of it
        start, end = win.details["token_start"], win.details["token_end"]
        overlap = max(0, min(end, cut + 250) - max(start, cut))
        assert overlap >= 0.7 * 250 and overlap >= 0.7 * (end - start), (start, end, cut)
        assert not det.detect_windowed(human[i * 1000 : i * 1000 + 1000]).decision
