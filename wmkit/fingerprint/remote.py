"""A :class:`~wmkit.fingerprint.access.BiasedAPI` over an OpenAI-compatible ``/v1/completions`` URL.

Each call asks for one token (``max_tokens=1``, ``temperature=0``) of a token-id prompt with a
``logit_bias``, and reads the top-``k`` log-probs (or, at the top-1 level, only the chosen token).
Tokens are requested as ids (``return_tokens_as_token_ids``, as vLLM and ``wm serve`` support), so
two ids that decode to the same string cannot be confused.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import InputError


class RemoteAPI:
    """Biased next-token queries to ``url`` (e.g. ``wm serve``); ``calls`` counts HTTP requests.

    Args:
        url: base URL (``http://host:port`` or ``.../v1``).
        model: the ``model`` field sent.
        timeout: seconds per request.
    """

    def __init__(self, url: str, model: str = "wmkit", timeout: float = 60.0) -> None:
        import httpx

        base = url.rstrip("/")
        self.endpoint = base + ("/completions" if base.endswith("/v1") else "/v1/completions")
        self.model, self.calls = model, 0
        self.client = httpx.Client(timeout=timeout)
        self.vocab_size = self._vocab_size()

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        try:
            r = self.client.post(self.endpoint, json={"model": self.model, "return_tokens_as_token_ids": True, **body})
        except httpx.HTTPError as e:
            raise InputError(f"{self.endpoint}: request failed ({type(e).__name__}: {e})") from None
        self.calls += 1
        if r.status_code != 200:
            raise InputError(f"{self.endpoint}: HTTP {r.status_code}: {r.text[:200]}")
        return r.json()["choices"][0]

    def _vocab_size(self) -> int:
        """Largest accepted token id + 1, by bisection on a ``logit_bias`` key (the server rejects ids past its vocabulary)."""
        import httpx

        def ok(t: int) -> bool:
            r = self.client.post(self.endpoint, json={"model": self.model, "prompt": [0], "max_tokens": 1,
                                                     "temperature": 0, "logit_bias": {str(t): 0}})
            self.calls += 1
            return r.status_code == 200

        try:
            if not ok(0):
                raise InputError(f"{self.endpoint}: the server rejects a basic biased completion request")
            lo, hi = 0, 1 << 22
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        except httpx.HTTPError as e:
            raise InputError(f"{self.endpoint}: request failed ({type(e).__name__}: {e})") from None
        return lo + 1

    @staticmethod
    def _tid(token: str) -> int:
        if not token.startswith("token_id:"):
            raise InputError("the server does not return token ids (return_tokens_as_token_ids); cannot map tokens")
        return int(token.split(":", 1)[1])

    def top_logprobs(self, prompt: Sequence[int], logit_bias: dict[int, float], k: int) -> dict[int, float]:
        """Top-``k`` log-probs of the next token under the bias (one request)."""
        c = self._post({"prompt": list(prompt), "max_tokens": 1, "temperature": 0, "logprobs": k,
                        "logit_bias": {str(t): b for t, b in logit_bias.items()}})
        return {self._tid(t): float(v) for t, v in c["logprobs"]["top_logprobs"][0].items()}

    def argmax(self, prompt: Sequence[int], logit_bias: dict[int, float]) -> int:
        """The greedy next token under the bias (one request)."""
        c = self._post({"prompt": list(prompt), "max_tokens": 1, "temperature": 0, "logprobs": 0,
                        "logit_bias": {str(t): b for t, b in logit_bias.items()}})
        return self._tid(c["logprobs"]["tokens"][0])
