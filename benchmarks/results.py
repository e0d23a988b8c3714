"""Benchmark: results at cluster scale, in one run.

    python -m benchmarks.results [--files 10000] [--rows-per-file 5] [--rows 1000000] [--attention-mb 600]
                                 [--memory-limit 256MB] [--only parts,large,rowgroups,attention]
                                 [--dir DIR --reuse]

Three parts, each on data written with the real writer code (PartWriter / write_atomic, temp name, fsync,
rename) on a real plan (jobs.plan.build_plan on a synthetic spec):

- parts: `--files` part files of `--rows-per-file` generate rows, as a long sweep on many ranks leaves them;
  times `results.load` (one pyarrow dataset scan) against a naive per-file `pd.read_parquet` loop and
  `results.status`, then compacts a copy (results/compact.py, `lmsweep results --compact`) and times
  `load` and `status` again on it.
- large: a `--rows` generate experiment (20 elements, written as parts of 5,000 rows, then compacted);
  `load` runs in a child process so its peak memory (ru_maxrss) is its own.
- rowgroups (not in the default run): the large experiment's files rewritten with row groups of 16 Ki,
  128 Ki (compaction's choice) and 1 Mi rows, each loaded in full, filtered and aggregated with DuckDB.
- attention: a synthetic attention experiment of `--attention-mb` MB of float16 weights (causal softmax
  rows), aggregated with DuckDB through `lmsweep.scan` under `SET memory_limit` (mean attention to the
  first token per layer and head), in a child process: its peak RSS against the data size.

Files are read from the page cache (they were just written); a cold shared filesystem is slower.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lmsweep.jobs.model_sources import ModelRef
from lmsweep.jobs.plan import build_plan, write_plan
from lmsweep.jobs.prompts import Prompt
from lmsweep.jobs.spec import ExperimentSpec
from lmsweep.results.load import load, status
from lmsweep.results.schema import SCHEMA_VERSION
from lmsweep.results.writer import PartWriter, results_dir

POINTS = 10


def synthetic_plan(n_units: int, elements: int):
    """A generate sweep of n_units units (prompts × POINTS decoding points) in about `elements` elements."""
    n_prompts = -(-n_units // POINTS)
    spec = ExperimentSpec.model_validate({
        "name": "bench", "models": [{"alias": "synthetic", "source": "synthetic/model"}],
        "prompts": [{"name": "p", "items": ["x"]}], "task": "generate",
        "decoding": {"max_new_tokens": 16, "repetition_penalty": [1.0 + i / 10 for i in range(POINTS)]},
        "execution": {"max_units_per_element": -(-n_units // elements), "max_units": max(n_units, 1)},
    })
    prompts = [Prompt("p", f"q{i}", f"synthetic prompt number {i}", None, "{}", None, False)
               for i in range(n_prompts)]
    ref = ModelRef("synthetic/model", "dir", "/nonexistent", "sha256:" + "0" * 24)
    return build_plan(spec, {"synthetic": ref}, prompts)


def write_parts(exp: Path, plan, rows_per_file: int, seed: int = 0) -> int:
    """Write every planned unit as rows, `rows_per_file` units per part file, with PartWriter."""
    rng = random.Random(seed)
    units = plan.units.to_pylist()
    points = plan.points
    now = datetime.now(timezone.utc)
    files = 0
    writers: dict[int, PartWriter] = {}
    for start in range(0, len(units), rows_per_file):
        batch = units[start:start + rows_per_file]
        element = batch[0]["element"]
        writer = writers.setdefault(element, PartWriter(exp, "generate", element, 0))
        rows = []
        for u in batch:
            p = plan.prompts[u["prompt_index"]]
            point = points[u["point"]]
            ids = [rng.randrange(50_000) for _ in range(rng.randint(1, 16))]
            rows.append({
                "experiment": plan.experiment, "spec_hash": plan.spec_hash, "unit_id": u["unit_id"],
                "unit_key": u["unit_key"], "element": element, "rank": 0, "model": u["model"],
                "model_source": "synthetic/model", "model_fingerprint": "sha256:" + "0" * 24, "backend": "hf",
                "prompt_set": p.set, "prompt_id": p.id, "prompt_text": p.text, "label": None,
                "variant": u["variant"], "point": u["point"], "decoding": point.label(), "seed": u["seed"],
                **point.model_dump(), "num_prompt_tokens": 6, "batch_size": len(batch),
                "batch_latency_s": rng.uniform(0.1, 2.0), "host": "bench", "finished_at": now,
                "schema_version": SCHEMA_VERSION, "sequence_index": 0, "text": " ".join(map(str, ids)),
                "token_ids": ids, "num_new_tokens": len(ids), "finish_reason": rng.choice(["eos", "length"]),
                "tokens_per_s": rng.uniform(10, 100),
            })
        writer.write(rows)
        files += 1
    return files


def naive_load(exp: Path) -> pd.DataFrame:
    """What a script without lmsweep might do: one pd.read_parquet per file, then concat."""
    files = sorted(results_dir(exp, "generate").glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def timed(fn):
    """(result, wall seconds, CPU seconds of this process's threads): CPU time is what a busy shared
    machine distorts least."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def child(code: str, *args: str) -> dict:
    """Run `code` in a fresh interpreter (its JSON on stdout), so its peak memory is its own."""
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.splitlines()[-1])


