"""runner/decode.py: the generate task's decoding loop gives `model.generate`'s greedy tokens, prefills each
distinct prompt once, lets finished rows leave the batch; NucleusWarper keeps transformers' top-p rule."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, TopPLogitsWarper
from transformers.cache_utils import DynamicLayer

from helpers.tiny_models import ARCHITECTURES, make_tiny_llama, tiny_causal_lm
from lmsweep.runner import decode
from lmsweep.runner.sampling import NucleusWarper

TEXTS = ["Once upon a time", "The capital of France is Paris, and the capital of Italy is", "My dog",
         "I skip across the street and the park every morning because the cat", "Once upon a time", "Rome"]
MAX_NEW = 16


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), AutoTokenizer.from_pretrained(tiny_llama)


def reference(model, prompt: list[int], eos: list[int], pad: int) -> list[int]:
    """`model.generate` alone on one prompt (no padding), cut after the first EOS."""
    config = GenerationConfig(max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=eos, pad_token_id=pad)
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             generation_config=config)[0, len(prompt):].tolist()
    cut = next((k for k, t in enumerate(out) if t in eos), None)
    return out if cut is None else out[:cut + 1]


def run_decode(model, prompts, eos, pad, processors=lambda rows, pads: None):
    """decode, recording the rows and sequence length of every forward call."""
    calls = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(tuple(kwargs["input_ids"].shape)),
                                           with_kwargs=True)
    try:
        with torch.inference_mode():
            out = decode.decode(model, prompts, processors, eos, pad, MAX_NEW)
    finally:
        hook.remove()
    return out, calls


def test_greedy_tokens_equal_model_generate_one_prompt_at_a_time(llama):
    model, tok = llama
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    eos = [tok.eos_token_id]
    out, _ = run_decode(model, prompts, eos, tok.pad_token_id)
    assert out == [reference(model, p, eos, tok.pad_token_id) for p in prompts]
    assert all(len(o) == MAX_NEW or o[-1] in eos for o in out)


def test_each_distinct_prompt_is_prefilled_once(llama):
    model, tok = llama
    prompts = [tok(t)["input_ids"] for t in TEXTS] * 3            # 18 rows, 5 distinct prompts
    _, calls = run_decode(model, prompts, [tok.eos_token_id], tok.pad_token_id)
    prefill_rows = sum(rows for rows, length in calls if length > 1)
    assert prefill_rows == len({tuple(p) for p in prompts}) == 5
    assert next(rows for rows, length in calls if length == 1) == len(prompts)      # then all rows decode


def test_finished_rows_leave_the_batch_and_the_rest_are_unchanged(llama):
    """Make a token the greedy runs produce mid-way an extra EOS, so rows finish at different steps."""
    model, tok = llama
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    free = [reference(model, p, [tok.eos_token_id], tok.pad_token_id) for p in prompts]
    stop = free[1][MAX_NEW // 2]                                   # a token row 1 makes half-way through
    eos = [tok.eos_token_id, stop]
    out, calls = run_decode(model, prompts, eos, tok.pad_token_id)
    assert out == [reference(model, p, eos, tok.pad_token_id) for p in prompts]
    finished_early = sum(len(o) < MAX_NEW for o in out)
    assert finished_early >= 1
    decode_rows = [rows for rows, length in calls if length == 1]
    assert decode_rows[-1] <= len(prompts) - finished_early < len(prompts)


def test_processors_see_each_rows_tokens_and_padding(llama):
    """A processor that bans each row's previous token: the factory is rebuilt with the surviving rows."""
    model, tok = llama
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    seen = []

    class BanLast:
        def __init__(self, rows, pads):
            seen.append((list(rows), pads.tolist()))

        def __call__(self, input_ids, scores):
            scores = scores.clone()
            scores.scatter_(1, input_ids[:, -1:], -float("inf"))
            return scores

    out, _ = run_decode(model, prompts, [tok.eos_token_id], tok.pad_token_id, BanLast)
    width = max(len(p) for p in prompts)
    assert seen[0] == (list(range(len(prompts))), [width - len(p) for p in prompts])
    for o, p in zip(out, prompts):
        sequence = p + o
        assert all(a != b for a, b in zip(sequence[len(p) - 1:], sequence[len(p):]))


