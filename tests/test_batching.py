"""The servers' micro-batcher, and the embeddings server batching concurrent requests.

The batcher is driven with the model's lock held while requests arrive, so what is queued when the
model comes free is known exactly; the embeddings server is checked with a recording encoder.
"""

import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from wmkit.server.batching import MicroBatcher
from wmkit.server.embeddings import create_app
from wmkit.server.http import RequestError


def _recording(fn):
    calls = []

    def run(items):
        calls.append(list(items))
        return fn(items)

    return run, calls


def _wait_for(cond, timeout=30.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_queued_items_run_together_up_to_max_batch_units_never_split():
    run, calls = _recording(lambda items: [10 * x for x in items])
    lock = threading.Lock()
    b = MicroBatcher(run, lock, max_batch=5, gather_s=0.0, size=lambda x: x)
    with lock:  # the model is busy while these arrive
        futures = [f for x in (2, 2, 3, 9, 1) for f in b.submit([x])]
        assert b.waiting == 17
    assert [f.result(10) for f in futures] == [20, 20, 30, 90, 10]
    # 2+2 (3 more would pass 5: it starts the next batch), 3 (+9 would pass), 9 alone (bigger than a batch), 1
    assert calls == [[2, 2], [3], [9], [1]] and b.waiting == 0


def test_a_failed_item_fails_alone_and_a_failed_batch_does_not_stop_the_worker():
    def fn(items):
        if 0 in items:
            raise RuntimeError("the model broke")
        return [ValueError(f"bad {x}") if x < 0 else x for x in items]

    run, calls = _recording(fn)
    lock = threading.Lock()
    b = MicroBatcher(run, lock, max_batch=3, gather_s=0.0)
    with lock:
        ok, bad, ok2 = b.submit([1, -1, 2])
        broken_a, broken_b = b.submit([0, 5])
    assert ok.result(10) == 1 and ok2.result(10) == 2
    with pytest.raises(ValueError, match="bad -1"):
        bad.result(10)
    for f in (broken_a, broken_b):
        with pytest.raises(RuntimeError, match="the model broke"):
            f.result(10)
    (after,) = b.submit([7])
    assert after.result(10) == 7 and calls == [[1, -1, 2], [0, 5], [7]]


def test_overload_is_a_503_counted_in_units_and_a_cancelled_item_never_runs():
    run, calls = _recording(lambda items: list(items))
    lock = threading.Lock()
    b = MicroBatcher(run, lock, max_queue=4, gather_s=0.0, size=len, what="texts")
    with lock:
        (cancelled,) = b.submit(["ab"])
        (kept,) = b.submit(["cd"])
        with pytest.raises(RequestError) as e:
            b.submit(["e"])  # 2 + 2 texts wait: a fifth is refused
        assert e.value.status == 503 and "4 texts waiting" in e.value.message
        assert cancelled.cancel()  # its request gave up before the model was free
    assert kept.result(10) == "cd" and calls == [["cd"]]
    (again,) = b.submit(["xyz"])  # the queue has drained
    assert again.result(10) == "xyz"


def test_a_running_batch_takes_in_what_was_queued_meanwhile_and_resolves_each_item_when_it_is_done():
    """Continuous batching: ``run`` joins items queued while it runs (never past the room it names;
    an item too big waits for the next batch; a cancelled one never starts) and finishes each
    item at once; an item it joined but never finished fails, with ``run``'s error if it raised."""
    lock, log = threading.Lock(), []
    arrived, go_on = threading.Event(), threading.Event()

    def run(items):
        b.finish(items[0], "early")  # resolved now, while this batch still runs
        arrived.set()
        assert go_on.wait(30)
        joined = b.join(4) + b.join(4)
        log.append((list(items), joined))
        for x in joined:
            if x == "fail":
                raise RuntimeError("the model broke")
            if x != "fgt":  # joined, never finished
                b.finish(x, x.upper())
        return ["ignored"] * len(items)  # items[0] was finished already

    b = MicroBatcher(run, lock, max_batch=8, gather_s=0.0, size=len)
    first, second = b.submit(["a", "b"])
    assert arrived.wait(30) and first.result(10) == "early" and not second.done()
    cd, ef, fgt, big = b.submit(["cd", "ef", "fgt", "x" * 9])
    assert ef.cancel()  # its request gave up: it never starts
    go_on.set()
    assert second.result(10) == "ignored" and cd.result(10) == "CD"
    with pytest.raises(RuntimeError, match="the batch ended without a result for a joined item"):
        fgt.result(10)
    assert big.result(10) == "early"  # too big for the room of 4: it started the next batch
    _wait_for(lambda: len(log) == 2)
    # "ef" was taken (and dropped, cancelled) with "cd" in the first room of 4; "fgt" filled the second
    assert log == [(["a", "b"], ["cd", "fgt"]), (["x" * 9], [])] and b.waiting == 0
    arrived.clear()
    go_on.clear()
    (q,) = b.submit(["q"])
    assert arrived.wait(30)
    (boom,) = b.submit(["fail"])
    go_on.set()
    assert q.result(10) == "early"
    with pytest.raises(RuntimeError, match="the model broke"):
        boom.result(10)
    (after,) = b.submit(["z"])
    assert after.result(10) == "early"  # the worker goes on


def test_close_refuses_new_items_runs_what_is_queued_and_waits_for_the_worker():
    """Shutdown: after ``close`` no batch is running (the worker has ended), what was queued before
    it ran, and a new item is a 503; closing twice, or an idle batcher, is fine."""
    started, go_on = threading.Event(), threading.Event()

    def run(items):
        started.set()
        assert go_on.wait(30)
        return [x * 2 for x in items]

    b = MicroBatcher(run, threading.Lock(), max_batch=1, gather_s=0.0)
    running, queued = b.submit([1]), b.submit([2])
    assert started.wait(30)
    assert not b.close(timeout=0.2)  # the batch is still running: close waits for it (here, not long enough)
    with pytest.raises(RequestError, match="shutting down") as e:
        b.submit([3])
    assert e.value.status == 503
    go_on.set()
    assert b.close(timeout=30) and b.close(timeout=0)
    assert running[0].result(0) == 2 and queued[0].result(0) == 4
    idle = MicroBatcher(run, threading.Lock())
    assert idle.close(timeout=30)


def test_bad_batcher_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch >= 1"):
        MicroBatcher(lambda items: items, threading.Lock(), max_batch=0)


# --- the embeddings server ---------------------------------------------------------------------------


class RecordingEncoder:
    """Embeds a text as the unit vector along (len, vowels, 1); the first call waits for ``gate``."""

    dim = 3

    def __init__(self):
        self.calls, self.gate = [], threading.Event()

    def encode(self, texts):
        self.calls.append(list(texts))
        if len(self.calls) == 1:
            assert self.gate.wait(30)
        if any("boom" in t for t in texts):
            raise RuntimeError("boom")
        v = np.array([[len(t), sum(c in "aeiou" for c in t), 1] for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def token_counts(self, texts):
        return [len(t) for t in texts]  # a character "tokenizer": counts that words would not give


def test_embeddings_server_encodes_concurrent_requests_together_and_isolates_a_fault():
    enc = RecordingEncoder()
    app = create_app(enc, max_batch=64)
    bodies = [["first"], ["a b", "cde"], ["boom"], ["fghij k"]]
    with TestClient(app, raise_server_exceptions=False) as client:
        results = {}

        def post(i):
            results[i] = client.post("/v1/embeddings", json={"input": bodies[i]})

        threads = [threading.Thread(target=post, args=(0,))]
        threads[0].start()
        _wait_for(lambda: len(enc.calls) == 1)  # the first request holds the model
        for i in (1, 2, 3):
            threads.append(threading.Thread(target=post, args=(i,)))
            threads[-1].start()
        _wait_for(lambda: app.state.batcher.waiting == 4)  # all three queued behind it
        enc.gate.set()
        for t in threads:
            t.join(60)
    assert enc.calls[0] == ["first"]
    joint = enc.calls[1]
    assert sorted(joint) == sorted(["a b", "cde", "boom", "fghij k"])  # one call for the three requests
    assert sorted(map(tuple, enc.calls[2:])) == [("a b", "cde"), ("boom",), ("fghij k",)]  # the fault retried alone
    assert results[2].status_code == 500 and "RuntimeError" in results[2].json()["error"]["message"]
    alone = RecordingEncoder()
    alone.gate.set()
    for i in (0, 1, 3):
        r = results[i].json()
        assert results[i].status_code == 200, r
        want = alone.encode(bodies[i])  # the same texts encoded alone
        np.testing.assert_allclose([d["embedding"] for d in r["data"]], want, rtol=1e-6)
        assert r["usage"]["prompt_tokens"] == sum(len(t) for t in bodies[i])


# --- an encoder's forward passes -----------------------------------------------------------------------


class CharTokenizer:
    """One token per character, plus [CLS]=1 and [SEP]=2; pad 0."""

    pad_token_id = 0

    def __call__(self, texts, truncation=True, max_length=10):
        return {"input_ids": [([1] + [ord(c) for c in t] + [2])[:max_length] for t in texts]}


@pytest.mark.parametrize("max_rows, max_tokens", [(3, None), (64, 12), (2, 8), (64, 4)])
def test_padded_batches_cover_every_text_once_within_the_limits(max_rows, max_tokens):
    from wmkit.models import padded_batches

    texts = ["abcdefgh", "a", "abc", "ab", "abcdefghijklmnop", "abcd", "xy", "abcde"]
    want = CharTokenizer()(texts, max_length=10)["input_ids"]
    seen = []
    for idx, batch in padded_batches(CharTokenizer(), texts, 10, max_rows, max_tokens):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        assert ids.shape == mask.shape == (len(idx), max(len(want[i]) for i in idx))
        assert len(idx) <= max_rows and (max_tokens is None or len(idx) == 1 or ids.numel() <= max_tokens)
        for r, i in enumerate(idx):
            n = len(want[i])
            assert ids[r, :n].tolist() == want[i] and mask[r].tolist() == [1] * n + [0] * (ids.shape[1] - n)
            assert (ids[r, n:] == 0).all()
        seen += idx
    assert sorted(seen) == list(range(len(texts)))
    assert [len(want[i]) for i in seen] == sorted(len(w) for w in want)  # shortest first: little padding
