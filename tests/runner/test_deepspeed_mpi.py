"""Workers as MPI ranks with DeepSpeed inference, end to end: real `mpiexec`, `torchrun`, DeepSpeed (CPU
accelerator, gloo) and the tiny random Llama (grouped-query attention) built offline.

The first tensor-parallel run on a machine compiles DeepSpeed's shared-memory op (~70 s) into
~/.cache/lmsweep/torch_extensions/<versions>; later runs load it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers.cli import cli, write_spec

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
# Two cores shared by every rank: one thread each, or the ranks fight over the cores.
RANK_ENV = {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}

PROMPTS = ["Shakespeare was a", "My dog really wanted to eat", "I skip across the", "Once upon a time",
           "The capital of France is", "No, I am your", "This game is great"]

SPEC = """name: {name}
models:
  - alias: tiny
    source: {model}
    dtype: {dtype}
    tensor_parallel: {tp}
prompts: {prompts}
task: generate
decoding:
  max_new_tokens: 8
  include:
    - {{}}               # greedy
{beams}execution:
  backend: {backend}
  ranks_per_element: {ranks}
  batch_size: 4
"""
# Beam search: DeepSpeed's engine refuses it (its fused kernels cannot reorder their KV cache); without
# kernel injection lmsweep calls the sharded transformers model itself, so beams work under TP too.
BEAMS = "    - {num_beams: 2}\n"


def spec_text(name: str, model: Path, *, backend: str = "deepspeed", tp: int = 1, ranks: int = 1,
              dtype: str = "float32", beams: bool = True, prompts: list[str] = PROMPTS) -> str:
    return SPEC.format(name=name, model=model, dtype=dtype, tp=tp, prompts=json.dumps(prompts), backend=backend,
                       ranks=ranks, beams=BEAMS if beams else "")


def plan(tmp: Path, name: str, model: Path, **kw) -> Path:
    """Write the spec and its plan (in this process: `lmsweep plan` itself is tested elsewhere)."""
    from lmsweep.jobs.plan import plan_spec, write_plan
    from lmsweep.jobs.spec import load_spec

    spec = write_spec(tmp / f"{name}.yaml", spec_text(name, model, **kw))
    write_plan(plan_spec(load_spec(spec)), tmp / "runs" / name)
    return tmp / "runs" / name


def worker(exp: Path, ranks: int = 1, launcher: str = "mpiexec") -> subprocess.CompletedProcess:
    """One element, launched the way a batch script launches it."""
    args = ["worker", "--plan", str(exp), "--element", "0"]
    if launcher == "mpiexec":
        cmd = [str(BIN / "mpiexec"), "-n", str(ranks), sys.executable, "-m", "lmsweep", *args]
    elif launcher == "torchrun":
        cmd = [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={ranks}", "-m", "lmsweep", *args]
    else:
        cmd = [sys.executable, "-m", "lmsweep", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=800, env={**os.environ, **RANK_ENV})


def raw_rows(exp: Path) -> pa.Table:
    """Every row of every part file, without the loader's de-duplication (which would hide a double write)."""
    parts = sorted((exp / "results" / "task=generate").glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(p, columns=["unit_id", "rank", "device", "backend", "token_ids"])
                             for p in parts])


def tokens(exp: Path) -> dict[str, list[int]]:
    rows = raw_rows(exp).to_pylist()
    return {r["unit_id"]: r["token_ids"] for r in rows}


def planned_ids(exp: Path) -> list[str]:
    return pq.read_table(exp / "plan.parquet", columns=["unit_id"]).column("unit_id").to_pylist()


def meta(exp: Path, rank: int | None = None) -> dict:
    name = "element-00000.json" if rank is None else f"element-00000-rank-{rank:04d}.json"
    return json.loads((exp / "meta" / name).read_text())


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ds")


@pytest.fixture(scope="module")
def hf_run(work, tiny_llama) -> Path:
    """The reference: the plain transformers backend in one process."""
    exp = plan(work, "hf", tiny_llama, backend="hf")
    ok(worker(exp, launcher="single"))
    return exp


