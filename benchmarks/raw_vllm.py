"""Raw vLLM, as a user would call it, for `python -m benchmarks.backends --vllm` and `python -m benchmarks.vllm_grid`
(runs under .venv-vllm).

    .venv-vllm/bin/python -m benchmarks.raw_vllm MODEL_DIR PROMPTS MAX_NEW_TOKENS
    .venv-vllm/bin/python -m benchmarks.raw_vllm MODEL_DIR --grid REQUESTS.json [--eager]

It starts one engine (`LLM(model=dir, dtype="float32")`) and prints `{"engine_start_s": ...}`. After that,
each line on stdin runs the workload once and is answered with one JSON line: the seconds, the new tokens
(counted up to, not including, the first EOS, as lmsweep counts them) and each request's token ids.

- Default: `bench_prompts(PROMPTS)` greedy, up to MAX_NEW_TOKENS new tokens, in one `LLM.generate` call.
- `--grid`: the requests of REQUESTS.json (written by benchmarks/vllm_grid.py: prompt ids, sampling
  parameters, seed and the (point, seed) group of each), on an engine with the options lmsweep's engine
  has for that element (`--eager`, no prefix caching, no chunked prefill: runner/engines/vllm.py). The line
  names the call pattern: `per_point` is one `LLM.generate` call per decoding point and seed (a notebook
  user's loop), `all` is one call holding every request.
"""
from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if "--grid" in sys.argv:
        return grid(sys.argv[1], sys.argv[sys.argv.index("--grid") + 1], "--eager" in sys.argv)
    path, n, max_new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
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
        ids = [cut_at_eos(list(out.outputs[0].token_ids), eos) for out in outputs]
        print(json.dumps({"seconds": seconds, "new_tokens": sum(map(len, ids)), "token_ids": ids}), flush=True)
    return 0


def cut_at_eos(seq: list[int], eos: set[int]) -> list[int]:
    cut = next((k for k, t in enumerate(seq) if t in eos), None)
    return seq if cut is None else seq[:cut]


def grid(path: str, requests_file: str, eager: bool) -> int:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    work = json.loads(open(requests_file).read())
    requests, eos = work["requests"], set(work["eos_ids"])
    prompts = [TokensPrompt(prompt_token_ids=r["prompt_ids"]) for r in requests]
    params = [SamplingParams(**r["params"], seed=r["seed"], max_tokens=work["max_new_tokens"],
                             stop_token_ids=work["eos_ids"], detokenize=False) for r in requests]
    start = time.perf_counter()
    llm = LLM(model=path, dtype="float32", seed=0, enforce_eager=eager, enable_prefix_caching=False,
              enable_chunked_prefill=False)
    print(json.dumps({"engine_start_s": time.perf_counter() - start}), flush=True)
    for line in sys.stdin:
        pattern = line.strip()
        groups: dict = {}
        for i, r in enumerate(requests):
            groups.setdefault(tuple(r["group"]) if pattern == "per_point" else (), []).append(i)
        ids: list[list[int]] = [[] for _ in requests]
        start = time.perf_counter()
        for rows in groups.values():
            outputs = llm.generate([prompts[i] for i in rows], [params[i] for i in rows], use_tqdm=False)
            for i, out in zip(rows, outputs):
                ids[i] = list(out.outputs[0].token_ids)
        seconds = time.perf_counter() - start
        ids = [cut_at_eos(seq, eos) for seq in ids]
        print(json.dumps({"seconds": seconds, "calls": len(groups), "new_tokens": sum(map(len, ids)),
                          "token_ids": ids}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
