"""Inference engines as plug-ins: `hf` (plain transformers), `deepspeed` (DeepSpeed inference) and `vllm`,
one module each. The contract and the registry are in lmsweep/core/engine.py, the worker-side helpers in
base.py (docs/adding-an-engine.md)."""
from lmsweep.core.engine import (
    DEFAULT,
    Engine,
    Settings,
    all_engines,
    engine_names,
    engines_serving,
    get_engine,
    register_engine,
    resolve,
)
from lmsweep.runner.engines.base import (
    EngineContext,
    GenerationRequest,
    TopK,
    describe,
    detect_accelerator,
    engine_of,
)

__all__ = ["DEFAULT", "Engine", "EngineContext", "GenerationRequest", "Settings", "TopK", "all_engines", "describe",
           "detect_accelerator", "engine_names", "engine_of", "engines_serving", "get_engine", "register_engine",
           "resolve"]
