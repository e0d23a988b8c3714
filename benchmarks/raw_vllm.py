"""Raw vLLM, as a user would call it, for `python -m benchmarks.backends --vllm` (runs under .venv-vllm).

    .venv-vllm/bin/python -m benchmarks.raw_vllm MODEL_DIR PROMPTS MAX_NEW_TOKENS

It starts one engine (`LLM(model=dir, dtype="float32")`) and prints `{"engine_start_s": ...}`. After that,
each line on stdin runs the workload once: `bench_prompts(PROMPTS)` greedy, up to MAX_NEW_TOKENS new tokens,
in one `LLM.generate` call. It answers with one JSON line: the seconds, the new tokens (counted up to,
not including, the first EOS, as lmsweep counts them) and each prompt's token ids.
"""
from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    path, n, max_new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
    from transformers import GenerationConfig
    from vllm import LLM, SamplingParams

    from benchmarks.workload import bench_prompts

    prompts = bench_prompts(n)
    start = time.perf_counter()
    llm = LLM(model=path, dtype="float32", seed=0)
    print(json.dumps({"engine_start_s": time.perf_counter() - start}), flush=True)
    eos = GenerationConfig.from_pretrained(path).eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos]) | {llm.get_tokenizer().eos_token_id}
    params = SamplingParams(temperature=0.0, max_tokens=max_new)
    for _ in sys.stdin:
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        ids = []
        for out in outputs:
            seq = list(out.outputs[0].token_ids)
            cut = next((k for k, t in enumerate(seq) if t in eos), None)
            ids.append(seq if cut is None else seq[:cut])
        print(json.dumps({"seconds": seconds, "new_tokens": sum(map(len, ids)), "token_ids": ids}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
