"""Text generation over the decoding grid: text, token ids, new-token count, finish reason.

This module declares the task (parameters, columns, batching, summary, compare rule, tolerances);
`batch.py` beside it runs a batch: it builds the rows from the engine's `generate` primitive
(runner/engines; for `hf` and `deepspeed` the decode loop of runner/decode.py with runner/sampling.py's
batch-invariant seeded sampling).
"""
from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from lmsweep.core.task import MIN_EXACT_MATCH, Metric, Sample, Task, TaskParams, Tolerance
from lmsweep.core.task_registry import register_task
from lmsweep.runner.units import TaskContext, Unit

MIN_SAMPLED_EXACT_MATCH = Tolerance("min_sampled_exact_match", None,
                                    "same for seeded sampled sequences (off by default)", ge=0, le=1)
# mean_logprob's practical threshold, nats per token (about 10% in per-token likelihood). Measured on SmolLM2
# (64 sequences of 16 tokens a side, docs/results.md): temperature 0.7 -> 0.9 moves it by -0.56 and a
# repetition penalty of 1.2 by -0.23; the same software with the same seeds by 0.
MEAN_LOGPROB_THRESHOLD = 0.1
# What the regression gates test on sampled points (results.gates): per-sequence metrics of each side,
# two samples per model × decoding point (a sampled sequence depends on its seed, so they are not paired).
SAMPLED_METRICS = (
    Metric("length", 0.05, "sampled: new tokens per sequence (threshold: share of the baseline mean)", relative=True),
    Metric("distinct_1", 0.05, "sampled: distinct tokens / tokens, per sequence"),
    Metric("distinct_2", 0.05, "sampled: distinct bigrams / bigrams, per sequence"),
    Metric("repetition", 0.05, "sampled: share of repeated 4-grams, per sequence"),
    Metric("hit_budget", 0.1, "sampled: share of sequences stopped by max_new_tokens"),
    Metric("mean_logprob", MEAN_LOGPROB_THRESHOLD, "sampled: mean log-probability of a sequence's tokens under "
           "the model's raw distribution (nats per token; before penalties and temperature)"),
)
REP_N = 4          # repetition rate: seq-rep-4 (Welleck et al., 2019), the share of repeated 4-grams
SHOW_TEXT = 120    # characters of a differing text shown in a compare report


class GenerateParams(TaskParams):
    """Free text generation over the decoding grid."""

    type: Literal["generate"] = "generate"
    uses_decoding: bool = Field(True, exclude=True)


def run(ctx: TaskContext, units: list[Unit]) -> tuple[list[dict], dict[str, str]]:
    """One batch of units (any decoding points that share a batch key), on whatever engine ctx has."""
    from lmsweep.runner.tasks.generate import batch

    return batch.run(ctx, units)


