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
    from lmsweep.jobs.model_cache import materialize
    from lmsweep.jobs.model_sources import resolve

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


# Files whose fixtures or tests take minutes (a vLLM engine, the homework sweep, Gemma, tensor parallelism,
# Slurm requeues): collected first, so that under `make test`'s two xdist workers the many short files fill in
# beside them instead of one worker finishing alone with a long tail (a fresh-clone run spent its last ~8
# minutes on test_vllm.py by itself).
LONG_FIRST = ("tests/runner/test_vllm.py", "tests/e2e/test_homework.py", "tests/results/test_compare.py",
              "tests/runner/test_gemma.py", "tests/runner/test_deepspeed_mpi.py", "tests/runner/test_preemption.py",
              "tests/submit/test_submit_checks.py", "tests/e2e/test_slurm_e2e.py", "tests/runner/test_run_signals.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))     # stable: the rest keep order