@pytest.fixture(scope="module")
def ds_three_ranks(work, tiny_llama) -> tuple[Path, subprocess.CompletedProcess]:
    """deepspeed, TP=1, `mpiexec -n 3`: three groups of one rank each."""
    exp = plan(work, "ds3", tiny_llama, ranks=3)
    return exp, ok(worker(exp, ranks=3))


@pytest.fixture(scope="module")
def ds_tp2(work, tiny_llama) -> tuple[Path, subprocess.CompletedProcess]:
    """deepspeed, TP=2, 2 ranks, started by `lmsweep run` (the local backend launches `mpiexec -n 2`)."""
    spec = write_spec(work / "tp2.yaml", spec_text("tp2", tiny_llama, tp=2, ranks=2))
    proc = cli("run", str(spec), "--output-dir", str(work / "runs"), "--quiet", env=RANK_ENV)
    return work / "runs" / "tp2", ok(proc)


def test_three_ranks_cover_every_unit_exactly_once(ds_three_ranks) -> None:
    exp, proc = ds_three_ranks
    rows = raw_rows(exp)
    ids = rows.column("unit_id").to_pylist()
    assert len(ids) == len(set(ids)), "a unit was written twice"
    assert sorted(ids) == sorted(planned_ids(exp)), "a unit is missing or unplanned"
    per_rank = sorted(rows.column("rank").value_counts().to_pylist(), key=lambda d: d["values"])
    assert [(d["values"], d["counts"]) for d in per_rank] == [(0, 5), (1, 5), (2, 4)]   # 14 units round-robin
    element = meta(exp)
    assert element["world_size"] == 3 and element["tensor_parallel"] == {"tp": 1, "groups": 3}
    assert element["mpi_library"].startswith("MPICH")
    assert [r["units_run"] for r in element["ranks"]] == [5, 5, 4]
    assert meta(exp, 2)["world"]["local_size"] == 3 and meta(exp, 2)["world"]["launcher"] == "mpi"


def test_deepspeed_equals_hf_token_for_token(hf_run, ds_three_ranks) -> None:
    exp, _ = ds_three_ranks
    assert tokens(exp) == tokens(hf_run)
    assert set(raw_rows(exp).column("backend").to_pylist()) == {"deepspeed"}
    assert set(raw_rows(exp).column("device").to_pylist()) == {"cpu"}


def test_resume_on_fewer_ranks_runs_only_what_is_missing_once(work, ds_three_ranks, hf_run) -> None:
    """Rank 2's share is lost; a rerun on 2 ranks splits exactly those units between its two ranks."""
    src, _ = ds_three_ranks
    exp = work / "runs" / "resume"
    shutil.copytree(src, exp)
    parts = exp / "results" / "task=generate"
    rank2 = list(parts.glob("part-e00000-r0002-*.parquet"))
    lost = set(pa.concat_tables([pq.read_table(p) for p in rank2]).column("unit_id").to_pylist())
    assert len(lost) == 4
    for p in rank2:
        p.unlink()
    before = {p.name for p in parts.glob("part-*.parquet")}
    ok(worker(exp, ranks=2))
    new = pa.concat_tables([pq.read_table(parts / n) for n in
                            {p.name for p in parts.glob("part-*.parquet")} - before])
    assert sorted(new.column("unit_id").to_pylist()) == sorted(lost)
    assert sorted(set(new.column("rank").to_pylist())) == [0, 1]
    rows = raw_rows(exp)
    assert sorted(rows.column("unit_id").to_pylist()) == sorted(planned_ids(exp))
    assert tokens(exp) == tokens(hf_run)


def test_tensor_parallel_2_equals_tensor_parallel_1(ds_three_ranks, ds_tp2) -> None:
    tp1, _ = ds_three_ranks
    tp2, _ = ds_tp2
    assert tokens(tp2) == tokens(tp1)
    rows = raw_rows(tp2)
    assert set(rows.column("rank").to_pylist()) == {0}            # only the group leader writes
    assert rows.num_rows == len(planned_ids(tp2))
    leader, follower = meta(tp2, 0), meta(tp2, 1)
    assert follower["units_run"] == leader["units_run"] == 14     # both ranks ran every batch
    assert leader["backend_config"]["init_inference"] == {
        "dtype": "float32", "tensor_parallel": {"tp_size": 2}, "replace_with_kernel_inject": False}
    assert leader["backend_config"]["comm_backend"] == "gloo"
    assert follower["tensor_parallel"]["group_ranks"] == [0, 1] and not follower["tensor_parallel"]["leader"]