# What the child processes run: imports first (their memory is the baseline), then the measured call.
# Peak memory is VmHWM of /proc/self/status: ru_maxrss survives exec, so a child would report its parent's.
_MEASURE = """
import json, sys, time
import pandas, pyarrow, duckdb
import lmsweep
from lmsweep.results import load, scan
def hwm():
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
base = hwm()
t0, c0 = time.perf_counter(), time.process_time()
out = {}
"""
_MEASURE_END = """
out.update(wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0, baseline_rss_mb=base,
           peak_rss_mb=hwm())
print(json.dumps(out))
"""
LOAD_CHILD = _MEASURE + """
df = lmsweep.load(sys.argv[1])
out.update(rows=len(df), columns=df.shape[1], dataframe_mb=df.memory_usage(deep=False).sum() / 2**20)
""" + _MEASURE_END
FIRST_TOKEN_SQL = """
SELECT layer, head, avg(list_avg([attention[q * seq_len + 1] FOR q IN range(seq_len)])) AS first_token
FROM results GROUP BY layer, head ORDER BY layer, head
"""
SQL_CHILD = _MEASURE + """
con = scan.connect(memory_limit=sys.argv[2], threads=2)
df = scan.sql(sys.argv[1], sys.argv[3], con=con)
out.update(means={f"{r.layer},{r.head}": float(r.first_token) for r in df.itertuples()})
""" + _MEASURE_END


