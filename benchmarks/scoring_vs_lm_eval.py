"""Scoring workloads, lmsweep against lm-evaluation-harness's HF backend: wall time and values, interleaved rounds.

    python -m benchmarks.scoring_vs_lm_eval [--lm-eval /tmp/lmeval/bin/lm_eval] [--rounds 3] [--json out.json]
    python -m benchmarks.scoring_vs_lm_eval --autobatch [--rounds 3]     # batch_size auto vs fixed sizes

lm-eval lives in its own venv, never in .venv (it pins its own transformers and datasets); install it as
benchmarks/lm_eval_agreement.py says: `python3 -m venv /tmp/lmeval && /tmp/lmeval/bin/pip install
torch==2.13.0 && /tmp/lmeval/bin/pip install 'lm-eval[hf]==0.4.13'`.

Workloads, on the packaged SmolLM2 in float32 on the CPU, the same inputs on both sides:

- rolling: 60 texts (≈80-190 tokens) scored whole with a 128-token window: lm-eval's `loglikelihood_rolling`,
  lmsweep's `loglikelihood` with `max_length: 128`;
- choice: 120 multiple-choice items with per-item choices (40 sentiment with 2 choices, 40 topics with 4, 40
  support tickets routed among 4 several-token queues): lm-eval's `multiple_choice` (`doc_to_choice`), lmsweep's
  `classify` with a `choices` column, one spec.

Each round runs every workload on both sides as the user would (a fresh process: `lm_eval ...` and
`python -m lmsweep run ...`, with import, model load and writing), in alternating order. Printed per round:
each side's wall seconds and lmsweep ÷ lm-eval; for the rolling workload also lmsweep's worker seconds in the task
and the forward floor: the forward passes alone over the same windows in a fresh process (`forward_floor`), the
least any tool on the HF model spends whatever its start-up. Then the medians, the largest |Δ log-likelihood|
between the two and whether the predicted choices agree, and the load average. Both sides run with
OMP_WAIT_POLICY=PASSIVE (/work/shared/design.md: spinning OpenMP threads collapse under other load on a 2-core machine).

`--autobatch` instead runs the rolling texts at the model's full context (one window each) with lmsweep's
`batch_size: auto` and fixed 8, 16, 32, 64, interleaved, and prints the worker's task seconds (its sidecar's
`timers.task_s`, after load) and auto ÷ the best fixed size per round.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ENV = {"OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}
TOPICS = {"the water cycle": "science", "black holes": "science", "the French Revolution": "history",
          "photosynthesis": "science", "the printing press": "history", "the stock market": "finance",
          "machine learning": "technology", "the Roman Empire": "history", "interest rates": "finance",
          "the internet": "technology", "the moon landing": "history", "smartphones": "technology",
          "inflation": "finance", "volcanoes": "science", "bond markets": "finance", "cloud computing": "technology"}
TOPIC_FRAMES = ["Today's lecture was about {s}.", "I just read a long article on {s}.",
                "Our book club discussed {s} last night."]
TICKETS = {"billing": ["I was charged twice for my subscription this month.", "My invoice shows the wrong amount.",
                       "Can I get a refund for last month's payment?", "Why did my card get declined at checkout?",
                       "Please update the VAT number on my invoices.", "The discount code was not applied to my bill.",
                       "I want to switch from monthly to yearly payment.", "There is a fee I do not recognise.",
                       "My payment went through but the order says unpaid.", "How do I download past receipts?"],
           "technical support": ["The app crashes every time I open settings.", "I cannot connect the printer.",
                                 "The website shows a blank page after login.", "Sync stopped working on my laptop.",
                                 "Export to PDF produces an empty file.", "The update failed with error 0x80070005.",
                                 "Notifications no longer arrive on my phone.", "The video call keeps freezing.",
                                 "Search returns no results for files I can see.", "The API returns error 500."],
           "shipping": ["My parcel has not arrived after two weeks.", "The tracking number does not work.",
                        "The box arrived damaged and the glass is broken.", "Can I change my delivery address?",
                        "I received someone else's order.", "How long does delivery to Norway take?",
                        "The courier left my package at the wrong door.", "Only half of my order was delivered.",
                        "Can you ship to a PO box?", "I need express delivery for this order."],
           "account security": ["Someone logged into my account from another country.", "I forgot my password.",
                                "I did not request this password reset email.", "How do I turn on two-factor login?",
                                "My account was locked after failed logins.", "I think my email was hacked.",
                                "Please remove an old phone from my trusted devices.", "I lost my recovery codes.",
                                "There are sessions I do not recognise.", "Can I change the email I sign in with?"]}
BATCH_SIZES = (8, 16, 32, 64)


# ---- inputs (pure, deterministic) -----------------------------------------------------------------------------

def reviews() -> list[dict]:
    return yaml.safe_load((REPO / "configs" / "prompts" / "game_reviews.yaml").read_text())["items"]


def rolling_texts(n: int = 60) -> list[dict]:
    """n distinct texts of ≈80-190 tokens: 6 to 14 reviews each, in a rotating order."""
    rs = [r["text"] for r in reviews()]
    out = []
    for i in range(n):
        k = 3 + i // len(rs) % 5
        parts = [rs[(i + 5 * j) % len(rs)] for j in range(k * 2)]
        out.append({"id": f"t{i:02d}", "text": " ".join(parts)})
    return out


def choice_items() -> list[dict]:
    """120 items, each with its own choices and the gold choice: 40 sentiment, 40 topics, 40 tickets."""
    items = []
    frames = ["Review: {t}\nSentiment:", "A player wrote: \"{t}\"\nWas that positive or negative?",
              "From the forum: {t}\nThe tone of this post is", "Critic's note: {t}\nOverall verdict:"]
    for i in range(40):
        r = reviews()[i % 12]
        items.append({"id": f"sent{i:02d}", "text": frames[i // 12 % 4].format(t=r["text"]),
                      "choices": ["positive", "negative"], "label": r["label"]})
    topics = ["science", "history", "finance", "technology"]
    for i in range(40):
        subject = list(TOPICS)[i % len(TOPICS)]
        frame = TOPIC_FRAMES[i // len(TOPICS) % len(TOPIC_FRAMES)]
        items.append({"id": f"topic{i:02d}", "text": frame.format(s=subject) + "\nTopic:",
                      "choices": topics, "label": TOPICS[subject]})
    queues = list(TICKETS)
    for i in range(40):
        queue = queues[i % 4]
        items.append({"id": f"ticket{i:02d}", "text": f"Customer ticket: {TICKETS[queue][i // 4]}\nRoute to team:",
                      "choices": queues, "label": queue})
    return items


# ---- the two sides --------------------------------------------------------------------------------------------

def write_inputs(work: Path) -> None:
    (work / "texts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rolling_texts()))
    mc = [{**r, "gold": r["choices"].index(r["label"])} for r in choice_items()]
    (work / "choices.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc))
    tasks = work / "tasks"
    tasks.mkdir(exist_ok=True)
    common = {"dataset_path": "json", "test_split": "train"}
    (tasks / "bench_rolling.yaml").write_text(yaml.safe_dump({
        **common, "task": "bench_rolling", "dataset_kwargs": {"data_files": str(work / "texts.jsonl")},
        "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
        "metric_list": [{"metric": "word_perplexity"}]}))
    (tasks / "bench_choice.yaml").write_text(yaml.safe_dump({
        **common, "task": "bench_choice", "dataset_kwargs": {"data_files": str(work / "choices.jsonl")},
        "output_type": "multiple_choice", "doc_to_text": "{{text}}", "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{gold}}", "target_delimiter": " ", "metric_list": [{"metric": "acc"}]}))


def lmsweep_spec(work: Path, workload: str, batch_size: int | str, max_length: int | None = 128) -> Path:
    model = {"alias": "smol", "source": "package:smollm2-135m-instruct", "dtype": "float32"}
    if workload == "rolling":
        prompts = [{"name": "texts", "file": str(work / "texts.jsonl")}]
        task = {"type": "loglikelihood", **({"max_length": max_length} if max_length else {})}
    else:
        prompts = [{"name": "items", "file": str(work / "choices.jsonl")}]
        task = {"type": "classify", "method": "label_likelihood", "template": "{text}", "label_prefix": " "}
    path = work / f"{workload}-{batch_size}-{max_length}.yaml"
    path.write_text(yaml.safe_dump({"name": "bench", "models": [model], "prompts": prompts, "task": task,
                                    "execution": {"batch_size": batch_size}}))
    return path


def run_lmsweep(spec: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lmsweep", "run", str(spec), "--output-dir", str(out), "--quiet"],
                   check=True, capture_output=True, text=True, env={**os.environ, **ENV})
    return time.perf_counter() - start


def run_lm_eval(lm_eval: str, model_dir: Path, work: Path, task: str, out: Path, batch_size: int) -> float:
    model_args = f"pretrained={model_dir},dtype=float32" + (",max_length=128" if task == "bench_rolling" else "")
    start = time.perf_counter()
    subprocess.run([lm_eval, "--model", "hf", "--model_args", model_args, "--tasks", task, "--include_path",
                    str(work / "tasks"), "--device", "cpu", "--batch_size", str(batch_size), "--log_samples",
                    "--output_path", str(out)], check=True, capture_output=True, text=True,
                   env={**os.environ, **ENV}, cwd=work)
    return time.perf_counter() - start


def lm_eval_values(out: Path, task: str) -> dict[str, list[float]]:
    """{doc id: [log-likelihood per request]} from lm-eval's samples (one request per choice, or per text)."""
    (path,) = out.rglob(f"samples_{task}_*.jsonl")
    values = {}
    for line in path.read_text().splitlines():
        s = json.loads(line)
        values[s["doc"]["id"]] = [float(r[0][0] if isinstance(r[0], list) else r[0]) for r in s["resps"]]
    return values