def test_growing_layer_holds_what_a_dynamic_layer_holds():
    torch.manual_seed(0)
    grow, dyn = decode.GrowingLayer(capacity=4), DynamicLayer()
    for n in (3, 1, 1, 2, 1):                                      # past the capacity: it doubles
        k, v = torch.randn(2, 2, n, 8), torch.randn(2, 2, n, 8)
        gk, gv = grow.update(k, v)
        dk, dv = dyn.update(k, v)
        assert torch.equal(gk, dk) and torch.equal(gv, dv) and grow.get_seq_length() == dyn.get_seq_length()
    grow.batch_select_indices(torch.tensor([1]))
    dyn.batch_select_indices(torch.tensor([1]))
    assert torch.equal(grow.keys, dyn.keys) and grow.keys.shape[0] == 1


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
def test_nucleus_keeps_the_tokens_transformers_top_p_keeps(top_p):
    torch.manual_seed(1)
    peaked = torch.randn(16, 5000) * 4
    flat = torch.randn(16, 5000) * 0.1                             # the top candidates hold < top_p: full sort
    filtered = peaked.clone()
    filtered[:, 2500:] = -float("inf")                             # after top-k
    for scores in (peaked, flat, filtered):
        ours = NucleusWarper(top_p, candidates=64)(None, scores.clone())
        theirs = TopPLogitsWarper(top_p)(None, scores.clone())
        differ = torch.isinf(ours) != torch.isinf(theirs)
        # The two sum the same probabilities in opposite orders; they may part only where a cumulative sum
        # sits within rounding of top_p (seen at 0.999: 3 of 80,000 tokens, 2e-6 of a row's mass).
        assert (scores.softmax(-1) * differ).sum(-1).max() < 1e-5
        assert differ.sum() <= 5 if top_p > 0.99 else not differ.any()
        assert torch.equal(ours[~torch.isinf(ours)], scores[~torch.isinf(ours)])


def test_sliding_window_models_take_model_generate(tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    sliding = MistralForCausalLM(MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    plain = AutoModelForCausalLM.from_pretrained(make_tiny_llama(tmp_path / "llama"))
    assert not decode.supported(sliding)
    assert decode.supported(plain)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_other_architectures_decode_like_model_generate(arch):
    # GPT-2's default token ids lie outside the tiny vocabulary
    model = tiny_causal_lm(arch, 97, **(dict(bos_token_id=1, eos_token_id=0) if arch == "gpt2" else {}))
    assert decode.supported(model)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [5, 6, 7], [40], [3] * 9]
    out, _ = run_decode(model, prompts, [0], 0)
    assert out == [reference(model, p, [0], 0) for p in prompts]


def test_auto_batch_size_starts_at_256_and_is_capped_by_memory(llama):
    """A prompt of tens of millions of characters would need gigabytes of cache a row: fewer rows fit."""
    from lmsweep.jobs.decoding import DecodingPoint
    from lmsweep.runner import autobatch
    from lmsweep.runner.units import Unit

    def unit(text: str) -> Unit:
        return Unit(unit_id="u", unit_key="u", element=0, variant=0, point_index=0,
                    point=DecodingPoint(max_new_tokens=64), seed=None,
                    prompt={"prompt_text": text, "system_prompt": None})

    model, _ = llama
    assert autobatch.start_size(model, [unit("Once upon a time")] * 3, "cpu")[0] == 256
    size, why = autobatch.start_size(model, [unit("x" * 40_000_000)], "cpu")
    assert 1 <= size < 256 and "capped from 256" in why
