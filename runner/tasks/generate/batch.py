"""How a generate batch runs, whatever the engine: encode the prompts, refuse those that cannot run, ask the
engine (runner/engines) for each unit's sequences through its `generate` primitive, and build the rows.

Greedy units ask for one sequence; sampled units for `num_return_sequences`, each seeded with
runner.sampling.sequence_seed (so a sequence is the same whatever shares its batch); beam units for
`num_return_sequences` of one beam search. No torch here: the engine's primitive imports what it needs.

Each row also gets the log-probability of its tokens under the model's raw next-token distribution, as the
engine returns it (base.Generated; null from an engine that returns plain ids): `token_logprobs` per token and
`logprob` their sum, over `token_ids` (the EOS that ended the sequence is not in `token_ids`, so not counted)."""
from __future__ import annotations

import time

from lmsweep.runner.engines.base import Generated, GenerationRequest, engine_of
from lmsweep.runner.sampling import sequence_seed
from lmsweep.runner.units import TaskContext, Unit, render_prompt


def run(ctx: TaskContext, units: list[Unit]) -> tuple[list[dict], dict[str, str]]:
    engine = engine_of(ctx)
    tok = ctx.tokenizer
    rendered = [render_prompt(tok, u.prompt) for u in units]
    add_special = rendered[0][1]
    encoded = [tok(text, add_special_tokens=add_special)["input_ids"] for text, _ in rendered]
    limit = engine.context_limit(ctx)
    errors, keep = {}, []
    for u, ids in zip(units, encoded):
        if not ids:
            errors[u.unit_id] = "the prompt is empty: it tokenizes to 0 tokens"
        elif limit and len(ids) + u.point.max_new_tokens > limit:
            errors[u.unit_id] = (f"prompt is {len(ids)} tokens; with max_new_tokens={u.point.max_new_tokens} "
                                 f"it exceeds {engine.context_name} of {limit}")
        else:
            keep.append((u, ids))
    if not keep:
        return [], errors
    keep.sort(key=lambda unit_ids: unit_ids[0].point_index)      # each point's rows together (stable)
    requests = [GenerationRequest(ids, u.point, u.point_index, _seeds(u)) for u, ids in keep]
    eos = set(engine.eos_ids(ctx))
    start = time.perf_counter()
    sequences = engine.generate(ctx, requests)
    latency = time.perf_counter() - start
    rows, total_new = [], 0
    for (u, ids), seqs in zip(keep, sequences):
        for j, generated in enumerate(seqs):
            seq, logprobs = _unpack(generated)
            cut = next((k for k, t in enumerate(seq) if t in eos), None)
            ids_out = seq if cut is None else seq[:cut]
            token_logprobs = None if logprobs is None else logprobs[:len(ids_out)]
            total_new += len(ids_out)
            rows.append({
                "unit_id": u.unit_id, "sequence_index": j, "num_prompt_tokens": len(ids),
                "text": tok.decode(ids_out, skip_special_tokens=True), "token_ids": ids_out,
                "num_new_tokens": len(ids_out), "finish_reason": "length" if cut is None else "eos",
                "logprob": None if token_logprobs is None else float(sum(token_logprobs)),
                "token_logprobs": token_logprobs, "batch_latency_s": latency,
            })
    for r in rows:
        r["tokens_per_s"] = total_new / latency if latency > 0 else None
    return rows, errors


def _unpack(generated: Generated | list[int]) -> tuple[list[int], list[float] | None]:
    """(ids, log-probabilities or None): an engine's sequence, a Generated or plain ids."""
    if isinstance(generated, Generated):
        return list(generated.token_ids), generated.logprobs
    return list(generated), None


def _seeds(u: Unit) -> list[int | None]:
    """One entry per sequence the unit returns: its seed when sampled, None for greedy and beam search."""
    p = u.point
    if p.do_sample:
        return [sequence_seed(u.seed or 0, p, u.prompt, j) for j in range(p.num_return_sequences)]
    return [None] * (p.num_return_sequences if p.num_beams > 1 else 1)
