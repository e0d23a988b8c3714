"""How a rank runs its model: plain transformers (`hf`), wrapped by DeepSpeed inference (`deepspeed`),
or as a vLLM engine (`vllm`, its own module: runner/backends/vllm.py).

Both backends load the same `from_pretrained` model (runner/loading.py). `deepspeed` then calls
`deepspeed.init_inference(model, config={dtype, tensor_parallel: {tp_size}, replace_with_kernel_inject})`.
What is allowed depends on the accelerator, so each has a profile:

- cuda: float32, bfloat16, float16; kernel injection where DeepSpeed has a policy for the architecture
  (automatic unless the spec says `kernel_inject: false`); NCCL between ranks.
- cpu:  float32, bfloat16; no kernel injection; gloo (plus DeepSpeed's shared-memory all-reduce op).

A request the accelerator cannot serve (float16 or kernel injection on CPU; tensor parallelism for an
architecture DeepSpeed's AutoTP cannot shard, such as GPT-2, without kernel injection) is a SpecError
raised before any unit runs, so the worker exits 2 and writes nothing.
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmsweep.jobs.errors import SpecError

if TYPE_CHECKING:
    from lmsweep.jobs.spec import ModelSpec

BACKENDS = ("hf", "deepspeed", "vllm")


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


@dataclass(frozen=True)
class Settings:
    """What one rank will do with its model; the same on every rank of an element."""

    backend: str
    accelerator: str
    dtype: str
    tp: int
    kernel_inject: bool | None      # None: decided from the model (cuda: inject where a policy exists)

    @property
    def group_size(self) -> int:
        """Ranks per lmsweep tensor-parallel group: DeepSpeed shards across ranks; a vLLM engine keeps its
        tensor parallelism inside its rank, so each rank is its own group (data parallel)."""
        return self.tp if self.backend == "deepspeed" else 1

    def ds_config(self, kernel_inject: bool | None = None) -> dict:
        """The init_inference config as recorded in metadata (JSON), without the process-group objects."""
        inject = self.kernel_inject if kernel_inject is None else kernel_inject
        return {"dtype": self.dtype, "tensor_parallel": {"tp_size": self.tp},
                "replace_with_kernel_inject": bool(inject)}


def detect_accelerator() -> str:
    """DS_ACCELERATOR when set (both backends then use the same device), else CUDA when torch sees one."""
    forced = os.environ.get("DS_ACCELERATOR", "").strip().lower()
    if forced:
        return forced
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve(backend: str, model: ModelSpec, accelerator: str, *, spec_file: str | None = None,
            where: str = "model") -> Settings:
    """Check the model's backend request (`execution.backend`, the model's dtype, tensor_parallel and
    kernel_inject) against the accelerator's profile; pure."""
    dtype, tp, inject = model.dtype, model.tensor_parallel, model.kernel_inject

    def fail(key: str, message: str) -> SpecError:
        return SpecError(message, file=spec_file, field=f"{where}.{key}")

    if backend not in BACKENDS:
        raise SpecError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}", file=spec_file,
                        field="execution.backend")
    if backend == "hf":
        if tp > 1:
            raise fail("tensor_parallel", f"tensor_parallel={tp} needs execution.backend: deepspeed")
        if inject:
            raise fail("kernel_inject", "kernel_inject needs execution.backend: deepspeed")
        return Settings("hf", accelerator, dtype, 1, False)
    if backend == "vllm":
        from lmsweep.runner.backends import vllm

        vllm.check_request(accelerator, dtype, inject, spec_file=spec_file, where=where)
        return Settings("vllm", accelerator, dtype, tp, False)
    profile = PROFILES.get(accelerator)
    if profile is None:
        raise SpecError(f"DeepSpeed accelerator {accelerator!r} has no lmsweep profile; known: "
                        f"{', '.join(PROFILES)}", file=spec_file, field="execution.backend")
    if dtype not in profile.dtypes:
        raise fail("dtype", f"dtype {dtype} with backend deepspeed needs a CUDA GPU; this rank has "
                            f"accelerator {accelerator} (it supports {', '.join(profile.dtypes)})")
    if inject and not profile.kernel_inject:
        raise fail("kernel_inject", f"kernel injection needs a CUDA GPU; this rank has accelerator "
                                    f"{accelerator}; set kernel_inject: false or run on a GPU node")
    return Settings("deepspeed", accelerator, dtype, tp, inject if profile.kernel_inject else False)


# ---- effects: process groups, the DeepSpeed wrap ------------------------------------------------------

def extensions_dir() -> str:
    """Where DeepSpeed's JIT-built ops go: once per machine and version set, not once per job (~70 s)."""
    import importlib.metadata as md

    from lmsweep.runner.model_cache import cache_root

    try:
        ds = md.version("deepspeed")
    except md.PackageNotFoundError:
        ds = "none"
    import torch

    tag = f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__.split('+')[0]}-ds{ds}"
    return str(cache_root() / "torch_extensions" / tag)


