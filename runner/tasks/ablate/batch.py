"""One batch of ablate units (one variant: a site, a layer, a head and a method): the clean pass, the intervened
pass, and the rows comparing them.

A unit's sequence is its prompt's tokens, then its continuation's where it has one; the next-token distribution
is read after the prompt's last token, the continuation scored token by token after it. Sequences are
right-padded: real tokens keep their positions and, causal attention, never see padding.

The clean pass of a prompt does not depend on the variant, so it is kept per model (`_CLEAN`, the last
`CLEAN_PROMPTS` sequences): a sweep of 270 heads over 8 prompts runs 8 clean sequences once, then one intervened
pass per unit. The clean pass also keeps each site's mean over the prompt's own positions (mean ablation's
replacement), so one pass serves every variant.
"""
from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from lmsweep.runner.tasks.ablate.sites import SITES, Sites, head_slice, intervene, record, sites_of
from lmsweep.runner.tasks.logit_lens import target_columns, target_of
from lmsweep.runner.tasks.loglikelihood import continuation_of, encode
from lmsweep.runner.units import TaskContext, Unit, UnitFailure, context_limit, render_prompt

CLEAN_PROMPTS = 256                # clean passes kept per model (each: a vocabulary of log-probs, the site means)
_CLEAN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()      # model -> OrderedDict[(ids, n_ctx), Clean]


@dataclass(frozen=True)
class Encoded:
    """One unit as the model sees it."""

    unit: Unit
    ids: tuple[int, ...]           # the prompt's tokens, then the continuation's
    n_ctx: int                     # the prompt's tokens: the next token is read after ids[n_ctx - 1]
    target: dict                   # the target columns (logit_lens.target_columns), {} without a target
    continuation: str | None
    clean_prompt: str | None = None                # patching: the clean prompt and its tokens
    clean_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Scores:
    """What one pass gives for one sequence."""

    logp: Any                      # (vocab,) float64 log-probabilities of the next token after the prompt
    continuation: float | None     # the continuation's log-likelihood (nats)


@dataclass(frozen=True)
class Clean:
    scores: Scores
    means: dict                    # (site, layer) -> the site's mean over the prompt's positions, (width,)


def run_batch(ctx: TaskContext, units: list[Unit]) -> tuple[list[dict], dict[str, str]]:
    import torch

    tok, p = ctx.tokenizer, ctx.params
    causal = getattr(ctx.model, "module", ctx.model)
    sites = sites_of(causal)
    if not 0 <= p.layer < sites.num_layers or (p.site == "head" and not 0 <= p.head < sites.num_heads):
        raise UnitFailure(f"layer {p.layer}, head {p.head} is out of range ({sites.num_layers} layers, "
                          f"{sites.num_heads} heads)")
    limit = context_limit(causal)
    keep, errors = [], {}
    for u in units:
        try:
            keep.append(encode_unit(tok, u, p, limit))
        except UnitFailure as e:
            errors[u.unit_id] = str(e)
    if not keep:
        return [], errors
    device = next(causal.parameters()).device
    start = time.perf_counter()
    clean = clean_passes(causal, tok, sites, keep, device)
    source = None
    if p.method == "patch":
        source, source_scores = source_pass(causal, tok, sites, p, keep, device)
    replace = replacement(p, sites, keep, clean, source)
    with intervene(sites, p.site, p.layer, p.head, replace, _shape([e.ids for e in keep])):
        logits = _forward(causal, tok, [e.ids for e in keep], device)
    latency = time.perf_counter() - start
    rows = []
    with torch.inference_mode():
        for b, e in enumerate(keep):
            after = _scores(logits[b], e)
            c = clean[b].scores
            rows.append({**_row(tok, p, sites, e, c, after), "batch_latency_s": latency,
                         **(_patch_columns(e, c, after, source_scores[b]) if source is not None else {})})
    return rows, errors