def bench_parts(files: int, rows_per_file: int, directory: Path, elements: int = 20, repeat: int = 1,
                reuse: bool = False) -> dict:
    """Write (unless reusing a previous bench directory of the same size), then time each reader
    `repeat` times, alternating, so a machine busy with other work slows both alike; medians reported.
    Then compact a copy and time load and status on it."""
    from lmsweep.results.compact import compact_experiment

    exp = directory / "bench"
    n_units = files * rows_per_file
    t_write = None
    if not (reuse and (exp / "plan.json").is_file() and json.loads((exp / "plan.json").read_text())["n_units"]
            == n_units):
        shutil.rmtree(exp, ignore_errors=True)
        t0 = time.perf_counter()
        plan = synthetic_plan(n_units, elements)
        write_plan(plan, exp)
        write_parts(exp, plan, rows_per_file)
        t_write = time.perf_counter() - t0
    n_files = len(list(results_dir(exp, "generate").glob("*.parquet")))
    t_load, t_status, t_naive, c_load, c_naive, c_status = [], [], [], [], [], []
    for _ in range(repeat):
        df, t, c = timed(lambda: load(exp))
        t_load.append(t)
        c_load.append(c)
        st, t, c = timed(lambda: status(exp))
        t_status.append(t)
        c_status.append(c)
        naive, t, c = timed(lambda: naive_load(exp))
        t_naive.append(t)
        c_naive.append(c)
        assert len(df) == len(naive) == n_units == st.done, (len(df), len(naive), n_units, st.done)
        assert set(df["unit_id"]) == set(naive["unit_id"])

    compacted = directory / "bench-compacted"
    shutil.rmtree(compacted, ignore_errors=True)
    shutil.copytree(exp, compacted)
    (merged, _), t_compact, _ = timed(lambda: compact_experiment(compacted))
    ct_load, cc_load, ct_status, cc_status = [], [], [], []
    for _ in range(repeat):
        cdf, t, c = timed(lambda: load(compacted))
        ct_load.append(t)
        cc_load.append(c)
        cst, t, c = timed(lambda: status(compacted))
        ct_status.append(t)
        cc_status.append(c)
    assert len(cdf) == n_units and cst.done == n_units
    pd.testing.assert_frame_equal(cdf.drop(columns=[]), df)
    med = {k: statistics.median(v) for k, v in (
        ("load", t_load), ("status", t_status), ("naive", t_naive), ("load_cpu", c_load), ("naive_cpu", c_naive),
        ("status_cpu", c_status), ("c_load", ct_load), ("c_load_cpu", cc_load), ("c_status", ct_status),
        ("c_status_cpu", cc_status))}
    r = {k: round(v, 3) for k, v in med.items()}
    return {"files": n_files, "rows": len(df), "columns": df.shape[1], "repeat": repeat,
            "write_s": round(t_write, 2) if t_write is not None else None, "load_s": r["load"],
            "load_cpu_s": r["load_cpu"], "status_s": r["status"], "status_cpu_s": r["status_cpu"],
            "naive_s": r["naive"], "naive_cpu_s": r["naive_cpu"],
            "naive_over_load": round(med["naive"] / med["load"], 1),
            "cpu_ratio": round(med["naive_cpu"] / med["load_cpu"], 1),
            "compact_s": round(t_compact, 2), "compacted_files": len(merged),
            "compacted_load_s": r["c_load"], "compacted_load_cpu_s": r["c_load_cpu"],
            "compacted_status_s": r["c_status"], "compacted_status_cpu_s": r["c_status_cpu"],
            "load_runs_s": [round(t, 2) for t in t_load], "naive_runs_s": [round(t, 2) for t in t_naive]}


