"""Top-k next-token probabilities after the prompt, and the entropy of the full distribution."""
from __future__ import annotations

import time
from typing import Literal

import pyarrow as pa
from pydantic import Field

from lmsweep.core.task import MAX_PROB_DELTA, Metric, Sample, Task, TaskParams, Tolerance
from lmsweep.core.task_registry import register_task
from lmsweep.runner.engines.base import engine_of
from lmsweep.runner.units import TaskContext, Unit, render_prompt

MIN_TOPK_OVERLAP = Tolerance("min_topk_overlap", 1.0, "next-token: smallest per-unit top-k overlap", ge=0, le=1)


class NextTokenParams(TaskParams):
    """Top-k next-token probabilities after the prompt (one forward pass)."""

    type: Literal["next_token"] = "next_token"
    top_k: int = Field(10, ge=1, le=1000)


@register_task("next_token")
class NextToken(Task):
    Params = NextTokenParams
    columns = (
        ("topk_ids", pa.list_(pa.int32())), ("topk_tokens", pa.list_(pa.string())),
        ("topk_probs", pa.list_(pa.float32())), ("entropy", pa.float64()),
    )
    tolerances = (MAX_PROB_DELTA, MIN_TOPK_OVERLAP)
    compare_columns = ("topk_ids", "topk_tokens", "topk_probs", "entropy")
    diffs_title = "Next-token units beyond tolerance"
    metrics = (
        Metric("kl_topk", 1e-3, "next-token: per-unit KL(baseline ‖ current) over the top-k union (nats), against 0",
               direction="up"),
        Metric("entropy", 0.05, "next-token: per-unit entropy of the full distribution (nats), paired"),
        Metric("top1_prob", 0.02, "next-token: per-unit probability of the most likely token, paired"),
    )

    def run(self, ctx: TaskContext, units: list[Unit]) -> tuple[list[dict], dict[str, str]]:
        """The rows from the engine's `next_token` primitive (runner/engines), whatever the engine."""
        engine = engine_of(ctx)
        tok, k = ctx.tokenizer, ctx.params.top_k
        limit = engine.context_limit(ctx)
        keep, errors = [], {}
        for u in units:
            text, add = render_prompt(tok, u.prompt)
            ids = tok(text, add_special_tokens=add)["input_ids"]
            if not ids:
                errors[u.unit_id] = "the prompt is empty: it tokenizes to 0 tokens"
            elif limit and len(ids) + 1 > limit:
                errors[u.unit_id] = f"prompt is {len(ids)} tokens; it exceeds {engine.context_name} of {limit}"
            else:
                keep.append((u, ids))
        if not keep:
            return [], errors
        start = time.perf_counter()
        found = engine.next_token(ctx, [ids for _, ids in keep], k)
        latency = time.perf_counter() - start
        rows = [{"unit_id": u.unit_id, "num_prompt_tokens": len(ids), "topk_ids": top.ids,
                 "topk_tokens": [tok.decode([t]) for t in top.ids], "topk_probs": top.probs,
                 "entropy": top.entropy, "batch_latency_s": latency} for (u, ids), top in zip(keep, found)]
        return rows, errors

    def summarize(self, df):
        """Per model × task configuration: units, mean entropy (nats), mean top-1 probability, latency."""
        import pandas as pd

        from lmsweep.results.summary import latency_percentiles

        rows = []
        for (model, variant), g in df.groupby(["model", "variant"], sort=True):
            rows.append({"model": model, "variant": variant, "units": g["unit_id"].nunique(),
                         "mean_entropy": float(g["entropy"].mean()),
                         "mean_top1_prob": float(g["topk_probs"].map(lambda p: p[0] if len(p) else None).mean()),
                         **latency_percentiles(g)})
        return pd.DataFrame(rows)

    def examples(self, df, limit: int = 20):
        """The requested top-k next tokens per prompt (at most 10, so a row fits a terminal), for eyeballing."""
        import pandas as pd

        if df.empty or "topk_tokens" not in df.columns:
            return pd.DataFrame()
        out = df[["model", "prompt_id", "prompt_text", "entropy"]].head(limit).copy()
        shown = min(10, max((len(t) for t in df["topk_tokens"].head(limit)), default=0))
        out[f"top{shown}"] = [", ".join(f"{t!r}:{p:.2f}" for t, p in zip(tok[:shown], prob[:shown]))
                              for tok, prob in zip(df["topk_tokens"].head(limit), df["topk_probs"].head(limit))]
        return out

    def compare(self, both, tol, checks):
        """Per unit: the largest |Δp| over the union of both top-k lists and the top-k overlap."""
        import numpy as np
        import pandas as pd

        from lmsweep.results.compare import Check

        cols = ["unit_id", "model", "prompt_id", "max_abs_dp", "topk_overlap", "same_top1", "entropy_delta",
                "baseline_top", "current_top"]
        if both.empty:
            checks.append(Check("next-token max |Δp|", None, tol.max_prob_delta, "<=", "no matched rows"))
            return pd.DataFrame(columns=cols), pd.DataFrame(columns=cols)
        stats = topk_deltas(both)
        out = pd.DataFrame({
            "unit_id": both["unit_id_c"], "model": both["model_c"], "prompt_id": both["prompt_id_c"],
            "max_abs_dp": [s[0] for s in stats], "topk_overlap": [s[1] for s in stats],
            "same_top1": [s[2] for s in stats], "entropy_delta": both["entropy_c"] - both["entropy_b"],
            "baseline_top": [_top3(t, p) for t, p in zip(both["topk_tokens_b"], both["topk_probs_b"])],
            "current_top": [_top3(t, p) for t, p in zip(both["topk_tokens_c"], both["topk_probs_c"])]})
        max_dp, min_overlap = float(out["max_abs_dp"].max()), float(out["topk_overlap"].min())
        checks.append(Check("next-token max |Δp|", max_dp, tol.max_prob_delta, "<=",
                            f"over {len(out)} units; mean {out['max_abs_dp'].mean():.3g}"))
        checks.append(Check("next-token min top-k overlap", min_overlap, tol.min_topk_overlap, ">=",
                            f"mean {out['topk_overlap'].mean():.3f}; top-1 agrees on "
                            f"{int(out['same_top1'].sum())}/{len(out)}"))
        bad = np.zeros(len(out), dtype=bool)
        if tol.max_prob_delta is not None:
            bad |= (out["max_abs_dp"] > tol.max_prob_delta).to_numpy()
        if tol.min_topk_overlap is not None:
            bad |= (out["topk_overlap"] < tol.min_topk_overlap).to_numpy()
        info = out[~bad & ((out["max_abs_dp"] > 0) | (out["topk_overlap"] < 1))]
        return (out[bad].sort_values("max_abs_dp", ascending=False).reset_index(drop=True),
                info.sort_values("max_abs_dp", ascending=False).reset_index(drop=True))

    def statistics(self, base, cur, both):
        """Per model: the per-unit KL divergences over the top-k union (results.stats.topk_kl) against zero, and
        the entropy and top-1 probability paired unit by unit."""
        from lmsweep.results.stats import topk_kl

        out = []
        for model, g in both.groupby("model_b", sort=True):
            kl = [topk_kl(list(ia), list(qa), list(ib), list(qb)) for ia, qa, ib, qb in
                  zip(g["topk_ids_b"], g["topk_probs_b"], g["topk_ids_c"], g["topk_probs_c"])]
            top1 = [[float(p[0]) if len(p) else float("nan") for p in g[f"topk_probs_{s}"]] for s in "bc"]
            out += [Sample(model, "kl_topk", "one_sample", [], kl),
                    Sample(model, "entropy", "paired", list(g["entropy_b"]), list(g["entropy_c"])),
                    Sample(model, "top1_prob", "paired", top1[0], top1[1])]
        return out


