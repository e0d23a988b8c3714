"""What an inference engine is: the contract every engine module fills in, and the one list of engines.

Usage, in a module that registers a new engine (runner/engines/<name>.py, or any module imported before
planning: tests/runner/reference_engine.py registers one from outside the package)::

    from lmsweep.core.engine import register_engine
    from lmsweep.runner.engines.hf import HF


    @register_engine("myengine")
    class MyEngine(HF):                       # transformers loading and placement, its own primitives
        tasks = ("generate", "next_token")
        refuses = {"num_beams": "beam search is not served by backend myengine; use execution.backend: hf"}

        def generate(self, ctx, requests): ...
        def next_token(self, ctx, prompts, k): ...

An engine DECLARES what it serves (class attributes: tasks, decoding features it refuses, dtypes per
accelerator, tensor-parallel placement, auto chunk size, out-of-memory rule) and implements a few
PRIMITIVES (`load`, `generate`, `next_token`); tasks build their rows from the primitives, so no task,
and no module outside runner/engines/, names an engine. `execution.backend`'s choices, the plan-time
refusals and the worker's per-engine steps are read from here. The contract is in the core so that
planning (jobs/) reads the declarations without importing runner/; what only a worker uses around an engine
(the task's context, the primitives' request and answer types, process groups) is runner/engines/base.py.

Discovery imports the shipped engine modules (`SHIPPED`, modules of `lmsweep.runner.engines`, by name) the
first time an engine is listed or looked up.
An engine module imports its heavy libraries (torch, deepspeed, vllm) only inside methods: listing the
engines, `lmsweep validate` and `plan` never import them.
"""
from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from lmsweep.errors import SpecError, did_you_mean

if TYPE_CHECKING:
    from lmsweep.jobs.spec import ExecutionSpec, ModelSpec
    from lmsweep.runner.engines.base import Generated, GenerationRequest, TopK
    from lmsweep.runner.units import TaskContext

PACKAGE = "lmsweep.runner.engines"        # the engine plug-ins: imported by this name on discovery
SHIPPED = ("hf", "deepspeed", "vllm")     # modules of PACKAGE, one engine each, in listing order
DEFAULT = "hf"                            # execution.backend when a spec names none

E = TypeVar("E", bound=type["Engine"])
_ENGINES: dict[str, Engine] = {}
_discovered = False
_lock = threading.RLock()


# ---- what a rank runs with -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """What one rank will do with its model; the same on every rank of an element."""

    backend: str
    accelerator: str
    dtype: str
    tp: int
    kernel_inject: bool | None      # None: decided from the model (cuda: inject where a policy exists)

    @property
    def engine(self) -> Engine:
        return get_engine(self.backend)

    @property
    def group_size(self) -> int:
        """Ranks per lmsweep tensor-parallel group: an engine whose tensor parallelism spans ranks shards
        across them; one that keeps it inside its rank (or has none) makes each rank its own group."""
        return self.tp if self.engine.tp_spans_ranks else 1

    def ds_config(self, kernel_inject: bool | None = None) -> dict:
        """The init_inference config as recorded in metadata (JSON), without the process-group objects."""
        inject = self.kernel_inject if kernel_inject is None else kernel_inject
        return {"dtype": self.dtype, "tensor_parallel": {"tp_size": self.tp},
                "replace_with_kernel_inject": bool(inject)}


# ---- what a rerun promises (docs/guarantees.md, "Reproducible rows") --------------------------------------

# A row's `reproducible` column: what the engine that wrote it promises when the same unit runs again on the
# same machine and software (new software promises nothing: that is what the regression gates judge).
PROMISES = {
    "any_batch": "the same tokens (and top-1) at any batch size or batch-mates; every value bit-identical in the "
                 "same batch, float values within float32 rounding in another",
    "same_batch": "bit-identical only when rerun in the same batch (same size and batch-mates)",
    "none": "no bit-for-bit promise; measure the noise floor with `regress --recheck`",
}


