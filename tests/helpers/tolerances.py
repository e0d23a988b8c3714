"""How far two float32 computations of the same forward pass may drift apart: derived bounds, not tuned ones.

lmsweep batches, pads and splits work differently from a direct one-sequence transformers call (and from
itself at another batch size, thread count or machine load: BLAS picks other kernels and summation orders).
The results then differ by float32 rounding only. A test that compares two such computations must allow
for that rounding and nothing more, whatever the thread count; these functions say how much, from the
model's shape and the magnitude of what is compared.

The model. A forward pass is a chain of `L` layers whose matrix products have inner dimension at most `n`
(`max(hidden_size, intermediate_size)`). One float32 dot product of length `n` has a relative error below
`λ·√n·u` (`u = 2⁻²⁴`) except with probability `2·exp(-λ²/2)` (Higham & Mary 2019, "A new approach to
probabilistic rounding error analysis", Thm 3.1); with λ = 6 that is 3e-8. Each layer adds its error to the
residual stream; independent errors of `L` layers add up as `√L` of one. Two computations each carry that
error, so they differ by at most twice it:

    relative difference of hidden states  ≤  2·λ·√(n·L)·u

A logit is a dot product of the last hidden state with an embedding row, so its absolute error is that
relative bound times the largest |logit|; log-softmax at most doubles an absolute logit error (the value
itself and the log-sum-exp each move by at most the largest shift). Hence per token

    |Δ log p|  ≤  2 · 2·λ·√(n·L)·u · max|logit|

and a probability `p = exp(log p) ≤ 1` moves by at most `p·|Δ log p| ≤ |Δ log p|`. A sum of `k` token
log-probabilities moves by at most `k` times the per-token bound (the triangle inequality).

For SmolLM2-135M (L = 30, n = 1536, max|logit| ≈ 25) this allows 7.7e-3 per token; measured differences are
around 3e-6 (batch 1 vs 8 at 2 threads). A real bug (a token scored with the wrong context, a padding
position leaking into attention, an off-by-one in the scored span) moves a log-probability by 0.1 or more.
"""
from __future__ import annotations

import math

U32 = 2.0 ** -24           # float32 unit roundoff
LAMBDA = 6.0               # the probabilistic bound's width: fails with probability 2·exp(-18) ≈ 3e-8


def _shape(config) -> tuple[int, int]:
    """(layers, longest inner dimension) of a transformers config (text part of a multimodal one)."""
    config = getattr(config, "text_config", None) or config
    layers = config.num_hidden_layers
    inner = max(config.hidden_size, getattr(config, "intermediate_size", 0) or 0)
    return layers, inner


def hidden_relative_tolerance(config) -> float:
    """Largest difference of two fp32 computations of one hidden state, relative to its largest |value|."""
    layers, inner = _shape(config)
    return 2 * LAMBDA * math.sqrt(inner * layers) * U32


def logprob_tolerance(config, max_abs_logit: float) -> float:
    """Largest |Δ log p| (and |Δ p|) of one token between two fp32 computations of the same logits."""
    return 2 * hidden_relative_tolerance(config) * max(1.0, float(max_abs_logit))


def max_abs_logit(model, sequences: list[list[int]]) -> float:
    """The largest |logit| the model gives anywhere along these token sequences (one unpadded pass each)."""
    import torch

    with torch.no_grad():
        return max(float(model(torch.tensor([seq])).logits.abs().max()) for seq in sequences)