def test_compare_of_hf_and_tensor_parallel_2_finds_zero_diffs(hf_run, ds_tp2) -> None:
    """`lmsweep compare` across backends: the backend is not part of a unit's id, so the runs join on
    unit_id and every sequence (greedy and beam) must match."""
    tp2, _ = ds_tp2
    proc = cli("compare", str(hf_run), str(tp2))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "backend hf → deepspeed" in proc.stdout and "joined on unit_id" in proc.stdout
    md = (tp2 / "reports" / "compare.md").read_text()
    n = len(planned_ids(tp2))
    assert f"{n}/{n} sequences identical" in md and "| units on one side only | 0 |" in md
    assert (tp2 / "reports" / "compare-units.csv").read_text().strip().count("\n") == 0   # header only: none flagged


def test_two_tensor_parallel_groups_in_one_element_stay_apart(work, tiny_llama, hf_run) -> None:
    """4 ranks, TP=2: groups {0,1} and {2,3}. DeepSpeed's CPU shared-memory all-reduce spans the whole
    node and would mix the groups (measured: wrong tokens, then a hang); lmsweep routes around it."""
    exp = plan(work, "tp2x2", tiny_llama, tp=2, ranks=4)
    ok(worker(exp, ranks=4))
    rows = raw_rows(exp)
    assert sorted(rows.column("unit_id").to_pylist()) == sorted(planned_ids(exp))
    assert set(rows.column("rank").to_pylist()) == {0, 2}
    assert tokens(exp) == tokens(hf_run)


def test_torchrun_launcher_gives_the_same_tokens(work, tiny_llama, hf_run) -> None:
    exp = plan(work, "torchrun", tiny_llama, tp=2, ranks=2)
    ok(worker(exp, ranks=2, launcher="torchrun"))
    assert tokens(exp) == tokens(hf_run)
    world = meta(exp, 1)["world"]
    assert (world["launcher"], world["rank"], world["world_size"], world["hosts"]) == \
        ("env", 1, 2, [world["hosts"][0]] * 2)


def test_gpu_only_request_on_cpu_fails_before_any_work(work, tiny_llama) -> None:
    exp = plan(work, "fp16", tiny_llama, dtype="float16", tp=2, ranks=2)
    proc = worker(exp, ranks=2)
    assert proc.returncode == 2
    assert ("fp16.yaml: models[0].dtype: dtype float16 with backend deepspeed needs a CUDA GPU; this rank has "
            "accelerator cpu (it supports float32, bfloat16)") in proc.stderr
    assert not (exp / "results").exists() and not (exp / "meta").exists()
    assert "loaded model" not in proc.stderr


def test_kernel_injection_on_cpu_fails_through_lmsweep_run(work, tiny_llama) -> None:
    spec = write_spec(work / "inject.yaml", spec_text("inject", tiny_llama, prompts=["a b"])
                      .replace("    tensor_parallel: 1\n", "    tensor_parallel: 1\n    kernel_inject: true\n"))
    proc = cli("run", str(spec), "--output-dir", str(work / "runs"), "--quiet", env=RANK_ENV)
    assert proc.returncode == 2
    assert "models[0].kernel_inject: kernel injection needs a CUDA GPU" in proc.stderr
    assert not (work / "runs" / "inject" / "results").exists()


def test_tensor_parallel_for_an_architecture_autotp_cannot_shard_fails_clearly(work) -> None:
    gpt2 = _tiny_gpt2(work / "tiny-gpt2")
    exp = plan(work, "gpt2tp", gpt2, tp=2, ranks=2)
    proc = worker(exp, ranks=2)
    assert proc.returncode == 2
    assert "models[0].tensor_parallel: tensor_parallel=2: DeepSpeed AutoTP cannot shard architecture gpt2" \
        in proc.stderr
    assert "needs kernel injection, which needs a CUDA GPU" in proc.stderr
    assert not (exp / "results").exists()