def encode_unit(tok, u: Unit, p, limit: int | None) -> Encoded:
    text, add = render_prompt(tok, u.prompt)
    context = tok(text, add_special_tokens=add)["input_ids"]
    if not context:
        raise UnitFailure("the prompt is empty: it tokenizes to 0 tokens")
    target = target_columns(tok, u.prompt, p)
    continuation = continuation_of(u.prompt.get("meta"), p.continuation_column)
    if continuation is not None:
        ids, n_ctx, _, continuation = encode(tok, u.prompt, p.continuation_column)
    else:
        ids, n_ctx = context, len(context)
    if limit and len(ids) > limit:
        raise UnitFailure(f"the sequence is {len(ids)} tokens; it exceeds the model's context of {limit}")
    if p.method != "patch":
        return Encoded(u, tuple(ids), n_ctx, target, continuation)
    clean = target_of(None, u.prompt.get("meta"), p.clean_column)
    if clean is None:
        raise UnitFailure(f"method patch: the prompt has no clean prompt (column {p.clean_column!r})")
    clean_text, clean_add = render_prompt(tok, {**u.prompt, "prompt_text": clean})
    clean_ids = tok(clean_text, add_special_tokens=clean_add)["input_ids"]
    if len(clean_ids) != n_ctx:
        raise UnitFailure(f"method patch: the clean prompt is {len(clean_ids)} tokens and this prompt {n_ctx}; "
                          "patching needs them aligned token for token")
    return Encoded(u, tuple(ids), n_ctx, target, continuation, clean, tuple(clean_ids))


def clean_passes(causal, tok, sites: Sites, keep: list[Encoded], device) -> list[Clean]:
    """Each sequence's clean pass: from the model's cache, or run now (those missing, in one pass) with every
    site's mean over the prompt's positions recorded."""
    import torch

    cache = _CLEAN.setdefault(causal, OrderedDict())
    missing = list({(e.ids, e.n_ctx): e for e in keep if (e.ids, e.n_ctx) not in cache}.values())
    if missing:
        mask = _prompt_mask(missing, device)
        means: dict = {}

        def see(key, x):
            means[key] = (x.float() * mask).sum(1) / mask.sum(1)                   # (batch, width)

        wanted = [(site, layer) for layer in range(sites.num_layers) for site in SITES]
        with record(sites, wanted, see, _shape([e.ids for e in missing])):
            logits = _forward(causal, tok, [e.ids for e in missing], device)
        with torch.inference_mode():
            for b, e in enumerate(missing):
                cache[(e.ids, e.n_ctx)] = Clean(_scores(logits[b], e), {k: v[b] for k, v in means.items()})
    for e in keep:
        cache.move_to_end((e.ids, e.n_ctx))
    out = [cache[(e.ids, e.n_ctx)] for e in keep]           # before evicting: a batch may hold more than it keeps
    while len(cache) > CLEAN_PROMPTS:
        cache.popitem(last=False)
    return out


def source_pass(causal, tok, sites: Sites, p, keep: list[Encoded], device):
    """Patching: the clean prompts' pass, recording the patched site's activation; (activation, scores)."""
    got: dict = {}
    with record(sites, [(p.site, p.layer)], lambda key, x: got.setdefault("x", x.detach().clone()),
                _shape([e.clean_ids for e in keep])):
        logits = _forward(causal, tok, [e.clean_ids for e in keep], device)
    return got["x"], [_scores(logits[b], Encoded(e.unit, e.clean_ids, e.n_ctx, {}, None))
                      for b, e in enumerate(keep)]


def replacement(p, sites: Sites, keep: list[Encoded], clean: list[Clean], source):
    """The function giving the site's activation under the variant's method, from its clean one."""
    import torch

    def cut(x_width: int) -> slice:
        return head_slice(x_width, sites.num_heads, p.head) if p.site == "head" else slice(None)

    if p.method == "zero":
        return torch.zeros_like
    if p.method == "mean":
        stacked = torch.stack([c.means[(p.site, p.layer)] for c in clean])                # (batch, full width)

        def mean(x):
            m = stacked[:, cut(stacked.shape[-1])]
            return m[:, None, :].to(x.dtype).expand_as(x)
        return mean

    def patch(x):
        src = source[..., cut(source.shape[-1])]
        out = x.clone()
        for b, e in enumerate(keep):
            out[b, :e.n_ctx] = src[b, :e.n_ctx].to(x.dtype)
        return out
    return patch


