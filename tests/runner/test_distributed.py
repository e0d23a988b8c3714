"""Fast checks of the rank arithmetic and the backend rules (no model, no MPI launch).

The end-to-end behaviour with real `mpiexec`, `torchrun` and DeepSpeed is in test_deepspeed_mpi.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.cli import cli, write_spec
from lmsweep.jobs.errors import SpecError
from lmsweep.jobs.spec import ModelSpec
from lmsweep.runner import engines
from lmsweep.runner.distributed import TPLayout, default_threads, discover, export_env, threads_for_rank

REPO = Path(__file__).resolve().parents[2]

# ---- tensor-parallel groups --------------------------------------------------------------------------

@pytest.mark.parametrize("world,tp", [(1, 1), (3, 1), (2, 2), (4, 2), (6, 3), (8, 4)])
def test_groups_partition_the_ranks_and_shares_partition_the_units(world: int, tp: int) -> None:
    layout = TPLayout(world, tp)
    assert sorted(r for g in range(layout.n_groups) for r in layout.members(g)) == list(range(world))
    assert all(layout.group_of(r) == g for g in range(layout.n_groups) for r in layout.members(g))
    assert [r for r in range(world) if layout.is_leader(r)] == [layout.leader(g) for g in range(layout.n_groups)]
    units = list(range(14))
    shares = [layout.share(units, g) for g in range(layout.n_groups)]
    assert sorted(u for s in shares for u in s) == units                  # every unit once, none twice
    assert max(map(len, shares)) - min(map(len, shares)) <= 1            # balanced


def test_a_world_that_tp_does_not_divide_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be split into tensor-parallel groups of 2"):
        TPLayout(3, 2)


# ---- who am I ----------------------------------------------------------------------------------------

def test_a_plain_process_is_a_world_of_one() -> None:
    world = discover({})
    assert (world.rank, world.size, world.local_rank, world.local_size, world.launcher) == (0, 1, 0, 1, "single")
    assert world.bcast("x") == "x" and world.allgather(5) == [5]
    export_env(world)
    assert "RANK" not in os.environ and "WORLD_SIZE" not in os.environ


def test_torchrun_environment_is_read_as_is() -> None:
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
           "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "29400"}
    world = discover(env)
    assert (world.rank, world.size, world.local_rank, world.local_size) == (3, 8, 1, 4)
    assert (world.master_addr, world.master_port, world.launcher) == ("10.0.0.7", 29400, "env")


# ---- threads -----------------------------------------------------------------------------------------

def test_threads_come_from_the_spec_then_the_launcher_then_a_default() -> None:
    assert threads_for_rank(6, 4, {"OMP_NUM_THREADS": "2"}) == (6, "spec")
    assert threads_for_rank(None, 4, {"OMP_NUM_THREADS": "2"}) == (2, "OMP_NUM_THREADS")
    assert threads_for_rank(None, 1, {})[1] == "default"


def test_default_threads_use_the_binding_or_share_the_node() -> None:
    # bound by the launcher (mpiexec --cpu-bind depth --depth 8): its own 8 cores
    assert default_threads(4, {}, affinity=set(range(8)), cpu_count=64) == 8
    # unbound: the node's cores shared by the ranks on it
    assert default_threads(4, {}, affinity=set(range(64)), cpu_count=64) == 16
    assert default_threads(8, {}, affinity=set(range(4)), cpu_count=4) == 1


# ---- accelerator profiles ----------------------------------------------------------------------------

DS = "deepspeed"


def model_spec(**fields) -> ModelSpec:
    return ModelSpec(source="m", **fields)


def test_cpu_profile_runs_float32_and_bfloat16_without_injection() -> None:
    for dtype in ("float32", "bfloat16"):
        s = engines.resolve(DS, model_spec(dtype=dtype, tensor_parallel=2), "cpu")
        assert (s.backend, s.dtype, s.tp, s.kernel_inject) == ("deepspeed", dtype, 2, False)


@pytest.mark.parametrize("model,field,words", [
    ({"dtype": "float16"}, "models[0].dtype", "float16 with backend deepspeed needs a CUDA GPU"),
    ({"kernel_inject": True}, "models[0].kernel_inject", "kernel injection needs a CUDA GPU"),
])
def test_gpu_only_requests_fail_on_cpu_with_the_field(model: dict, field: str, words: str) -> None:
    with pytest.raises(SpecError) as e:
        engines.resolve(DS, model_spec(**model), "cpu", spec_file="s.yaml", where="models[0]")
    assert e.value.field == field and words in str(e.value) and str(e.value).startswith("s.yaml: ")


def test_cuda_profile_allows_float16_and_leaves_injection_to_the_model() -> None:
    s = engines.resolve(DS, model_spec(dtype="float16"), "cuda")
    assert s.kernel_inject is None                     # decided from the model: inject where a policy exists
    assert engines.resolve(DS, model_spec(kernel_inject=False), "cuda").kernel_inject is False


def test_unknown_accelerator_is_named() -> None:
    with pytest.raises(SpecError, match="accelerator 'xpu' has no lmsweep profile"):
        engines.resolve(DS, model_spec(), "xpu")


# ---- spec validation (what is wrong on any machine) ---------------------------------------------------

SPEC = """name: tp
models:
  - source: {model}
    tensor_parallel: {tp}
prompts: ["a b c"]
task: generate
execution:
  backend: {backend}
  ranks_per_element: {ranks}
"""


@pytest.mark.parametrize("backend,tp,ranks,message", [
    ("hf", 2, 2, "models[0].tensor_parallel: tensor_parallel=2 needs execution.backend: deepspeed"),
    ("deepspeed", 2, 3, "models[0].tensor_parallel: tensor_parallel=2 does not divide "
                        "execution.ranks_per_element=3"),
])
def test_impossible_parallelism_is_a_spec_error(tmp_path, tiny_llama, backend, tp, ranks, message) -> None:
    spec = write_spec(tmp_path / "s.yaml", SPEC.format(model=tiny_llama, tp=tp, backend=backend, ranks=ranks))
    proc = cli("validate", str(spec), cwd=tmp_path)
    assert proc.returncode == 2
    assert f"s.yaml:4: {message}" in proc.stderr


# ---- a crash on one rank ends the element ----------------------------------------------------------

CRASH = """
from lmsweep.runner.distributed import abort_on_crash, discover
world = discover()
abort_on_crash(world)
if world.rank == 1:
    raise RuntimeError("rank 1 broke")
world.allgather(world.rank)      # rank 0 would wait here forever for rank 1
"""


def test_an_uncaught_error_on_one_rank_aborts_the_others_instead_of_hanging(tmp_path) -> None:
    mpiexec = Path(sys.executable).with_name("mpiexec")
    start = time.monotonic()
    proc = subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-c", CRASH], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode != 0
    assert "RuntimeError: rank 1 broke" in proc.stderr
    assert time.monotonic() - start < 60
