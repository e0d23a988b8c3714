"""`python -m benchmarks.gemma_decode [--rounds 3]`: is extending lmsweep's decode loop to Gemma 3 worth it?

Gemma 3's sliding-window layers keep it off runner/decode.py (`decode.supported` is False), so its greedy
and sampled batches go through `model.generate`. This runs both paths on the packaged Gemma 3 270M (fp32,
8 prompts, greedy, one batch), interleaved over rounds with the order alternating, and prints each path's
generated tokens/s, the per-round ratio (own loop ÷ generate) and whether the token ids agree.

The own loop keeps every position in a growing full cache; the sliding layers' window is applied by the
model's attention mask, so the arithmetic is the same as long as transformers builds that mask from the
cache positions. A tiny random Gemma 3 with a 4-token window checks exactly that past the window
(prompts of 6-9 tokens, 24 new tokens), where a plain full cache would differ if the mask did not.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

PROMPTS = ["Shakespeare was a", "My dog really wanted to eat icecream because", "I skip across the",
           "Once upon a time", "The capital of France is", "The best way to make pancakes is",
           "In 1905, Albert Einstein published", "Water boils at"]


def generate_path(model, prompts: list[list[int]], new: int, eos: list[int], pad: int,
                  record: list | None = None) -> list[list[int]]:
    import torch
    from transformers import LogitsProcessorList

    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                             pad_token_id=pad, eos_token_id=eos,
                             logits_processor=LogitsProcessorList([_recorder(record)]) if record is not None else None)
    return [_until_eos(r[width:].tolist(), eos) for r in out]


def own_path(model, prompts: list[list[int]], new: int, eos: list[int], pad: int,
             record: list | None = None) -> list[list[int]]:
    import torch

    from lmsweep.runner import decode

    with torch.inference_mode():
        return decode.decode(model, prompts, lambda rows, pads: None if record is None else _recorder(record),
                             eos, pad, new)


def _recorder(record: list):
    """A logits processor that keeps a copy of every step's scores (batch × vocab) and changes nothing."""
    def keep(input_ids, scores):
        record.append(scores.detach().clone())
        return scores
    return keep


def _until_eos(ids: list[int], eos: list[int]) -> list[int]:
    cut = next((i for i, t in enumerate(ids) if t in eos), None)
    return ids if cut is None else ids[:cut + 1]


def tiny_gemma3(window: int = 4):
    """A 4-layer random Gemma 3 text model (the same weights whatever the window), sliding window `window`,
    one full-attention layer in four; ids 0-2 are pad, eos and bos."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=window,
                           layer_types=["sliding_attention"] * 3 + ["full_attention"], max_position_embeddings=256,
                           initializer_range=0.5, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(0)
    return Gemma3ForCausalLM(cfg).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()
    import torch
    import transformers

    from lmsweep.jobs.model_cache import materialize
    from lmsweep.jobs.model_sources import resolve
    from lmsweep.runner import decode

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    tiny = tiny_gemma3()
    gen = torch.Generator().manual_seed(0)
    ids = [[2, *torch.randint(3, 300, (n,), generator=gen).tolist()] for n in (5, 7, 8, 6)]
    # An eos past the vocabulary never comes: both paths keep every row for 24 steps and their scores line up.
    never = [tiny.config.vocab_size]
    scores: dict[str, list] = {"own": [], "generate": [], "unwindowed": []}
    own_path(tiny, ids, 24, never, 0, scores["own"])
    generate_path(tiny, ids, 24, never, 0, scores["generate"])
    generate_path(tiny_gemma3(window=1024), ids, 24, never, 0, scores["unwindowed"])

    def gap(a: str, b: str) -> float:
        return max(float((x - y).abs().max()) for x, y in zip(scores[a], scores[b]))
    print(f"tiny Gemma 3 (window 4, prompts {min(map(len, ids))}-{max(map(len, ids))} tokens, 24 new): max |Δ logit| "
          f"own loop vs generate {gap('own', 'generate'):.2e}; the same weights without a window differ by "
          f"{gap('generate', 'unwindowed'):.2f}")

    ref = resolve("package:gemma3-270m")
    path = materialize(ref.path, ref.fingerprint)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    print(f"Gemma 3 270M: decode.supported = {decode.supported(model)}; {len(PROMPTS)} prompts, "
          f"{args.new_tokens} new tokens, batch {len(PROMPTS)}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    eos = [model.generation_config.eos_token_id]
    ratios, same, rates = [], True, {"generate": [], "own": []}
    for r in range(args.rounds):
        order = [("generate", generate_path), ("own", own_path)][:: 1 if r % 2 == 0 else -1]
        out, rate = {}, {}
        for name, fn in order:
            start = time.perf_counter()
            out[name] = fn(model, prompts, args.new_tokens, eos, tok.pad_token_id)
            rate[name] = sum(len(o) for o in out[name]) / (time.perf_counter() - start)
            rates[name].append(rate[name])
        same &= out["own"] == out["generate"]
        ratios.append(rate["own"] / rate["generate"])
        print(f"round {r}: generate {rate['generate']:.1f} tok/s, own loop {rate['own']:.1f} tok/s, "
              f"ratio {ratios[-1]:.2f}")
    print(f"median: generate {statistics.median(rates['generate']):.1f} tok/s, own loop "
          f"{statistics.median(rates['own']):.1f} tok/s, ratio own/generate {statistics.median(ratios):.2f} "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f}); token ids equal in every round: {same}")


if __name__ == "__main__":
    main()
