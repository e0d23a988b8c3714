"""How each classify method scores a batch (torch, transformers: imported only on a worker).

Each method returns rows with the candidate labels, a score per label and the predicted label;
runner/tasks/classify adds the variant's columns and `correct`."""
from __future__ import annotations

import inspect
import json
import math

import torch

from lmsweep.runner import shared_context
from lmsweep.runner.decode import left_pad
from lmsweep.runner.tasks.classify import build_context, candidates, fewshot_indices, fill
from lmsweep.runner.units import TaskContext, Unit, UnitFailure, context_limit, render_prompt


def label_likelihood(ctx: TaskContext, units: list[Unit]) -> tuple[list[dict], dict[str, str]]:
    """Each label's summed log-probability after the prompt. A prompt runs once and its labels are scored from
    it (runner/shared_context.py): one-token labels from its last logits, longer ones from its cache."""
    tok, model, p = ctx.tokenizer, ctx.model, ctx.params
    limit = context_limit(model)
    encoded: dict[str, list[int]] = {}
    errors, keep = {}, []
    for u in units:
        try:
            names, texts = candidates(p, u.prompt)
        except (ValueError, UnitFailure) as e:
            errors[u.unit_id] = str(e)
            continue
        conts = [encoded.setdefault(texts[n], tok(p.label_prefix + texts[n], add_special_tokens=False)["input_ids"])
                 for n in names]
        if not all(conts):
            errors[u.unit_id] = f"label text {texts[names[conts.index([])]]!r} has no tokens"
            continue
        shots = fewshot_indices(p, u.prompt["prompt_text"])
        text, add = render_prompt(tok, {**u.prompt, "prompt_text": build_context(p, u.prompt["prompt_text"], shots)})
        ids = tok(text, add_special_tokens=add)["input_ids"]
        if limit and len(ids) + max(map(len, conts)) > limit:
            errors[u.unit_id] = f"prompt with {len(shots)} shots is {len(ids)} tokens, beyond the context of {limit}"
        else:
            keep.append((u, ids, shots, text, names, texts, conts))
    if not keep:
        return [], errors
    logprobs = score_labels(model, tok.pad_token_id, [k[1] for k in keep], [k[6] for k in keep], ctx.device)
    rows = []
    for (u, ids, shots, text, names, texts, conts), sums in zip(keep, logprobs):
        scores = [s / len(c) if p.length_norm else s for s, c in zip(sums, conts)]
        best = max(range(len(names)), key=lambda j: scores[j])
        row = {"unit_id": u.unit_id, "num_prompt_tokens": len(ids), "candidate_labels": names,
               "label_scores": scores, "label_num_tokens": [len(c) for c in conts],
               "predicted_label": names[best], "fewshot_indices": shots, "rendered_prompt": text}
        if texts is not p.labels:
            row["own_label_set"] = texts
        rows.append(row)
    return rows, errors


def score_labels(model, pad_id: int, contexts: list[list[int]], labels: list[list[list[int]]],
                 device="cpu") -> list[list[float]]:
    """Per context, the summed log-probability of each of its label continuations: the context once and the
    labels from it where the model's cache allows (shared_context), else one sequence per (context, label)."""
    distinct = list(dict.fromkeys(map(tuple, contexts)))
    at = {c: i for i, c in enumerate(distinct)}
    pairs = [(at[tuple(c)], lab) for c, labs in zip(contexts, labels) for lab in labs]
    flat = None
    if shared_context.supported(model):
        try:
            flat = [math.fsum(s.logprobs) for s in shared_context.score(model, pad_id, [list(c) for c in distinct],
                                                                        pairs, device)]
        except shared_context.Unsupported:
            flat = None
    if flat is None:
        flat = sequence_logprobs(model, pad_id, [list(distinct[i]) + lab for i, lab in pairs],
                                 [len(lab) for _, lab in pairs], device)
    out, i = [], 0
    for labs in labels:
        out.append(flat[i:i + len(labs)])
        i += len(labs)
    return out


def sequence_logprobs(model, pad_id: int, sequences: list[list[int]], tail: list[int],
                      device="cpu") -> list[float]:
    """Summed log-probability of the last `tail[i]` tokens of each sequence given the tokens before."""
    keep = max(tail) + 1
    logp = tail_logprobs(model, pad_id, sequences, keep, device)
    out = []
    for i, (s, n) in enumerate(zip(sequences, tail)):
        positions = torch.arange(keep - n - 1, keep - 1)
        out.append(float(logp[i, positions, torch.tensor(s[-n:])].sum()))
    return out


def tail_logprobs(model, pad_id: int, sequences: list[list[int]], keep: int, device="cpu") -> torch.Tensor:
    """Next-token log-probabilities at the last `keep` positions of each sequence (batch × keep × vocab).

    Left-padded with explicit position ids, so each sequence is computed as if alone, and only the
    last positions' logits are materialised (batch × length × vocabulary would take gigabytes)."""
    ids, mask = left_pad(sequences, pad_id, "cpu")
    # A DeepSpeed engine wraps the model (`.module`); its own forward takes *args, **kwargs.
    params = inspect.signature(getattr(model, "module", model).forward).parameters
    kwargs = {}
    if "position_ids" in params:
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = keep
    with torch.inference_mode():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                       **{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in kwargs.items()}).logits
    return torch.log_softmax(logits[:, -keep:, :].float(), dim=-1).cpu()


