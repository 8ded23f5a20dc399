"""The completions server's request schema: OpenAI's ``/v1/completions`` and ``/v1/chat/completions``
bodies validated into the engine's request (:func:`parse_completion`, :func:`parse_chat`; a bad
field is a :class:`~wmkit.errors.RequestError` naming it), and the response shapes built from the
engine's results (:func:`chat_choice`, :func:`usage`). The fields are listed in
:mod:`wmkit.server.completions`."""

from __future__ import annotations

from typing import Any

from ..errors import RequestError

__all__ = ["parse_completion", "parse_chat", "chat_choice", "usage"]

MAX_PROMPTS = 16
MAX_CHOICES = 64  # prompts x n per request
UNSUPPORTED = {"best_of": (None, 1), "suffix": (None, "")}  # field: its neutral values
MAX_LOGPROBS = 20
MAX_BIAS = 100.0


def _int_list(x: Any) -> bool:
    return isinstance(x, list) and len(x) > 0 and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def parse_completion(body: Any, vocab_size: int, max_new_tokens: int, max_chars: int = 20_000) -> dict[str, Any]:
    """The validated request: prompts (str or token-id lists), ``n`` completions of each, sampling, logprobs,
    bias; or :class:`RequestError`."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", None)
    if "prompt" not in body:
        raise RequestError("'prompt' is required", "prompt")
    p = body["prompt"]
    if isinstance(p, str) or _int_list(p):
        prompts = [p]
    elif isinstance(p, list) and p and all(isinstance(x, str) or _int_list(x) for x in p):
        prompts = list(p)
    else:
        raise RequestError("'prompt' must be a string, a list of token ids, or a non-empty list of those", "prompt")
    if len(prompts) > MAX_PROMPTS:
        raise RequestError(f"at most {MAX_PROMPTS} prompts per request, got {len(prompts)}", "prompt")
    for i, x in enumerate(prompts):
        if isinstance(x, str) and not x:
            raise RequestError(f"prompt[{i}] is an empty string", "prompt")
        if isinstance(x, str) and len(x) > max_chars:
            raise RequestError(f"prompt[{i}] has {len(x)} characters; at most {max_chars}", "prompt")
        if isinstance(x, list) and (min(x) < 0 or max(x) >= vocab_size):
            raise RequestError(f"prompt[{i}] has token ids outside 0..{vocab_size - 1}", "prompt")

    def number(name: str, default: float, lo: float, hi: float, integer: bool = False) -> Any:
        v = body.get(name, default)
        if v is None:
            v = default
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if not ok or isinstance(v, bool) or not lo <= v <= hi:
            kind = "an integer" if integer else "a number"
            raise RequestError(f"'{name}' must be {kind} in [{lo:g}, {hi:g}], got {v!r}", name)
        return v

    req = {
        "prompts": prompts,
        "echo": body.get("echo", False) is True,
        "max_tokens": number("max_tokens", 16, 0 if body.get("echo") is True else 1, max_new_tokens, integer=True),
        "temperature": float(number("temperature", 1.0, 0.0, 2.0)),
        "top_p": float(number("top_p", 1.0, 1e-6, 1.0)),
        "logprobs": body.get("logprobs"),
        "seed": body.get("seed"),
        "ids": bool(body.get("return_tokens_as_token_ids", False)),
        "watermarking": body.get("watermarking", True),
    }
    if not (body.get("echo") is None or isinstance(body.get("echo"), bool)):
        raise RequestError("'echo' must be true or false", "echo")
    if not isinstance(req["watermarking"], bool):
        raise RequestError("'watermarking' must be true or false", "watermarking")
    if req["logprobs"] is not None:
        req["logprobs"] = number("logprobs", 0, 0, MAX_LOGPROBS, integer=True)
    if req["seed"] is not None and (not isinstance(req["seed"], int) or isinstance(req["seed"], bool)
                                    or not 0 <= req["seed"] < 2**63):
        raise RequestError("'seed' must be an integer in [0, 2**63)", "seed")
    req["n"] = number("n", 1, 1, MAX_CHOICES, integer=True)
    if len(prompts) * req["n"] > MAX_CHOICES:
        raise RequestError(f"{len(prompts)} prompts x n {req['n']} is more than {MAX_CHOICES} completions per request", "n")
    req["presence_penalty"] = float(number("presence_penalty", 0.0, -2.0, 2.0))
    req["frequency_penalty"] = float(number("frequency_penalty", 0.0, -2.0, 2.0))
    req["repetition_penalty"] = float(number("repetition_penalty", 1.0, 0.01, 10.0))
    req["top_k"] = max(0, number("top_k", 0, -1, 2**31 - 1, integer=True))  # -1 and 0: off (vLLM's and OpenAI clients' "none")
    req["min_p"] = float(number("min_p", 0.0, 0.0, 1.0))
    for name, neutral in UNSUPPORTED.items():
        if body.get(name) not in neutral:
            raise RequestError(f"'{name}' is not supported by this server (leave it out)", name)
    req["stream"] = body.get("stream", False)
    if not isinstance(req["stream"], bool):
        raise RequestError("'stream' must be true or false", "stream")
    options = body.get("stream_options")
    if options is not None and (not req["stream"] or not isinstance(options, dict)
                                or set(options) - {"include_usage"} or not isinstance(options.get("include_usage", False), bool)):
        raise RequestError("'stream_options' must be {\"include_usage\": true|false}, with 'stream': true", "stream_options")
    req["include_usage"] = bool((options or {}).get("include_usage", False))
    if req["echo"] and req["stream"]:
        raise RequestError("'echo' with 'stream' is not supported", "echo")
    bias = body.get("logit_bias") or {}
    if not isinstance(bias, dict):
        raise RequestError("'logit_bias' must be an object {token id: bias}", "logit_bias")
    parsed: dict[int, float] = {}
    for k, v in bias.items():
        try:
            t = int(k)
        except (TypeError, ValueError):
            raise RequestError(f"logit_bias key {k!r} is not a token id", "logit_bias") from None
        if not 0 <= t < vocab_size:
            raise RequestError(f"logit_bias token id {t} is outside 0..{vocab_size - 1}", "logit_bias")
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not -MAX_BIAS <= v <= MAX_BIAS:
            raise RequestError(f"logit_bias values must be numbers in [-100, 100], got {v!r}", "logit_bias")
        parsed[t] = float(v)
    req["logit_bias"] = parsed
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise RequestError("'stop' must be a string or a list of at most 4 non-empty strings", "stop")
    req["stop"] = stops
    return req


def _flat_message(m: Any, i: int) -> dict[str, str]:
    """One chat message with string content: OpenAI's list form (``[{"type": "text", "text": ...}]``)
    is joined with newlines, as vLLM renders it; other part types are refused (a text model)."""
    if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
        raise RequestError(f"messages[{i}] must be {{\"role\": system|user|assistant, \"content\": ...}}", "messages")
    content = m.get("content")
    if isinstance(content, list):
        parts = []
        for k, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RequestError(f"messages[{i}].content[{k}]: only text parts are served (got {kind!r})", "messages")
            parts.append(part["text"])
        content = "\n".join(parts)
    if not isinstance(content, str):
        raise RequestError(f"messages[{i}].content must be a string or a list of text parts", "messages")
    return {"role": m["role"], "content": content}

def parse_chat(body: Any, tokenizer: Any, vocab_size: int, max_new_tokens: int, system_prompt: str | None = None,
               max_chars: int = 20_000) -> dict[str, Any]:
    """A ``/v1/chat/completions`` request as a completion request: ``messages`` rendered through the
    tokenizer's chat template (with ``system_prompt`` first unless the request brings its own system
    message) into one token-id prompt; OpenAI's ``logprobs: true`` + ``top_logprobs: k`` become ``logprobs: k``."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", None)
    if body.get("echo") not in (None, False):
        raise RequestError("'echo' is a /v1/completions field", "echo")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RequestError("'messages' must be a non-empty list of {role, content}", "messages")
    msgs = [_flat_message(m, i) for i, m in enumerate(msgs)]
    if sum(len(m["content"]) for m in msgs) > max_chars:
        raise RequestError(f"the messages have more than {max_chars} characters", "messages")
    if system_prompt is not None and msgs[0]["role"] != "system":  # "" too: it replaces a template's default
        msgs = [{"role": "system", "content": system_prompt}, *msgs]
    if not getattr(tokenizer, "chat_template", None):
        raise RequestError("this model has no chat template: use /v1/completions", None)
    try:
        ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    except Exception as e:  # noqa: BLE001 - a template that refuses the messages (say, roles out of order) is a 400
        raise RequestError(f"the chat template rejects these messages: {str(e)[:200]}", "messages") from None
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    lp = body.get("logprobs", False)
    if not isinstance(lp, bool):
        raise RequestError("'logprobs' must be true or false", "logprobs")
    top = body.get("top_logprobs")
    if top is not None and not lp:
        raise RequestError("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    fields = {k: v for k, v in body.items() if k not in ("messages", "logprobs", "top_logprobs", "max_completion_tokens")}
    if body.get("max_completion_tokens") is not None:
        fields["max_tokens"] = body["max_completion_tokens"]
    fields["logprobs"] = (top if top is not None else 0) if lp else None
    return parse_completion({**fields, "prompt": ids}, vocab_size, max_new_tokens)


def chat_choice(choice: dict[str, Any]) -> dict[str, Any]:
    """A completion choice in the chat shape (``message``; ``logprobs.content`` with ``top_logprobs`` lists)."""
    out: dict[str, Any] = {"message": {"role": "assistant", "content": choice["text"]},
                           "finish_reason": choice["finish_reason"], "logprobs": None}
    lp = choice.get("logprobs")
    if lp is not None:
        out["logprobs"] = {"content": [
            {"token": t, "logprob": v, "top_logprobs": [{"token": a, "logprob": b} for a, b in top.items()]}
            for t, v, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"])]}
    return out


def usage(results: list[dict[str, Any]], n: int) -> dict[str, int]:
    """OpenAI's ``usage`` of a request's results (:meth:`Generator.result`, ``n`` per prompt,
    prompt-major): each prompt's tokens counted once, every completion's tokens."""
    pt, ct = sum(r["prompt_tokens"] for r in results[::n]), sum(r["completion_tokens"] for r in results)
    return {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}
