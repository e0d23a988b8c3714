"""Batch-invariant sampling: each sequence draws from its own random stream.

`generate(do_sample=True)` draws for the whole batch from one generator, so a unit's text would
depend on its batch-mates. Instead we run generate greedily over processed logits plus Gumbel noise
from a per-sequence generator: argmax(logits/T + Gumbel) is an exact sample of softmax(logits/T),
and the noise for sequence i at step t depends only on (seed, unit, i, t).
"""
from __future__ import annotations

import hashlib

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


def sequence_seed(seed: int, unit_key: str, sequence_index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{unit_key}:{sequence_index}".encode()).hexdigest()
    return int(digest[:15], 16)


class PerSequenceGumbel(LogitsProcessor):
    def __init__(self, seeds: list[int]):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        vocab = scores.shape[-1]
        u = torch.stack([torch.rand(vocab, generator=g) for g in self.generators])
        gumbel = -torch.log(-torch.log(u.clamp_min(1e-20)))
        return scores + gumbel.to(device=scores.device, dtype=scores.dtype)


def sampling_processors(temperature: float | None, top_k: int | None, top_p: float | None,
                        seeds: list[int]) -> LogitsProcessorList:
    """The warpers in the order transformers applies them, then the per-sequence noise."""
    procs = LogitsProcessorList()
    if temperature is not None and temperature != 1.0:
        procs.append(TemperatureLogitsWarper(temperature))
    if top_k is not None:
        procs.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p))
    procs.append(PerSequenceGumbel(seeds))
    return procs
