"""Log-likelihood of given text under a causal LM: a continuation after a context, or a whole text.

Two forms, chosen per prompt:

- **pair**: the prompt row has a continuation (the `continuation` column of a prompt file, or
  `meta: {continuation: ...}` inline; `continuation_column` names another): the prompt text (with its
  system prompt / chat template) is the context, and only the continuation's tokens are scored —
  lm-evaluation-harness's `loglikelihood`. Whitespace ending the context moves to the continuation,
  and the continuation's tokens are those the tokenizer gives `context + continuation` after the
  context's own tokens (lm-eval's `_encode_pair`).
- **text**: no continuation: every token of the text is scored, the first one after the tokenizer's
  BOS token (its EOS when it has none) — lm-eval's `loglikelihood_rolling`. `prefix` changes what the
  text is scored after: `bos` (the default), `none` (nothing: the text's first token is context, not
  scored) or a string (its tokens, then the text's own tokens; e.g. "\n", since SmolLM2-Instruct's BOS is
  `<|im_start|>`, after which plain text is unlikely).

Sequences longer than the window (`max_length`, default the model's context) are scored in rolling
windows: the first window is the first `max_length` tokens (for a pair whose context is longer, the
context is cut on the left, as lm-eval does); each later one ends `stride` tokens further and scores
those `stride` new tokens with the `max_length - stride` tokens before them as left context. Each token
is scored exactly once. `stride` defaults to `max_length` (disjoint windows: exactly lm-eval's
`loglikelihood_rolling`); a smaller stride gives each token more context at more compute.

Windows are right-padded in a batch: real tokens keep positions 0..n-1 and, causal attention, never
see padding, so a unit's scores do not depend on its batch-mates.

Pairs that fit one window are scored with each distinct context run once (runner/shared_context.py: its
last logits score every continuation's first token, its key/value cache the rest), so the answers to one
question cost the question once; pairs beyond the window, and models without a plain key/value cache, go
through the windows above.
"""
from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pyarrow as pa
from pydantic import Field, field_validator, model_serializer, model_validator

from lmsweep.core.task import Legibility, Metric, Sample, Task, TaskParams
from lmsweep.core.task_registry import register_task
from lmsweep.runner.units import TaskContext, Unit, UnitFailure, context_limit, render_prompt

if TYPE_CHECKING:
    from lmsweep.jobs.prompts import Prompt


class LoglikelihoodParams(TaskParams):
    """Score given text: total and per-token log-probabilities, token count, perplexity."""

    type: Literal["loglikelihood"] = "loglikelihood"
    continuation_column: str = Field("continuation", min_length=1)   # prompt column holding the continuation
    max_length: int | None = Field(None, ge=2)    # window in tokens; default: the model's context
    stride: int | None = Field(None, ge=1)        # tokens each later window adds; default: max_length
    prefix: str | None = Field(None, min_length=1)   # whole texts are scored after: bos (default) | none | a string

    @field_validator("prefix")
    @classmethod
    def _bos_is_the_default(cls, v: str | None) -> str | None:
        return None if v == "bos" else v

    @model_serializer(mode="wrap")
    def _without_default_prefix(self, handler):
        """`prefix` enters the spec hash and unit ids only when set (and not `bos`): specs written before it
        keep their ids, and `prefix: bos` computes what they computed."""
        data = handler(self)
        if isinstance(data, dict) and data.get("prefix") is None:
            data.pop("prefix", None)
        return data

    @model_validator(mode="after")
    def _stride(self) -> LoglikelihoodParams:
        if self.stride is not None and self.max_length is not None and self.stride > self.max_length:
            raise ValueError(f"stride: {self.stride} is above max_length {self.max_length}; a window cannot "
                             "score more tokens than it holds")
        return self


@dataclass(frozen=True)
class Window:
    """One forward pass: `tokens[start:end]` as input, scoring the targets `first..end` (a target t is
    token t predicted from the tokens before it)."""

    start: int
    end: int
    first: int


