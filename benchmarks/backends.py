"""deepspeed vs hf backend: wall time of the quickstart workload, one run each, on this machine; and with
--vllm, raw vLLM vs lmsweep `backend: vllm` vs lmsweep `backend: hf` on the generate benchmark's workload.

    python -m benchmarks.backends [--spec configs/quickstart.yaml] [--tp2] [--repeat N] [--json out.json]
    python -m benchmarks.backends --vllm [--rounds 3] [--prompts 64] [--max-new-tokens 64] [--json out.json]

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

--vllm (needs .venv-vllm, `make .venv-vllm`): `bench_prompts(64)` greedy, up to 64 new tokens, one batch.
Three contestants per round, in rotating order: raw vLLM (`benchmarks/raw_vllm.py`: `LLM.generate` on an
engine started once, before the rounds), a fresh `lmsweep worker` with `backend: vllm` (its engine start
reported apart) and a fresh `lmsweep worker` with `backend: hf`, batch 64. Each lmsweep figure is tokens/s
over the worker's time after its model load (sidecar timers: total - setup - load, so tokenizing, rows,
Parquet and sidecars count against it); raw vLLM's is over its `generate` call. Ratios are taken within a
round; medians over the rounds are printed, with the greedy token agreement with raw vLLM.
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
    # As `lmsweep run` runs workers (runner/local.py): spinning OpenMP threads collapse on a shared machine.
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
    from lmsweep.jobs.model_cache import materialize
    from lmsweep.jobs.model_sources import resolve
    from lmsweep.runner.engines.deepspeed import extensions_dir

    for m in spec["models"]:
        ref = resolve(m["source"] if isinstance(m, dict) else m, spec_dir=spec_dir)
        materialize(ref.path, ref.fingerprint)
    if tp2:
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", extensions_dir())   # DeepSpeed's JIT op cache
        code = ("from deepspeed.accelerator import get_accelerator as g; "
                "b = g().create_op_builder('ShareMemCommBuilder'); b and b.load()")
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env=dict(os.environ))


# ---- --vllm: raw vLLM vs lmsweep vllm vs lmsweep hf ---------------------------------------------------------

VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
VLLM_TARGETS = {"lmsweep_vllm_vs_raw": 0.95, "lmsweep_hf_vs_raw": 1.0}


def bench_spec(name: str, backend: str, prompts: list[str], max_new_tokens: int) -> dict:
    return {"name": name, "models": [{"alias": "smollm2", "source": "package:smollm2-135m-instruct"}],
            "prompts": [{"name": "bench", "items": prompts}], "task": "generate",
            "decoding": {"max_new_tokens": max_new_tokens},
            "execution": {"backend": backend, "batch_size": len(prompts)}}


def lmsweep_worker(python: Path, spec: dict, work: Path, env: dict) -> dict:
    """Plan `spec` and run its one element in a fresh worker process of `python`; its figures."""
    from lmsweep.jobs.plan import plan_spec, write_plan
    from lmsweep.jobs.spec import load_spec
    from lmsweep.results.load import load

    path = work / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    plan = plan_spec(load_spec(path))
    exp = work / "runs" / spec["name"]
    write_plan(plan, exp)
    load_avg = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run([str(python), "-m", "lmsweep", "worker", "--plan", str(exp), "--element", "0"],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{spec['name']}: worker exited {proc.returncode}\n{proc.stderr[-3000:]}")
    meta = json.loads(next((exp / "meta").glob("element-*-rank-*.json")).read_text())
    t = meta["timers"]
    order = {p["text"] if isinstance(p, dict) else p: i for i, p in enumerate(spec["prompts"][0]["items"])}
    df = load(exp)
    df = df.iloc[df["prompt_text"].map(order).argsort()]     # the prompt list's order, as raw vLLM returns it
    after_load = t["total_s"] - t["setup_s"] - t["load_s"]
    new = int(df["num_new_tokens"].sum())
    return {"wall_s": wall, "load_s": t["load_s"], "after_load_s": after_load, "model_s": t["model_s"],
            "engine_start_s": (meta.get("backend_config") or {}).get("engine_start_s"),
            "new_tokens": new, "tokens_per_s": new / after_load, "load_avg": load_avg,
            "token_ids": [list(x) for x in df["token_ids"]]}


def vllm_comparison(args) -> int:
    from benchmarks.workload import bench_prompts
    from lmsweep.jobs.model_cache import materialize
    from lmsweep.jobs.model_sources import resolve

    if not VLLM_PYTHON.exists():
        raise SystemExit(f"{VLLM_PYTHON} is missing: build it with `make .venv-vllm`")
    ref = resolve("package:smollm2-135m-instruct")
    model_dir = materialize(ref.path, ref.fingerprint)
    prompts = bench_prompts(args.prompts)
    threads = str(os.cpu_count() or 1)
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE":
           os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"), "TOKENIZERS_PARALLELISM": "false"}
    raw = subprocess.Popen([str(VLLM_PYTHON), "-m", "benchmarks.raw_vllm", str(model_dir), str(args.prompts),
                            str(args.max_new_tokens)], cwd=REPO, env=env, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    raw_start = raw_answer(raw)["engine_start_s"]
    contestants = {
        "raw vLLM": None,
        "lmsweep vllm": (VLLM_PYTHON, "vllm"),
        "lmsweep hf": (Path(sys.executable), "hf"),
    }
    rounds: list[dict[str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="lmsweep-bench-vllm-") as tmp:
        for r in range(args.rounds):
            names = list(contestants)
            names = names[r % len(names):] + names[:r % len(names)]
            got: dict[str, dict] = {}
            for name in names:
                print(f"round {r + 1}: {name} ...", file=sys.stderr, flush=True)
                if contestants[name] is None:
                    load_avg = os.getloadavg()[0]
                    raw.stdin.write("run\n")
                    raw.stdin.flush()
                    a = raw_answer(raw)
                    got[name] = {"wall_s": a["seconds"], "after_load_s": a["seconds"], "new_tokens": a["new_tokens"],
                                 "tokens_per_s": a["new_tokens"] / a["seconds"], "load_avg": load_avg,
                                 "engine_start_s": raw_start, "token_ids": a["token_ids"]}
                else:
                    python, backend = contestants[name]
                    spec = bench_spec(f"bench-{backend}-{r}", backend, prompts, args.max_new_tokens)
                    got[name] = lmsweep_worker(python, spec, Path(tmp), env)
            rounds.append(got)
    raw.stdin.close()
    raw.wait()
    return report_vllm(rounds, args)


def report_vllm(rounds: list[dict[str, dict]], args) -> int:
    import statistics

    print(f"workload: bench_prompts({args.prompts}) greedy, up to {args.max_new_tokens} new tokens, one batch; "
          f"SmolLM2-135M fp32, {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"{len(rounds)} interleaved rounds")
    print(f"{'round':<7}{'contestant':<15}{'tokens/s':>10}{'new tokens':>12}{'gen s':>8}{'engine/load s':>15}"
          f"{'÷ raw':>7}{'same ids':>10}{'load avg':>10}")
    ratios: dict[str, list[float]] = {}
    for i, got in enumerate(rounds):
        base = got["raw vLLM"]
        for name, g in got.items():
            ratio = g["tokens_per_s"] / base["tokens_per_s"]
            ratios.setdefault(name, []).append(ratio)
            same = sum(a == b for a, b in zip(g["token_ids"], base["token_ids"]))
            start = g.get("engine_start_s") if name != "lmsweep hf" else g.get("load_s")
            print(f"{i + 1:<7}{name:<15}{g['tokens_per_s']:>10.1f}{g['new_tokens']:>12}{g['after_load_s']:>8.2f}"
                  f"{start or 0:>15.1f}{ratio:>7.2f}{same:>5}/{len(base['token_ids']):<4}{g['load_avg']:>10.1f}")
    med = {name: statistics.median(r) for name, r in ratios.items()}
    print(f"median ratios: lmsweep vllm ÷ raw vLLM {med['lmsweep vllm']:.2f} "
          f"(target ≥ {VLLM_TARGETS['lmsweep_vllm_vs_raw']}); lmsweep hf ÷ raw vLLM {med['lmsweep hf']:.2f} "
          f"(target ≥ {VLLM_TARGETS['lmsweep_hf_vs_raw']})")
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": [{n: {k: v for k, v in g.items() if k != "token_ids"}
                                                              for n, g in got.items()} for got in rounds],
                                               "median_ratios": med}, indent=1))
    return 0


def raw_answer(raw: subprocess.Popen) -> dict:
    """The next JSON line the raw vLLM process (benchmarks/raw_vllm.py) prints; its log lines are skipped."""
    for line in raw.stdout:
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit(f"raw vLLM exited {raw.wait()}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.backends", description=__doc__.split("\n")[0])
    p.add_argument("--spec", default=str(REPO / "configs" / "quickstart.yaml"))
    p.add_argument("--tp2", action="store_true", help="also run deepspeed with tensor_parallel=2 on 2 ranks")
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--work-dir", help="keep the runs here (default: a temporary directory)")
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds, alternating the order (ABC, CBA, ...); each configuration's fastest round is "
                        "reported, which filters out other work on a shared machine (default 1: one run)")
    p.add_argument("--vllm", action="store_true", help="raw vLLM vs lmsweep vllm vs lmsweep hf (needs .venv-vllm)")
    p.add_argument("--rounds", type=int, default=3, help="--vllm: interleaved rounds (default 3)")
    p.add_argument("--prompts", type=int, default=64, help="--vllm: prompts (default 64)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="--vllm: new tokens at most (default 64)")
    args = p.parse_args(argv)
    if args.vllm:
        return vllm_comparison(args)

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
