"""Logit lens: what each layer would predict as the next token, read through the model's own output head.

One row per (unit, layer). The hidden state at the prompt's last token after layer i (0 = the embeddings'
output, i = block i, the tuple transformers returns with `output_hidden_states=True`) goes through the
model's final norm and its unembedding (`get_output_embeddings()`, then the final-logit soft-capping of
models that have one), and the row stores that distribution's top-k, its entropy and, where the prompt
names a target, the target's rank and probability.

Architecture-aware: most models (Llama, Mistral, Qwen, SmolLM2, GPT-2, OPT, ...) return their LAST hidden
state already through the final norm; norming it again changes it (an RMSNorm with weights is not
idempotent). The final norm is found by name in the base model and watched with a forward hook: the last
entry is normed again only when it is the norm's input, not its output, so the last layer's lens is the
model's own next-token distribution (the `next_token` task's). Intermediate entries are always pre-norm.

The target (`target_column`, default the prompt's `label`) is scored as a continuation of the prompt, as
the loglikelihood task scores one: its first token is the first token `tokenizer(prompt + target_prefix +
target)` adds after the prompt's own tokens. Prompts are right-padded and never cut: a prompt longer than
the model's context fails alone. The plan checks the layer selection and refuses a sweep estimated above
`max_storage_mb`, as hidden_states does.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from typing import TYPE_CHECKING, Literal

import pyarrow as pa
from pydantic import Field

from lmsweep.core.task import MAX_PROB_DELTA, PlannedUnits, Task, TaskParams
from lmsweep.core.task_registry import register_task
from lmsweep.runner.tasks.attention import Selection, decimal_size, selected
from lmsweep.runner.tasks.hidden_states import selected_layers
from lmsweep.runner.tasks.next_token import MIN_TOPK_OVERLAP, topk_deltas
from lmsweep.runner.units import TaskContext, Unit, UnitFailure, context_limit, forward_prompts, render_prompt

if TYPE_CHECKING:
    from lmsweep.jobs.prompts import Prompt

# Where transformers' base models keep the final norm, by architecture family: Llama, Mistral, Qwen, Gemma,
# SmolLM2 (`norm`); GPT-2, GPT-J, Falcon, BLOOM (`ln_f`); GPT-NeoX (`final_layer_norm`); Phi (`final_layernorm`);
# MPT (`norm_f`); OPT (`decoder.final_layer_norm`).
FINAL_NORMS = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f", "decoder.final_layer_norm")
# Estimated stored bytes: per row, fixed columns; per top-k entry, an int32 id, a float32 probability and the
# decoded token (a few bytes plus its offset). Uncompressed: Parquet usually stores less.
ROW_BYTES, TOPK_BYTES = 96, 20


class LogitLensParams(TaskParams):
    """Each chosen layer's hidden state at the prompt's last token, through the final norm and unembedding."""

    type: Literal["logit_lens"] = "logit_lens"
    layers: Selection = "all"                      # 0 = embeddings output; negatives count from the last layer
    top_k: int = Field(10, ge=1, le=1000)
    target_column: str = "label"                   # the prompt column naming the target: label or a free column
    target_prefix: str = " "                       # between the prompt and the target (" Paris" after "... is")
    max_storage_mb: float = Field(1024, gt=0)      # refuse to plan above this estimated size

    def canonical_params(self) -> dict:
        # The cap decides whether to run, not what a unit computes: keep it out of unit ids.
        return self.model_dump(exclude={"uses_decoding", "max_storage_mb"})


def target_of(label: str | None, meta: str | dict | None, column: str) -> str | None:
    """A prompt's target: its `label` (column "label") or one of its free columns; None when it has none."""
    if column == "label":
        return label
    meta = json.loads(meta or "{}") if isinstance(meta, str) else (meta or {})
    value = meta.get(column)
    return None if value is None else str(value)