def rolling_windows(length: int, first_target: int, max_length: int, stride: int) -> list[Window]:
    """Windows over a sequence of `length` tokens that score each target in [first_target, length) once.

    Pure. The first window is the first `max_length` tokens, or, when the first target lies beyond them
    (a long context), the window that scores `stride` targets from it; each later window ends `stride`
    targets further and takes the `max_length` tokens before its end, so every target after the first
    window has at least `max_length - stride` tokens of context."""
    if not 1 <= first_target < length:
        raise ValueError(f"no targets: first_target {first_target}, length {length}")
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride {stride} must be in 1..max_length ({max_length})")
    last = length - 1
    end = min(last, max(max_length, first_target + stride - 1))
    out = [Window(max(0, end - max_length), end, first_target)]
    while end < last:
        first, end = end + 1, min(last, end + stride)
        out.append(Window(max(0, end - max_length), end, first))
    return out


LOGITS_BUDGET = 1 << 28            # logits values per forward pass (1 GiB in float32)


def logit_groups(lengths: list[int], vocab: int, budget: int = LOGITS_BUDGET) -> list[list[int]]:
    """Consecutive windows grouped into forward passes whose padded logits (rows × longest × vocab) stay
    under `budget` values, at least one window each: a batch of long windows would otherwise hold
    gigabytes of logits (8 windows of 8192 tokens × SmolLM2's 49152 tokens: 13 GB)."""
    from lmsweep.runner.shared_context import padded_groups

    return padded_groups(lengths, 0, vocab, budget)


def continuation_of(meta: str | dict | None, column: str) -> str | None:
    """A prompt row's continuation, from its free columns (`meta`: a file's extra columns, or an inline
    item's `meta:` mapping), or None: score the whole text."""
    meta = json.loads(meta or "{}") if isinstance(meta, str) else (meta or {})
    value = meta.get(column)
    return None if value is None else str(value)


def encode(tok, prompt: dict, column: str, prefix: str | None = None) -> tuple[list[int], int, int, str | None]:
    """(sequence, index of its first scored token, prompt tokens, continuation) for one prompt: the
    prompt tokens are the context's (pair) or the text's (text). `prefix` (whole texts only): None for the
    BOS, "none", or a string whose tokens precede the text's."""
    continuation = continuation_of(prompt.get("meta"), column)
    text, add = render_prompt(tok, prompt)
    if continuation is None and prefix is not None:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        before = [] if prefix == "none" else tok(prefix, add_special_tokens=False)["input_ids"]
        if prefix != "none" and not before:
            raise UnitFailure(f"the prefix {prefix!r} has no tokens")
        if not before and len(ids) < 2:
            raise UnitFailure("prefix none: the text is one token, the context of nothing")
        first = len(before) or 1
        return [*before, *ids], first, len(ids), None
    if continuation is None:
        ids = tok(text, add_special_tokens=add)["input_ids"]
        prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if ids and ids[0] == prefix:
            return ids, 1, len(ids) - 1, None             # the tokenizer added the BOS itself
        return [prefix, *ids], 1, len(ids), None
    if not continuation:
        raise UnitFailure("empty continuation: nothing to score")
    stripped = text.rstrip()
    if len(stripped) < len(text):               # "Question: x Answer: " + "yes" → "... Answer:" + " yes"
        text, continuation = stripped, text[len(stripped):] + continuation
    context = tok(text, add_special_tokens=add)["input_ids"]
    whole = tok(text + continuation, add_special_tokens=add)["input_ids"]
    if len(whole) <= len(context):
        raise UnitFailure(f"the continuation {continuation!r} adds no token after the context")
    return whole, len(context), len(context), continuation


def score_pairs_shared(model, pad_id: int, encoded: dict[str, tuple[list[int], int, int, str | None]],
                       max_length: int, device, scored: dict[str, list[tuple[float, bool]]]) -> set[str]:
    """Score the pairs that fit one window (the whole sequence, from its first token) with each distinct context
    run once (runner/shared_context.py): multiple choice as pairs computes each question once, not once per
    answer. Fills `scored` and returns the unit ids done; none where the model's cache cannot be shared."""
    from lmsweep.runner import shared_context

    pairs = {uid: e for uid, e in encoded.items() if e[3] is not None and len(e[0]) - 1 <= max_length}
    if not pairs or not shared_context.supported(model):
        return set()
    contexts = list(dict.fromkeys(tuple(ids[:first]) for ids, first, _, _ in pairs.values()))
    at = {c: i for i, c in enumerate(contexts)}
    requests = [(at[tuple(ids[:first])], ids[first:]) for ids, first, _, _ in pairs.values()]
    try:
        results = shared_context.score(model, pad_id, [list(c) for c in contexts], requests, device)
    except shared_context.Unsupported:
        return set()
    for uid, r in zip(pairs, results):
        scored[uid] = list(zip(r.logprobs, r.greedy))
    return set(pairs)


