"""`execution.backend: deepspeed`: the transformers model wrapped by DeepSpeed inference,
`deepspeed.init_inference(model, config={dtype, tensor_parallel: {tp_size}, replace_with_kernel_inject})`.
Tensor parallelism spans ranks: an element's ranks form groups of `tensor_parallel` that shard one copy
of the model (docs/deepspeed-mpi.md). What is allowed depends on the accelerator, so each has a profile:

- cuda: float32, bfloat16, float16; kernel injection where DeepSpeed has a policy for the architecture
  (automatic unless the spec says `kernel_inject: false`); NCCL between ranks.
- cpu:  float32, bfloat16; no kernel injection; gloo (plus DeepSpeed's shared-memory all-reduce op).

A request the accelerator cannot serve (float16 or kernel injection on CPU; tensor parallelism for an
architecture DeepSpeed's AutoTP cannot shard, such as GPT-2, without kernel injection) is a SpecError
raised before any unit runs, so the worker exits 2 and writes nothing. deepspeed is imported only inside
methods. The primitives are the hf engine's (the wrapped module is still a transformers model).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

from lmsweep.core.engine import Settings, register_engine
from lmsweep.jobs.errors import SpecError
from lmsweep.runner.engines.hf import HF


@dataclass(frozen=True)
class Profile:
    accelerator: str
    dtypes: tuple[str, ...]
    kernel_inject: bool
    comm_backend: str


PROFILES: dict[str, Profile] = {
    "cuda": Profile("cuda", ("float32", "bfloat16", "float16"), kernel_inject=True, comm_backend="nccl"),
    "cpu": Profile("cpu", ("float32", "bfloat16"), kernel_inject=False, comm_backend="gloo"),
}

# Architectures AutoTP cannot shard (measured with deepspeed 0.19.8, transformers 5, CPU). GPT-2 is refused by
# AutoTP itself (its blocks use Conv1D, not Linear); BLOOM is accepted but its alibi attention bias keeps the
# unsharded head count, so every batch fails with a shape error. Both have kernel-injection policies (CUDA).
NO_AUTOTP = {"gpt2": "its blocks use Conv1D layers AutoTP does not split",
             "bloom": "its alibi attention bias is not sharded with the heads"}


@register_engine("deepspeed")
class DeepSpeed(HF):
    tensor_parallel = "ranks"
    kernel_inject = True
    packages = ("deepspeed",)
    start_seconds = 10.0              # plus init_inference
    dtypes = {p.accelerator: p.dtypes for p in PROFILES.values()}

    def resolve(self, model, accelerator: str, *, spec_file: str | None = None, where: str = "model") -> Settings:
        dtype, tp, inject = model.dtype, model.tensor_parallel, model.kernel_inject
        profile = PROFILES.get(accelerator)
        if profile is None:
            raise SpecError(f"DeepSpeed accelerator {accelerator!r} has no lmsweep profile; known: "
                            f"{', '.join(PROFILES)}", file=spec_file, field="execution.backend")
        if dtype not in profile.dtypes:
            raise SpecError(f"dtype {dtype} with backend {self.name} needs a CUDA GPU; this rank has accelerator "
                            f"{accelerator} (it supports {', '.join(profile.dtypes)})", file=spec_file,
                            field=f"{where}.dtype")
        if inject and not profile.kernel_inject:
            raise SpecError(f"kernel injection needs a CUDA GPU; this rank has accelerator {accelerator}; set "
                            f"kernel_inject: false or run on a GPU node", file=spec_file,
                            field=f"{where}.kernel_inject")
        return Settings(self.name, accelerator, dtype, tp, inject if profile.kernel_inject else False)

    def check_architecture(self, settings: Settings, arch: str | None, *, spec_file: str | None = None,
                           where: str = "model") -> None:
        """Before loading: refuse tensor parallelism for a known-unshardable architecture unless injecting."""
        if settings.tp <= 1 or arch not in NO_AUTOTP:
            return
        if settings.kernel_inject is False or settings.accelerator != "cuda":
            raise _autotp_error(settings, arch, NO_AUTOTP[arch], spec_file, where)

    def promise(self, settings: Settings, point) -> str:
        """At tensor_parallel 1 without injected kernels it runs the hf decode loop; across ranks the
        all-reduce sums in another order, and injected kernels are CUDA's."""
        if settings.tp > 1 or settings.kernel_inject:
            return "none"
        return super().promise(settings, point)

    # ---- the rank's set-up ------------------------------------------------------------------------------

    def prepare_environment(self, settings: Settings) -> None:
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", extensions_dir())

    def init_distributed(self, settings: Settings) -> None:
        import deepspeed

        deepspeed.init_distributed(dist_backend=PROFILES[settings.accelerator].comm_backend,
                                   auto_mpi_discovery=False, verbose=False)

    def prepare_group(self, layout) -> None:
        if layout.n_groups > 1:
            _no_world_shm_allreduce()

    def sidecar(self) -> dict:
        return {"torch_extensions_dir": os.environ.get("TORCH_EXTENSIONS_DIR")}

    def wrap(self, model, settings: Settings, tp_group: Any, device: str, *, spec_file: str | None = None,
             where: str = "model") -> tuple[Any, dict]:
        """init_inference on every rank of a TP group; the model tasks will call and the config to record."""
        import torch

        inject = settings.kernel_inject
        if inject is None:              # automatic: only reachable on CUDA (the CPU profile pins False)
            inject = has_kernel_policy(model)
        if not inject:
            check_autotp(model, settings, spec_file=spec_file, where=where)
        import deepspeed

        tensor_parallel: dict[str, Any] = {"tp_size": settings.tp}
        if settings.tp > 1:
            tensor_parallel |= {"tp_group": tp_group, "mpu": GroupMPU(tp_group, settings.tp)}
        config = {"dtype": getattr(torch, settings.dtype), "tensor_parallel": tensor_parallel,
                  "replace_with_kernel_inject": bool(inject)}
        engine = deepspeed.init_inference(model, config=config)
        recorded = {"backend": self.name, "device": device, "init_inference": settings.ds_config(inject),
                    "comm_backend": PROFILES[settings.accelerator].comm_backend if settings.tp > 1 else None}
        # Without injection the engine's module is the (sharded) transformers model itself; using it keeps
        # transformers' generate intact (the engine's generate refuses beam search even when nothing is fused).
        return (InjectedModel(engine) if inject else engine.module), recorded


