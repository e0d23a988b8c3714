"""Benchmark: load an experiment of many small part files, as a long sweep on many ranks leaves it.

    python -m benchmarks.results [--files 10000] [--rows-per-file 5] [--dir DIR]

Builds a real plan (jobs.plan.build_plan on a synthetic spec) and writes schema-valid `generate` rows
with the real PartWriter, one part file per call as workers do; then times `results.load` (one pyarrow
dataset scan) against a naive per-file `pd.read_parquet` loop, and checks both give the same rows.
Files are read from the page cache (they were just written); a cold shared filesystem is slower for both.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

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


def run(files: int, rows_per_file: int, directory: Path, elements: int = 20, repeat: int = 1,
        reuse: bool = False) -> dict:
    """Write (unless reusing a previous bench directory of the same size), then time each reader
    `repeat` times, alternating, so a machine busy with other work slows both alike; medians reported."""
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
    t_load, t_status, t_naive, c_load, c_naive = [], [], [], [], []
    for _ in range(repeat):
        df, t, c = timed(lambda: load(exp))
        t_load.append(t)
        c_load.append(c)
        st, t, _ = timed(lambda: status(exp))
        t_status.append(t)
        naive, t, c = timed(lambda: naive_load(exp))
        t_naive.append(t)
        c_naive.append(c)
        assert len(df) == len(naive) == n_units == st.done, (len(df), len(naive), n_units, st.done)
        assert set(df["unit_id"]) == set(naive["unit_id"])
    med = {k: statistics.median(v) for k, v in (("load", t_load), ("status", t_status), ("naive", t_naive),
                                                 ("load_cpu", c_load), ("naive_cpu", c_naive))}
    return {"files": n_files, "rows": len(df), "columns": df.shape[1], "repeat": repeat,
            "write_s": round(t_write, 2) if t_write is not None else None, "load_s": round(med["load"], 3),
            "status_s": round(med["status"], 3), "naive_s": round(med["naive"], 3),
            "naive_over_load": round(med["naive"] / med["load"], 1), "load_cpu_s": round(med["load_cpu"], 2),
            "naive_cpu_s": round(med["naive_cpu"], 2), "cpu_ratio": round(med["naive_cpu"] / med["load_cpu"], 1),
            "load_runs_s": [round(t, 2) for t in t_load], "naive_runs_s": [round(t, 2) for t in t_naive]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.results", description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--rows-per-file", type=int, default=5)
    ap.add_argument("--dir", help="where to build the experiment (default: a temporary directory, removed)")
    ap.add_argument("--repeat", type=int, default=1, help="time each reader this many times (median)")
    ap.add_argument("--reuse", action="store_true", help="reuse the parts a previous run left in --dir")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    tmp = None
    directory = Path(args.dir) if args.dir else Path(tmp := tempfile.mkdtemp(prefix="lmsweep-bench-"))
    try:
        r = run(args.files, args.rows_per_file, directory, repeat=args.repeat, reuse=args.reuse)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(r))
    else:
        written = f" (written in {r['write_s']} s)" if r["write_s"] is not None else " (reused)"
        print(f"{r['files']} part files, {r['rows']} rows × {r['columns']} columns{written}; "
              f"median of {r['repeat']} run(s)")
        print(f"results.load:               {r['load_s']:8.3f} s wall {r['load_cpu_s']:8.2f} s CPU")
        print(f"naive pd.read_parquet loop: {r['naive_s']:8.3f} s wall {r['naive_cpu_s']:8.2f} s CPU")
        print(f"ratio naive / load:         {r['naive_over_load']:8.1f}x wall {r['cpu_ratio']:7.1f}x CPU")
        print(f"results.status:             {r['status_s']:8.3f} s wall")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
