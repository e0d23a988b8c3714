"""The old home of the engines, kept as a thin alias for scripts that import it (benchmarks/backends.py):
the engines are plug-ins in runner/engines/ (hf.py, deepspeed.py, vllm.py; base.py holds the contract and
the registry). New code imports runner.engines."""
from __future__ import annotations

from lmsweep.runner.engines.base import Settings, describe, detect_accelerator, model_type, resolve, teardown
from lmsweep.runner.engines.deepspeed import PROFILES, Profile, extensions_dir

__all__ = ["PROFILES", "Profile", "Settings", "describe", "detect_accelerator", "extensions_dir", "model_type",
           "prepare_environment", "resolve", "teardown"]


def prepare_environment(settings: Settings | None = None) -> None:
    """The engine's environment; without settings, DeepSpeed's JIT extension cache (as before)."""
    import os

    if settings is not None:
        settings.engine.prepare_environment(settings)
    else:
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", extensions_dir())
