"""Echo: a prompt's own tokens scored (each token's log-prob given the tokens before it, and its
top-k), as OpenAI's ``echo`` with ``logprobs`` returns them; what an evaluation harness asks for."""

from __future__ import annotations

from typing import Any

import torch

from .job import Job

__all__ = ["score_prompts", "echo_choice"]

ECHO_ROWS = 512  # prompt positions per log-softmax of an echo
ECHO_POSITIONS = 2048  # prompt positions (rows x width) per batched forward pass that scores echoed prompts
ECHO_PADDING = 1.25  # at most this many positions (padding included) per prompt token in such a pass


def score_prompts(gen: Any, jobs: list[Job]) -> None:
    """Score the prompts of echoing ``jobs`` (``job.echo``: each token's log-prob given the tokens
    before it, the model's own with no bias or penalty, and its top-k; the first token has none)
    and keep each prompt's next-token logits (``job.first``: a one-token job needs no other pass).
    The prompts go through the model together, shortest first, left-padded, in passes of at most
    ``ECHO_POSITIONS`` positions (rows x width; a longer prompt alone) and at most
    ``ECHO_PADDING`` positions per prompt token (padding is compute spent for nothing, and on a
    CPU a pass costs what its positions cost), so the prompts of an evaluation harness's batch
    cost a few passes, not two each; each row's log-softmax is taken
    ``ECHO_ROWS`` positions at a time (a long prompt's [L, V] in float64 at once would take
    gigabytes)."""
    group: list[Job] = []
    tokens = 0
    for job in sorted(jobs, key=lambda j: len(j.ids)):  # the widest last: a group's width is its last prompt's
        width = (len(group) + 1) * len(job.ids)
        if group and (width > ECHO_POSITIONS or width > ECHO_PADDING * (tokens + len(job.ids))):
            _score_group(gen, group)
            group, tokens = [], 0
        group.append(job)
        tokens += len(job.ids)
    if group:
        _score_group(gen, group)


def _score_group(gen: Any, jobs: list[Job]) -> None:
    inp, mask = gen.left_padded(jobs)
    logits = gen.model(input_ids=inp, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
    for r, job in enumerate(jobs):
        k, ids, row = job.req["logprobs"], job.req["ids"], logits[r, inp.shape[1] - len(job.ids) :].cpu()
        own: list[float | None] = [None]
        tops: list[dict[str, float] | None] = [None]
        for a in range(0, len(job.ids) - 1, ECHO_ROWS):
            lp = torch.log_softmax(row[a : min(a + ECHO_ROWS, len(job.ids) - 1)].double(), -1)
            own += lp.gather(1, torch.tensor(job.ids[a + 1 : a + 1 + len(lp)])[:, None])[:, 0].tolist()
            best = torch.topk(lp, k, dim=-1)  # one call for the piece, not one per position
            tops += [{gen.token_str(j, ids): v for j, v in zip(js, vs)}
                     for js, vs in zip(best.indices.tolist(), best.values.tolist())]
        job.echo, job.first = (own, tops), row[-1].float().clone()


def echo_choice(gen: Any, job: Job, choice: dict[str, Any]) -> None:
    """Put the prompt before ``choice``'s text and, with log-probs, its tokens and their log-probs
    (scored when the job started: :func:`score_prompts`) before the completion's."""
    prompt = job.prompt if job.prompt is not None else gen.tok.decode(job.ids)
    choice["text"] = prompt + choice["text"]
    if job.req["logprobs"] is None:
        return
    if job.echo is None:
        raise RuntimeError("an echoed job finished without its prompt scored")
    own, tops = job.echo
    tokens = [gen.token_str(t, job.req["ids"]) for t in job.ids]
    out = choice["logprobs"]
    choice["logprobs"] = {"tokens": tokens + out["tokens"], "token_logprobs": own + out["token_logprobs"],
                          "top_logprobs": tops + out["top_logprobs"]}
