"""Classification metrics over result rows: accuracy, macro-F1, confusion matrix. Pure pandas."""
from __future__ import annotations

import json

import pandas as pd

# The columns that identify one classify configuration (a model and one task variant).
CONFIG_COLUMNS = ["model", "method", "pipeline_task", "shots", "template", "label_set", "length_norm",
                  "fewshot_seed"]


def accuracy(gold: pd.Series, pred: pd.Series) -> float:
    return float((gold.to_numpy() == pred.to_numpy()).mean()) if len(gold) else float("nan")


def confusion_matrix(gold: pd.Series, pred: pd.Series, labels: list[str] | None = None) -> pd.DataFrame:
    """Counts with gold labels as rows and predicted labels as columns."""
    labels = labels or sorted(set(gold) | set(pred))
    table = pd.crosstab(pd.Categorical(gold, categories=labels), pd.Categorical(pred, categories=labels),
                        dropna=False)
    table.index.name, table.columns.name = "gold", "predicted"
    return table.reindex(index=labels, columns=labels, fill_value=0).astype(int)


def macro_f1(gold: pd.Series, pred: pd.Series, labels: list[str] | None = None) -> float:
    """Unweighted mean of per-label F1 over `labels` (default: every label seen in gold or predicted);
    a label with no gold and no predicted rows is left out, one never predicted scores 0."""
    cm = confusion_matrix(gold, pred, labels)
    scores = []
    for lab in cm.index:
        tp = cm.loc[lab, lab]
        support, predicted = cm.loc[lab].sum(), cm[lab].sum()
        if support == 0 and predicted == 0:
            continue
        scores.append(2 * tp / (support + predicted))
    return float(sum(scores) / len(scores)) if scores else float("nan")


def classification_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: rows, accuracy, macro-F1 and the confusion matrix as text
    (`format_confusion`: rows = gold, columns = predicted, labels in the order of the label set)."""
    scored = df[df["label"].notna() & df["predicted_label"].notna()]
    by = [c for c in CONFIG_COLUMNS if c in df.columns]
    if scored.empty:          # no gold labels: how often each label was predicted
        predicted = df[df["predicted_label"].notna()]
        if predicted.empty:
            return pd.DataFrame()
        return (predicted.groupby(by, dropna=False, sort=True)["predicted_label"]
                .agg(n="size", predicted=lambda s: "; ".join(f"{k}: {v}" for k, v in s.value_counts().items()))
                .reset_index().dropna(axis=1, how="all"))
    out = []
    for key, group in scored.groupby(by, dropna=False, sort=True):
        labels = list(group["candidate_labels"].iloc[0])
        cm = confusion_matrix(group["label"], group["predicted_label"],
                              labels + sorted(set(group["label"]) - set(labels)))
        out.append({**dict(zip(by, key)), "n": len(group),
                    "accuracy": accuracy(group["label"], group["predicted_label"]),
                    "macro_f1": macro_f1(group["label"], group["predicted_label"], list(cm.index)),
                    "confusion": format_confusion(cm)})
    table = pd.DataFrame(out)
    if "label_set" in table:
        table["label_set"] = table["label_set"].map(_short_label_set)
    if "template" in table:
        table["template"] = table["template"].map(lambda t: t.replace("\n", "\\n") if isinstance(t, str) else t)
    constant = [c for c in by if c not in ("model", "method") and table[c].nunique(dropna=False) <= 1]
    return table.drop(columns=constant)


def format_confusion(cm: pd.DataFrame) -> str:
    """The matrix with its axes named: `predicted a b; gold a: n n; gold b: n n` (rows = gold labels,
    columns = predicted labels, in the same order)."""
    head = "predicted " + " ".join(str(c) for c in cm.columns)
    return "; ".join([head, *(f"gold {g}: " + " ".join(str(int(v)) for v in row) for g, row in cm.iterrows())])


def _short_label_set(value):
    if not isinstance(value, str):
        return value
    try:
        mapping = json.loads(value)
    except json.JSONDecodeError:
        return value
    return ", ".join(f"{k}={v}" for k, v in mapping.items())
