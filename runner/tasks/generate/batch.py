"""How a generate batch runs: torch and transformers, imported only on a worker (runner/tasks/generate).

Greedy and sampled rows decode together through runner.decode (sampling from runner.sampling, seeded
per sequence); beam search and models runner.decode does not run go through `model.generate` with the
same processors."""
from __future__ import annotations

import time

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
)

from lmsweep.jobs.decoding import DecodingPoint
from lmsweep.runner import decode
from lmsweep.runner.sampling import generators, sampling_processors, sequence_seed
from lmsweep.runner.units import TaskContext, Unit, context_limit, render_prompt


class RowGroupProcessors(LogitsProcessor):
    """Logits processors per group of rows (one decoding point each), in transformers' order. A group of
    consecutive rows is a slice (no copies in and out); `run` orders rows by decoding point for that."""

    def __init__(self, groups: list[tuple[torch.Tensor, LogitsProcessorList]]):
        self.groups = [(_as_slice(rows), procs) for rows, procs in groups]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for rows, procs in self.groups:
            scores[rows] = procs(input_ids[rows], scores[rows])
        return scores


def _as_slice(rows: torch.Tensor) -> torch.Tensor | slice:
    first, n = int(rows[0]), len(rows)
    return slice(first, first + n) if torch.equal(rows, torch.arange(first, first + n, device=rows.device)) else rows


def _row_processors(point: DecodingPoint, streams: list[torch.Generator], pads: torch.Tensor) -> LogitsProcessorList:
    """What GenerationConfig would add for this point (penalties), then our batch-invariant sampling.

    The repetition penalty skips each row's left padding (`pads` positions): transformers' own counts the
    pad token as seen, and pad is EOS for many models (SmolLM2), so a padded row was pushed away from
    EOS and batched greedy text differed from the same prompt run alone."""
    procs = LogitsProcessorList()
    if point.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(point.repetition_penalty, prompt_ignore_length=pads))
    if point.no_repeat_ngram_size:
        procs.append(NoRepeatNGramLogitsProcessor(point.no_repeat_ngram_size))
    if point.do_sample:
        procs.extend(sampling_processors(point.temperature, point.top_k, point.top_p, streams))
    return procs


def _grouped_processors(points: dict[int, DecodingPoint], point_of_row: list[int],
                        streams: list[torch.Generator | None]):
    """A processor factory for rows of several decoding points (runner.decode.ProcessorFactory): given the
    batch's rows (indices into `point_of_row`) and their left padding, penalties and sampling per group."""
    def build(rows: list[int], pads: torch.Tensor) -> RowGroupProcessors | None:
        groups: dict[int, list[int]] = {}
        for position, row in enumerate(rows):
            groups.setdefault(point_of_row[row], []).append(position)
        row_groups = []
        for pi, members in groups.items():
            index = torch.tensor(members, device=pads.device)
            mine = [streams[rows[m]] for m in members] if points[pi].do_sample else []
            if procs := _row_processors(points[pi], mine, pads[index]):
                row_groups.append((index, procs))
        return RowGroupProcessors(row_groups) if row_groups else None
    return build


