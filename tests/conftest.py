"""Shared, session-scoped fixtures: the expensive things are built once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Output is read as a pipe's (160 columns, lmsweep/console.py) unless a test sets COLUMNS itself; pytest-xdist's
# workers export COLUMNS=80, which every `lmsweep` the tests start would inherit.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)

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



@pytest.fixture(autouse=True)
def one_slurm_test_at_a_time(request):
    """`make test` runs two pytest-xdist workers (`-n 2 --dist loadfile`: a file's tests share a worker, so its
    module fixtures are built once). The one-node Slurm is one machine-wide resource: a test marked `slurm`
    holds a file lock while it runs, so another worker's arrays never queue behind its own and time out."""
    if request.node.get_closest_marker("slurm") is None:
        yield
        return
    import tempfile

    from filelock import FileLock

    with FileLock(Path(tempfile.gettempdir()) / "lmsweep-tests-slurm.lock"):
        yield
