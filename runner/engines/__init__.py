"""Inference engines as plug-ins: `hf` (plain transformers), `deepspeed` (DeepSpeed inference) and `vllm`,
one module each; the contract and the registry are in base.py (docs/adding-an-engine.md)."""
from lmsweep.runner.engines.base import (
    DEFAULT,
    Engine,
    EngineContext,
    GenerationRequest,
    Settings,
    TopK,
    all_engines,
    describe,
    detect_accelerator,
    engine_names,
    engine_of,
    engines_serving,
    get_engine,
    register_engine,
    resolve,
)

__all__ = ["DEFAULT", "Engine", "EngineContext", "GenerationRequest", "Settings", "TopK", "all_engines", "describe",
           "detect_accelerator", "engine_names", "engine_of", "engines_serving", "get_engine", "register_engine",
           "resolve"]
