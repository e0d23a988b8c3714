"""The benchmark's workload and its two baselines, shared by `runner.bench` and the batching test.

Workload: a fixed, varied prompt list × four decoding settings (two greedy, two sampled), the
quickstart's shape at benchmark size. Baselines, both on one already-loaded model:

- seed loop: `pipeline("text-generation")` called once per prompt per setting (batch 1), the way the
  seed scripts ran;
- expert notebook: the same pipeline over the whole prompt list per setting, `batch_size=N`, left padding.

New tokens are counted the way lmsweep counts them (up to, not including, the first EOS), so
tokens/s figures compare like with like.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

SUBJECTS = [
    "the water cycle", "black holes", "the French Revolution", "photosynthesis", "how vaccines work",
    "the printing press", "plate tectonics", "the stock market", "machine learning", "the Roman Empire",
    "climate change", "the human heart", "volcanoes", "the internet", "honey bees", "the moon landing",
]
# Continuations of varied length (a few words to a paragraph), like the quickstart's prompts. Raw
# instructions ("Explain X.") are a poor benchmark for this instruct model: without its chat template
# it mostly answers with EOS at once (12 of 16 such prompts gave 0 tokens), so tokens/s would measure
# how fast a batch idles.
TEMPLATES = [
    "{S} is",
    "The most important thing to know about {s} is that",
    "Here is a short story about {s}. Once upon a time,",
    "The following is an excerpt from a textbook chapter on {s}, written for curious readers who have no "
    "background in the subject. The chapter starts with a simple question that many people ask, and then",
]


def bench_prompts(n: int) -> list[str]:
    """`n` prompts of varied length (short questions to a paragraph), deterministic."""
    subjects = [SUBJECTS[(i // len(TEMPLATES) + i) % len(SUBJECTS)] for i in range(n)]
    out = [TEMPLATES[i % len(TEMPLATES)].format(s=s, S=s[0].upper() + s[1:]) for i, s in enumerate(subjects)]
    return [p if i < len(SUBJECTS) * len(TEMPLATES) else f"{p} (variant {i})" for i, p in enumerate(out)]


@dataclass(frozen=True)
class Setting:
    name: str
    decoding: dict[str, Any]        # the lmsweep `decoding.include` entry
    hf: dict[str, Any]              # the same setting as transformers generate kwargs

    @property
    def deterministic(self) -> bool:
        return not self.hf.get("do_sample", False)


# top_k=0 switches off transformers' default top-k of 50, which lmsweep's points do not have.
SETTINGS = [
    Setting("greedy", {}, {"do_sample": False}),
    Setting("greedy rep=1.3", {"repetition_penalty": 1.3}, {"do_sample": False, "repetition_penalty": 1.3}),
    Setting("sample t=0.7", {"temperature": 0.7}, {"do_sample": True, "temperature": 0.7, "top_k": 0}),
    Setting("sample p=0.9", {"top_p": 0.9}, {"do_sample": True, "top_p": 0.9, "temperature": 1.0, "top_k": 0}),
]


@dataclass
class Run:
    """Generated tokens and the seconds spent generating them; greedy outputs by (setting, prompt)."""

    name: str
    tokens: int = 0
    seconds: float = 0.0
    outputs: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def make_pipeline(model, tokenizer):
    from transformers import pipeline

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return pipeline("text-generation", model=model, tokenizer=tokenizer)


def new_tokens(sequence: list[int], prompt_len: int, pad_id: int | None, eos_ids: set[int]) -> list[int]:
    """The new tokens of a pipeline output row (left pads + prompt + new + trailing pads), cut at EOS."""
    start = 0
    while start < len(sequence) and sequence[start] == pad_id:
        start += 1
    new = sequence[start + prompt_len:]
    cut = next((k for k, t in enumerate(new) if t in eos_ids), None)
    return new if cut is None else new[:cut]


def _eos_ids(pipe) -> set[int]:
    ids = pipe.model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids]) | {pipe.tokenizer.eos_token_id}
    return {i for i in ids if i is not None}


def _generate(pipe, prompts: list[str], setting: Setting, max_new_tokens: int, batch_size: int) -> list[list[int]]:
    tok = pipe.tokenizer
    out = pipe(prompts, batch_size=batch_size, max_new_tokens=max_new_tokens, return_tensors=True,
               pad_token_id=tok.pad_token_id, **setting.hf)
    # The pipeline pads a prompt only when it shares a batch with a longer one: strip pads, then the
    # prompt (its length from tokenizing it alone, as the pipeline did).
    eos, pad = _eos_ids(pipe), (tok.pad_token_id if batch_size > 1 else None)
    lengths = [len(tok(p)["input_ids"]) for p in prompts]
    return [new_tokens(o[0]["generated_token_ids"], n, pad, eos) for o, n in zip(out, lengths)]


def seed_loop(pipe, prompts: list[str], settings: list[Setting], max_new_tokens: int) -> Run:
    """One pipeline call per prompt per setting, batch 1."""
    run = Run("seed loop")
    for s in settings:
        for qi, prompt in enumerate(prompts):
            start = time.perf_counter()
            (ids,) = _generate(pipe, [prompt], s, max_new_tokens, batch_size=1)
            run.seconds += time.perf_counter() - start
            run.tokens += len(ids)
            if s.deterministic:
                run.outputs[(s.name, qi)] = ids
    return run


def expert_notebook(pipe, prompts: list[str], settings: list[Setting], max_new_tokens: int,
                    batch_size: int) -> Run:
    """One batched pipeline call over the whole prompt list per setting."""
    run = Run(f"expert notebook (batch {batch_size})", extra={"batch_size": batch_size})
    for s in settings:
        start = time.perf_counter()
        outs = _generate(pipe, prompts, s, max_new_tokens, batch_size=batch_size)
        run.seconds += time.perf_counter() - start
        for qi, ids in enumerate(outs):
            run.tokens += len(ids)
            if s.deterministic:
                run.outputs[(s.name, qi)] = ids
    return run


def gemm_gflops(threads: int, n: int = 2048, seconds: float = 2.0) -> float:
    """This CPU's fp32 matmul throughput right now (best of several timed rounds), in GFLOP/s."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b                                   # warm up: thread pool, MKL buffers
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - start) / 1e9)
    return best


def forward_flops_per_token(model) -> float:
    """≈ 2 × parameters, counting a tied embedding once as the LM head (the lookup is free)."""
    return 2.0 * sum(p.numel() for p in model.parameters())
