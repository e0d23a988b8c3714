"""Token generation and next-token probabilities on a transformers model (the `hf` and `deepspeed` engines'
primitives): torch and transformers, imported only on a worker.

Greedy and sampled rows decode together through runner.decode (sampling from runner.sampling, seeded
per sequence); beam search and models runner.decode does not run go through `model.generate` with the
same processors. The rows are built by the tasks (runner/tasks/generate/batch.py, next_token.py)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
)

from lmsweep.jobs.decoding import BY_NAME, DecodingPoint
from lmsweep.runner import decode
from lmsweep.runner.engines.base import Generated, GenerationRequest, TopK
from lmsweep.runner.sampling import generators, sampling_processors


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


# The hf and deepspeed engines' mapping of the decoding parameters that are not sampling parameters and not the
# decode loop's own (do_sample, num_beams, max_new_tokens, num_return_sequences): each one's logits processor,
# built from its value and the rows' left padding, applied when it is not at its default (jobs/decoding.py), in
# transformers' order. Sampling parameters: runner.sampling.WARPERS. A parameter in neither is not served by
# these engines (runner/engines/hf.py `decoding`; tests/jobs/test_decoding_params.py checks they agree).
#
# The repetition penalty skips each row's left padding (`pads` positions): transformers' own counts the pad token
# as seen, and pad is EOS for many models (SmolLM2), so a padded row was pushed away from EOS and batched greedy
# text differed from the same prompt run alone.
PENALTIES: dict[str, Callable[[Any, torch.Tensor], LogitsProcessor]] = {
    "repetition_penalty": lambda value, pads: RepetitionPenaltyLogitsProcessor(value, prompt_ignore_length=pads),
    "no_repeat_ngram_size": lambda value, pads: NoRepeatNGramLogitsProcessor(value),
}


def _row_processors(point: DecodingPoint, streams: list[torch.Generator], pads: torch.Tensor) -> LogitsProcessorList:
    """What GenerationConfig would add for this point (penalties), then our batch-invariant sampling."""
    procs = LogitsProcessorList()
    for name, processor in PENALTIES.items():
        if BY_NAME[name].differs(value := getattr(point, name)):
            procs.append(processor(value, pads))
    if point.do_sample:
        procs.extend(sampling_processors(point, streams))
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


def generate(model, tok, requests: list[GenerationRequest], eos_ids: list[int], device) -> list[list[Generated]]:
    """Each request's sequences: new token ids and their raw log-probabilities (base.Generated). Requests of one
    decoding point are consecutive (the task orders them), so each point's rows are a slice. Beam search: one
    point per batch (the task's batch_key).

    The decode loop records each token's log-probability as it decodes (log-softmax of the logits before the
    processors); beam search and `model.generate`'s path score their sequences afterwards with one forward
    pass (`score`), the same quantity up to float rounding."""
    point = requests[0].point
    logprobs: list[list[float]] = []
    if point.num_beams > 1:              # transformers' beam search
        prompts = [r.prompt_ids for r in requests]
        new = _beam_search(model, tok, prompts, point, eos_ids, device)
        logprobs = score(model, tok, [p for p in prompts for _ in range(point.num_return_sequences)], new,
                         eos_ids, device)
    else:
        # Our sampling decodes greedily over noised logits: a row per returned sequence, each with its own
        # random stream.
        prompts = [r.prompt_ids for r in requests for _ in r.seeds]
        streams = [None if s is None else generators([s])[0] for r in requests for s in r.seeds]
        factory = _grouped_processors({r.point_index: r.point for r in requests},
                                      [r.point_index for r in requests for _ in r.seeds], streams)
        if decode.supported(model):
            with torch.inference_mode():
                new = decode.decode(model, prompts, factory, eos_ids, tok.pad_token_id, point.max_new_tokens,
                                    device, logprobs=logprobs)
        else:                            # sliding-window caches, DeepSpeed's injected kernels
            new = _generate(model, tok, prompts, factory, point.max_new_tokens, eos_ids, device)
            logprobs = score(model, tok, prompts, new, eos_ids, device)
    out, row = [], 0
    for r in requests:
        out.append([Generated(list(new[row + j]), logprobs[row + j]) for j in range(len(r.seeds))])
        row += len(r.seeds)
    return out


SCORE_ROWS = 16        # rows per scoring forward: its logits are rows × (new tokens + 1) × vocabulary floats


def score(model, tok, prompts: list[list[int]], sequences: list[list[int]], eos_ids: list[int],
          device) -> list[list[float]]:
    """Per row, the log-probability of each new token up to and including its first EOS (what follows is
    padding) under the model's raw logits, from one teacher-forced forward pass over prompt + tokens
    (left-padded, positions as `generate` numbers them); the rest of the row gets no value."""
    eos = set(eos_ids)
    kept = [list(s) for s in sequences]
    kept = [s[:next((k + 1 for k, t in enumerate(s) if t in eos), len(s))] for s in kept]
    accepts = decode._forward_params(model)
    out: list[list[float]] = []
    for start in range(0, len(kept), SCORE_ROWS):
        rows = range(start, min(start + SCORE_ROWS, len(kept)))
        ids, mask = decode.left_pad([list(prompts[i]) + kept[i] for i in rows], tok.pad_token_id, device)
        width = max(len(kept[i]) for i in rows)
        kwargs = {"logits_to_keep": width + 1} if "logits_to_keep" in accepts else {}
        if "position_ids" in accepts:
            kwargs["position_ids"] = decode._positions(mask)
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask, **kwargs).logits[:, -(width + 1):-1].float()
        logp = torch.log_softmax(logits, dim=-1)
        for b, i in enumerate(rows):
            n = len(kept[i])
            if n == 0:
                out.append([])
                continue
            target = torch.tensor(kept[i], device=logp.device)
            out.append(logp[b, width - n:].gather(1, target.unsqueeze(1)).squeeze(1).tolist())
    return out


def next_token(model, tok, prompts: list[list[int]], k: int, device) -> list[TopK]:
    """One forward pass over the left-padded prompts: the last position's top-k probabilities and entropy."""
    batch = tok.pad({"input_ids": prompts}, return_tensors="pt").to(device)
    with torch.inference_mode():
        logits = model(**batch).logits[:, -1, :].float()
    logp = torch.log_softmax(logits, dim=-1)
    probs = logp.exp()
    entropy = -(probs * logp).nan_to_num().sum(-1)
    top_p, top_i = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [TopK(i, p, h) for p, i, h in zip(top_p.tolist(), top_i.tolist(), entropy.tolist())]


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


def eos_ids(model, tok) -> list[int]:
    ids = getattr(model.generation_config, "eos_token_id", None) or tok.eos_token_id
    ids = ids if isinstance(ids, list) else [ids]
    if tok.eos_token_id is not None and tok.eos_token_id not in ids:
        ids.append(tok.eos_token_id)
    return [i for i in ids if i is not None]