def extensions_dir() -> str:
    """Where DeepSpeed's JIT-built ops go: once per machine and version set, not once per job (~70 s)."""
    import importlib.metadata as md

    from lmsweep.jobs.model_cache import cache_root

    try:
        ds = md.version("deepspeed")
    except md.PackageNotFoundError:
        ds = "none"
    import torch

    tag = f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__.split('+')[0]}-ds{ds}"
    return str(cache_root() / "torch_extensions" / tag)


def build_ops() -> str | None:
    """Build (or load, when built) the accelerator's shared-memory all-reduce op into `extensions_dir()`, as
    the first TP rank would: `make test` runs this while `.venv-vllm` installs, so no test waits ~70 s on
    the compiler. Returns the op's name, or None where the accelerator has none."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", extensions_dir())
    from deepspeed.comm.torch import build_shm_op

    op = build_shm_op()
    return None if op is None else op.__name__


def _no_world_shm_allreduce() -> None:
    """DeepSpeed's CPU shared-memory all-reduce (deepspeed 0.19) sums over every rank of the node and
    ignores the TP group it is given: with two or more groups per element it mixes the groups' activations
    (wrong tokens, then a hang). Its vector-kernel level gates that path; zero sends every TP all-reduce
    through torch.distributed with the right group. Measured: 4 ranks, TP=2 on CPU gave wrong text
    without this and matches the hf backend with it (tests/test_deepspeed_mpi.py)."""
    from deepspeed.comm import comm as ds_comm

    if getattr(ds_comm.cdb, "shm_comm_op", None) is not None:
        ds_comm.cdb.shm_vector_kernel_level = 0


class GroupMPU:
    """The model-parallel unit DeepSpeed asks for when the TP group is not ranks 0..tp-1 of the world.

    Without it init_inference makes its own group of world ranks [0, tp) and every other group of
    the element would shard with the wrong peers.
    """

    def __init__(self, group, size: int):
        self.group, self.size = group, size

    def get_model_parallel_group(self):
        return self.group

    def get_model_parallel_world_size(self) -> int:
        return self.size

    def get_model_parallel_rank(self) -> int:
        import torch.distributed as dist

        return dist.get_rank(group=self.group)


class InjectedModel:
    """A kernel-injected engine seen as a transformers model: `generate` goes through the engine (which
    resets the injected KV cache and rejects beam search, unsupported by the fused kernels), everything
    else (config, generation_config, device) comes from the wrapped module."""

    def __init__(self, engine):
        self._engine = engine

    def generate(self, *args, **kwargs):
        return self._engine.generate(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        return self._engine(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine.module, name)


def has_kernel_policy(model) -> bool:
    from deepspeed.module_inject.auto_tp import AutoTP

    return AutoTP.kernel_supported(list(model.modules()))


def _autotp_error(settings: Settings, arch: str, reason: str, spec_file: str | None, where: str) -> SpecError:
    hint = ("that needs kernel injection, which needs a CUDA GPU" if settings.accelerator != "cuda"
            else "try kernel_inject: true (DeepSpeed's fused kernels)")
    return SpecError(f"tensor_parallel={settings.tp}: DeepSpeed AutoTP cannot shard architecture {arch} "
                     f"({reason}); {hint}, or use tensor_parallel: 1", file=spec_file, field=f"{where}.tensor_parallel")


def check_autotp(model, settings: Settings, *, spec_file: str | None = None, where: str = "model") -> None:
    """After loading, before any unit: AutoTP's own verdict, for architectures not in NO_AUTOTP."""
    if settings.tp <= 1:
        return
    from deepspeed.module_inject.auto_tp import AutoTP

    arch = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
    if arch in NO_AUTOTP:
        raise _autotp_error(settings, arch, NO_AUTOTP[arch], spec_file, where)
    try:
        AutoTP.tp_parser(model)
    except AssertionError as e:
        raise _autotp_error(settings, arch, str(e).rstrip("."), spec_file, where) from None