def generate_rows(plan, units: pa.Table, rng: np.random.Generator) -> pa.Table:
    """Schema-valid generate rows for `units` (a slice of plan.units), built column by column."""
    from lmsweep.results.schema import schema_for

    n = units.num_rows
    lengths = rng.integers(1, 17, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    ids = rng.integers(0, 50_000, int(offsets[-1]), dtype=np.int32)
    words = np.array([f"w{i}" for i in range(1000)])
    text = [" ".join(words[ids[a:b] % 1000]) for a, b in zip(offsets[:-1], offsets[1:])]
    prompts = pa.array([p.text for p in plan.prompts]).take(units.column("prompt_index"))
    points = plan.points
    labels = pa.array([pt.label() for pt in points]).take(units.column("point"))
    penalty = pa.array([pt.repetition_penalty for pt in points], pa.float64()).take(units.column("point"))
    now = pa.array(np.full(n, np.datetime64(datetime.now(timezone.utc).replace(tzinfo=None), "ms")),
                   pa.timestamp("ms", tz="UTC"))
    cols = {
        "experiment": pa.array([plan.experiment] * n), "spec_hash": pa.array([plan.spec_hash] * n),
        "unit_id": units.column("unit_id"), "unit_key": units.column("unit_key"),
        "element": units.column("element"), "rank": pa.array(np.zeros(n, np.int32)), "model": units.column("model"),
        "model_source": pa.array(["synthetic/model"] * n), "backend": pa.array(["hf"] * n),
        "prompt_set": pa.array(["p"] * n), "prompt_text": prompts, "variant": units.column("variant"),
        "point": units.column("point"), "decoding": labels, "do_sample": pa.array(np.zeros(n, bool)),
        "num_beams": pa.array(np.ones(n, np.int32)), "repetition_penalty": penalty,
        "max_new_tokens": pa.array(np.full(n, 16, np.int32)), "num_prompt_tokens": pa.array(np.full(n, 6, np.int32)),
        "batch_size": pa.array(np.full(n, 64, np.int32)), "batch_latency_s": pa.array(rng.uniform(0.1, 2.0, n)),
        "host": pa.array(["bench"] * n), "finished_at": now, "schema_version": pa.array(np.ones(n, np.int32)),
        "sequence_index": pa.array(np.zeros(n, np.int32)), "text": pa.array(text),
        "token_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids)),
        "num_new_tokens": pa.array(lengths.astype(np.int32)),
        "finish_reason": pa.array(np.where(lengths == 16, "length", "eos")),
        "tokens_per_s": pa.array(rng.uniform(10, 100, n)),
    }
    schema = schema_for("generate")
    return pa.table([cols[f.name].cast(f.type) if f.name in cols else pa.nulls(n, f.type) for f in schema],
                    schema=schema)


def bench_large(rows: int, directory: Path, elements: int = 20, part_rows: int = 5000) -> dict:
    """A `rows`-row generate experiment, written as parts of `part_rows` rows, compacted, then loaded in a
    child process (wall, CPU and peak memory of the load alone)."""
    from lmsweep.results.compact import compact_experiment
    from lmsweep.results.writer import part_name, write_atomic

    exp = directory / "large"
    shutil.rmtree(exp, ignore_errors=True)
    t0 = time.perf_counter()
    plan = synthetic_plan(rows, elements)
    write_plan(plan, exp)
    units = plan.units
    rng = np.random.default_rng(0)
    parts = 0
    for start in range(0, units.num_rows, part_rows):
        batch = units.slice(start, part_rows)
        for element in pc.unique(batch.column("element")).to_pylist():
            rows_of = batch.filter(pc.equal(batch.column("element"), element))
            write_atomic(generate_rows(plan, rows_of, rng), results_dir(exp, "generate"), part_name(element, 0))
            parts += 1
    t_write = time.perf_counter() - t0
    (merged, _), t_compact, _ = timed(lambda: compact_experiment(exp))
    files = list(results_dir(exp, "generate").glob("*.parquet"))
    size = sum(p.stat().st_size for p in files)
    r = child(LOAD_CHILD, str(exp))
    assert r["rows"] == rows, r
    return {"rows": rows, "parts_written": parts, "write_s": round(t_write, 1), "compact_s": round(t_compact, 1),
            "files": len(files), "mb_on_disk": round(size / 2**20, 1), "load_s": round(r["wall_s"], 2),
            "load_cpu_s": round(r["cpu_s"], 2), "peak_rss_mb": round(r["peak_rss_mb"]),
            "baseline_rss_mb": round(r["baseline_rss_mb"]), "dataframe_mb": round(r["dataframe_mb"])}


ROWGROUP_CHILD = _MEASURE + """
con = scan.connect(threads=2)
t1 = time.perf_counter()
n = scan.sql(sys.argv[1], "SELECT decoding, avg(num_new_tokens) FROM results GROUP BY 1", con=con)
out.update(sql_s=time.perf_counter() - t1)
t1 = time.perf_counter()
df = lmsweep.load(sys.argv[1], columns=["unit_id", "decoding", "num_new_tokens"],
                  filters=[("decoding", "=", "greedy")])
out.update(filtered_load_s=time.perf_counter() - t1, filtered_rows=len(df))
t0, c0 = time.perf_counter(), time.process_time()
df = lmsweep.load(sys.argv[1])
out.update(rows=len(df))
""" + _MEASURE_END


def bench_row_groups(directory: Path, sizes=(16_384, 131_072, 1_048_576)) -> list[dict]:
    """The large experiment's compacted files rewritten with each row-group size: a full load (wall, CPU,
    peak memory), a DuckDB aggregate and a filtered, projected load, each in a fresh process."""
    src = directory / "large"
    out = []
    for rows in sizes:
        exp = directory / f"large-rg{rows}"
        shutil.rmtree(exp, ignore_errors=True)
        shutil.copytree(src, exp)
        for path in results_dir(exp, "generate").glob("*.parquet"):
            table = pq.read_table(path)
            pq.write_table(table, path, row_group_size=rows, write_page_checksum=True)
        r = child(ROWGROUP_CHILD, str(exp))
        out.append({"row_group_rows": rows, "load_s": round(r["wall_s"], 2), "load_cpu_s": round(r["cpu_s"], 2),
                    "peak_rss_mb": round(r["peak_rss_mb"]), "sql_s": round(r["sql_s"], 2),
                    "filtered_load_s": round(r["filtered_load_s"], 2)})
        shutil.rmtree(exp, ignore_errors=True)
    return out


def attention_plan(directory: Path, units: int, layers: int, heads: int, seq_len: int):
    """An attention sweep over `units` prompts of one synthetic model (a config.json is all planning reads)."""
    model = directory / "attention-model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": heads}))
    spec = ExperimentSpec.model_validate({
        "name": "attention", "models": [{"alias": "synthetic", "source": str(model)}],
        "prompts": [{"name": "p", "items": ["x"]}],
        "task": {"type": "attention", "max_tokens": seq_len, "max_storage_mb": 1e9},
        "execution": {"max_units": units + 1}})
    prompts = [Prompt("p", f"q{i}", " ".join(["tok"] * seq_len), None, "{}", None, False) for i in range(units)]
    ref = ModelRef(str(model), "dir", str(model), "sha256:" + "0" * 24)
    return build_plan(spec, {"synthetic": ref}, prompts)


