"""Batch-invariant sampling: each sequence draws from its own random stream.

`generate(do_sample=True)` draws for the whole batch from one generator, so a unit's text would
depend on its batch-mates. Instead we run generate greedily over processed logits plus Gumbel noise
from a per-sequence generator: argmax(logits/T + Gumbel) is an exact sample of softmax(logits/T),
and the noise for sequence i at step t depends only on (seed, point but its length, prompt, i, t).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
)

from lmsweep.jobs.decoding import SAMPLING_STREAM, DecodingPoint


def sequence_seed(seed: int, point: DecodingPoint, prompt: dict[str, Any], sequence_index: int) -> int:
    """The seed of one sampled sequence's stream (derivation SAMPLING_STREAM = 2): the spec's seed, the
    decoding point without max_new_tokens, what the model is shown, and the sequence's index. Leaving
    max_new_tokens out makes the 16-token sample of a seed the prefix of its 48-token sample; the model
    is left out as before (the unit key has none), so two models draw the same noise."""
    key = json.dumps({"stream": SAMPLING_STREAM, "seed": seed, "decoding": point.stream_fields(),
                      "prompt": {k: prompt.get(k) for k in ("prompt_text", "system_prompt", "chat_template")},
                      "sequence": sequence_index}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)


def generators(seeds: list[int]) -> list[torch.Generator]:
    """One random stream per sequence; a stream's state carries over from step to step."""
    return [torch.Generator().manual_seed(s) for s in seeds]


class NucleusWarper(LogitsProcessor):
    """Top-p: keep the most probable tokens until their probabilities reach `top_p` (at least one).

    The rule of transformers' TopPLogitsWarper (a token stays when the mass of the tokens above it is below
    `top_p`; they agree up to float rounding at the boundary), found without sorting the whole vocabulary:
    that sort was a seventh of the generate task's time at batch 256 on SmolLM2. Candidates come from a
    partial sort (`topk`); a row whose candidates hold less than `top_p` is sorted in full."""

    def __init__(self, top_p: float, candidates: int = 1024):
        self.top_p, self.candidates = float(top_p), candidates

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = scores.softmax(dim=-1)
        remove = torch.ones_like(scores, dtype=torch.bool)
        top, index = probs.topk(min(self.candidates, scores.shape[-1]), dim=-1)
        short = top.sum(dim=-1) < self.top_p
        remove.scatter_(1, index, self._beyond(top))
        if short.any():
            top, index = probs[short].sort(dim=-1, descending=True)
            remove[short] = remove[short].scatter(1, index, self._beyond(top))
        return scores.masked_fill(remove, -float("inf"))

    def _beyond(self, top: torch.Tensor) -> torch.Tensor:
        """Of probabilities sorted high to low, those with at least `top_p` above them."""
        return (top.cumsum(dim=-1) - top) >= self.top_p


class PerSequenceGumbel(LogitsProcessor):
    def __init__(self, streams: list[torch.Generator]):
        self.generators = streams

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        vocab = scores.shape[-1]
        gumbel = torch.stack([torch.rand(vocab, generator=g) for g in self.generators])
        gumbel.clamp_min_(1e-20).log_().neg_().log_().neg_()           # -log(-log(u)), in place
        return scores + gumbel.to(device=scores.device, dtype=scores.dtype)


# The hf and deepspeed engines' mapping of the sampling parameters (jobs/decoding.py, `sampling=True`): each
# parameter's warper, in the order transformers applies them, and whether a value changes anything (at None,
# and at a neutral value, the warper is left out). A sampling parameter missing here is not served by those
# engines (runner/engines/hf.py `decoding`; tests/jobs/test_decoding_params.py checks the two agree).
WARPERS: dict[str, tuple[Callable[[Any], bool], Callable[[Any], LogitsProcessor]]] = {
    "temperature": (lambda t: t != 1.0, TemperatureLogitsWarper),
    "top_k": (lambda k: True, TopKLogitsWarper),
    "top_p": (lambda p: p < 1.0, NucleusWarper),
}


def sampling_processors(point: DecodingPoint, streams: list[torch.Generator]) -> LogitsProcessorList:
    """The warpers of the point's sampling parameters in the order transformers applies them, then the
    per-sequence noise."""
    procs = LogitsProcessorList()
    for name, (applies, warper) in WARPERS.items():
        value = getattr(point, name)
        if value is not None and applies(value):
            procs.append(warper(value))
    procs.append(PerSequenceGumbel(streams))
    return procs