def topk_deltas(both) -> list[tuple[float, float, bool]]:
    """`topk_delta` of every matched row of a compare join (baseline columns `_b`, current `_c`)."""
    return [topk_delta(list(ia), list(qa), list(ib), list(qb)) for ia, qa, ib, qb in
            zip(both["topk_ids_b"], both["topk_probs_b"], both["topk_ids_c"], both["topk_probs_c"])]


def topk_delta(ids_a, probs_a, ids_b, probs_b) -> tuple[float, float, bool]:
    """(max |Δp|, overlap, same top-1). A token in only one list has, on the other side, a probability
    of at most that side's smallest listed one, so p − p_min(other) is a lower bound on its |Δp|."""
    a = dict(zip(ids_a, probs_a))
    b = dict(zip(ids_b, probs_b))
    min_a, min_b = (min(probs_a) if len(probs_a) else 0.0), (min(probs_b) if len(probs_b) else 0.0)
    dp = 0.0
    for t in set(a) | set(b):
        if t in a and t in b:
            d = abs(a[t] - b[t])
        elif t in a:
            d = max(0.0, a[t] - min_b)
        else:
            d = max(0.0, b[t] - min_a)
        dp = max(dp, d)
    k = max(len(a), len(b), 1)
    same_top = bool(len(ids_a) and len(ids_b) and ids_a[0] == ids_b[0])
    return float(dp), len(set(a) & set(b)) / k, same_top


def _top3(tokens, probs) -> str:
    return ", ".join(f"{t!r}:{p:.3f}" for t, p in zip(list(tokens)[:3], list(probs)[:3]))