def attention_rows(plan, unit: dict, layers: int, heads: int, seq_len: int, rng: np.random.Generator) -> pa.Table:
    """One unit's rows (layer × head): causal softmax rows, float16, the shape the attention task writes."""
    from lmsweep.results.schema import schema_for

    n = layers * heads
    logits = rng.standard_normal((n, seq_len, seq_len), dtype=np.float32)
    logits[:, np.triu_indices(seq_len, 1)[0], np.triu_indices(seq_len, 1)[1]] = -np.inf
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights = (weights / weights.sum(-1, keepdims=True)).astype(np.float16)
    offsets = pa.array(np.arange(n + 1, dtype=np.int64) * seq_len * seq_len)
    cols = {"experiment": pa.array([plan.experiment] * n), "spec_hash": pa.array([plan.spec_hash] * n),
            "unit_id": pa.array([unit["unit_id"]] * n), "unit_key": pa.array([unit["unit_key"]] * n),
            "element": pa.array([unit["element"]] * n, pa.int32()), "model": pa.array([unit["model"]] * n),
            "layer": pa.array(np.repeat(np.arange(layers, dtype=np.int32), heads)),
            "head": pa.array(np.tile(np.arange(heads, dtype=np.int32), layers)),
            "seq_len": pa.array(np.full(n, seq_len, np.int32)),
            "attention": pa.LargeListArray.from_arrays(offsets, pa.array(weights.reshape(-1))),
            "schema_version": pa.array(np.ones(n, np.int32))}
    schema = schema_for("attention")
    return pa.table([cols[f.name].cast(f.type) if f.name in cols else pa.nulls(n, f.type) for f in schema],
                    schema=schema)


def bench_attention(mb: float, memory_limit: str, directory: Path, layers: int = 4, heads: int = 8,
                    seq_len: int = 128) -> dict:
    """Write ≈`mb` MB of attention weights (one part per unit), then aggregate them with DuckDB under
    `memory_limit` in a child process."""
    from lmsweep.results.writer import part_name, write_atomic

    per_unit = layers * heads * seq_len * seq_len * 2
    n_units = max(1, int(mb * 2**20 / per_unit))
    exp = directory / "attention"
    shutil.rmtree(exp, ignore_errors=True)
    plan = attention_plan(directory, n_units, layers, heads, seq_len)
    write_plan(plan, exp)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for unit in plan.units.to_pylist():
        write_atomic(attention_rows(plan, unit, layers, heads, seq_len, rng), results_dir(exp, "attention"),
                     part_name(unit["element"], 0))
    t_write = time.perf_counter() - t0
    disk = sum(p.stat().st_size for p in results_dir(exp, "attention").glob("*.parquet"))
    r = child(SQL_CHILD, str(exp), memory_limit, FIRST_TOKEN_SQL)
    whole = child(LOAD_CHILD, str(exp))                  # for contrast: the same rows as one DataFrame
    return {"load_peak_rss_mb": round(whole["peak_rss_mb"]), "load_s": round(whole["wall_s"], 2),
            "units": n_units, "rows": n_units * layers * heads, "seq_len": seq_len,
            "data_mb": round(n_units * per_unit / 2**20, 1), "mb_on_disk": round(disk / 2**20, 1),
            "write_s": round(t_write, 1), "memory_limit": memory_limit, "query_s": round(r["wall_s"], 2),
            "query_cpu_s": round(r["cpu_s"], 2), "peak_rss_mb": round(r["peak_rss_mb"]),
            "baseline_rss_mb": round(r["baseline_rss_mb"]), "means": r["means"]}


