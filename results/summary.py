"""Summary tables of an experiment's rows, per model × decoding point (generate) or per prompt."""
from __future__ import annotations

import pandas as pd


def summarize(df: pd.DataFrame, task: str) -> pd.DataFrame:
    if df.empty:
        return pd.DataFrame()
    if task == "generate":
        return (df.groupby(["model", "point", "decoding"], sort=True)
                .agg(units=("unit_id", "nunique"), rows=("unit_id", "size"),
                     mean_new_tokens=("num_new_tokens", "mean"), tokens_per_s=("tokens_per_s", "median"),
                     eos_rate=("finish_reason", lambda s: float((s == "eos").mean())))
                .reset_index().drop(columns="point"))
    if task == "next_token":
        out = df[["model", "prompt_id", "prompt_text", "entropy"]].copy()
        out["top5"] = [", ".join(f"{t!r}:{p:.2f}" for t, p in zip(tok[:5], prob[:5]))
                       for tok, prob in zip(df["topk_tokens"], df["topk_probs"])]
        return out
    if task == "classify":
        from results.metrics import classification_summary

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
    first = df.sort_values(["prompt_set", "prompt_id"]).groupby(["model", "point", "decoding"], sort=True).head(per_point)
    out = first[["model", "decoding", "prompt_text", "text"]].copy()
    out["text"] = out["text"].str.replace("\n", " ").str.slice(0, width)
    return out