# ---- the contract ----------------------------------------------------------------------------------------

class Engine:
    """One inference engine. Subclass, set the declarations, implement the primitives, register.

    Declarations (class attributes):
        tasks           the task names it serves; None: every task (a transformers model)
        decoding        the decoding parameters it serves (names of jobs/decoding.py PARAMS); None: the nine
                        there were before parameters were declared, but those it `refuses`. A point that sets
                        any other parameter away from its default is refused at plan time, naming the engine
                        (jobs.decoding.engine_refusal: the one rule, applied by the generate task)
        refuses         how to word the refusal of a parameter: name → the plan-time message (why, and which
                        backend to use instead); without one the message names the engines that serve it
        dtypes          per accelerator, the dtypes it runs (an accelerator not listed: the "cpu" entry);
                        None: whatever the model loads in
        tensor_parallel "none" (tensor_parallel: 1 only), "ranks" (groups of ranks shard the model:
                        ranks_per_element must be a multiple) or "rank" (inside each rank's engine)
        kernel_inject   whether `kernel_inject: true` may be asked for
        auto_chunk      units per chunk for batch_size auto; None: sized from the model (runner/autobatch)
        halves_on_oom   with batch_size auto, an out-of-memory batch halves the batch size
        torchrun        ranks may be started by a torch launcher (env://)
        context_name    how a prompt-too-long error names the limit ("the model's context")
        packages        the Python distributions whose versions every rank sidecar records
    """

    name: ClassVar[str] = ""                         # set by register_engine
    tasks: ClassVar[tuple[str, ...] | None] = None
    decoding: ClassVar[frozenset[str] | None] = None
    refuses: ClassVar[dict[str, str]] = {}
    dtypes: ClassVar[dict[str, tuple[str, ...]] | None] = None
    tensor_parallel: ClassVar[str] = "none"
    kernel_inject: ClassVar[bool] = False
    auto_chunk: ClassVar[int | None] = None
    halves_on_oom: ClassVar[bool] = True
    torchrun: ClassVar[bool] = True
    context_name: ClassVar[str] = "the model's context"
    packages: ClassVar[tuple[str, ...]] = ()
    # seconds from a rank's start to weights being read (imports, engine set-up), measured on the project's CPU
    # machine: what submit's time-to-results estimate adds to the model's read time before anything is measured
    start_seconds: ClassVar[float] = 5.0

    @property
    def tp_spans_ranks(self) -> bool:
        return self.tensor_parallel == "ranks"

    # ---- planning (pure, no heavy imports) ---------------------------------------------------------------

    def serves_task(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks

    def spec_problems(self, execution: ExecutionSpec, model: ModelSpec) -> list[tuple[str, str]]:
        """(model key, message) for what is wrong with this model under this engine on any machine."""
        problems = []
        if self.tensor_parallel == "none" and model.tensor_parallel > 1:
            problems.append(("tensor_parallel", f"tensor_parallel={model.tensor_parallel} needs execution.backend: "
                                                f"{' or '.join(tp_engines())}"))
        if not self.kernel_inject and model.kernel_inject:
            problems.append(("kernel_inject", f"kernel_inject needs execution.backend: "
                                              f"{' or '.join(e.name for e in all_engines() if e.kernel_inject)}"))
        if self.tp_spans_ranks and execution.ranks_per_element % model.tensor_parallel:
            problems.append(("tensor_parallel", f"tensor_parallel={model.tensor_parallel} does not divide "
                                                f"execution.ranks_per_element={execution.ranks_per_element}; an "
                                                f"element's ranks form groups of {model.tensor_parallel}"))
        return problems

    def model_copies(self, tensor_parallel: int) -> int:
        """Ranks one copy of a model with this tensor_parallel occupies (plan sizing)."""
        return tensor_parallel if self.tp_spans_ranks else 1

    def resolve(self, model: ModelSpec, accelerator: str, *, spec_file: str | None = None,
                where: str = "model") -> Settings:
        """Check the model's request (dtype, tensor_parallel, kernel_inject) against this node; pure."""
        def fail(key: str, message: str) -> SpecError:
            return SpecError(message, file=spec_file, field=f"{where}.{key}")

        problems = [p for p in self.spec_problems(_NoRanks(), model) if p[0] != "tensor_parallel" or
                    self.tensor_parallel == "none"]
        if problems:
            raise fail(*problems[0])
        allowed = self.dtypes.get(accelerator, self.dtypes["cpu"]) if self.dtypes is not None else (model.dtype,)
        if model.dtype not in allowed:
            raise fail("dtype", f"dtype {model.dtype} with backend {self.name} needs a CUDA GPU; this rank has "
                                f"accelerator {accelerator} (it supports {', '.join(allowed)})")
        return Settings(self.name, accelerator, model.dtype, model.tensor_parallel if self.tensor_parallel != "none"
                        else 1, False)

    def check_architecture(self, settings: Settings, arch: str | None, *, spec_file: str | None = None,
                           where: str = "model") -> None:
        """Before loading: refuse what this engine cannot do with the model's architecture."""

    # ---- the rank's set-up (effects) -------------------------------------------------------------------

    def prepare_environment(self, settings: Settings) -> None:
        """Environment variables the engine reads, set before it is imported."""

    def bind(self, world, settings: Settings, threads: int) -> dict | None:
        """This rank's device, before anything initialises it; what to record about the binding.
        None (the default): the worker binds the rank's device itself (runner.distributed.bind_device)."""
        return None

    def init_distributed(self, settings: Settings) -> None:
        """Start torch.distributed for an element that needs it (env:// set by runner/distributed.py)."""
        import torch.distributed as dist

        dist.init_process_group(backend="gloo", init_method="env://")

    def prepare_group(self, layout) -> None:
        """Before the tensor-parallel groups are made (several groups per element)."""

    def load(self, model, model_class: str | None, attn_implementation: str | None, settings: Settings,
             tp_group: Any, device: str, *, spec_file: str | None = None, where: str = "model",
             todo: Sequence[Any] = ()) -> tuple[Any, dict]:
        """Load the model this rank's tasks will call: (runner.loading.LoadedModel, backend config to record).
        `model_class` is the task's Auto class, None for a tokenizer-only task. `todo`: the units this rank
        is about to run (runner.units.Unit), for an engine whose start-up pays off only above some volume of
        work (vllm: compiling)."""
        raise NotImplementedError

    def start_batch_size(self, ctx: TaskContext, todo: list, accelerator: str) -> tuple[int, str] | None:
        """(batch size, why) for batch_size auto. None (the default without `auto_chunk`): the worker sizes
        it from the model (runner.autobatch)."""
        if self.auto_chunk is not None:
            return self.auto_chunk, f"auto: chunks of {self.auto_chunk} units (backend {self.name})"
        return None

    def sidecar(self) -> dict:
        """What the rank sidecar records about the engine beyond its backend config."""
        return {"torch_extensions_dir": None}

    def promise(self, settings: Settings, point: Any) -> str:
        """What a rerun of one row gives, on the same machine and software: a key of PROMISES, recorded in the
        row's `reproducible` column. `point` is the unit's decoding point (jobs.decoding.DecodingPoint; None for
        a task without one). The default, for an engine that does not say: "none"."""
        return "none"

    # ---- primitives: what tasks build their rows from ------------------------------------------------------

    def context_limit(self, ctx: TaskContext) -> int | None:
        """Prompt plus new tokens the model takes; None: unknown. Default: the transformers config's
        max_position_embeddings (runner.units.context_limit reads it the same way)."""
        config = getattr(ctx.model, "config", None)
        return getattr(config, "max_position_embeddings", None) if config is not None else None

    def eos_ids(self, ctx: TaskContext) -> list[int]:
        """The token ids that end a sequence."""
        raise NotImplementedError

    def generate(self, ctx: TaskContext, requests: list[GenerationRequest]) -> list[list[Generated | list[int]]]:
        """For each request, its sequences (len(request.seeds) of them, EOS not cut): each a
        runner.engines.base.Generated (new token ids and their log-probabilities under the model's raw
        distribution), or plain new token ids from an engine that cannot say (the rows' log-probabilities are
        then null)."""
        raise NotImplementedError(f"backend {self.name} does not generate")

    def next_token(self, ctx: TaskContext, prompts: list[list[int]], k: int) -> list[TopK]:
        """For each prompt, the top-k next-token probabilities (and entropy where known)."""
        raise NotImplementedError(f"backend {self.name} does not compute next-token probabilities")


@dataclass(frozen=True)
class _NoRanks:
    ranks_per_element: int = 1


# ---- the registry ----------------------------------------------------------------------------------------

def register_engine(name: str):
    """Class decorator: register an Engine subclass under `name` (refuses a second engine of that name)."""
    def register(cls: E) -> E:
        if not (isinstance(cls, type) and issubclass(cls, Engine)):
            raise TypeError(f"@register_engine({name!r}) decorates a subclass of lmsweep.core.engine.Engine, "
                            f"got {cls!r}")
        if cls.tensor_parallel not in ("none", "ranks", "rank"):
            raise ValueError(f"engine {name!r}: tensor_parallel is 'none', 'ranks' or 'rank', "
                             f"got {cls.tensor_parallel!r}")
        with _lock:
            if name in _ENGINES and type(_ENGINES[name]) is not cls:
                raise ValueError(f"engine {name!r} is registered twice: by {type(_ENGINES[name]).__module__} and "
                                 f"{cls.__module__}")
            cls.name = name
            _ENGINES[name] = cls()
        return cls
    return register


def unregister_engine(name: str) -> None:
    """Forget an engine registered from outside the package (tests)."""
    with _lock:
        if name not in SHIPPED:
            _ENGINES.pop(name, None)


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    with _lock:
        if not _discovered:
            for module in SHIPPED:
                importlib.import_module(f"{PACKAGE}.{module}")
            _discovered = True


def all_engines() -> list[Engine]:
    """Shipped engines in SHIPPED order, then those registered from outside, in registration order."""
    _discover()
    return sorted(_ENGINES.values(), key=lambda e: (SHIPPED.index(e.name) if e.name in SHIPPED else len(SHIPPED)))


def engine_names() -> tuple[str, ...]:
    return tuple(e.name for e in all_engines())


def tp_engines() -> list[str]:
    return [e.name for e in all_engines() if e.tensor_parallel != "none"]


def get_engine(name: str, *, spec_file: str | None = None) -> Engine:
    _discover()
    try:
        return _ENGINES[name]
    except KeyError:
        raise SpecError(unknown_message(name), file=spec_file, field="execution.backend") from None


def unknown_message(name: str) -> str:
    names = engine_names()
    return f"unknown backend {name!r}{did_you_mean(name, names)}; expected one of {', '.join(names)}"


def recorded_packages() -> tuple[str, ...]:
    """Every engine's `packages`, once each, in engine order (the rank sidecar records their versions)."""
    return tuple(dict.fromkeys(p for e in all_engines() for p in e.packages))


def engines_serving(task: str) -> tuple[str, ...]:
    return tuple(e.name for e in all_engines() if e.serves_task(task))


def resolve(backend: str, model: ModelSpec, accelerator: str, *, spec_file: str | None = None,
            where: str = "model") -> Settings:
    """The engine's check of the model's request against this node's accelerator; pure."""
    return get_engine(backend, spec_file=spec_file).resolve(model, accelerator, spec_file=spec_file, where=where)