def lmsweep_values(exp: Path, workload: str) -> dict[str, list[float]]:
    import lmsweep

    df = lmsweep.load(exp)
    if workload == "rolling":
        return {r.prompt_id: [float(r.logprob)] for r in df.itertuples()}
    return {r.prompt_id: [float(x) for x in r.label_scores] for r in df.itertuples()}


def agreement(ours: dict, theirs: dict) -> tuple[float, float]:
    """(largest |Δ log-likelihood|, share of items whose best request agrees)."""
    delta = max(abs(a - b) for k in theirs for a, b in zip(ours[k], theirs[k]))
    def best(v: list[float]) -> int:
        return max(range(len(v)), key=v.__getitem__)

    same = sum(best(ours[k]) == best(theirs[k]) for k in theirs)
    return delta, same / len(theirs)


def forward_floor(work: Path, batch_size: int) -> float:
    """Seconds of the forward passes alone over the rolling workload's windows (lm-eval's, which lmsweep's equal),
    right-padded in batches of `batch_size` windows in text order, float32, after the model is loaded: what any
    tool built on the HF model must spend, whatever its start-up. Printed beside the two walls; runs in its own
    process (`--floor-of WORK`) so it starts as cold as they do."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmsweep.runner.tasks.loglikelihood import rolling_windows

    path = model_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    windows = []
    for line in (work / "texts.jsonl").read_text().splitlines():
        ids = [bos, *tok(json.loads(line)["text"], add_special_tokens=False)["input_ids"]]
        windows += [ids[w.start:w.end] for w in rolling_windows(len(ids), 1, 128, 128)]
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(windows), batch_size):
            batch = tok.pad({"input_ids": windows[i:i + batch_size]}, return_tensors="pt", padding_side="right")
            model(**batch)
    return time.perf_counter() - start


def model_dir() -> Path:
    from lmsweep.jobs.model_cache import materialize
    from lmsweep.jobs.model_sources import resolve

    ref = resolve("package:smollm2-135m-instruct")
    return Path(materialize(ref.path, ref.fingerprint))


# ---- the two comparisons --------------------------------------------------------------------------------------

def versus_lm_eval(lm_eval: str, rounds: int, batch_size: int, work: Path) -> dict:
    write_inputs(work)
    weights = model_dir()
    tasks = {"rolling": "bench_rolling", "choice": "bench_choice"}
    walls: dict[str, dict[str, list[float]]] = {w: {"lmsweep": [], "lm_eval": []} for w in tasks}
    loads, values, floors, tasks_s = [], {}, [], []
    for r in range(rounds):
        loads.append(os.getloadavg()[0])
        for workload, task in tasks.items():
            order = ("lmsweep", "lm_eval") if r % 2 == 0 else ("lm_eval", "lmsweep")
            for side in order:
                out = work / f"r{r}-{workload}-{side}"
                if side == "lmsweep":
                    seconds = run_lmsweep(lmsweep_spec(work, workload, batch_size), out)
                    values[workload, side] = lmsweep_values(out / "bench", workload)
                else:
                    seconds = run_lm_eval(lm_eval, weights, work, task, out, batch_size)
                    values[workload, side] = lm_eval_values(out, task)
                walls[workload][side].append(seconds)
            ratio = walls[workload]["lmsweep"][-1] / walls[workload]["lm_eval"][-1]
            extra = ""
            if workload == "rolling":
                proc = subprocess.run([sys.executable, "-m", "benchmarks.scoring_vs_lm_eval", "--floor-of", str(work),
                                       "--batch-size", str(batch_size)], check=True, capture_output=True, text=True,
                                      env={**os.environ, **ENV}, cwd=REPO)
                floors.append(float(proc.stdout.split()[-1]))
                tasks_s.append(task_seconds(work / f"r{r}-rolling-lmsweep" / "bench"))
                extra = (f"  [lmsweep's forward work {tasks_s[-1]:.1f} s; the forward passes alone {floors[-1]:.1f} s"
                         f" = {floors[-1] / walls[workload]['lm_eval'][-1]:.2f} of lm-eval's wall]")
            print(f"round {r + 1} {workload:8s} lmsweep {walls[workload]['lmsweep'][-1]:6.1f} s  lm-eval "
                  f"{walls[workload]['lm_eval'][-1]:6.1f} s  ratio {ratio:.2f}  (load {os.getloadavg()[0]:.1f})"
                  + extra, flush=True)
    loads.append(os.getloadavg()[0])
    result = {"rounds": rounds, "batch_size": batch_size, "load_averages": loads}
    for workload in tasks:
        ratios = [a / b for a, b in zip(walls[workload]["lmsweep"], walls[workload]["lm_eval"])]
        delta, same = agreement(values[workload, "lmsweep"], values[workload, "lm_eval"])
        result[workload] = {"lmsweep_s": walls[workload]["lmsweep"], "lm_eval_s": walls[workload]["lm_eval"],
                            "ratios": ratios, "median_ratio": statistics.median(ratios),
                            "max_abs_delta": delta, "same_prediction": same}
        print(f"{workload:8s} median lmsweep ÷ lm-eval {statistics.median(ratios):.2f} (rounds: "
              f"{', '.join(f'{x:.2f}' for x in ratios)}); max |Δ log-likelihood| {delta:.1e}; "
              f"same best choice {same:.0%}")
    floor_ratios = [f / w for f, w in zip(floors, walls["rolling"]["lm_eval"])]
    result["rolling"] |= {"lmsweep_task_s": tasks_s, "forward_floor_s": floors, "floor_ratios": floor_ratios}
    print(f"rolling  the forward passes alone ÷ lm-eval's wall, median {statistics.median(floor_ratios):.2f} (rounds: "
          f"{', '.join(f'{x:.2f}' for x in floor_ratios)}): no tool on the HF model computing these windows can go "
          "below it")
    print(f"load averages (1 min) at each round's start and the end: {', '.join(f'{x:.1f}' for x in loads)}")
    return result


def task_seconds(exp: Path) -> float:
    sidecars = [json.loads(p.read_text()) for p in (exp / "meta").glob("element-*-rank-*.json")]
    return sum(s["timers"]["task_s"] for s in sidecars)


def autobatch(rounds: int, work: Path) -> dict:
    write_inputs(work)
    sizes: list[int | str] = ["auto", *BATCH_SIZES]
    seconds: dict = {s: [] for s in sizes}
    loads = []
    for r in range(rounds):
        loads.append(os.getloadavg()[0])
        for s in (sizes if r % 2 == 0 else sizes[::-1]):
            out = work / f"auto-r{r}-{s}"
            run_lmsweep(lmsweep_spec(work, "rolling", s, max_length=None), out)
            seconds[s].append(task_seconds(out / "bench"))
        best = min(BATCH_SIZES, key=lambda s: seconds[s][-1])
        print(f"round {r + 1}: " + "  ".join(f"{s}: {seconds[s][-1]:.1f} s" for s in sizes)
              + f"  auto ÷ best fixed ({best}) {seconds['auto'][-1] / seconds[best][-1]:.2f}"
              + f"  (load {os.getloadavg()[0]:.1f})", flush=True)
    loads.append(os.getloadavg()[0])
    ratios = [seconds["auto"][r] / min(seconds[s][r] for s in BATCH_SIZES) for r in range(rounds)]
    medians = {s: statistics.median(v) for s, v in seconds.items()}
    best = min(BATCH_SIZES, key=medians.get)
    # The workload's best fixed size is the one with the best median; each round's fastest size is the minimum of
    # four noisy timings, which is biased low (equal sizes with 5% noise would put auto ~1.05 above it).
    print("medians: " + "  ".join(f"{s}: {m:.1f} s" for s, m in medians.items())
          + f"; auto ÷ the best fixed size ({best}, by median) {medians['auto'] / medians[best]:.2f}")
    print(f"auto ÷ each round's fastest size, median {statistics.median(ratios):.2f} (rounds: "
          f"{', '.join(f'{x:.2f}' for x in ratios)}); load averages {', '.join(f'{x:.1f}' for x in loads)}")
    return {"task_s": {str(k): v for k, v in seconds.items()}, "ratios": ratios, "load_averages": loads,
            "best_fixed_by_median": best, "auto_over_best_median": medians["auto"] / medians[best]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lm-eval", default="/tmp/lmeval/bin/lm_eval", help="the lm_eval command of its own venv")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32, help="both sides' batch size")
    ap.add_argument("--autobatch", action="store_true", help="lmsweep's batch_size auto against fixed sizes instead")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--floor-of", type=Path, help=argparse.SUPPRESS)    # internal: the forward floor, in a process
    args = ap.parse_args(argv)
    if args.floor_of:
        print(f"{forward_floor(args.floor_of, args.batch_size):.3f}")
        return 0
    with tempfile.TemporaryDirectory(prefix="scoring-bench-") as tmp:
        if args.autobatch:
            result = autobatch(args.rounds, Path(tmp))
        else:
            if not Path(args.lm_eval).exists():
                print(f"{args.lm_eval}: not found; install lm-eval in its own venv (this module's docstring)",
                      file=sys.stderr)
                return 2
            result = versus_lm_eval(args.lm_eval, args.rounds, args.batch_size, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
