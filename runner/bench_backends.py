"""deepspeed vs hf backend: wall time of the quickstart workload, one run each, on this machine.

    python -m runner.bench_backends [--spec configs/quickstart.yaml] [--tp2] [--json out.json]

Each configuration is the quickstart spec with only `execution.backend` (and, with --tp2, the model's
tensor_parallel and the ranks per element) changed, planned into a scratch directory and run as real
`lmsweep worker` processes (`mpiexec -n 2` for TP=2), the way the local backend runs them. Reported
per configuration: wall time of the worker processes (start-up, model load and generation), model load
time, and the sum of batch latencies (generation alone). The ratio is deepspeed / hf; below 1 means
DeepSpeed is faster. Also checked: both backends give the same tokens for every unit.

The model is converted from its GGUF file into the lmsweep cache before timing, so no run pays for
it; on a first run with --tp2, DeepSpeed's CPU shared-memory op is compiled (~70 s) before timing too.
One run each: timings on a shared machine are noisy, so read the ratio to a tenth, not further.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def configurations(tp2: bool) -> list[dict]:
    out = [{"name": "hf", "backend": "hf", "tp": 1, "ranks": 1},
           {"name": "deepspeed", "backend": "deepspeed", "tp": 1, "ranks": 1}]
    if tp2:
        out.append({"name": "deepspeed-tp2", "backend": "deepspeed", "tp": 2, "ranks": 2})
    return out


def variant_spec(spec: dict, config: dict) -> dict:
    """The spec with only the backend, tensor parallelism and ranks changed (pure)."""
    spec = json.loads(json.dumps(spec))
    spec["name"] = f"{spec['name']}-bench-{config['name']}"
    spec["execution"] = {**spec.get("execution", {}), "backend": config["backend"],
                         "ranks_per_element": config["ranks"]}
    spec["models"] = [{**m, "tensor_parallel": config["tp"]} if isinstance(m, dict) else
                      {"source": m, "tensor_parallel": config["tp"]} for m in spec["models"]]
    return spec


def run_config(spec: dict, config: dict, work: Path) -> dict:
    from jobs.plan import plan_spec, write_plan
    from jobs.spec import load_spec

    path = work / f"{config['name']}.yaml"
    path.write_text(yaml.safe_dump(variant_spec(spec, config), sort_keys=False))
    exp = work / "runs" / config["name"]
    plan = plan_spec(load_spec(path))
    write_plan(plan, exp)
    threads = max(1, (os.cpu_count() or 1) // config["ranks"])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    wall = 0.0
    for element in range(len(plan.elements)):
        cmd = [sys.executable, "-m", "lmsweep", "worker", "--plan", str(exp), "--element", str(element)]
        if config["ranks"] > 1:
            cmd = [str(Path(sys.executable).with_name("mpiexec")), "-n", str(config["ranks"])] + cmd
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall += time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{config['name']}: element {element} exited {proc.returncode}\n{proc.stderr[-3000:]}")
    return {**config, "threads_per_rank": threads, "wall_s": wall, **_measured(exp)}


def _measured(exp: Path) -> dict:
    from results.load import load

    df = load(exp)
    per_batch = df.drop_duplicates(["element", "rank", "batch_latency_s", "finished_at"])
    metas = [json.loads(p.read_text()) for p in sorted((exp / "meta").glob("element-*-rank-*.json"))]
    return {"units": int(df["unit_id"].nunique()), "generate_s": float(per_batch["batch_latency_s"].sum()),
            "load_s": max(m["load_seconds"] or 0.0 for m in metas),
            "new_tokens": int(df["num_new_tokens"].sum()),
            "tokens": {r.unit_id + f"/{r.sequence_index}": list(r.token_ids) for r in df.itertuples()}}


def warm_up(spec: dict, spec_dir: Path, tp2: bool) -> None:
    """Convert the models once and, for TP=2, build DeepSpeed's CPU op, so no timed run pays for either."""
    from jobs.model_sources import resolve
    from runner.backends import prepare_environment
    from runner.model_cache import materialize

    for m in spec["models"]:
        ref = resolve(m["source"] if isinstance(m, dict) else m, spec_dir=spec_dir)
        materialize(ref.path, ref.fingerprint)
    if tp2:
        prepare_environment()
        code = ("from deepspeed.accelerator import get_accelerator as g; "
                "b = g().create_op_builder('ShareMemCommBuilder'); b and b.load()")
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env=dict(os.environ))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.bench_backends", description=__doc__.split("\n")[0])
    p.add_argument("--spec", default=str(REPO / "configs" / "quickstart.yaml"))
    p.add_argument("--tp2", action="store_true", help="also run deepspeed with tensor_parallel=2 on 2 ranks")
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--work-dir", help="keep the runs here (default: a temporary directory)")
    args = p.parse_args(argv)

    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not _has_cuda() else "cuda")
    spec_path = Path(args.spec)
    spec = yaml.safe_load(spec_path.read_text())
    with tempfile.TemporaryDirectory(prefix="lmsweep-bench-") as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        warm_up(spec, spec_path.resolve().parent, args.tp2)
        results = []
        for config in configurations(args.tp2):
            print(f"running {config['name']} ...", file=sys.stderr, flush=True)
            results.append(run_config(spec, config, work))
    base = results[0]
    print(f"workload: {spec_path} ({base['units']} units, {base['new_tokens']} new tokens), "
          f"accelerator {os.environ['DS_ACCELERATOR']}, {os.cpu_count()} CPUs, one run each")
    print(f"{'config':<15}{'ranks':>6}{'threads':>8}{'wall s':>9}{'load s':>8}{'generate s':>12}"
          f"{'wall ratio':>12}{'gen ratio':>11}{'same tokens':>13}")
    for r in results:
        same = sum(r["tokens"].get(k) == v for k, v in base["tokens"].items()) / len(base["tokens"])
        r["same_tokens"] = same
        r["wall_ratio"] = r["wall_s"] / base["wall_s"]
        r["generate_ratio"] = r["generate_s"] / base["generate_s"]
        print(f"{r['name']:<15}{r['ranks']:>6}{r['threads_per_rank']:>8}{r['wall_s']:>9.1f}{r['load_s']:>8.1f}"
              f"{r['generate_s']:>12.1f}{r['wall_ratio']:>12.2f}{r['generate_ratio']:>11.2f}{same:>13.0%}")
    ds = next(r for r in results if r["name"] == "deepspeed")
    print(f"deepspeed/hf wall-time ratio: {ds['wall_ratio']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps([{k: v for k, v in r.items() if k != "tokens"} for r in results],
                                              indent=1))
    return 0


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    raise SystemExit(main())
