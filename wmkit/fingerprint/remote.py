"""A :class:`~wmkit.fingerprint.access.BiasedAPI` over an OpenAI-compatible URL.

Each call asks for one token (``max_tokens=1``, ``temperature=0``) with a ``logit_bias``, and reads
the top-``k`` log-probs (or, at the top-1 level, only the chosen token). Tokens are requested as ids
(``return_tokens_as_token_ids``, as vLLM and ``wm serve`` support), so two ids that decode to the
same string cannot be confused.

``/v1/completions`` (default) takes the query as token ids. A chat model (``chat=True``) is asked at
``/v1/chat/completions`` with the query as a user message: the random token ids are rendered as
words of a fixed list (:func:`render`), the server wraps them in its chat template and whatever
system prompt it adds. The test does not care which prompts it asks, only that each answer is an
output vector of the suspect.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

from ..errors import InputError


@lru_cache(maxsize=1)
def _words() -> list[str]:
    from importlib.resources import files

    text = (files("wmkit") / "data" / "prompts.txt").read_text(encoding="utf-8")
    return sorted({w for w in text.split() if w.isalpha()})


def render(prompt: Sequence[int]) -> str:
    """A user message for a token-id query: word ``t mod n`` of a fixed list of ``n`` words per id."""
    words = _words()
    return " ".join(words[int(t) % len(words)] for t in prompt)


def _endpoint(url: str, chat: bool, timeout: float, client: Any) -> tuple[str, Any]:
    """The completions (or chat) endpoint of the base ``url`` and the client to post with."""
    import httpx

    base = url.rstrip("/")
    base = base if base.endswith("/v1") else base + "/v1"
    return base + ("/chat/completions" if chat else "/completions"), client if client is not None else httpx.Client(timeout=timeout)


class RemoteAPI:
    """Biased next-token queries to ``url`` (e.g. ``wm serve``); ``calls`` counts HTTP requests.

    Args:
        url: base URL (``http://host:port`` or ``.../v1``).
        model: the ``model`` field sent.
        timeout: seconds per request.
        chat: ask ``/v1/chat/completions`` with the query as a user message.
        client: the ``httpx.Client`` to send with (default: a new one; tests pass a ``TestClient``).
    """

    def __init__(self, url: str, model: str = "wmkit", timeout: float = 60.0, chat: bool = False,
                 client: Any = None) -> None:
        self.endpoint, self.client = _endpoint(url, chat, timeout, client)
        self.model, self.calls, self.chat = model, 0, chat
        self.vocab_size = self._vocab_size()

    def _body(self, prompt: Sequence[int], logit_bias: dict[int, float], k: int) -> dict[str, Any]:
        """One biased next-token request for ``prompt`` asking for ``k`` top log-probs."""
        body: dict[str, Any] = {"max_tokens": 1, "temperature": 0, "logit_bias": {str(t): b for t, b in logit_bias.items()}}
        if self.chat:
            return {**body, "messages": [{"role": "user", "content": render(prompt)}], "logprobs": True, "top_logprobs": k}
        return {**body, "prompt": list(prompt), "logprobs": k}

    def _post(self, body: dict[str, Any]) -> tuple[int, dict[int, float]]:
        """Send ``body``; the chosen token id and the top log-probs ``{id: log-prob}``."""
        import httpx

        try:
            r = self.client.post(self.endpoint, json={"model": self.model, "return_tokens_as_token_ids": True, **body})
        except httpx.HTTPError as e:
            raise InputError(f"{self.endpoint}: request failed ({type(e).__name__}: {e})") from None
        self.calls += 1
        if r.status_code != 200:
            raise InputError(f"{self.endpoint}: HTTP {r.status_code}: {r.text[:200]}")
        try:
            lp = r.json()["choices"][0]["logprobs"]
            if self.chat:
                first = lp["content"][0]
                return self._tid(first["token"]), {self._tid(e["token"]): float(e["logprob"]) for e in first["top_logprobs"]}
            return self._tid(lp["tokens"][0]), {self._tid(t): float(v) for t, v in lp["top_logprobs"][0].items()}
        except (KeyError, IndexError, TypeError, ValueError):
            raise InputError(f"{self.endpoint}: the answer has no log-probs in OpenAI's shape") from None

    def _vocab_size(self) -> int:
        """Largest accepted token id + 1, by bisection on a ``logit_bias`` key (the server rejects ids past its vocabulary)."""
        import httpx

        def ok(t: int) -> bool:
            r = self.client.post(self.endpoint, json={"model": self.model, **self._body([0], {t: 0}, 0)})
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
        return self._post(self._body(prompt, logit_bias, k))[1]

    def argmax(self, prompt: Sequence[int], logit_bias: dict[int, float]) -> int:
        """The greedy next token under the bias (one request)."""
        return self._post(self._body(prompt, logit_bias, 0))[0]


class RemoteText:
    """:class:`~wmkit.fingerprint.invasive.TextAccess` over an OpenAI-compatible ``/v1/completions`` URL,
    through :class:`wmkit.remote.Completions` (exactly the headers given, never an ambient credential):
    one greedy (``temperature=0``) completion per prompt, read as text. ``calls`` counts requests,
    ``queries`` the prompts asked.

    Args:
        url: base URL.
        headers: the headers to send (:func:`wmkit.remote.suspect_headers`).
        client: the ``httpx.Client`` to send with (tests pass a ``TestClient``).
    """

    def __init__(self, url: str, headers: dict[str, str] | None = None, client: Any = None) -> None:
        from ..remote import Completions

        self.api = Completions(url, headers)
        if client is not None:
            self.api.client = client
        self.queries = 0

    @property
    def calls(self) -> int:
        """HTTP requests sent."""
        return self.api.calls

    def complete(self, prompts: Sequence[str], max_tokens: int) -> list[str]:
        """Greedy completions of ``prompts`` as text (in order)."""
        return self.sample(prompts, max_tokens, 0.0)

    def sample(self, prompts: Sequence[str], max_tokens: int, temperature: float, seed: int | None = None) -> list[str]:
        """One completion of each prompt at ``temperature`` (0: greedy), as text, in order; ``seed`` is
        sent when given (servers that honour it make the run repeatable)."""
        out = []
        for p in prompts:
            out.append(self.api.complete(p, max_tokens, temperature, seed=seed)[0])
            self.queries += 1
        return out