def progress(name: str, result):
    """Each part's figures on stderr as soon as it is done (a long run that fails later keeps them)."""
    print(json.dumps({name: result}), file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.results", description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--rows-per-file", type=int, default=5)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the large generate experiment")
    ap.add_argument("--attention-mb", type=float, default=600, help="MB of attention weights to aggregate")
    ap.add_argument("--memory-limit", default="256MB", help="DuckDB's memory_limit for the attention query")
    ap.add_argument("--only", default="parts,large,attention",
                    help="which parts to run, comma-separated: parts, large, rowgroups, attention")
    ap.add_argument("--dir", help="where to build the experiments (default: a temporary directory, removed)")
    ap.add_argument("--repeat", type=int, default=1, help="time each reader this many times (median)")
    ap.add_argument("--reuse", action="store_true", help="reuse the parts a previous run left in --dir")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    tmp = None
    directory = Path(args.dir) if args.dir else Path(tmp := tempfile.mkdtemp(prefix="lmsweep-bench-"))
    out: dict = {}
    try:
        if "parts" in only:
            out["parts"] = progress("parts", bench_parts(args.files, args.rows_per_file, directory,
                                                         repeat=args.repeat, reuse=args.reuse))
        if "large" in only:
            out["large"] = progress("large", bench_large(args.rows, directory))
        if "rowgroups" in only:
            if not (directory / "large" / "plan.json").is_file():
                bench_large(args.rows, directory)
            out["rowgroups"] = progress("rowgroups", bench_row_groups(directory))
        if "attention" in only:
            out["attention"] = progress("attention", bench_attention(args.attention_mb, args.memory_limit,
                                                                     directory))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(out))
        return 0
    if "parts" in out:
        r = out["parts"]
        written = f" (written in {r['write_s']} s)" if r["write_s"] is not None else " (reused)"
        print(f"{r['files']} part files, {r['rows']} rows × {r['columns']} columns{written}; "
              f"median of {r['repeat']} run(s)")
        print(f"results.load:               {r['load_s']:8.3f} s wall {r['load_cpu_s']:8.2f} s CPU")
        print(f"naive pd.read_parquet loop: {r['naive_s']:8.3f} s wall {r['naive_cpu_s']:8.2f} s CPU")
        print(f"ratio naive / load:         {r['naive_over_load']:8.1f}x wall {r['cpu_ratio']:7.1f}x CPU")
        print(f"results.status:             {r['status_s']:8.3f} s wall {r['status_cpu_s']:8.2f} s CPU")
        print(f"compaction into {r['compacted_files']} files:    {r['compact_s']:8.2f} s wall")
        print(f"compacted results.load:     {r['compacted_load_s']:8.3f} s wall {r['compacted_load_cpu_s']:8.2f} s CPU")
        print(f"compacted results.status:   {r['compacted_status_s']:8.3f} s wall "
              f"{r['compacted_status_cpu_s']:8.2f} s CPU")
    if "large" in out:
        r = out["large"]
        print(f"{r['rows']} generate rows ({r['parts_written']} parts compacted into {r['files']} files, "
              f"{r['mb_on_disk']} MB): load {r['load_s']} s wall {r['load_cpu_s']} s CPU, peak RSS "
              f"{r['peak_rss_mb']} MB (after imports {r['baseline_rss_mb']} MB; DataFrame {r['dataframe_mb']} MB)")
    for r in out.get("rowgroups", []):
        print(f"row groups of {r['row_group_rows']:>9} rows: load {r['load_s']} s wall {r['load_cpu_s']} s CPU, peak "
              f"RSS {r['peak_rss_mb']} MB; DuckDB group-by {r['sql_s']} s; filtered 3-column load "
              f"{r['filtered_load_s']} s")
    if "attention" in out:
        r = out["attention"]
        print(f"attention: {r['rows']} rows of {r['seq_len']}x{r['seq_len']} float16 = {r['data_mb']} MB "
              f"({r['mb_on_disk']} MB on disk); DuckDB mean attention to the first token per layer and head "
              f"under memory_limit {r['memory_limit']}: {r['query_s']} s wall, peak RSS {r['peak_rss_mb']} MB "
              f"(after imports {r['baseline_rss_mb']} MB); lmsweep.load of the same rows: peak RSS "
              f"{r['load_peak_rss_mb']} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
