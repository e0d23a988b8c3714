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


def _threads_per_xdist_worker() -> int | None:
    """`make test`'s pytest-xdist workers share the machine's cores: each worker (and every lmsweep worker,
    MPI rank or engine it starts, which inherit OMP_NUM_THREADS) gets its share instead of all the cores, so
    two workers on two cores do not run four OpenMP threads that spin-wait on each other. Numeric tolerances
    hold at any thread count (tests/helpers/tolerances.py). None: not under xdist, or OMP_NUM_THREADS set."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers < 2 or os.environ.get("OMP_NUM_THREADS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // workers)


if (_threads := _threads_per_xdist_worker()) is not None:
    os.environ["OMP_NUM_THREADS"] = str(_threads)

from helpers.tiny_models import make_tiny_llama  # noqa: E402  (after the environment above: it may import torch)


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


@pytest.fixture
def perturbed():
    """The engines of helpers/perturbed_engines.py (hf-hot, hf-penalty), registered while a test runs: reading a
    run's plan needs its backend known."""
    from helpers import perturbed_engines

    perturbed_engines.register()
    yield
    perturbed_engines.unregister()



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


# Files whose fixtures or tests take minutes (a vLLM engine, two compiled starts, the homework sweep, Gemma,
# tensor parallelism, Slurm requeues): collected first, so that under `make test`'s two xdist workers the many
# short files fill in beside them instead of one worker finishing alone with a long tail (a fresh-clone run
# spent its last ~8 minutes on test_vllm.py by itself).
# test_gemma.py converts Gemma into the model cache (minutes, once, under a lock) before test_homework.py needs
# it: started on two workers at once, one would wait for the other's conversion.
LONG_FIRST = ("tests/runner/test_vllm.py", "tests/runner/test_gemma.py", "tests/runner/test_deepspeed_mpi.py",
              "tests/e2e/test_homework.py", "tests/runner/test_preemption.py", "tests/e2e/test_slurm_e2e.py",
              "tests/runner/test_run_signals.py", "tests/results/test_compare.py",
              "tests/runner/test_vllm_compile_cache.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))     # stable: the rest keep order
