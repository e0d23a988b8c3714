"""deepspeed vs hf backend: wall time of the quickstart workload, one run each, on this machine.

    python -m benchmarks.backends [--spec configs/quickstart.yaml] [--tp2] [--repeat N] [--json out.json]

Each configuration is the quickstart spec with only `execution.backend` (and, with --tp2, the model's
tensor_parallel and the ranks per element) changed, planned into a scratch directory and run as real
`lmsweep worker` processes (`mpiexec -n 2` for TP=2), the way the local backend runs them. Reported
per configuration: wall time of the worker processes (start-up, model load and generation), model load
time, and the sum of batch latencies (generation alone). The ratio is deepspeed / hf; below 1 means
DeepSpeed is faster. Also checked: both backends give the same tokens for every unit.

The model is converted from its GGUF file into the lmsweep cache before timing, so no run pays for
it; on a first run with --tp2, DeepSpeed's CPU shared-memory op is compiled (~70 s) before timing too.
One run each by default. On a shared machine other work skews a single run (OpenMP threads suffer most
when a core is taken away mid-region), so each row also shows the load average before and after; with
--repeat N the configurations run in N rounds of alternating order and each one's fastest round counts.
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


def run_config(spec: dict, config: dict, work: Path, round_: int = 0) -> dict:
    from lmsweep.jobs.plan import plan_spec, write_plan
    from lmsweep.jobs.spec import load_spec

    path = work / f"{config['name']}-{round_}.yaml"
    path.write_text(yaml.safe_dump(variant_spec(spec, config), sort_keys=False))
    exp = work / "runs" / f"{config['name']}-{round_}"
    plan = plan_spec(load_spec(path))
    write_plan(plan, exp)
    threads = max(1, (os.cpu_count() or 1) // config["ranks"])
    # As `lmsweep run` runs workers (submit/local.py): spinning OpenMP threads collapse on a shared machine.
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    wall = 0.0
    for element in range(len(plan.elements)):
        cmd = [sys.executable, "-m", "lmsweep", "worker", "--plan", str(exp), "--element", str(element)]
        if config["ranks"] > 1:
            cmd = [str(Path(sys.executable).with_name("mpiexec")), "-n", str(config["ranks"])] + cmd
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall += time.perf_counter() - start
        loads = (load_before, os.getloadavg()[0])
        if proc.returncode != 0:
            raise SystemExit(f"{config['name']}: element {element} exited {proc.returncode}\n{proc.stderr[-3000:]}")
    # The machine's 1-minute load average before and after: other work on a shared machine skews a
    # single run, and OpenMP threads suffer most when a core is taken away mid-region.
    return {**config, "threads_per_rank": threads, "wall_s": wall, "load_avg": loads, **_measured(exp)}


def _measured(exp: Path) -> dict:
    from lmsweep.results.load import load

    df = load(exp)
    per_batch = df.drop_duplicates(["element", "rank", "batch_latency_s", "finished_at"])
    metas = [json.loads(p.read_text()) for p in sorted((exp / "meta").glob("element-*-rank-*.json"))]
    return {"units": int(df["unit_id"].nunique()), "generate_s": float(per_batch["batch_latency_s"].sum()),
            "load_s": max(m["load_seconds"] or 0.0 for m in metas),
            "new_tokens": int(df["num_new_tokens"].sum()),
            "tokens": {r.unit_id + f"/{r.sequence_index}": list(r.token_ids) for r in df.itertuples()}}


def warm_up(spec: dict, spec_dir: Path, tp2: bool) -> None:
    """Convert the models once and, for TP=2, build DeepSpeed's CPU op, so no timed run pays for either."""
    from lmsweep.jobs.model_sources import resolve
    from lmsweep.runner.backends import prepare_environment
    from lmsweep.runner.model_cache import materialize

    for m in spec["models"]:
        ref = resolve(m["source"] if isinstance(m, dict) else m, spec_dir=spec_dir)
        materialize(ref.path, ref.fingerprint)
    if tp2:
        prepare_environment()
        code = ("from deepspeed.accelerator import get_accelerator as g; "
                "b = g().create_op_builder('ShareMemCommBuilder'); b and b.load()")
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env=dict(os.environ))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.backends", description=__doc__.split("\n")[0])
    p.add_argument("--spec", default=str(REPO / "configs" / "quickstart.yaml"))
    p.add_argument("--tp2", action="store_true", help="also run deepspeed with tensor_parallel=2 on 2 ranks")
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--work-dir", help="keep the runs here (default: a temporary directory)")
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds, alternating the order (ABC, CBA, ...); each configuration's fastest round is "
                        "reported, which filters out other work on a shared machine (default 1: one run)")
    args = p.parse_args(argv)

    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not _has_cuda() else "cuda")
    spec_path = Path(args.spec)
    spec = yaml.safe_load(spec_path.read_text())
    with tempfile.TemporaryDirectory(prefix="lmsweep-bench-") as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        warm_up(spec, spec_path.resolve().parent, args.tp2)
        runs: dict[str, list[dict]] = {}
        for round_ in range(max(1, args.repeat)):
            order = configurations(args.tp2)
            for config in order if round_ % 2 == 0 else order[::-1]:
                print(f"round {round_ + 1}: running {config['name']} ...", file=sys.stderr, flush=True)
                runs.setdefault(config["name"], []).append(run_config(spec, config, work, round_))
    results = [{**min(rs, key=lambda r: r["wall_s"]), "walls_s": [round(r["wall_s"], 1) for r in rs]}
               for rs in runs.values()]
    base = results[0]
    how = "one run each" if args.repeat <= 1 else f"fastest of {args.repeat} rounds each"
    print(f"workload: {spec_path} ({base['units']} units, {base['new_tokens']} new tokens), "
          f"accelerator {os.environ['DS_ACCELERATOR']}, {os.cpu_count()} CPUs, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}, {how}")
    print(f"{'config':<15}{'ranks':>6}{'threads':>8}{'wall s':>9}{'load s':>8}{'generate s':>12}"
          f"{'wall ratio':>12}{'gen ratio':>11}{'same tokens':>13}{'load avg':>13}")
    for r in results:
        same = sum(r["tokens"].get(k) == v for k, v in base["tokens"].items()) / len(base["tokens"])
        r["same_tokens"] = same
        r["wall_ratio"] = r["wall_s"] / base["wall_s"]
        r["generate_ratio"] = r["generate_s"] / base["generate_s"]
        print(f"{r['name']:<15}{r['ranks']:>6}{r['threads_per_rank']:>8}{r['wall_s']:>9.1f}{r['load_s']:>8.1f}"
              f"{r['generate_s']:>12.1f}{r['wall_ratio']:>12.2f}{r['generate_ratio']:>11.2f}{same:>13.0%}"
              f"{r['load_avg'][0]:>7.1f}→{r['load_avg'][1]:<5.1f}")
    if args.repeat > 1:
        print("all rounds, wall s: " + "; ".join(f"{r['name']} {r['walls_s']}" for r in results))
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