def run(ctx: TaskContext, units: list[Unit]) -> tuple[list[dict], dict[str, str]]:
    tok, model = ctx.tokenizer, ctx.model
    rendered = [render_prompt(tok, u.prompt) for u in units]
    add_special = rendered[0][1]
    encoded = [tok(text, add_special_tokens=add_special)["input_ids"] for text, _ in rendered]
    limit = context_limit(model)
    errors, keep = {}, []
    for u, ids in zip(units, encoded):
        if not ids:
            errors[u.unit_id] = "the prompt is empty: it tokenizes to 0 tokens"
        elif limit and len(ids) + u.point.max_new_tokens > limit:
            errors[u.unit_id] = (f"prompt is {len(ids)} tokens; with max_new_tokens={u.point.max_new_tokens} "
                                 f"it exceeds the model's context of {limit}")
        else:
            keep.append((u, ids))
    if not keep:
        return [], errors
    keep.sort(key=lambda unit_ids: unit_ids[0].point_index)      # each point's rows together (stable)
    units = [u for u, _ in keep]
    point = units[0].point
    # Our sampling decodes greedily over noised logits, so sampled units get a row per returned sequence
    # here, each with its own random stream.
    n_rows = [u.point.num_return_sequences if u.point.do_sample else 1 for u in units]
    prompts = [ids for (_, ids), n in zip(keep, n_rows) for _ in range(n)]
    seeds = [sequence_seed(u.seed or 0, u.point, u.prompt, j) if u.point.do_sample else None
             for u, n in zip(units, n_rows) for j in range(n)]
    streams = [None if s is None else generators([s])[0] for s in seeds]
    eos_ids = _eos_ids(model, tok)
    start = time.perf_counter()
    if point.num_beams > 1:              # one point per batch (batch_key): transformers' beam search
        new = _beam_search(model, tok, prompts, point, eos_ids, ctx.device)
        n_seq = [point.num_return_sequences] * len(units)
    else:
        factory = _grouped_processors({u.point_index: u.point for u in units},
                                      [u.point_index for u, n in zip(units, n_rows) for _ in range(n)], streams)
        if decode.supported(model):
            with torch.inference_mode():
                new = decode.decode(model, prompts, factory, eos_ids, tok.pad_token_id, point.max_new_tokens,
                                    ctx.device)
        else:                            # sliding-window caches, DeepSpeed's injected kernels
            new = _generate(model, tok, prompts, factory, point.max_new_tokens, eos_ids, ctx.device)
        n_seq = n_rows
    latency = time.perf_counter() - start
    eos = set(eos_ids)
    rows, total_new, row = [], 0, 0
    for (u, ids), n in zip(keep, n_seq):
        for j in range(n):
            seq = new[row]
            row += 1
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


def _generate(model, tok, prompts: list[list[int]], factory, max_new_tokens: int, eos_ids: list[int],
              device) -> list[list[int]]:
    """`model.generate`, greedy over the same processors, for models `runner.decode` does not run."""
    batch = tok.pad({"input_ids": prompts}, return_tensors="pt").to(device)
    pads = (batch["attention_mask"] == 0).sum(dim=1)
    processors = factory(list(range(len(prompts))), pads)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=tok.pad_token_id, eos_token_id=eos_ids, bos_token_id=tok.bos_token_id)
    with torch.inference_mode():
        out = model.generate(**batch, generation_config=config,
                             logits_processor=LogitsProcessorList([processors]) if processors else None)
    return out[:, batch["input_ids"].shape[1]:].tolist()


def _beam_search(model, tok, prompts: list[list[int]], point: DecodingPoint, eos_ids: list[int],
                 device) -> list[list[int]]:
    """Beam search through `model.generate` (the spec refuses beams with sampling)."""
    batch = tok.pad({"input_ids": prompts}, return_tensors="pt").to(device)
    pads = (batch["attention_mask"] == 0).sum(dim=1)
    config = GenerationConfig(
        max_new_tokens=point.max_new_tokens, do_sample=False, num_beams=point.num_beams,
        num_return_sequences=point.num_return_sequences,
        pad_token_id=tok.pad_token_id, eos_token_id=eos_ids, bos_token_id=tok.bos_token_id)
    processors = _row_processors(point, [], pads.repeat_interleave(point.num_beams)) or None
    with torch.inference_mode():
        out = model.generate(**batch, generation_config=config, logits_processor=processors)
    return out[:, batch["input_ids"].shape[1]:].tolist()


def _eos_ids(model, tok) -> list[int]:
    ids = getattr(model.generation_config, "eos_token_id", None) or tok.eos_token_id
    ids = ids if isinstance(ids, list) else [ids]
    if tok.eos_token_id is not None and tok.eos_token_id not in ids:
        ids.append(tok.eos_token_id)
    return [i for i in ids if i is not None]