@register_task("logit_lens")
class LogitLens(Task):
    Params = LogitLensParams
    needs_model_facts = True
    row_key = ("unit_id", "layer")
    probability_columns = frozenset({"topk_probs", "target_prob"})
    # The target columns are null for a prompt without a target. target_rank: 1 = the most likely token.
    columns = (
        ("layer", pa.int32()), ("num_layers", pa.int32()),
        ("topk_ids", pa.list_(pa.int32())), ("topk_tokens", pa.list_(pa.string())),
        ("topk_probs", pa.list_(pa.float32())), ("entropy", pa.float64()),
        ("target", pa.string()), ("target_id", pa.int32()), ("target_token", pa.string()),
        ("target_num_tokens", pa.int32()), ("target_rank", pa.int32()), ("target_prob", pa.float32()),
    )

    tolerances = (MAX_PROB_DELTA, MIN_TOPK_OVERLAP)
    compare_columns = ("layer", "topk_ids", "topk_tokens", "topk_probs", "entropy", "target", "target_rank",
                       "target_prob")
    diffs_title = "Logit-lens rows beyond tolerance"

    def prompt_identity(self, params: LogitLensParams, prompt: Prompt) -> dict:
        target = target_of(prompt.label, prompt.meta, params.target_column)
        return {} if target is None else {"target": target}

    def check_plan(self, spec, facts, prompts, units: PlannedUnits) -> None:
        check_logit_lens(spec, facts, units.prompt_counts([m.alias for m in spec.models]))

    def run(self, ctx: TaskContext, units: list[Unit]) -> tuple[list[dict], dict[str, str]]:
        import dataclasses

        import torch

        tok, p = ctx.tokenizer, ctx.params
        causal = getattr(ctx.model, "module", ctx.model)          # a DeepSpeed engine wraps the model
        base, norm, head = lens_parts(causal)
        limit = context_limit(causal)
        keep, errors = [], {}
        for u in units:
            text, add = render_prompt(tok, u.prompt)
            n = len(tok(text, add_special_tokens=add)["input_ids"])
            if not n:
                errors[u.unit_id] = "the prompt is empty: it tokenizes to 0 tokens"
            elif limit and n > limit:
                errors[u.unit_id] = f"prompt is {n} tokens; it exceeds the model's context of {limit}"
            else:
                keep.append(u)
        if not keep:
            return [], errors

        seen: list = []
        hook = norm.register_forward_hook(lambda module, args, out: seen.append((args[0] if args else None, out)))
        try:
            start = time.perf_counter()
            forward = forward_prompts(dataclasses.replace(ctx, model=base), keep, 1 << 30, output_hidden_states=True)
        finally:
            hook.remove()
        states = forward.outputs.hidden_states
        if not states or len(seen) != 1:
            raise UnitFailure(f"the model returned no hidden states or ran its final norm {len(seen)} times")
        n_layers = len(states) - 1
        last_normed = _last_is_normed(states[-1], *seen[0])
        layers = selected(p.layers, len(states))
        bad = [i for i in layers if not 0 <= i < len(states)]
        if bad:
            raise UnitFailure(f"layer index {bad[0]} out of range (embeddings + {n_layers} layers)")
        last = torch.tensor([len(ids) - 1 for ids in forward.kept], device=states[0].device)
        rows_of = torch.arange(len(keep), device=states[0].device)
        cap = getattr(_text_config(causal), "final_logit_softcapping", None)
        with torch.inference_mode():
            picked = torch.stack([states[i][rows_of, last] for i in layers], 1)      # (units, layers, hidden)
            normed = [picked[:, j] if (i == n_layers and last_normed) else norm(picked[:, j])
                      for j, i in enumerate(layers)]
            logits = head(torch.stack(normed, 1)).float()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            logp = torch.log_softmax(logits, dim=-1)                                 # (units, layers, vocab)
            probs = logp.exp()
            entropy = -(probs * logp).nan_to_num().sum(-1)
            top_p, top_i = probs.topk(min(p.top_k, probs.shape[-1]), dim=-1)
        latency = time.perf_counter() - start
        rows = []
        for b, u in enumerate(keep):
            target = target_columns(tok, u.prompt, p)
            common = {"unit_id": u.unit_id, "num_layers": n_layers,
                      "num_prompt_tokens": len(forward.kept[b]), "batch_latency_s": latency, **target}
            for j, layer in enumerate(layers):
                ids = top_i[b, j].tolist()
                row = {**common, "layer": layer, "topk_ids": ids, "topk_tokens": [tok.decode([t]) for t in ids],
                       "topk_probs": top_p[b, j].tolist(), "entropy": float(entropy[b, j])}
                if target.get("target_id") is not None:
                    t = target["target_id"]
                    row["target_rank"] = int((logp[b, j] > logp[b, j, t]).sum()) + 1
                    row["target_prob"] = float(probs[b, j, t])
                rows.append(row)
        return rows, errors

    def summarize(self, df):
        """Per model, variant and layer: mean entropy and top-1 probability, how often the layer's top-1 is the
        output's (the last layer's), and, over prompts with a target, its mean probability, median rank and
        how often it is the top-1."""
        import pandas as pd

        final = (df[df["layer"] == df["num_layers"]].set_index("unit_id")["topk_ids"]
                 .map(lambda ids: ids[0] if len(ids) else None))
        rows = []
        for (model, variant, layer), g in df.groupby(["model", "variant", "layer"], sort=True):
            top1 = g["topk_ids"].map(lambda ids: ids[0] if len(ids) else None)
            out = g["unit_id"].map(final)
            scored = g.dropna(subset=["target_rank"])
            rows.append({"model": model, "variant": variant, "layer": layer, "units": g["unit_id"].nunique(),
                         "mean_entropy": float(g["entropy"].mean()),
                         "mean_top1_prob": float(g["topk_probs"].map(lambda q: q[0] if len(q) else None).mean()),
                         "top1_is_output": float((top1 == out)[out.notna()].mean()) if out.notna().any() else None,
                         "targets": len(scored),
                         "mean_target_prob": float(scored["target_prob"].mean()) if len(scored) else None,
                         "median_target_rank": float(scored["target_rank"].median()) if len(scored) else None,
                         "target_top1": float((scored["target_rank"] == 1).mean()) if len(scored) else None})
        return pd.DataFrame(rows)

    def compare(self, both, tol, checks):
        """Per (unit, layer), as next_token judges a unit: the largest |Δp| over the union of both top-k lists
        and the target's probability, and the top-k overlap. A target rank far down the vocabulary moves with
        float rounding among near-equal tiny probabilities, so ranks are reported, not required equal."""
        import numpy as np
        import pandas as pd

        from lmsweep.results.compare import Check

        cols = ["unit_id", "model", "prompt_id", "layer", "max_abs_dp", "topk_overlap", "same_top1",
                "target_rank_b", "target_rank_c"]
        if both.empty:
            checks.append(Check("logit-lens max |Δp|", None, tol.max_prob_delta, "<=", "no matched rows"))
            return pd.DataFrame(columns=cols), pd.DataFrame(columns=cols)
        stats = topk_deltas(both)
        target_dp = (both["target_prob_c"].astype(float) - both["target_prob_b"].astype(float)).abs().fillna(0.0)
        out = pd.DataFrame({
            "unit_id": both["unit_id_c"], "model": both["model_c"], "prompt_id": both["prompt_id_c"],
            "layer": both["layer"], "max_abs_dp": np.maximum([s[0] for s in stats], target_dp.to_numpy()),
            "topk_overlap": [s[1] for s in stats], "same_top1": [s[2] for s in stats],
            "target_rank_b": both["target_rank_b"], "target_rank_c": both["target_rank_c"]})
        ranks = out.dropna(subset=["target_rank_b", "target_rank_c"])
        checks.append(Check("logit-lens max |Δp|", float(out["max_abs_dp"].max()), tol.max_prob_delta, "<=",
                            f"over {len(out)} (unit, layer) rows, top-k and target probabilities"))
        checks.append(Check("logit-lens min top-k overlap", float(out["topk_overlap"].min()), tol.min_topk_overlap,
                            ">=", f"top-1 agrees on {int(out['same_top1'].sum())}/{len(out)}; target rank differs "
                            f"on {int((ranks['target_rank_b'] != ranks['target_rank_c']).sum())}/{len(ranks)}"))
        bad = np.zeros(len(out), dtype=bool)
        if tol.max_prob_delta is not None:
            bad |= (out["max_abs_dp"] > tol.max_prob_delta).to_numpy()
        if tol.min_topk_overlap is not None:
            bad |= (out["topk_overlap"] < tol.min_topk_overlap).to_numpy()
        changed = (out["max_abs_dp"] > 0) | (out["topk_overlap"] < 1) | \
            (out["target_rank_b"].fillna(-1) != out["target_rank_c"].fillna(-1))
        return (out[bad].sort_values("max_abs_dp", ascending=False).reset_index(drop=True),
                out[~bad & changed].sort_values("max_abs_dp", ascending=False).reset_index(drop=True))

    def examples(self, df, limit: int = 20):
        """Per unit, the top-1 token of its last (up to) six stored layers: where the prediction forms."""
        import pandas as pd

        out = []
        for _, g in df.sort_values("layer").groupby("unit_id", sort=False):
            first = g.iloc[0]
            tail = g.tail(6)
            out.append({"model": first["model"], "prompt_id": first["prompt_id"], "target": first["target"],
                        "top1_by_layer": "  ".join(f"{layer}:{tokens[0]!r}" for layer, tokens in
                                                   zip(tail["layer"], tail["topk_tokens"]) if len(tokens))})
            if len(out) >= limit:
                break
        return pd.DataFrame(out)


