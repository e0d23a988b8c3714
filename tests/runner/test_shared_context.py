"""Continuations sharing a context (runner/shared_context.py): each context runs once and every continuation is
scored from it; each score equals its own unpadded transformers forward pass within the derived float32
tolerance, on nine architectures, whatever its batch-mates."""
from __future__ import annotations

import pytest
import torch

from helpers.tiny_models import ARCHITECTURES, tiny_causal_lm
from helpers.tolerances import logprob_tolerance, max_abs_logit
from lmsweep.runner import shared_context

VOCAB = 100
PAD = 0
CONTEXTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12, 13, 14, 15]]          # three lengths: left padding is exercised
PAIRS = [(0, [20]), (0, [21, 22, 23]), (1, [30, 31]), (1, [32]), (2, [40, 41, 42, 43, 44]), (2, [7, 8])]


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.5)).eval()


def model_for(arch: str):
    return llama() if arch == "llama" else tiny_causal_lm(arch, VOCAB)


def direct(model, context: list[int], continuation: list[int]) -> tuple[list[float], list[bool]]:
    """Each continuation token's log-probability and greedy flag from one unpadded pass over context + continuation."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([context + continuation])).logits[0].float(), -1)
    rows = [logp[len(context) - 1 + j] for j in range(len(continuation))]
    return [float(r[t]) for r, t in zip(rows, continuation)], [int(r.argmax()) == t for r, t in zip(rows, continuation)]


def greedy_continuation(model, context: list[int], n: int) -> list[int]:
    out = []
    for _ in range(n):
        with torch.no_grad():
            out.append(int(model(torch.tensor([context + out])).logits[0, -1].argmax()))
    return out


@pytest.mark.parametrize("arch", ["llama", *ARCHITECTURES])
def test_each_continuation_equals_its_own_forward_pass(arch):
    model = model_for(arch)
    pairs = [*PAIRS, (0, greedy_continuation(model, CONTEXTS[0], 3))]          # every token the argmax
    got = shared_context.score(model, PAD, CONTEXTS, pairs)
    tol = logprob_tolerance(model.config, max_abs_logit(model, [CONTEXTS[c] + x for c, x in pairs]))
    for (c, cont), scored in zip(pairs, got):
        want, greedy = direct(model, CONTEXTS[c], cont)
        assert len(scored.logprobs) == len(cont)
        assert max(abs(a - b) for a, b in zip(scored.logprobs, want)) <= tol, (arch, cont)
        assert scored.greedy == greedy, (arch, cont)
    assert all(got[-1].greedy)


def test_each_context_runs_once():
    """Four two-token answers after a 20-token question: 20 + 4 tokens go through the model, not 4 × 22."""
    model = llama()
    seen = []
    model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(int(kwargs["attention_mask"][:, -kwargs[
        "input_ids"].shape[1]:].sum())), with_kwargs=True)
    question = list(range(10, 30))
    answers = [[40 + i, 50 + i] for i in range(4)]
    shared_context.score(model, PAD, [question], [(0, a) for a in answers])
    assert sum(seen) == len(question) + len(answers)           # each answer's last token is never an input


def test_batch_mates_change_no_score():
    """A pair scored alone and among longer contexts and continuations (more padding on both sides): the same
    scores within the derived tolerance."""
    model = llama()
    alone = shared_context.score(model, PAD, [CONTEXTS[1]], [(0, [30, 31])])[0]
    among = shared_context.score(model, PAD, CONTEXTS, PAIRS)[2]
    tol = logprob_tolerance(model.config, max_abs_logit(model, [CONTEXTS[1] + [30, 31]]))
    assert max(abs(a - b) for a, b in zip(alone.logprobs, among.logprobs)) <= tol


def test_contexts_and_continuations_are_split_to_fit_the_budget(monkeypatch):
    model = llama()
    whole = shared_context.score(model, PAD, CONTEXTS, PAIRS)
    monkeypatch.setattr(shared_context, "ELEMENTS_BUDGET", 1)             # one row per forward pass
    split = shared_context.score(model, PAD, CONTEXTS, PAIRS)
    tol = logprob_tolerance(model.config, max_abs_logit(model, [CONTEXTS[c] + x for c, x in PAIRS]))
    for a, b in zip(whole, split):
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) <= tol and a.greedy == b.greedy
