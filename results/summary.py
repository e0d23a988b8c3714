"""Summary tables of an experiment's rows, per model × decoding point (generate) or per prompt."""
from __future__ import annotations

import pandas as pd


def summarize(df: pd.DataFrame, task: str) -> pd.DataFrame:
    if df.empty:
        return pd.DataFrame()
    if task == "generate":
        return generation_summary(df)
    if task == "next_token":
        return next_token_summary(df)
    if task == "classify":
        from lmsweep.results.metrics import classification_summary

        return classification_summary(df)
    if task == "attention":
        return (df.groupby(["model", "prompt_id"], sort=True)
                .agg(tokens=("seq_len", "first"), truncated=("truncated", "any"), layers=("layer", "nunique"),
                     heads=("head", "nunique"), query_heads=("num_heads", "first"),
                     kv_heads=("num_kv_heads", "first"), unit_id=("unit_id", "first"))
                .reset_index())
    if task == "tokenize":
        out = df[["model", "prompt_id", "num_tokens", "num_special_tokens", "chars_per_token", "vocab_size"]].copy()
        out["tokens"] = ["|".join(t) for t in df["token_texts"]]
        return out.sort_values(["prompt_id", "model"], ignore_index=True)
    return df.groupby("model").size().rename("rows").reset_index()


def examples(df: pd.DataFrame, per_point: int = 1, width: int = 70) -> pd.DataFrame:
    """One sample continuation per model × decoding point, for eyeballing."""
    if df.empty or "text" not in df.columns:
        return pd.DataFrame()
    first = (df.sort_values(["prompt_set", "prompt_id"])
             .groupby(["model", "point", "decoding"], sort=True).head(per_point))
    out = first[["model", "decoding", "prompt_text", "text"]].copy()
    out["text"] = out["text"].str.replace("\n", " ").str.slice(0, width)
    return out


# ---- generate and next_token ------------------------------------------------------------------------

REP_N = 4          # repetition rate: seq-rep-4 (Welleck et al., 2019), the share of repeated 4-grams


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


def _latency(units: pd.DataFrame) -> dict:
    """Percentiles of a unit's latency: the wall time of the batch it ran in, once per unit."""
    lat = units.drop_duplicates("unit_id")["batch_latency_s"].dropna()
    return {f"latency_p{q}_s": float(lat.quantile(q / 100)) if len(lat) else None for q in (50, 90, 99)}


def generation_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per model × decoding point: units, length, speed, latency, diversity, repetition, finish reasons."""
    reasons = sorted(df["finish_reason"].dropna().unique())
    rows = []
    for (model, _point, decoding), g in df.groupby(["model", "point", "decoding"], sort=True):
        seqs = list(g["token_ids"])
        row = {"model": model, "decoding": decoding, "units": g["unit_id"].nunique(), "rows": len(g),
               "mean_new_tokens": float(g["num_new_tokens"].mean()),
               "tokens_per_s": float(g["tokens_per_s"].median()), **_latency(g),
               "distinct_1": distinct_n(seqs, 1), "distinct_2": distinct_n(seqs, 2),
               "repetition_rate": float(sum(repetition_rate(s) for s in seqs) / len(seqs))}
        row |= {f"finish_{r}": float((g["finish_reason"] == r).mean()) for r in reasons}
        rows.append(row)
    return pd.DataFrame(rows)


def next_token_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per model × task configuration: units, mean entropy (nats), mean top-1 probability, latency."""
    rows = []
    for (model, variant), g in df.groupby(["model", "variant"], sort=True):
        rows.append({"model": model, "variant": variant, "units": g["unit_id"].nunique(),
                     "mean_entropy": float(g["entropy"].mean()),
                     "mean_top1_prob": float(g["topk_probs"].map(lambda p: p[0] if len(p) else None).mean()),
                     **_latency(g)})
    return pd.DataFrame(rows)


def next_token_examples(df: pd.DataFrame, limit: int = 20) -> pd.DataFrame:
    """The top-5 next tokens per prompt, for eyeballing."""
    if df.empty or "topk_tokens" not in df.columns:
        return pd.DataFrame()
    out = df[["model", "prompt_id", "prompt_text", "entropy"]].head(limit).copy()
    out["top5"] = [", ".join(f"{t!r}:{p:.2f}" for t, p in zip(tok[:5], prob[:5]))
                   for tok, prob in zip(df["topk_tokens"].head(limit), df["topk_probs"].head(limit))]
    return out
