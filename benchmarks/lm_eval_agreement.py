"""lmsweep's loglikelihood task vs lm-evaluation-harness's HF backend: per-pair log-likelihoods on SmolLM2.

    python -m benchmarks.lm_eval_agreement --lm-eval /tmp/lmeval/bin/lm_eval [--max-length 32] [--json out.json]

lm-eval is not an lmsweep dependency (it pins its own transformers and datasets): install it in a
throwaway venv, offline from the package registry, with the same torch:

    python3 -m venv /tmp/lmeval && /tmp/lmeval/bin/pip install torch==2.13.0 \\
        && /tmp/lmeval/bin/pip install 'lm-eval[hf]==0.4.13'

The same inputs go to both: context/continuation pairs (the game-review prompts with " positive" and
" negative" after "Sentiment:", and short factual pairs) scored with lm-eval's `loglikelihood`, and
whole texts with `loglikelihood_rolling`, also with a window of `--max-length` tokens so that long
texts are split into several rolling windows on both sides. lm-eval reads them from local JSONL files
through task YAMLs (`dataset_path: json`), on the SmolLM2 directory lmsweep converts into its model
cache, in float32 on the CPU; `--log_samples` gives its per-sample log-likelihoods. lmsweep runs the
same files as `task: loglikelihood` (`continuation` column). Printed: the largest |Δ log-likelihood|
over the pairs and over the texts, per window length, and whether is_greedy agrees everywhere.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
FACTS = [("The capital of France is", " Paris"), ("The capital of France is", " Rome"),
         ("Water boils at a temperature of 100 degrees", " Celsius"), ("One, two, three,", " four"),
         ("The opposite of hot is", " cold"), ("Shakespeare was a", " playwright"),
         ("Question: What colour is the sky on a clear day?\nAnswer:", " blue"),
         ("Question: What colour is the sky on a clear day?\nAnswer: ", "green")]   # trailing space moves


def inputs() -> tuple[list[dict], list[dict]]:
    """(pairs, texts) as JSONL rows: pairs have `text` (the context) and `continuation`."""
    reviews = yaml.safe_load((REPO / "configs" / "prompts" / "game_reviews.yaml").read_text())["items"]
    pairs = [{"id": f"{r['id']}-{label}", "text": f"Review: {r['text']}\nSentiment:", "continuation": f" {label}"}
             for r in reviews for label in ("positive", "negative")]
    pairs += [{"id": f"fact{i}", "text": c, "continuation": x} for i, (c, x) in enumerate(FACTS)]
    texts = [{"id": r["id"], "text": r["text"]} for r in reviews]
    texts.append({"id": "all", "text": " ".join(r["text"] for r in reviews)})      # ~300 tokens
    return pairs, texts


def lm_eval_scores(lm_eval: str, model_dir: Path, work: Path, pairs: list[dict], texts: list[dict],
                   max_length: int | None) -> tuple[dict, dict]:
    """({pair id: (logprob, is_greedy)}, {text id: logprob}) from lm-eval's --log_samples."""
    tasks = work / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    for name, rows in (("pairs", pairs), ("texts", texts)):
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = {"dataset_path": "json", "test_split": "train"}
    (tasks / "lmsweep_pairs.yaml").write_text(yaml.safe_dump({
        **common, "task": "lmsweep_pairs", "dataset_kwargs": {"data_files": str(work / "pairs.jsonl")},
        "output_type": "loglikelihood", "doc_to_text": "{{text}}", "doc_to_target": "{{continuation}}",
        "target_delimiter": "", "metric_list": [{"metric": "perplexity"}, {"metric": "acc"}]}))
    (tasks / "lmsweep_texts.yaml").write_text(yaml.safe_dump({
        **common, "task": "lmsweep_texts", "dataset_kwargs": {"data_files": str(work / "texts.jsonl")},
        "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
        "metric_list": [{"metric": "word_perplexity"}]}))
    out = work / "lm_eval_out"
    model_args = f"pretrained={model_dir},dtype=float32" + (f",max_length={max_length}" if max_length else "")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run([lm_eval, "--model", "hf", "--model_args", model_args, "--tasks", "lmsweep_pairs,lmsweep_texts",
                    "--include_path", str(tasks), "--device", "cpu", "--batch_size", "1", "--log_samples",
                    "--output_path", str(out)], check=True, env=env, cwd=work, capture_output=True, text=True)

    def samples(task: str) -> list[dict]:
        (path,) = out.rglob(f"samples_{task}_*.jsonl")
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def logprob(resp) -> float:
        return float(resp[0] if isinstance(resp, list) else resp)

    # resps: one list per request, holding [log-likelihood, is_greedy] (rolling: the log-likelihood alone)
    pair_scores = {s["doc"]["id"]: (logprob(s["resps"][0][0]), str(s["resps"][0][0][1]) == "True")
                   for s in samples("lmsweep_pairs")}
    text_scores = {s["doc"]["id"]: logprob(s["resps"][0][0]) for s in samples("lmsweep_texts")}
    return pair_scores, text_scores