@register_task("generate")
class Generate(Task):
    Params = GenerateParams
    row_key = ("unit_id", "sequence_index")
    columns = (
        ("sequence_index", pa.int32()), ("text", pa.string()), ("token_ids", pa.list_(pa.int32())),
        ("num_new_tokens", pa.int32()), ("finish_reason", pa.string()), ("tokens_per_s", pa.float64()),
        ("logprob", pa.float64()), ("token_logprobs", pa.list_(pa.float32())),
    )
    tolerances = (MIN_EXACT_MATCH, MIN_SAMPLED_EXACT_MATCH)
    compare_columns = ("sequence_index", "text", "token_ids", "num_new_tokens", "finish_reason", "tokens_per_s",
                       "logprob")
    metrics = SAMPLED_METRICS
    diffs_title = "Differing greedy/beam sequences"
    info_note = "seeded sampling; no tolerance applies unless min_sampled_exact_match is set"

    def check_plan(self, spec, facts, prompts, units) -> None:
        """Refuse a decoding point the spec's engine does not serve (its `decoding` declaration; the rule is
        jobs.decoding.engine_refusal)."""
        from lmsweep.jobs.decoding import engine_refusal
        from lmsweep.runner.engines import all_engines, get_engine

        engine = get_engine(spec.execution.backend)
        for point in spec.decoding.points():
            refused = engine_refusal(engine, point, all_engines())
            if refused:
                raise spec.source.error(refused, "decoding")

    def batch_key(self, unit: Unit) -> tuple:
        """Units with equal keys share one model.generate call. Beam search needs its own config per call;
        greedy and sampled points differ only in how each row's logits are processed (done per row group,
        seeds per sequence), so they share batches and the worker can fill them by prompt length across the
        whole decoding grid: less padding, and a full batch where one point alone would leave a small one."""
        p = unit.point
        return (p.num_beams, p.max_new_tokens, unit.point_index if p.num_beams > 1 else -1)

    def run(self, ctx: TaskContext, units: list[Unit]) -> tuple[list[dict], dict[str, str]]:
        return run(ctx, units)

    def summarize(self, df):
        """Per model × decoding point: units, length, speed, latency, diversity, repetition, finish reasons."""
        import pandas as pd

        from lmsweep.results.summary import latency_percentiles

        reasons = sorted(df["finish_reason"].dropna().unique())
        rows = []
        for (model, _point, decoding), g in df.groupby(["model", "point", "decoding"], sort=True):
            seqs = list(g["token_ids"])
            row = {"model": model, "decoding": decoding, "units": g["unit_id"].nunique(), "rows": len(g),
                   "mean_new_tokens": float(g["num_new_tokens"].mean()),
                   "tokens_per_s": float(g["tokens_per_s"].median()), **latency_percentiles(g),
                   "distinct_1": distinct_n(seqs, 1), "distinct_2": distinct_n(seqs, 2),
                   "repetition_rate": float(sum(repetition_rate(s) for s in seqs) / len(seqs))}
            row |= {f"finish_{r}": float((g["finish_reason"] == r).mean()) for r in reasons}
            rows.append(row)
        return pd.DataFrame(rows)

    def examples(self, df, per_point: int = 1, width: int = 70):
        """One sample continuation per model × decoding point, for eyeballing."""
        import pandas as pd

        if df.empty or "text" not in df.columns:
            return pd.DataFrame()
        first = (df.sort_values(["prompt_set", "prompt_id"])
                 .groupby(["model", "point", "decoding"], sort=True).head(per_point))
        out = first[["model", "decoding", "prompt_text", "text"]].copy()
        out["text"] = out["text"].str.replace("\n", " ").str.slice(0, width)
        return out

    def compare(self, both, tol, checks):
        """Greedy and beam sequences must be identical (min_exact_match); seeded sampled ones are reported,
        and judged only when min_sampled_exact_match is set."""
        import numpy as np
        import pandas as pd

        from lmsweep.results.compare import Check

        cols = ["unit_id", "model", "prompt_id", "decoding", "sequence_index", "first_diff_token",
                "baseline_text", "current_text"]
        if both.empty:
            checks.append(Check("greedy/beam exact-match rate", None, tol.min_exact_match, ">=", "no matched rows"))
            return pd.DataFrame(columns=cols), pd.DataFrame(columns=cols)
        same = (both["text_b"] == both["text_c"]).to_numpy()
        first = [None if s else first_diff(a, b) for s, a, b in zip(same, both["token_ids_b"], both["token_ids_c"])]
        det = ~both["do_sample_b"].fillna(False).astype(bool).to_numpy()
        out = pd.DataFrame({
            "unit_id": both["unit_id_c"], "model": both["model_c"], "prompt_id": both["prompt_id_c"],
            "decoding": both["decoding_c"], "sequence_index": both["sequence_index"], "first_diff_token": first,
            "baseline_text": both["text_b"].map(_clip), "current_text": both["text_c"].map(_clip)})
        out["first_diff_token"] = out["first_diff_token"].astype("Int64")
        n_det, n_samp = int(det.sum()), int((~det).sum())
        rate = float(same[det].mean()) if n_det else None
        checks.append(Check("greedy/beam exact-match rate", rate, tol.min_exact_match, ">=",
                            f"{int(same[det].sum())}/{n_det} sequences identical" if n_det else "no greedy/beam rows"))
        srate = float(same[~det].mean()) if n_samp else None
        if n_samp:
            checks.append(Check("sampled exact-match rate", srate, tol.min_sampled_exact_match, ">=",
                                f"{int(same[~det].sum())}/{n_samp} seeded sampled sequences identical"))
        flagged = ~same & det
        sampled_flag = ~same & ~det
        if tol.min_sampled_exact_match is not None:
            flagged, sampled_flag = flagged | sampled_flag, np.zeros_like(flagged)
        return out[flagged].reset_index(drop=True), out[sampled_flag].reset_index(drop=True)

    def statistics(self, base, cur, both):
        """Per model × sampled decoding point: each side's per-sequence metrics (results.stats.generation_metrics)
        as two samples. Greedy and beam rows are left to the exact-match check."""
        import numpy as np

        from lmsweep.results.stats import generation_metrics

        def sampled(df):
            return df[df["do_sample"].fillna(False).astype(bool)]

        b, c = sampled(base), sampled(cur)
        out = []
        groups = set(zip(b["model_pair"], b["decoding"])) & set(zip(c["model_pair"], c["decoding"]))
        for model, decoding in sorted(groups):
            gb = b[(b["model_pair"] == model) & (b["decoding"] == decoding)]
            gc = c[(c["model_pair"] == model) & (c["decoding"] == decoding)]
            mb, mc = (generation_metrics(g["token_ids"], g.get("finish_reason", [None] * len(g)),
                                         logprobs=_nullable(g.get("logprob"))) for g in (gb, gc))
            for m in self.metrics:
                b_values, c_values = mb[m.name], mc[m.name]
                if m.name == "mean_logprob":          # rows without a log-probability (an older run) are left out
                    b_values, c_values = b_values[np.isfinite(b_values)], c_values[np.isfinite(c_values)]
                    if not (len(b_values) and len(c_values)):
                        continue
                out.append(Sample(f"{model} · {decoding}", m.name, "two_sample", b_values, c_values))
        return out


def _nullable(column) -> list[float | None] | None:
    """A float column's values with NaN as None; None when the frame has no such column (an older run)."""
    if column is None:
        return None
    return [None if v is None or v != v else float(v) for v in column]


# ---- summary metrics ---------------------------------------------------------------------------------------

def ngrams(ids, n: int) -> list[tuple]:
    ids = list(ids)
    return [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]


def distinct_n(sequences, n: int) -> float | None:
    """Distinct n-grams over all n-grams of a group's sequences (Li et al., 2016); None if no n-grams."""
    seen, total = set(), 0
    for ids in sequences:
        grams = ngrams(ids, n)
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else None


def repetition_rate(ids, n: int = REP_N) -> float:
    """1 − unique/total n-grams within one sequence: 0 for no repeats, near 1 for a loop."""
    grams = ngrams(ids, n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


# ---- compare helpers ---------------------------------------------------------------------------------------

def first_diff(a, b) -> int | None:
    """The first token position where two sequences differ; None if they are equal."""
    a, b = list(a), list(b)
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _clip(text: Any) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= SHOW_TEXT else text[:SHOW_TEXT] + "…"
