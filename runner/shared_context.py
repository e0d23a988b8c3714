"""Score continuations that share a context: each context runs once, every continuation is scored from it.

Multiple choice asks for log p(choice | context) for several choices after one context (classify's labels,
loglikelihood's context/continuation pairs). Running `context + choice` once per choice computes the context
again for every choice; here a batch's distinct contexts run once, left-padded with explicit position ids
(each as if alone), keeping their key/value cache and their last position's next-token log-probabilities:

- a continuation's first token is scored from those log-probabilities, so one-token choices cost nothing more;
- the rest of each longer continuation runs once more, after its context's cache (the cache rows selected per
  continuation, the continuation right-padded: its real tokens never see the padding, causal attention).

So a unit's scores do not depend on its batch-mates beyond float32 rounding, as with the per-pair path.
Models whose forward takes no `past_key_values`, or whose cache is not plain per-layer keys and values
(recurrent or linear-attention layers), are scored per pair by the caller (`supported` says which).

Imported on a worker only (torch, transformers).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from lmsweep.runner.decode import left_pad

ELEMENTS_BUDGET = 1 << 28        # logits plus copied cache values per forward pass (1 GiB in float32)


@dataclass(frozen=True)
class Scored:
    """One continuation: each token's log-probability and whether it was the model's argmax."""

    logprobs: list[float]
    greedy: list[bool]


def _forward_params(model) -> dict:
    # A DeepSpeed engine wraps the model (`.module`); its own forward takes *args, **kwargs.
    return inspect.signature(getattr(model, "module", model).forward).parameters


def supported(model) -> bool:
    """The model's forward takes a key/value cache (and says it uses one)."""
    params = _forward_params(model)
    return "past_key_values" in params and "use_cache" in params


class Unsupported(Exception):
    """The model's cache is not plain per-layer keys and values: score per pair instead."""


def score(model, pad_id: int, contexts: list[list[int]], pairs: list[tuple[int, list[int]]],
          device="cpu") -> list[Scored]:
    """Score each (context index, continuation tokens) of `pairs` after `contexts[index]`.

    Contexts run in groups whose cache (and logits, for a model that computes them all) fits the budget.
    Raises Unsupported when the model's cache cannot be shared (the caller scores per pair)."""
    params = _forward_params(model)
    config = getattr(getattr(model, "module", model), "config", None)
    per_token = _cache_per_token(config)
    if "logits_to_keep" not in params:
        per_token += getattr(config, "vocab_size", 0) or 0
    of: dict[int, list[int]] = {}
    for j, (ci, _) in enumerate(pairs):
        of.setdefault(ci, []).append(j)
    results: list[Scored | None] = [None] * len(pairs)
    for group in padded_groups([len(c) for c in contexts], 0, per_token):
        at = {ci: k for k, ci in enumerate(group)}
        js = [j for ci in group for j in of.get(ci, [])]
        got = _score_group(model, params, pad_id, [contexts[ci] for ci in group],
                           [(at[pairs[j][0]], pairs[j][1]) for j in js], device)
        for j, s in zip(js, got):
            results[j] = s
    return results


def _cache_per_token(config) -> int:
    """Key and value elements one token adds to the cache (all layers), from the model's config."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_hidden_layers", None) or 1
    hidden = getattr(text, "hidden_size", None) or 0
    heads = getattr(text, "num_attention_heads", None) or 1
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    return max(1, 2 * layers * kv_heads * head_dim)


def _score_group(model, params, pad_id: int, contexts: list[list[int]], pairs: list[tuple[int, list[int]]],
                 device) -> list[Scored]:
    """One forward pass over the contexts (left-padded, keeping the cache), then the longer continuations."""
    from transformers import DynamicCache

    ids, mask = left_pad(contexts, pad_id, "cpu")
    width = ids.shape[1]
    kwargs = {"past_key_values": DynamicCache(), "use_cache": True}
    if "position_ids" in params:
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1
    with torch.inference_mode():
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        first = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
    cache = out.past_key_values
    layers = getattr(cache, "layers", None)
    if not isinstance(cache, DynamicCache) or not layers or any(
            type(layer).__name__ != "DynamicLayer" or not layer.is_initialized for layer in layers):
        raise Unsupported(f"{type(cache).__name__} is not a cache of plain keys and values")
    kv = [(layer.keys, layer.values) for layer in layers]
    results: list[Scored | None] = [None] * len(pairs)
    longer = []
    for j, (ci, cont) in enumerate(pairs):
        lp = float(first[ci, cont[0]])
        greedy = bool(first[ci].argmax() == cont[0])
        if len(cont) == 1:
            results[j] = Scored([lp], [greedy])
        else:
            longer.append(j)
    per_token = sum(k.shape[1] * k.shape[3] + v.shape[1] * v.shape[3] for k, v in kv)
    vocab = first.shape[-1]
    for chunk in padded_groups([len(pairs[j][1]) - 1 for j in longer], width * per_token, vocab):
        rows = [longer[i] for i in chunk]
        _continue(model, params, pad_id, kv, mask, first, pairs, rows, results, device)
    return results


def padded_groups(lengths: list[int], per_row: int, per_position: int,
                  budget: int = ELEMENTS_BUDGET) -> list[list[int]]:
    """Consecutive rows per forward pass, at least one each, such that rows × (per_row + longest × per_position)
    stays under `budget`: a continuation pass copies its contexts' cache (per_row) and holds its logits (per
    position a vocabulary); a context pass holds its cache (per position)."""
    out: list[list[int]] = []
    longest = 0
    for i, n in enumerate(lengths):
        if out and (len(out[-1]) + 1) * (per_row + max(longest, n) * per_position) <= budget:
            out[-1].append(i)
            longest = max(longest, n)
        else:
            out.append([i])
            longest = n
    return out


def _continue(model, params, pad_id, kv, mask, first, pairs, rows, results, device) -> None:
    """The continuations `rows` (two tokens or more) after their contexts' cache: tokens 2.. of each."""
    from transformers import DynamicCache

    index = torch.tensor([pairs[j][0] for j in rows], device=kv[0][0].device)
    cache = DynamicCache([(k.index_select(0, index), v.index_select(0, index)) for k, v in kv])
    width = max(len(pairs[j][1]) - 1 for j in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    cont_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, j in enumerate(rows):
        tail = pairs[j][1][:-1]
        ids[r, :len(tail)] = torch.tensor(tail)
        cont_mask[r, :len(tail)] = 1
    ctx_mask = mask.index_select(0, index.cpu())
    kwargs = {"past_key_values": cache, "use_cache": True}
    if "position_ids" in params:
        kwargs["position_ids"] = (ctx_mask.sum(-1, keepdim=True) + torch.arange(width)).to(device)
    with torch.inference_mode():
        logits = model(input_ids=ids.to(device), attention_mask=torch.cat([ctx_mask, cont_mask], -1).to(device),
                       **kwargs).logits
    for r, j in enumerate(rows):
        ci, cont = pairs[j]
        logp = torch.log_softmax(logits[r, :len(cont) - 1].float(), dim=-1)
        targets = torch.tensor(cont[1:], device=logp.device)
        values = logp.gather(-1, targets[:, None])[:, 0].tolist()
        greedy = (logp.argmax(-1) == targets).tolist()
        results[j] = Scored([float(first[ci, cont[0]]), *values],
                            [bool(first[ci].argmax() == cont[0]), *greedy])