def _tiny_gpt2(path: Path) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from helpers.tiny_models import make_tokenizer

    path.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(path)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=256,
                               initializer_range=0.5, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                               pad_token_id=tok.pad_token_id)).save_pretrained(path)
    return path


# ---- GPU-only paths: run unchanged on a CUDA node (e.g. a Polaris debug node), skipped elsewhere ----------

def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


GPU_ENV = {"DS_ACCELERATOR": "cuda"}


def gpu_worker(exp: Path, ranks: int = 1) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "mpiexec"), "-n", str(ranks), sys.executable, "-m", "lmsweep", "worker", "--plan", str(exp),
           "--element", "0"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=800,
                          env={**os.environ, **RANK_ENV, **GPU_ENV})


def _agreement(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return sum(a[k] == b[k] for k in a) / len(a)


@pytest.mark.cuda
@pytest.mark.skipif(_gpus() == 0, reason="needs a CUDA GPU")
def test_fp16_with_kernel_injection_on_a_gpu(work) -> None:
    """Injection is automatic on CUDA where DeepSpeed has a policy (GPT-2 has one); fused fp16 kernels
    round differently from transformers, so greedy text must agree on most, not all, units."""
    gpt2 = _tiny_gpt2(work / "gpu-gpt2")
    hf = plan(work, "gpu-hf16", gpt2, backend="hf", dtype="float16", beams=False)
    ds = plan(work, "gpu-ds16", gpt2, dtype="float16", beams=False)
    ok(gpu_worker(hf))
    ok(gpu_worker(ds))
    m = meta(ds, 0)
    assert m["backend_config"]["init_inference"]["replace_with_kernel_inject"] is True
    assert m["binding"]["device"] == "cuda:0" and m["accelerator"] == "cuda"
    assert set(raw_rows(ds).column("device").to_pylist()) == {"cuda:0"}
    assert _agreement(tokens(ds), tokens(hf)) >= 0.8


@pytest.mark.cuda
@pytest.mark.skipif(_gpus() < 2, reason="needs 2 CUDA GPUs")
def test_tensor_parallel_over_nccl_equals_one_gpu(work, tiny_llama) -> None:
    one = plan(work, "gpu-tp1", tiny_llama, beams=False)
    two = plan(work, "gpu-tp2", tiny_llama, tp=2, ranks=2, beams=False)
    ok(gpu_worker(one))
    ok(gpu_worker(two, ranks=2))
    assert meta(two, 0)["backend_config"]["comm_backend"] == "nccl"
    assert [r["device"] for r in meta(two)["ranks"]] == ["cuda:0", "cuda:1"]
    assert tokens(two) == tokens(one)


@pytest.mark.cuda
@pytest.mark.skipif(_gpus() < 2, reason="needs 2 CUDA GPUs")
def test_each_rank_binds_its_own_gpu_by_local_rank(work, tiny_llama) -> None:
    exp = plan(work, "gpu-bind", tiny_llama, ranks=2, beams=False)
    ok(gpu_worker(exp, ranks=2))
    rows = raw_rows(exp).to_pylist()
    assert {(r["rank"], r["device"]) for r in rows} == {(0, "cuda:0"), (1, "cuda:1")}


@pytest.mark.cuda
@pytest.mark.skipif(_gpus() < 2, reason="needs 2 CUDA GPUs")
def test_gpt2_tensor_parallel_runs_with_kernel_injection(work) -> None:
    """The architecture AutoTP refuses on CPU is sharded by its kernel policy on GPUs."""
    gpt2 = _tiny_gpt2(work / "gpu-gpt2-tp")
    exp = plan(work, "gpu-gpt2-tp2", gpt2, tp=2, ranks=2, dtype="float16", beams=False)
    ok(gpu_worker(exp, ranks=2))
    assert sorted(raw_rows(exp).column("unit_id").to_pylist()) == sorted(planned_ids(exp))
    assert meta(exp, 0)["backend_config"]["init_inference"]["replace_with_kernel_inject"] is True
