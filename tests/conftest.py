"""Shared, session-scoped fixtures: the expensive things are built once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from helpers.tiny_models import make_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny random Llama-family model directory (safetensors + tokenizer)."""
    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The packaged SmolLM2, converted once into the shared lmsweep cache."""
    from lmsweep.jobs.model_sources import resolve
    from lmsweep.runner.model_cache import materialize

    ref = resolve("package:smollm2-135m-instruct")
    return materialize(ref.path, ref.fingerprint)
