"""lm-evaluation-harness's metrics, with its definitions, so a number from lmsweep can sit beside a leaderboard's.

Pure functions over scores lmsweep already stores (lm-eval 0.4, `lm_eval/api/metrics.py` and its task's
`process_results`):

- `acc`: the choice with the highest summed log-likelihood; `acc_norm`: the highest log-likelihood divided
  by the choice's length in characters (lm-eval's `completion_len`; lmsweep's `length_norm` divides by
  tokens, a different rule); `acc_bytes`: divided by its length in UTF-8 bytes. The choice is the label
  word without the separator before it (lm-eval's `target_delimiter`, lmsweep's `label_prefix`).
- the standard error of a mean of per-item scores (`mean_stderr`): the sample standard deviation (n − 1)
  over √n; for 0/1 accuracies √(p(1 − p)/(n − 1)).
- for whole texts (`loglikelihood_rolling`): `word_perplexity` = exp(−Σ ll / Σ words), `byte_perplexity` =
  exp(−Σ ll / Σ bytes), `bits_per_byte` = −Σ ll / Σ bytes / ln 2, where a text's words are
  `len(re.split(r"\\s+", text))` and its bytes `len(text.encode("utf-8"))` (lm-eval's `count_words`,
  `count_bytes`), summed over the corpus before dividing (its `weighted_perplexity`).
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence


def mean_stderr(values: Sequence[float]) -> float:
    """lm-eval's `mean_stderr`: sample standard deviation / √n; NaN for fewer than two values."""
    n = len(values)
    if n < 2:
        return math.nan
    mu = math.fsum(values) / n
    return math.sqrt(math.fsum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


def pick(lls: Sequence[float], lengths: Sequence[float] | None = None) -> int:
    """Index of the best choice: argmax of ll (or of ll / length); the first on a tie, as numpy's argmax."""
    values = list(lls) if lengths is None else [ll / n for ll, n in zip(lls, lengths)]
    return max(range(len(values)), key=lambda i: (values[i], -i))


def char_len(choice: str) -> int:
    return len(choice)


def byte_len(choice: str) -> int:
    return len(choice.encode("utf-8"))


def count_words(text: str) -> int:
    """lm-eval's `count_words`: pieces between runs of whitespace (a leading or trailing run counts one more)."""
    return len(re.split(r"\s+", text))


def count_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def rolling_metrics(lls: Sequence[float], texts: Sequence[str]) -> dict[str, float]:
    """word_perplexity, byte_perplexity and bits_per_byte of a corpus of whole texts and their summed
    log-likelihoods (nats)."""
    total = math.fsum(lls)
    words = sum(count_words(t) for t in texts)
    nbytes = sum(count_bytes(t) for t in texts)
    return {"word_perplexity": math.exp(-total / words), "byte_perplexity": math.exp(-total / nbytes),
            "bits_per_byte": -total / nbytes / math.log(2)}


def choice_predictions(row) -> tuple[str, str] | None:
    """(acc_norm's, acc_bytes's) predicted label of one label_likelihood row, from its stored scores: the
    summed log-likelihood of each label (`label_scores`, times `label_num_tokens` under `length_norm`)
    over the label word's characters or bytes. None for rows of other methods."""
    import json

    if row.get("method") != "label_likelihood" or not isinstance(row.get("label_set"), str):
        return None
    names, scores, ntok = list(row["candidate_labels"]), list(row["label_scores"]), list(row["label_num_tokens"])
    lls = [s * n for s, n in zip(scores, ntok)] if row.get("length_norm") else scores
    words = json.loads(row["label_set"])
    choices = [words[name] for name in names]
    return (names[pick(lls, [char_len(c) for c in choices])], names[pick(lls, [byte_len(c) for c in choices])])


def classify_columns(df, table):
    """The classify summary (`results.metrics.classification_summary`) with lm-eval's columns beside its
    accuracy: `accuracy_stderr`, and for label_likelihood `acc_norm`, `acc_bytes` with their stderr. The
    groups are the summary's own (same columns, same order)."""
    from lmsweep.results.metrics import CONFIG_COLUMNS

    scored = df[df["label"].notna() & df["predicted_label"].notna()]
    if scored.empty or table.empty:
        return table
    by = [c for c in CONFIG_COLUMNS if c in df.columns]
    extra = []
    for _, group in scored.groupby(by, dropna=False, sort=True):
        gold = group["label"].tolist()
        correct = [float(g == p) for g, p in zip(gold, group["predicted_label"])]
        out = {"accuracy_stderr": mean_stderr(correct)}
        picks = [choice_predictions(r) for r in group.to_dict("records")]
        if all(p is not None for p in picks):
            for i, name in enumerate(("acc_norm", "acc_bytes")):
                hits = [float(g == p[i]) for g, p in zip(gold, picks)]
                out[name], out[f"{name}_stderr"] = math.fsum(hits) / len(hits), mean_stderr(hits)
        extra.append(out)
    import pandas as pd

    extra = pd.DataFrame(extra, index=table.index).dropna(axis=1, how="all")
    at = list(table.columns).index("accuracy") + 1 if "accuracy" in table.columns else len(table.columns)
    cols = list(table.columns[:at]) + list(extra.columns) + list(table.columns[at:])
    return pd.concat([table, extra], axis=1)[cols]
