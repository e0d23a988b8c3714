"""Text generation over a decoding point: text, token ids, new-token count, finish reason."""
from __future__ import annotations

import time

import torch
from transformers import GenerationConfig

from runner.sampling import sampling_processors, sequence_seed
from runner.units import TaskContext, Unit, context_limit, render_prompt

MODEL_CLASS = "AutoModelForCausalLM"
ATTN = None


def batch_key(unit: Unit) -> tuple:
    return (unit.point_index,)        # one generation config per batch; seeds are per sequence


def run(ctx: TaskContext, units: list[Unit]) -> tuple[list[dict], dict[str, str]]:
    tok, model = ctx.tokenizer, ctx.model
    point = units[0].point
    rendered = [render_prompt(tok, u.prompt) for u in units]
    add_special = rendered[0][1]
    encoded = [tok(text, add_special_tokens=add_special)["input_ids"] for text, _ in rendered]
    limit = context_limit(model)
    errors, keep = {}, []
    for u, ids in zip(units, encoded):
        if limit and len(ids) + point.max_new_tokens > limit:
            errors[u.unit_id] = (f"prompt is {len(ids)} tokens; with max_new_tokens={point.max_new_tokens} "
                                 f"it exceeds the model's context of {limit}")
        else:
            keep.append((u, ids))
    if not keep:
        return [], errors
    units = [u for u, _ in keep]
    batch = tok.pad({"input_ids": [ids for _, ids in keep]}, return_tensors="pt").to(ctx.device)
    n_seq = point.num_return_sequences
    if point.do_sample and n_seq > 1:
        # Our sampling runs generate greedily over noised logits; transformers only expands
        # rows for num_return_sequences when sampling or beaming, so repeat the rows ourselves.
        batch = {k: v.repeat_interleave(n_seq, dim=0) for k, v in batch.items()}
    config = GenerationConfig(
        max_new_tokens=point.max_new_tokens, do_sample=False, num_beams=point.num_beams,
        num_return_sequences=1 if point.do_sample else n_seq, repetition_penalty=point.repetition_penalty,
        no_repeat_ngram_size=point.no_repeat_ngram_size,
        pad_token_id=tok.pad_token_id, eos_token_id=_eos_ids(model, tok), bos_token_id=tok.bos_token_id,
    )
    processors = None
    if point.do_sample:
        seeds = [sequence_seed(u.seed or 0, u.unit_key, j) for u in units for j in range(n_seq)]
        processors = sampling_processors(point.temperature, point.top_k, point.top_p, seeds)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**batch, generation_config=config, logits_processor=processors)
    latency = time.perf_counter() - start
    new = out[:, batch["input_ids"].shape[1]:].tolist()
    eos = set(config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id])
    rows, total_new = [], 0
    for i, (u, ids) in enumerate(keep):
        for j in range(n_seq):
            seq = new[i * n_seq + j]
            cut = next((k for k, t in enumerate(seq) if t in eos), None)
            ids_out = seq if cut is None else seq[:cut]
            total_new += len(ids_out)
            rows.append({
                "unit_id": u.unit_id, "sequence_index": j, "num_prompt_tokens": len(ids),
                "text": tok.decode(ids_out, skip_special_tokens=True), "token_ids": ids_out,
                "num_new_tokens": len(ids_out), "finish_reason": "length" if cut is None else "eos",
                "batch_latency_s": latency,
            })
    for r in rows:
        r["tokens_per_s"] = total_new / latency if latency > 0 else None
    return rows, errors


def _eos_ids(model, tok) -> list[int]:
    ids = getattr(model.generation_config, "eos_token_id", None) or tok.eos_token_id
    ids = ids if isinstance(ids, list) else [ids]
    if tok.eos_token_id is not None and tok.eos_token_id not in ids:
        ids.append(tok.eos_token_id)
    return [i for i in ids if i is not None]
