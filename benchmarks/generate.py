"""`python -m benchmarks.generate [--quick]`: lmsweep against the seed loop, the expert notebook and this CPU's limit.

One run prints: generated tokens/s of the seed-style loop, the expert notebook and lmsweep (a real
plan and a real `lmsweep worker` subprocess) on the same workload, their ratios, the fp32 GEMM
roofline and the fraction the runner's hot path reaches at its best batch size, model loads per
rank, the runner's overhead, whether greedy outputs match token for token, and the time and peak
memory of planning a million units.

The machine is shared and timings are noisy: the runs are interleaved (the order rotates each
round), each ratio is taken within a round, and medians over `--repeats` rounds are reported along
with the load average. Baselines exclude model loading (the model is loaded once, as in a notebook);
lmsweep's headline figure excludes it too (worker time after the load), its end-to-end figure
(process start to exit) is printed beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.workload import (
    SETTINGS,
    Run,
    bench_prompts,
    expert_notebook,
    forward_flops_per_token,
    gemm_gflops,
    make_pipeline,
    seed_loop,
)

MODEL_SOURCE = "package:smollm2-135m-instruct"
TARGETS = {"vs_seed": 8.0, "vs_expert": 1.5, "roofline_fraction": 0.40, "overhead_fraction": 0.05,
           "plan_seconds": 10.0, "plan_peak_rss_mib": 2048.0}


@dataclass
class Config:
    prompts: int
    seed_prompts: int          # the seed loop runs on the first k prompts (its rate is what is compared)
    max_new_tokens: int
    repeats: int
    threads: int
    expert_batch_size: int
    batch_size: int | str      # lmsweep's execution.batch_size (an int, or "auto")
    sweep_sizes: list[int]
    sweep_prompts: int
    plan_units: int


def config(args) -> Config:
    quick = args.quick
    return Config(
        prompts=args.prompts or (16 if quick else 64),
        seed_prompts=args.seed_prompts or (4 if quick else 16),
        max_new_tokens=args.max_new_tokens or (16 if quick else 64),
        repeats=args.repeats or (1 if quick else 3),
        threads=args.threads or os.cpu_count() or 1,
        expert_batch_size=args.expert_batch_size,
        batch_size=args.batch_size,
        sweep_sizes=[int(s) for s in (args.sweep or ("1,8,32,64" if quick else "1,16,64,128,256")).split(",")],
        sweep_prompts=args.sweep_prompts or (16 if quick else 64),
        plan_units=args.plan_units if args.plan_units is not None else (100_000 if quick else 1_000_000),
    )


# ---- lmsweep: a real plan and a real worker process --------------------------------------------------

def write_bench_spec(directory: Path, prompts: list[str], cfg: Config, name: str) -> Path:
    with open(directory / "prompts.jsonl", "w") as f:
        for i, text in enumerate(prompts):
            f.write(json.dumps({"id": f"q{i}", "text": text}) + "\n")
    include = json.dumps([s.decoding for s in SETTINGS])
    spec = directory / f"{name}.yaml"
    spec.write_text(
        f"name: {name}\n"
        f"models: [{{alias: smollm2, source: '{MODEL_SOURCE}'}}]\n"
        "prompts: [{name: bench, file: prompts.jsonl}]\n"
        "task: generate\n"
        f"decoding: {{max_new_tokens: {cfg.max_new_tokens}, include: {include}}}\n"
        f"execution: {{batch_size: {json.dumps(cfg.batch_size)}, threads_per_rank: {cfg.threads}, "
        "walltime: '24:00:00'}\n")
    return spec


def run_lmsweep(workdir: Path, prompts: list[str], cfg: Config, round_no: int) -> Run:
    """Plan in this process (timed), then one `lmsweep worker` subprocess for the single element."""
    from lmsweep.jobs.plan import plan_spec, write_plan
    from lmsweep.jobs.spec import load_spec
    from lmsweep.results.load import load

    name = f"bench-{round_no}"
    spec_path = write_bench_spec(workdir, prompts, cfg, name)
    start = time.perf_counter()
    plan = plan_spec(load_spec(spec_path))
    exp = workdir / "runs" / name
    write_plan(plan, exp)
    plan_seconds = time.perf_counter() - start
    if len(plan.elements) != 1:
        raise RuntimeError(f"expected one element, the plan has {len(plan.elements)}")

    env = dict(os.environ, OMP_NUM_THREADS=str(cfg.threads), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "lmsweep", "worker", "--plan", str(exp), "--element", "0"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"worker exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    meta = json.loads((exp / "meta" / "element-00000-rank-0000.json").read_text())
    df = load(exp, columns=["prompt_id", "decoding", "token_ids", "num_new_tokens", "batch_size",
                            "batch_latency_s", "finished_at"])
    tokens = int(df["num_new_tokens"].sum())
    timers = meta.get("timers") or {}
    if "model_s" in timers:
        model_s, after_load = timers["model_s"], timers["total_s"] - timers["load_s"]
    else:                              # a worker without timers: batches from their rows, wall from the process
        batches = df.drop_duplicates(["finished_at", "batch_latency_s"])
        model_s, after_load = float(batches["batch_latency_s"].sum()), wall - (meta.get("load_seconds") or 0.0)
    labels = {s.name for s in SETTINGS}
    outputs = {(d, int(p[1:])): list(ids) for d, p, ids in zip(df["decoding"], df["prompt_id"], df["token_ids"])
               if d in labels and next(s for s in SETTINGS if s.name == d).deterministic}
    run = Run("lmsweep (worker)", tokens=tokens, seconds=after_load, outputs=outputs)
    run.extra = {"plan_seconds": plan_seconds, "worker_wall_s": wall, "model_s": model_s,
                 "load_s": meta.get("load_seconds"), "model_loads": meta.get("model_loads"),
                 "timers": timers, "batch_sizes": sorted({int(b) for b in df["batch_size"]}),
                 "end_to_end_tokens_per_s": tokens / wall, "units": len(df)}
    # Overhead: everything but model.generate, from planning to the last write (model load excluded).
    run.extra["overhead_fraction"] = 1 - model_s / (after_load + plan_seconds)
    return run


# ---- the hot path at several batch sizes (roofline fraction) ------------------------------------------

def batch_sweep(model, tokenizer, prompts: list[str], sizes: list[int], max_new_tokens: int) -> dict[int, Run]:
    """The workload (prompts × all settings) through lmsweep's own batching and generate task, in process,
    per batch size. Small sizes run on fewer prompts: a rate, not a total, is compared."""
    from lmsweep.jobs.decoding import DecodingGrid
    from lmsweep.runner.batches import make_batches
    from lmsweep.runner.tasks import get_task
    from lmsweep.runner.units import TaskContext, Unit

    generate = get_task("generate")
    grid = DecodingGrid.model_validate({"max_new_tokens": max_new_tokens, "include": [s.decoding for s in SETTINGS]})
    points = grid.points()
    ctx = TaskContext(model, tokenizer, generate.variant({"type": "generate"}))
    out = {}
    for size in sizes:
        n = min(len(prompts), max(2, -(-2 * size // len(points))))      # ≥ two batches' worth of units
        units = [Unit(unit_id=f"u{pi}-{qi}", unit_key=f"u{pi}-{qi}", element=0, variant=0, point_index=pi,
                      point=point, seed=0 if point.do_sample else None,
                      prompt={"prompt_set": "bench", "prompt_id": f"q{qi}", "prompt_text": text, "label": None,
                              "meta": "{}", "system_prompt": None, "chat_template": False})
                 for pi, point in enumerate(points) for qi, text in enumerate(prompts[:n])]
        run = Run(f"batch {size}", extra={"units": len(units)})
        for batch in make_batches(generate, units, size):
            start = time.perf_counter()
            rows, errors = generate.run(ctx, batch)
            run.seconds += time.perf_counter() - start
            run.tokens += sum(r["num_new_tokens"] for r in rows)
        out[size] = run
    return out


# ---- the run -----------------------------------------------------------------------------------------

def load_model(threads: int):
    import torch

    from lmsweep.jobs.model_sources import resolve
    from lmsweep.jobs.plan import ModelInfo
    from lmsweep.runner import loading

    torch.set_num_threads(threads)
    ref = resolve(MODEL_SOURCE)
    loaded = loading.load(ModelInfo(source=MODEL_SOURCE, path=ref.path, fingerprint=ref.fingerprint, kind=ref.kind),
                          "AutoModelForCausalLM")
    return loaded.model, loaded.tokenizer


def matches(a: Run, b: Run) -> tuple[int, int]:
    """(equal, compared) greedy outputs over the (setting, prompt) pairs both runs have."""
    common = sorted(set(a.outputs) & set(b.outputs))
    return sum(a.outputs[k] == b.outputs[k] for k in common), len(common)


def run_bench(cfg: Config, log=print) -> dict:
    import torch

    load_before = os.getloadavg()
    model, tokenizer = load_model(cfg.threads)
    flops = forward_flops_per_token(model)
    pipe = make_pipeline(model, tokenizer)
    prompts = bench_prompts(cfg.prompts)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="lmsweep-bench-") as tmp:
        for r in range(cfg.repeats):
            order = ["seed", "expert", "lmsweep"]
            order = order[r % 3:] + order[:r % 3]
            runs: dict[str, Run] = {}
            gemm = gemm_gflops(cfg.threads)
            for which in order:
                log(f"round {r + 1}/{cfg.repeats}: {which} (load {os.getloadavg()[0]:.1f})")
                torch.set_num_threads(cfg.threads)
                if which == "seed":
                    runs[which] = seed_loop(pipe, prompts[:cfg.seed_prompts], SETTINGS, cfg.max_new_tokens)
                elif which == "expert":
                    runs[which] = expert_notebook(pipe, prompts, SETTINGS, cfg.max_new_tokens, cfg.expert_batch_size)
                else:
                    runs[which] = run_lmsweep(Path(tmp), prompts, cfg, r)
            rounds.append({"gemm_gflops": gemm, "runs": runs})
        log(f"batch-size sweep {cfg.sweep_sizes} (load {os.getloadavg()[0]:.1f})")
        gemm_sweep = gemm_gflops(cfg.threads)
        sweep = batch_sweep(model, tokenizer, prompts[:cfg.sweep_prompts], cfg.sweep_sizes, cfg.max_new_tokens)
        gemm_sweep = max(gemm_sweep, gemm_gflops(cfg.threads))    # bracket the sweep: the better of the two
    plan = None
    if cfg.plan_units:
        from benchmarks.planning import run_subprocess
        log(f"planning {cfg.plan_units:,} units in a subprocess (load {os.getloadavg()[0]:.1f})")
        plan = run_subprocess(cfg.plan_units)
    return summarise(cfg, rounds, sweep, gemm_sweep, flops, plan, load_before, os.getloadavg())


def summarise(cfg: Config, rounds: list[dict], sweep: dict[int, Run], gemm_sweep: float, flops: float,
              plan: dict | None, load_before, load_after) -> dict:
    med = statistics.median
    tps = {k: med(rd["runs"][k].tokens_per_s for rd in rounds) for k in ("seed", "expert", "lmsweep")}
    last = rounds[-1]["runs"]
    lm = [rd["runs"]["lmsweep"] for rd in rounds]
    best_size, best = max(sweep.items(), key=lambda kv: kv[1].tokens_per_s)
    roofline = gemm_sweep * 1e9 / flops
    eq_seed = [matches(rd["runs"]["lmsweep"], rd["runs"]["seed"]) for rd in rounds]
    eq_expert = [matches(rd["runs"]["lmsweep"], rd["runs"]["expert"]) for rd in rounds]
    return {
        "config": cfg.__dict__,
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                    "load_before": load_before, "load_after": load_after},
        "model": {"source": MODEL_SOURCE, "flops_per_token": flops},
        "tokens_per_s": tps,
        "ratios": {"vs_seed": med(rd["runs"]["lmsweep"].tokens_per_s / rd["runs"]["seed"].tokens_per_s
                                  for rd in rounds),
                   "vs_expert": med(rd["runs"]["lmsweep"].tokens_per_s / rd["runs"]["expert"].tokens_per_s
                                    for rd in rounds)},
        "rounds": [{"gemm_gflops": rd["gemm_gflops"],
                    **{k: {"tokens": v.tokens, "seconds": v.seconds, "tokens_per_s": v.tokens_per_s}
                       for k, v in rd["runs"].items()}} for rd in rounds],
        "lmsweep": {"end_to_end_tokens_per_s": med(x.extra["end_to_end_tokens_per_s"] for x in lm),
                    "overhead_fraction": med(x.extra["overhead_fraction"] for x in lm),
                    "plan_seconds": med(x.extra["plan_seconds"] for x in lm),
                    "model_loads": [x.extra["model_loads"] for x in lm],
                    "batch_sizes": last["lmsweep"].extra["batch_sizes"],
                    "timers": last["lmsweep"].extra["timers"], "load_s": last["lmsweep"].extra["load_s"],
                    "worker_wall_s": last["lmsweep"].extra["worker_wall_s"], "units": last["lmsweep"].extra["units"]},
        "greedy_equal": {"vs_seed": eq_seed, "vs_expert": eq_expert},
        "roofline": {"gemm_gflops": gemm_sweep, "tokens_per_s": roofline,
                     "sweep": {s: r.tokens_per_s for s, r in sweep.items()}, "best_batch_size": best_size,
                     "best_tokens_per_s": best.tokens_per_s, "fraction": best.tokens_per_s / roofline,
                     "lmsweep_fraction": tps["lmsweep"] / roofline},
        "planning": plan,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def report(res: dict) -> str:
    cfg, t, r, lm, roof = res["config"], res["tokens_per_s"], res["ratios"], res["lmsweep"], res["roofline"]
    la, lb = res["machine"]["load_after"], res["machine"]["load_before"]
    n_set = len(SETTINGS)
    lines = [
        f"lmsweep bench: SmolLM2-135M fp32, {cfg['prompts']} prompts × {n_set} decoding settings "
        f"({', '.join(s.name for s in SETTINGS)}), {cfg['max_new_tokens']} new tokens, {cfg['threads']} threads "
        f"(OMP_WAIT_POLICY={res['machine']['omp_wait_policy']}), "
        f"median of {cfg['repeats']} interleaved round(s)",
        f"machine: {res['machine']['cpu']}, {res['machine']['cores']} cores; load average "
        f"{lb[0]:.1f}/{lb[1]:.1f}/{lb[2]:.1f} before, {la[0]:.1f}/{la[1]:.1f}/{la[2]:.1f} after",
        "",
        f"{'runner':<34}{'tokens/s':>10}{'× seed':>9}{'× expert':>10}",
        f"{'seed loop (pipeline, batch 1)':<34}{t['seed']:>10.1f}{1:>9.2f}{t['seed'] / t['expert']:>10.2f}",
        f"{'expert notebook (pipeline, b=' + str(cfg['expert_batch_size']) + ')':<34}{t['expert']:>10.1f}"
        f"{t['expert'] / t['seed']:>9.2f}{1:>10.2f}",
        f"{'lmsweep (plan + worker)':<34}{t['lmsweep']:>10.1f}{r['vs_seed']:>9.2f}{r['vs_expert']:>10.2f}",
        f"  (seed loop on the first {cfg['seed_prompts']} prompts; lmsweep batch sizes {lm['batch_sizes']}; "
        f"end to end incl. process start and model load: {lm['end_to_end_tokens_per_s']:.1f} tokens/s)",
        "",
        f"roofline: fp32 GEMM {roof['gemm_gflops']:.1f} GFLOP/s ÷ {res['model']['flops_per_token'] / 1e6:.0f} "
        f"MFLOP/token = {roof['tokens_per_s']:.0f} tokens/s",
        "  hot path (generate task, all settings) by batch size: "
        + ", ".join(f"{s}: {v:.1f}" for s, v in roof["sweep"].items()) + " tokens/s",
        f"  best batch size {roof['best_batch_size']}: {roof['best_tokens_per_s']:.1f} tokens/s = "
        f"{roof['fraction']:.0%} of roofline (lmsweep end-to-end run: {roof['lmsweep_fraction']:.0%})",
        "",
    ]
    eq_s, eq_e = res["greedy_equal"]["vs_seed"][-1], res["greedy_equal"]["vs_expert"][-1]
    lines.append(f"greedy outputs identical: lmsweep vs seed loop {eq_s[0]}/{eq_s[1]}, "
                 f"vs expert notebook {eq_e[0]}/{eq_e[1]} (token for token)")
    lines.append(f"model loads per (rank, model) per element: {lm['model_loads']} (one per round)")
    tm = lm["timers"]
    parts = ", ".join(f"{k.removesuffix('_s')} {v:.2f}s" for k, v in tm.items()) if tm else "n/a"
    lines.append(f"runner overhead (outside model.generate, planning to last write, load excluded): "
                 f"{lm['overhead_fraction']:.1%}; plan {lm['plan_seconds']:.2f}s; worker timers: {parts}")
    if res["planning"]:
        p = res["planning"]
        lines.append(f"planning {p['units']:,} units: {p['plan_seconds']:.1f}s wall ({p['plan_cpu_seconds']:.1f}s "
                     f"CPU), peak RSS {p['peak_rss_mib']:.0f} MiB; writing the plan {p.get('write_seconds', 0):.1f}s")
    lines.append("")
    lines.append("targets: " + "; ".join(f"{name} {'PASS' if ok else 'MISS'}" for name, ok in checks(res)))
    return "\n".join(lines)


def checks(res: dict) -> list[tuple[str, bool]]:
    out = [(f"≥{TARGETS['vs_seed']:g}× seed loop", res["ratios"]["vs_seed"] >= TARGETS["vs_seed"]),
           (f"≥{TARGETS['vs_expert']:g}× expert", res["ratios"]["vs_expert"] >= TARGETS["vs_expert"]),
           (f"≥{TARGETS['roofline_fraction']:.0%} roofline",
            res["roofline"]["fraction"] >= TARGETS["roofline_fraction"]),
           ("greedy identical", all(e == n for e, n in res["greedy_equal"]["vs_seed"])),
           ("one load", all(n == 1 for n in res["lmsweep"]["model_loads"])),
           (f"overhead <{TARGETS['overhead_fraction']:.0%}",
            res["lmsweep"]["overhead_fraction"] < TARGETS["overhead_fraction"])]
    if res["planning"]:
        p = res["planning"]
        out += [(f"plan <{TARGETS['plan_seconds']:g}s", p["plan_seconds"] < TARGETS["plan_seconds"]),
                ("plan <2 GiB", p["peak_rss_mib"] < TARGETS["plan_peak_rss_mib"])]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer prompts and tokens, one round (a few minutes)")
    p.add_argument("--prompts", type=int, help="prompts per decoding setting (64; quick 16)")
    p.add_argument("--seed-prompts", type=int, help="prompts the seed loop runs per setting (16; quick 4)")
    p.add_argument("--max-new-tokens", type=int, help="new tokens per unit (64; quick 16)")
    p.add_argument("--repeats", type=int, help="interleaved rounds (3; quick 1)")
    p.add_argument("--threads", type=int, help="torch threads for every runner (default: all cores)")
    p.add_argument("--expert-batch-size", type=int, default=8)
    p.add_argument("--batch-size", default="auto", type=lambda s: s if s == "auto" else int(s),
                   help="lmsweep execution.batch_size (default auto)")
    p.add_argument("--sweep", help="batch sizes for the roofline sweep, comma-separated "
                                   "(1,16,64,128,256; quick 1,8,32,64)")
    p.add_argument("--sweep-prompts", type=int, help="prompts in the sweep (64; quick 16)")
    p.add_argument("--plan-units", type=int,
                   help="units in the planning benchmark (1,000,000; quick 100,000; 0 skips)")
    p.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = p.parse_args(argv)
    # Before torch loads: spinning OpenMP threads collapse on a shared machine (2 threads ran ~5x slower
    # than 1 at load average 5 with the default policy); every runner here gets the same setting.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg = config(args)
    res = run_bench(cfg, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