def lmsweep_scores(work: Path, max_length: int | None) -> tuple[dict, dict]:
    import lmsweep

    spec = {"name": "agreement", "models": [{"alias": "smol", "source": "package:smollm2-135m-instruct",
                                              "dtype": "float32"}],
            "prompts": [{"name": "pairs", "file": str(work / "pairs.jsonl")},
                        {"name": "texts", "file": str(work / "texts.jsonl")}],
            "task": {"type": "loglikelihood", **({"max_length": max_length} if max_length else {})},
            "execution": {"batch_size": 4}}
    (work / "spec.yaml").write_text(yaml.safe_dump(spec))
    subprocess.run([sys.executable, "-m", "lmsweep", "run", str(work / "spec.yaml"), "--output-dir",
                    str(work / "runs"), "--quiet"], check=True, capture_output=True, text=True)
    df = lmsweep.load(work / "runs" / "agreement")
    pairs = df[df["prompt_set"] == "pairs"]
    texts = df[df["prompt_set"] == "texts"]
    return ({r.prompt_id: (r.logprob, bool(r.is_greedy)) for r in pairs.itertuples()},
            {r.prompt_id: (r.logprob, int(r.num_windows)) for r in texts.itertuples()})


def compare(lm_eval: str, max_length: int | None) -> dict:
    from lmsweep.jobs.model_cache import materialize
    from lmsweep.jobs.model_sources import resolve

    ref = resolve("package:smollm2-135m-instruct")
    model_dir = Path(materialize(ref.path, ref.fingerprint))
    pairs, texts = inputs()
    with tempfile.TemporaryDirectory(prefix=f"lm-eval-agreement-{max_length}-") as tmp:
        work = Path(tmp)
        theirs_pairs, theirs_texts = lm_eval_scores(lm_eval, model_dir, work, pairs, texts, max_length)
        ours_pairs, ours_texts = lmsweep_scores(work, max_length)
    pair_delta = {k: abs(ours_pairs[k][0] - theirs_pairs[k][0]) for k in theirs_pairs}
    text_delta = {k: abs(ours_texts[k][0] - theirs_texts[k]) for k in theirs_texts}
    worst_pair = max(pair_delta, key=pair_delta.get)
    worst_text = max(text_delta, key=text_delta.get)
    return {"max_length": max_length or "model context (8192)", "pairs": len(pair_delta), "texts": len(text_delta),
            "max_windows": max(w for _, w in ours_texts.values()),
            "max_abs_delta_pairs": pair_delta[worst_pair], "worst_pair": worst_pair,
            "max_abs_delta_texts": text_delta[worst_text], "worst_text": worst_text,
            "is_greedy_agrees": all(ours_pairs[k][1] == bool(theirs_pairs[k][1]) for k in theirs_pairs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lm-eval", default="/tmp/lmeval/bin/lm_eval", help="the lm_eval command of its own venv")
    ap.add_argument("--max-length", type=int, default=32, help="a short window, so long texts roll")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    results = [compare(args.lm_eval, args.max_length), compare(args.lm_eval, None)]
    for r in results:
        print(f"window {r['max_length']}: {r['pairs']} pairs max |Δ logprob| {r['max_abs_delta_pairs']:.2e} "
              f"({r['worst_pair']}); {r['texts']} texts (up to {r['max_windows']} windows) max |Δ| "
              f"{r['max_abs_delta_texts']:.2e} ({r['worst_text']}); is_greedy agrees: {r['is_greedy_agrees']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
