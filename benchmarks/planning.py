"""Planning benchmark: time and peak memory to expand a spec into ~1,000,000 units.

Runs in a fresh subprocess so its peak RSS is the planner's own, not the benchmark's (which holds a
model). `python -m benchmarks.planning --units 1000000` prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL_SOURCE = "package:smollm2-135m-instruct"


def write_spec(directory: Path, units: int, points: int = 100) -> Path:
    """A generate spec of `points` greedy decoding points × ceil(units / points) prompts from a JSONL file."""
    n_prompts = math.ceil(units / points)
    side = int(math.isqrt(points))
    assert side * side == points, "points must be a square (two axes of equal length)"
    with open(directory / "prompts.jsonl", "w") as f:
        for i in range(n_prompts):
            f.write(json.dumps({"id": f"q{i}", "text": f"Question {i}: what is {i} times {i % 97} plus seven?"})
                    + "\n")
    max_new = [8 + i for i in range(side)]
    penalties = [round(1.0 + 0.05 * i, 2) for i in range(side)]
    spec = directory / "plan-bench.yaml"
    spec.write_text(
        "name: plan-bench\n"
        f"models: [{{alias: smollm2, source: '{MODEL_SOURCE}'}}]\n"
        "prompts: [{name: qs, file: prompts.jsonl}]\n"
        "task: generate\n"
        f"decoding: {{max_new_tokens: {max_new}, repetition_penalty: {penalties}}}\n"
        f"execution: {{max_units: {max(units, 1) * 2}, walltime: '04:00:00'}}\n")
    return spec


def measure(spec_path: Path, write: bool) -> dict:
    """Plan `spec_path` in this process: load + validate + expand (+ write the plan files)."""
    from lmsweep.jobs.plan import plan_spec, write_plan
    from lmsweep.jobs.spec import load_spec

    start, cpu = time.perf_counter(), time.process_time()
    spec = load_spec(spec_path)
    plan = plan_spec(spec)
    out = {"units": plan.n_units, "elements": len(plan.elements), "plan_seconds": time.perf_counter() - start,
           "plan_cpu_seconds": time.process_time() - cpu}
    if write:
        t = time.perf_counter()
        write_plan(plan, spec_path.parent / "exp")
        out["write_seconds"] = time.perf_counter() - t
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not getrusage: Linux carries ru_maxrss across fork+exec, so a child
    of a process holding a model would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_subprocess(units: int, write: bool = True) -> dict:
    """Measure in a fresh interpreter (imports included in RSS, not in time)."""
    with tempfile.TemporaryDirectory(prefix="lmsweep-plan-bench-") as tmp:
        spec = write_spec(Path(tmp), units)
        cmd = [sys.executable, "-m", "benchmarks.planning", "--spec", str(spec)] + (["--write"] if write else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"planning benchmark failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--units", type=int, default=1_000_000)
    p.add_argument("--spec", type=Path, help="(internal) plan this spec in this process")
    p.add_argument("--write", action="store_true", help="also write plan.parquet/plan.json")
    p.add_argument("--profile", action="store_true", help="print a cProfile of the planning")
    args = p.parse_args(argv)
    if args.spec:
        if args.profile:
            import cProfile
            import pstats
            prof = cProfile.Profile()
            prof.enable()
            out = measure(args.spec, args.write)
            prof.disable()
            pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
        else:
            out = measure(args.spec, args.write)
        print(json.dumps(out))
        return 0
    print(json.dumps(run_subprocess(args.units)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
