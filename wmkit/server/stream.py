"""Server-sent events for a completions request with ``"stream": true`` (:class:`Stream`)."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import Future
from typing import Any, AsyncIterator, Callable

from fastapi.responses import JSONResponse

from ..engine import Job
from ..errors import RequestError
from .batching import timeout_error
from .http import error_response, internal_error
from .schema import chat_choice, usage

__all__ = ["Stream"]


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _json(response: JSONResponse) -> Any:
    """The body of an (error) response, as the payload of an SSE error event."""
    return json.loads(bytes(response.body))


class Stream:
    """Server-sent events for a request with ``"stream": true``, in OpenAI's chunk shapes.

    Each job's listener (called by the batch worker after every token) hands the completion's text so
    far to the event loop; a chunk is sent whenever the text grows by whole characters, holding back
    the last ``longest stop - 1`` characters (they may begin a stop string, which is never sent) --
    vLLM's rule. The job's last chunk carries the rest of the finished completion's text and its
    ``finish_reason`` (sent when the job ends, not when its batch does), so the chunks' texts concatenate to the text of the same request without
    ``stream`` (for tokenizers whose incremental decoding agrees with decoding the whole, as vLLM
    assumes: byte-level BPE and SentencePiece do). A chunk carries the log-probs of the tokens generated since the previous one. Then a
    usage chunk (``stream_options.include_usage``) and ``data: [DONE]``. An error after the first
    byte (the deadline) is an ``{"error": ...}`` event, then the stream ends. A client that goes
    away cancels its jobs: they stop at their next step.
    """

    def __init__(self, jobs: list[Job], req: dict[str, Any], chat: bool, head: dict[str, Any],
                 result: Callable[[Job], dict[str, Any]]) -> None:
        self.jobs, self.req, self.chat, self.head, self.result = jobs, req, chat, head, result
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[tuple[int, str | None, int]] = asyncio.Queue()
        self.hold = max((len(x) for x in req["stop"]), default=1) - 1
        for i, job in enumerate(jobs):
            job.listener = lambda job, i=i: self._post(i, None if job.done else job.watch.text, len(job.out_ids))

    def _post(self, i: int, text: str | None, n_tokens: int = -1) -> None:
        """From the worker thread: job ``i`` has ``text`` after ``n_tokens`` tokens (``None``: its last
        token), both taken once the token is fully recorded (its log-probs too); ``n_tokens = -1``:
        its future has resolved."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (i, text, n_tokens))
        except RuntimeError:  # the event loop is gone (server shutting down): nobody to tell
            pass

    def watch(self, futures: list[Future]) -> None:
        """Post each job's end when its future resolves (result or error)."""
        for i, f in enumerate(futures):
            f.add_done_callback(lambda f, i=i: self._post(i, None))

    def _chunk(self, i: int, text: str, lo: int, hi: int, finish: str | None) -> dict[str, Any]:
        job, lp = self.jobs[i], None
        if self.req["logprobs"] is not None:
            lp = {"tokens": job.tokens[lo:hi], "token_logprobs": job.token_lps[lo:hi], "top_logprobs": job.tops[lo:hi]}
        if not self.chat:
            choice = {"index": i, "text": text, "logprobs": lp, "finish_reason": finish}
        else:
            choice = {**chat_choice({"text": text, "finish_reason": finish, "logprobs": lp}), "index": i}
            choice["delta"] = {"content": text} if text else {}
            del choice["message"]
        return {**self.head, "choices": [choice]}

    async def events_for(self, futures: list[Future], deadline: float, timeout_s: float) -> AsyncIterator[str]:
        """The event stream of ``futures`` (one per job), each chunk as an SSE ``data:`` line."""
        n = len(self.jobs)
        sent, sent_tokens, finished, results = [""] * n, [0] * n, [False] * n, [{}] * n
        try:
            if self.chat:
                for i in range(n):
                    yield _sse({**self.head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                          "logprobs": None, "finish_reason": None}]})
            while not all(finished):
                try:
                    i, text, hi = await asyncio.wait_for(self.events.get(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    yield _sse(_json(error_response(timeout_error(futures, timeout_s))))
                    return
                if finished[i]:
                    continue
                if text is not None:  # still generating: whole characters, minus what may begin a stop string
                    delta = text[len(sent[i]) : max(len(sent[i]), len(text) - self.hold)]
                    if delta:
                        yield _sse(self._chunk(i, delta, sent_tokens[i], hi, None))
                        sent[i], sent_tokens[i] = sent[i] + delta, hi
                    continue
                try:  # its last token (it has ended: nothing moves; its batch may still run), or its future
                    res = self.result(self.jobs[i]) if hi >= 0 else futures[i].result()
                except RequestError as e:
                    yield _sse(_json(error_response(e)))
                    return
                except Exception as e:  # noqa: BLE001 - a fault of the batch: an error event, as internal_error
                    yield _sse(_json(internal_error(e)))
                    return
                hi, final = len(self.jobs[i].out_ids), res["choice"]["text"]
                rest = final[len(sent[i]) :] if final.startswith(sent[i]) else ""
                yield _sse(self._chunk(i, rest, sent_tokens[i], hi, res["choice"]["finish_reason"]))
                finished[i], results[i] = True, res
            if self.req["include_usage"]:
                yield _sse({**self.head, "choices": [], "usage": usage(results, self.req["n"])})
            yield "data: [DONE]\n\n"
        finally:  # also when the client went away mid-stream
            for job, f in zip(self.jobs, futures):
                if not f.done():
                    f.cancel()
                    job.cancelled = True