def lens_parts(causal):
    """(base model, final norm, output head) of a causal LM: the base model returns the hidden states, the
    norm and the head turn one into logits. UnitFailure naming the class when it has no final norm we know."""
    base = getattr(causal, "base_model", None)
    head = causal.get_output_embeddings() if hasattr(causal, "get_output_embeddings") else None
    if base is None or base is causal or head is None:
        raise UnitFailure(f"{type(causal).__name__} has no separate base model and output head (a causal LM "
                          "with an LM head is needed)")
    for name in FINAL_NORMS:
        module = base
        for part in name.split("."):
            module = getattr(module, part, None)
        if module is not None and callable(module):
            return base, module, head
    raise UnitFailure(f"cannot find the final norm of {type(base).__name__} (looked for "
                      f"{', '.join(FINAL_NORMS)}); the logit lens needs it")


def _last_is_normed(last, norm_in, norm_out) -> bool:
    """Whether the last hidden state transformers returned is the final norm's output (most models) or its
    input (then the lens norms it, as the model does)."""
    import torch

    if last is norm_out or (last.shape == norm_out.shape and torch.equal(last, norm_out)):
        return True
    if norm_in is not None and last.shape == norm_in.shape and torch.equal(last, norm_in):
        return False
    raise UnitFailure("the last hidden state is neither the input nor the output of the final norm")