@register_task("loglikelihood")
class Loglikelihood(Task):
    Params = LoglikelihoodParams
    columns = (
        ("continuation", pa.string()), ("logprob", pa.float64()), ("num_scored_tokens", pa.int32()),
        ("perplexity", pa.float64()), ("token_logprobs", pa.list_(pa.float32())),
        ("scored_tokens", pa.list_(pa.string())), ("scored_token_ids", pa.list_(pa.int32())),
        ("is_greedy", pa.bool_()), ("num_windows", pa.int32()),
    )

    def context_key(self, unit: Unit) -> tuple:
        """Pairs of one context (a question's answers) share a batch, so its context runs once
        (score_pairs_shared); whole texts of the same text are rare, and grouping them is harmless."""
        p = unit.prompt
        return (p["prompt_text"], p.get("system_prompt"), p.get("chat_template"))

    def prompt_identity(self, params: LoglikelihoodParams, prompt: Prompt) -> dict:
        value = continuation_of(prompt.meta, params.continuation_column)
        return {} if value is None else {"continuation": value}

    def run(self, ctx: TaskContext, units: list[Unit]) -> tuple[list[dict], dict[str, str]]:
        import torch

        tok, model, p = ctx.tokenizer, ctx.model, ctx.params
        base = getattr(model, "module", model)              # a DeepSpeed engine wraps the model
        max_length = p.max_length or context_limit(base)
        if not max_length:
            raise UnitFailure("the model's config has no max_position_embeddings; set task.max_length")
        stride = min(p.stride or max_length, max_length)
        encoded, errors = {}, {}
        for u in units:
            try:
                encoded[u.unit_id] = encode(tok, u.prompt, p.continuation_column, p.prefix)
            except UnitFailure as e:
                errors[u.unit_id] = str(e)
        start = time.perf_counter()
        scored: dict[str, list[tuple[float, bool]]] = {uid: [] for uid in encoded}
        shared = score_pairs_shared(model, tok.pad_token_id, encoded, max_length, ctx.device, scored)
        jobs = [(u.unit_id, w) for u in units if u.unit_id in encoded and u.unit_id not in shared
                for w in rolling_windows(len(encoded[u.unit_id][0]), encoded[u.unit_id][1], max_length, stride)]
        if not jobs and not shared:
            return [], errors
        vocab = getattr(getattr(base, "config", None), "vocab_size", None) or len(tok)
        for part in logit_groups([w.end - w.start for _, w in jobs], vocab, LOGITS_BUDGET):
            chunk = [jobs[i] for i in part]
            inputs = [encoded[uid][0][w.start:w.end] for uid, w in chunk]
            batch = tok.pad({"input_ids": inputs}, return_tensors="pt", padding_side="right").to(ctx.device)
            with torch.inference_mode():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            for b, (uid, w) in enumerate(chunk):
                ids = encoded[uid][0]
                rows_at = torch.arange(w.first - 1 - w.start, w.end - w.start)     # logits predicting first..end
                logp = torch.log_softmax(logits[b, rows_at].float(), dim=-1)
                targets = torch.tensor(ids[w.first:w.end + 1], device=logp.device)
                values = logp.gather(-1, targets[:, None])[:, 0].tolist()
                greedy = (logp.argmax(-1) == targets).tolist()
                scored[uid] += list(zip(values, greedy))
            del logits
        latency = time.perf_counter() - start
        windows = Counter(uid for uid, _ in jobs)
        rows = []
        for u in units:
            if u.unit_id not in encoded:
                continue
            ids, first, n_context, continuation = encoded[u.unit_id]
            values = [v for v, _ in scored[u.unit_id]]
            total = math.fsum(values)
            targets = ids[first:]
            rows.append({"unit_id": u.unit_id, "num_prompt_tokens": n_context, "continuation": continuation,
                         "logprob": total, "num_scored_tokens": len(targets),
                         "perplexity": math.exp(-total / len(targets)), "token_logprobs": values,
                         "scored_tokens": [tok.decode([t]) for t in targets], "scored_token_ids": targets,
                         "is_greedy": all(g for _, g in scored[u.unit_id]),
                         "num_windows": windows.get(u.unit_id, 1),
                         "batch_latency_s": latency})
        return rows, errors

    # results.legibility_table: the perplexity of a generate experiment's outputs under this task's models, beside
    # the generate summary's legibility columns (docs/homework.md).
    legibility = Legibility(outputs_task="generate",
                            outputs_columns=("rows", "mean_new_tokens", "distinct_1", "distinct_2", "repetition_rate"))
    metrics = (Metric("logprob_per_token", 0.01, "loglikelihood: log-likelihood per scored token (nats)"),)

    def statistics(self, base, cur, both):
        """Per model: each unit's log-likelihood per scored token, paired unit by unit when the same texts were
        scored on both sides; when none were (each side scored its own texts, e.g. each run's sampled outputs
        under one model: docs/results.md), each side's rows as two samples."""
        out = []
        paired = set(both["model_b"]) if len(both) else set()
        for model, g in both.groupby("model_b", sort=True):
            per = [(g["logprob_" + s] / g["num_scored_tokens_" + s].clip(lower=1)).tolist() for s in "bc"]
            out.append(Sample(model, "logprob_per_token", "paired", per[0], per[1]))
        for model in sorted((set(base["model_pair"]) & set(cur["model_pair"])) - paired):
            per = [(d["logprob"] / d["num_scored_tokens"].clip(lower=1)).tolist()
                   for d in (base[base["model_pair"] == model], cur[cur["model_pair"] == model])]
            out.append(Sample(model, "logprob_per_token", "two_sample", per[0], per[1]))
        return out

    def summarize(self, df):
        """Per model × task configuration × prompt set × kind (pairs and whole texts apart: a perplexity over
        both means neither), prompt sets in spec order: units, scored tokens, mean log-probability per token,
        the corpus perplexity exp(−Σ logprob / Σ tokens), the median unit perplexity, the greedy share; for
        whole texts also lm-eval's word_perplexity, byte_perplexity and bits_per_byte (results/lm_eval.py).
        `prompt_set` is left out when there is one."""
        import pandas as pd

        from lmsweep.results.lm_eval import rolling_metrics
        from lmsweep.results.summary import latency_percentiles

        sets = [s for s in df.attrs.get("prompt_sets", []) if s in set(df["prompt_set"])]
        sets += sorted(set(df["prompt_set"]) - set(sets))
        kind = df["continuation"].isna().map({True: "text", False: "pair"})
        rows = []
        for (model, variant), by_config in df.assign(kind=kind).groupby(["model", "variant"], sort=True):
            for prompt_set in sets:
                for form in ("pair", "text"):
                    g = by_config[(by_config["prompt_set"] == prompt_set) & (by_config["kind"] == form)]
                    if g.empty:
                        continue
                    tokens = int(g["num_scored_tokens"].sum())
                    total = math.fsum(g["logprob"])
                    row = {"model": model, "variant": variant, "prompt_set": prompt_set, "kind": form,
                           "units": g["unit_id"].nunique(), "tokens": tokens, "logprob_per_token": total / tokens,
                           "perplexity": math.exp(-total / tokens),
                           "median_unit_perplexity": float(g["perplexity"].median()),
                           "greedy_share": float(g["is_greedy"].mean())}
                    if form == "text":
                        row.update(rolling_metrics(g["logprob"].tolist(), g["prompt_text"].tolist()))
                    rows.append({**row, **latency_percentiles(g)})
        out = pd.DataFrame(rows)
        if out["prompt_set"].nunique() <= 1:
            out = out.drop(columns="prompt_set")
        return out

    def examples(self, df, limit: int = 20):
        """Per prompt: what was scored, its log-probability and perplexity."""
        if df.empty:
            return None
        cols = ["model", "prompt_id", "continuation", "num_scored_tokens", "logprob", "perplexity"]
        return df[[c for c in cols if c in df.columns]].head(limit)
