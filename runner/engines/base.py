"""The worker side of the engines: what a task's batch runner and the rank's set-up use around an engine.

The engine contract (what an engine declares and the primitives it implements) and the registry are in
lmsweep/core/engine.py, so that planning (jobs/) reads the declarations without importing runner/; the
engines themselves are the modules of this package (docs/adding-an-engine.md). Here: the context a task
runs with (`EngineContext`, `engine_of`), the primitives' request and answer types (`GenerationRequest`,
`Generated`, `TopK`), the node's accelerator, and torch.distributed's process groups.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from lmsweep.core.engine import DEFAULT, Engine, Settings, get_engine
from lmsweep.errors import SpecError
from lmsweep.runner.units import TaskContext

if TYPE_CHECKING:
    from lmsweep.jobs.decoding import DecodingPoint


def describe(settings: Settings) -> dict:
    return asdict(settings)


@dataclass
class EngineContext(TaskContext):
    """What a task's batch runner gets on a worker: the TaskContext and the engine serving its model."""

    engine: Any = None


def engine_of(ctx: TaskContext) -> Engine:
    """The engine behind a task context; a plain TaskContext (a test, a notebook) is the default engine's."""
    return getattr(ctx, "engine", None) or get_engine(DEFAULT)


@dataclass(frozen=True)
class GenerationRequest:
    """One unit's generation: its prompt ids, its decoding point, and one seed per sequence to return
    (None for greedy; for beam search `num_return_sequences` Nones)."""

    prompt_ids: list[int]
    point: DecodingPoint
    point_index: int
    seeds: list[int | None]


@dataclass(frozen=True)
class Generated:
    """One returned sequence: its new token ids (EOS not cut) and, per token, its log-probability under the
    model's own next-token distribution: log-softmax of the raw logits, before repetition penalty, temperature,
    top-k/top-p and the sampling noise (None when the engine cannot say). Being the model's, not the sampler's,
    it is comparable across decoding points and engines, and it moves when a decoding parameter is applied
    differently (the generate task's `mean_logprob` gate). An engine may return a plain list of ids instead:
    its rows then have null log-probabilities."""

    token_ids: list[int]
    logprobs: list[float] | None = None


@dataclass(frozen=True)
class TopK:
    """The next token after one prompt: the k most likely ids and their probabilities, and the entropy of
    the full distribution (None when the engine returns only the top k)."""

    ids: list[int]
    probs: list[float]
    entropy: float | None


def detect_accelerator() -> str:
    """DS_ACCELERATOR when set (every engine then uses the same device), else CUDA when torch sees one."""
    forced = os.environ.get("DS_ACCELERATOR", "").strip().lower()
    if forced:
        return forced
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_type(path: str) -> str | None:
    """config.json's model_type, read without loading the model (None for GGUF files and odd layouts)."""
    import json
    from pathlib import Path

    try:
        return json.loads((Path(path) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


# ---- effects: process groups -----------------------------------------------------------------------------

def init_process_groups(world, layout, settings: Settings):
    """Initialise torch.distributed when this element needs it and return this rank's TP group.

    Needed for tensor parallelism across ranks, and for our own object collectives when a torch launcher (no
    MPI) started the ranks. `dist.new_group` is collective over the world: every rank creates every group.
    """
    import atexit
    import socket

    engine = settings.engine
    need_tp = settings.group_size > 1
    need_objects = world.launcher == "env" and world.size > 1
    if not engine.torchrun and need_objects:
        raise SpecError(f"backend {engine.name} ranks are started by an MPI launcher (mpiexec, srun) or alone, not "
                        f"by torchrun: each {engine.name} engine sets up torch.distributed itself",
                        field="execution.backend")
    if not (need_tp or need_objects):
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        engine.init_distributed(settings)
        atexit.register(teardown)
    if world.launcher == "env":       # torch launchers tell each rank only about itself
        world.hosts = world.allgather(socket.gethostname())
    if not need_tp:
        return None
    engine.prepare_group(layout)
    groups = [dist.new_group(layout.members(g)) for g in range(layout.n_groups)]
    return groups[layout.group_of(world.rank)]


def teardown() -> None:
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