def _prompt_mask(keep: list[Encoded], device):
    """(batch, positions, 1): 1 at each sequence's prompt positions (not its continuation, not padding)."""
    import torch

    longest = max(len(e.ids) for e in keep)
    mask = torch.zeros(len(keep), longest, 1, device=device)
    for b, e in enumerate(keep):
        mask[b, :e.n_ctx] = 1
    return mask


def _shape(seqs) -> tuple[int, int]:
    """(sequences, positions) of the right-padded batch `_forward` runs."""
    return len(seqs), max(len(s) for s in seqs)


def _forward(causal, tok, seqs, device):
    import torch

    batch = tok.pad({"input_ids": [list(s) for s in seqs]}, return_tensors="pt", padding_side="right").to(device)
    with torch.inference_mode():
        return causal(**batch, use_cache=False).logits


def _scores(logits, e: Encoded) -> Scores:
    """The next-token log-probabilities after the prompt and the continuation's log-likelihood, in float64."""
    import torch

    logp = torch.log_softmax(logits[e.n_ctx - 1].double(), -1)
    cont = None
    if len(e.ids) > e.n_ctx:
        steps = torch.log_softmax(logits[e.n_ctx - 1:len(e.ids) - 1].double(), -1)
        wanted = torch.tensor(e.ids[e.n_ctx:], device=steps.device)
        cont = float(steps.gather(1, wanted[:, None]).sum())
    return Scores(logp, cont)


def _row(tok, p, sites: Sites, e: Encoded, clean: Scores, after: Scores) -> dict:
    base_p = clean.logp.exp()
    kl = float((base_p * (clean.logp - after.logp)).nan_to_num().sum())
    b1, a1 = int(clean.logp.argmax()), int(after.logp.argmax())
    row = {"unit_id": e.unit.unit_id, "num_prompt_tokens": e.n_ctx, "site": p.site, "layer": p.layer,
           "head": p.head, "method": p.method, "num_layers": sites.num_layers, "num_heads": sites.num_heads,
           "kl": max(kl, 0.0), "base_top1_id": b1, "base_top1_token": tok.decode([b1]),
           "base_top1_prob": float(base_p[b1]), "top1_id": a1, "top1_token": tok.decode([a1]),
           "top1_prob": float(after.logp[a1].exp()), "top1_changed": a1 != b1, **e.target}
    if e.target.get("target_id") is not None:
        t = e.target["target_id"]
        row |= {"base_target_logprob": float(clean.logp[t]), "target_logprob": float(after.logp[t]),
                "target_logprob_delta": float(after.logp[t] - clean.logp[t])}
    if e.continuation is not None:
        row |= {"continuation": e.continuation, "num_continuation_tokens": len(e.ids) - e.n_ctx,
                "base_continuation_logprob": clean.continuation, "continuation_logprob": after.continuation,
                "continuation_logprob_delta": after.continuation - clean.continuation}
    return row


def _patch_columns(e: Encoded, base: Scores, patched: Scores, source: Scores) -> dict:
    """The clean prompt's target log-probability, and the share of the gap to it the patch restores."""
    row: dict = {"clean_prompt": e.clean_prompt}
    t = e.target.get("target_id")
    if t is not None:
        clean_lp, base_lp, patched_lp = float(source.logp[t]), float(base.logp[t]), float(patched.logp[t])
        row["clean_target_logprob"] = clean_lp
        row["restored"] = (patched_lp - base_lp) / (clean_lp - base_lp) if clean_lp != base_lp else None
    return row