# ---- embedding similarity --------------------------------------------------------------------------------

def embed(model, tok, texts: list[str], device="cpu") -> torch.Tensor:
    """Mean of the last hidden states over real tokens, L2-normalised (sentence-transformers' recipe)."""
    enc = tok(texts, padding=True, truncation=True, return_tensors="pt", padding_side="right").to(device)
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state.float()
    mask = enc["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1).cpu()


def embedding_similarity(ctx: TaskContext, units: list[Unit]) -> tuple[list[dict], dict[str, str]]:
    tok, model, p = ctx.tokenizer, ctx.model, ctx.params
    cands = [candidates(p, u.prompt) for u in units]
    texts = [fill(p.template, u.prompt["prompt_text"]) for u in units]
    labels = list(dict.fromkeys(t for names, words in cands for t in (words[n] for n in names)))
    vectors = embed(model, tok, texts + labels, ctx.device)
    sims = vectors[:len(texts)] @ vectors[len(texts):].T
    at = {t: i for i, t in enumerate(labels)}
    lengths = [len(ids) for ids in tok(texts, truncation=True)["input_ids"]]
    rows = []
    for k, (u, (names, words), n, text) in enumerate(zip(units, cands, lengths, texts)):
        scores = [float(sims[k, at[words[name]]]) for name in names]
        best = max(range(len(names)), key=lambda j: scores[j])
        rows.append({"unit_id": u.unit_id, "num_prompt_tokens": n, "candidate_labels": names,
                     "label_scores": scores, "predicted_label": names[best], "rendered_prompt": text,
                     **({"own_label_set": words} if words is not p.labels else {})})
    return rows, {}


# ---- pipelines ---------------------------------------------------------------------------------------------

def _make_pipeline(ctx: TaskContext, task: str):
    from transformers import pipeline

    return pipeline(task, model=ctx.model, tokenizer=ctx.tokenizer, device=ctx.device)


def pipeline(ctx: TaskContext, units: list[Unit]) -> tuple[list[dict], dict[str, str]]:
    """text-classification scores the model's own labels (id2label); `labels`, if given, maps each
    gold label to one of them. zero-shot-classification scores the label texts as NLI hypotheses."""
    p = ctx.params
    task = p.pipeline_task
    pipe = _make_pipeline(ctx, task)
    texts = [fill(p.template, u.prompt["prompt_text"]) for u in units]
    rows = []
    if task == "zero-shot-classification":
        for u, text in zip(units, texts):
            names, words = candidates(p, u.prompt)
            by_text = {words[n]: n for n in names}
            out = pipe(text, candidate_labels=[words[n] for n in names], hypothesis_template=p.hypothesis_template)
            score = {by_text[lab]: s for lab, s in zip(out["labels"], out["scores"])}
            rows.append(_scored(u, names, [score[n] for n in names], text)
                        | ({"own_label_set": words} if words is not p.labels else {}))
        return rows, {}
    id2label = ctx.model.config.id2label
    model_labels = [id2label[i] for i in sorted(id2label)]
    to_gold = {v: k for k, v in (p.labels or {}).items()}
    missing = [v for v in to_gold if v not in model_labels]
    if missing:
        raise UnitFailure(f"labels: {missing[0]!r} is not a label of this model ({', '.join(model_labels)})")
    for u, text in zip(units, texts):
        out = pipe(text, top_k=None)
        score = {d["label"]: d["score"] for d in out}
        rows.append(_scored(u, [to_gold.get(m, m) for m in model_labels], [score[m] for m in model_labels], text))
    return rows, {}


def _scored(u: Unit, names: list[str], scores: list[float], text: str) -> dict:
    best = max(range(len(names)), key=lambda j: scores[j])
    return {"unit_id": u.unit_id, "candidate_labels": names, "label_scores": scores,
            "predicted_label": names[best], "rendered_prompt": text}


def token_classification(ctx: TaskContext, units: list[Unit]) -> tuple[list[dict], dict[str, str]]:
    """Per-token labels and probabilities from the model, plus the pipeline's grouped entities."""
    tok, model = ctx.tokenizer, ctx.model
    pipe = _make_pipeline(ctx, "token-classification")
    id2label = model.config.id2label
    rows = []
    for u in units:
        text = u.prompt["prompt_text"]
        enc = tok(text, return_tensors="pt", truncation=True)
        with torch.inference_mode():
            probs = torch.softmax(model(**enc.to(ctx.device)).logits[0].float(), dim=-1).cpu()
        best = probs.max(-1)
        ids = enc["input_ids"][0].tolist()
        entities = [{k: (float(v) if k == "score" else v) for k, v in e.items()}
                    for e in pipe(text, aggregation_strategy="simple")]
        rows.append({"unit_id": u.unit_id, "num_prompt_tokens": len(ids),
                     "tokens": tok.convert_ids_to_tokens(ids),
                     "token_labels": [id2label[i] for i in best.indices.tolist()],
                     "token_scores": best.values.tolist(), "entities": json.dumps(entities, ensure_ascii=False),
                     "candidate_labels": [id2label[i] for i in sorted(id2label)], "rendered_prompt": text})
    return rows, {}