def prepare_environment(settings: Settings | None = None) -> None:
    if settings is not None and settings.backend == "vllm":
        from lmsweep.runner.backends import vllm

        vllm.prepare_environment()
        return
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", extensions_dir())


def init_process_groups(world, layout, settings: Settings):
    """Initialise torch.distributed when this element needs it and return this rank's TP group.

    Needed for tensor parallelism, and for our own object collectives when a torch launcher (no MPI)
    started the ranks. `dist.new_group` is collective over the world: every rank creates every group.
    """
    need_tp = settings.group_size > 1
    need_objects = world.launcher == "env" and world.size > 1
    if settings.backend == "vllm" and need_objects:
        raise SpecError("backend vllm ranks are started by an MPI launcher (mpiexec, srun) or alone, not by "
                        "torchrun: each vLLM engine sets up torch.distributed itself", field="execution.backend")
    if not (need_tp or need_objects):
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        if settings.backend == "deepspeed":
            import deepspeed

            deepspeed.init_distributed(dist_backend=PROFILES[settings.accelerator].comm_backend,
                                       auto_mpi_discovery=False, verbose=False)
        else:
            dist.init_process_group(backend="gloo", init_method="env://")
        atexit.register(teardown)
    if world.launcher == "env":       # torch launchers tell each rank only about itself
        world.hosts = world.allgather(socket.gethostname())
    if not need_tp:
        return None
    if layout.n_groups > 1:
        _no_world_shm_allreduce()
    groups = [dist.new_group(layout.members(g)) for g in range(layout.n_groups)]
    return groups[layout.group_of(world.rank)]


def _no_world_shm_allreduce() -> None:
    """DeepSpeed's CPU shared-memory all-reduce (deepspeed 0.19) sums over every rank of the node and
    ignores the TP group it is given: with two or more groups per element it mixes the groups' activations
    (wrong tokens, then a hang). Its vector-kernel level gates that path; zero sends every TP all-reduce
    through torch.distributed with the right group. Measured: 4 ranks, TP=2 on CPU gave wrong text
    without this and matches the hf backend with it (tests/test_deepspeed_mpi.py)."""
    from deepspeed.comm import comm as ds_comm

    if getattr(ds_comm.cdb, "shm_comm_op", None) is not None:
        ds_comm.cdb.shm_vector_kernel_level = 0


def teardown() -> None:
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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


# Architectures AutoTP cannot shard (measured with deepspeed 0.19.8, transformers 5, CPU). GPT-2 is refused by
# AutoTP itself (its blocks use Conv1D, not Linear); BLOOM is accepted but its alibi attention bias keeps the
# unsharded head count, so every batch fails with a shape error. Both have kernel-injection policies (CUDA).
NO_AUTOTP = {"gpt2": "its blocks use Conv1D layers AutoTP does not split",
             "bloom": "its alibi attention bias is not sharded with the heads"}


def model_type(path: str) -> str | None:
    """config.json's model_type, read without loading the model (None for GGUF files and odd layouts)."""
    config = Path(path) / "config.json"
    try:
        return json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def _autotp_error(settings: Settings, arch: str, reason: str, spec_file: str | None, where: str) -> SpecError:
    hint = ("that needs kernel injection, which needs a CUDA GPU" if settings.accelerator != "cuda"
            else "try kernel_inject: true (DeepSpeed's fused kernels)")
    return SpecError(f"tensor_parallel={settings.tp}: DeepSpeed AutoTP cannot shard architecture {arch} "
                     f"({reason}); {hint}, or use tensor_parallel: 1", file=spec_file, field=f"{where}.tensor_parallel")


def check_architecture(settings: Settings, arch: str | None, *, spec_file: str | None = None,
                       where: str = "model") -> None:
    """Before loading: refuse tensor parallelism for a known-unshardable architecture unless injecting."""
    if settings.backend != "deepspeed" or settings.tp <= 1 or arch not in NO_AUTOTP:
        return
    if settings.kernel_inject is False or settings.accelerator != "cuda":
        raise _autotp_error(settings, arch, NO_AUTOTP[arch], spec_file, where)


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


def wrap(model, settings: Settings, tp_group=None, device: str = "cpu", *, spec_file: str | None = None,
         where: str = "model") -> tuple[Any, dict]:
    """The model tasks will call, and the backend config to record. Runs on every rank of a TP group."""
    import torch

    if settings.backend == "hf":
        if device != "cpu":
            model = model.to(device)
        return model, {"backend": "hf", "device": device}
    if settings.backend == "vllm":      # the engine was started by runner/backends/vllm.load
        return model, {"backend": "vllm", "device": device}
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
    recorded = {"backend": "deepspeed", "device": device, "init_inference": settings.ds_config(inject),
                "comm_backend": PROFILES[settings.accelerator].comm_backend if settings.tp > 1 else None}
    # Without injection the engine's module is the (sharded) transformers model itself; using it keeps
    # transformers' generate intact (the engine's generate refuses beam search even when nothing is fused).
    return (InjectedModel(engine) if inject else engine.module), recorded


def describe(settings: Settings) -> dict:
    return asdict(settings)