def _text_config(model):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def target_columns(tok, prompt: dict, p: LogitLensParams) -> dict:
    """The target columns of one prompt: the target, its first token as the model sees it after the prompt."""
    target = target_of(prompt.get("label"), prompt.get("meta"), p.target_column)
    if target is None:
        return {}
    text, add = render_prompt(tok, prompt)
    context = tok(text, add_special_tokens=add)["input_ids"]
    whole = tok(text + p.target_prefix + target, add_special_tokens=add)["input_ids"]
    ids = whole[len(context):] if whole[:len(context)] == context else \
        tok(p.target_prefix + target, add_special_tokens=False)["input_ids"]
    if not ids:
        raise UnitFailure(f"the target {target!r} has no tokens")
    return {"target": target, "target_id": ids[0], "target_token": tok.decode([ids[0]]), "target_num_tokens": len(ids)}


# ---- plan-time checks ------------------------------------------------------------------------------------

def check_logit_lens(spec, facts, units_per_model: dict[str, Counter]) -> int:
    """Validate the layers against each model (embeddings + num_layers) and return the estimated bytes;
    raise SpecError above `task.max_storage_mb`."""
    task = spec.task
    total = 0
    for m in spec.models:
        n_rows = sum(units_per_model[m.alias].values()) * selected_layers(spec, m.alias, facts[m.alias],
                                                                           task.layers)
        total += n_rows * (ROW_BYTES + TOPK_BYTES * task.top_k)
    if total > task.max_storage_mb * 1e6:
        raise spec.source.error(
            f"the logit lens would store ≈{decimal_size(total)} (top_k {task.top_k}), above task.max_storage_mb="
            f"{task.max_storage_mb:g}; select fewer layers, lower top_k or raise max_storage_mb",
            "task.max_storage_mb")
    return total
