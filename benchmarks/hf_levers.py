"""`python -m benchmarks.hf_levers [--compile]`: does a static cache or torch.compile speed up hf generation here?

The --vllm workload of benchmarks.backends (bench_prompts(64), greedy, 64 new tokens, one batch of 64,
SmolLM2 fp32) through transformers' `generate`, on 2 threads by default. Without --compile it runs the
default dynamic cache and `cache_implementation="static"`. With --compile it runs the static cache with
the forward wrapped in `torch.compile(mode="max-autotune-no-cudagraphs")`, in a process of its own so
the eager runs are not compiled. It prints each call's seconds; the first call of a compiled forward
includes its compilation.
"""
from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hf_levers", description=__doc__.split("\n")[0])
    p.add_argument("--compile", action="store_true", help="static cache + torch.compile of the forward")
    p.add_argument("--calls", type=int, default=3)
    args = p.parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from benchmarks.workload import bench_prompts
    from lmsweep.jobs.model_cache import materialize
    from lmsweep.jobs.model_sources import resolve

    ref = resolve("package:smollm2-135m-instruct")
    path = materialize(ref.path, ref.fingerprint)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    batch = tok(bench_prompts(64), return_tensors="pt", padding=True)
    if args.compile:
        model.forward = torch.compile(model.forward, mode="max-autotune-no-cudagraphs")
    variants = {"static + torch.compile": {"cache_implementation": "static"}} if args.compile else \
        {"dynamic cache (eager)": {}, "static cache (eager)": {"cache_implementation": "static"}}
    for name, extra in variants.items():
        config = GenerationConfig(max_new_tokens=64, do_sample=False, pad_token_id=tok.pad_token_id,
                                  eos_token_id=tok.eos_token_id, **extra)
        seconds = []
        for _ in range(args.calls):
            start = time.perf_counter()
            with torch.inference_mode():
                model.generate(**batch, generation_config=config)
            seconds.append(time.perf_counter() - start)
        print(f"{name}: calls {', '.join(f'{s:.2f}' for s in seconds)} s; best {min(seconds):.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
