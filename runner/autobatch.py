"""`execution.batch_size: auto`: where the worker starts, before out-of-memory halves it.

Throughput on a CPU rises with the batch (SmolLM2 bench workload: 185 tokens/s at 64, 231 at 128, 257 at
256; README, Performance), so auto starts at 256. A batch that big can outgrow memory with long prompts
or a big model, and on Linux a process past its memory is killed, not handed an exception to back off
from: the start is therefore capped so the batch's key/value cache and logits fit in a quarter of the
memory available now.

A scoring batch (a task without decoding: loglikelihood, classify, next_token, ...) is sized by tokens rather
than rows: its cost and memory are rows × longest prompt (× the vocabulary, for logits: SmolLM2 holds 1 GB of
them per 5,500 tokens), not rows, and a scoring forward pass gains little from more rows once it holds a
thousand tokens (SmolLM2 float32 on 2 CPU threads: 541 tokens/s at 8 × 128, 584 at 42 × 128), while more rows
pad more and hold more logits. Its start is TOKENS_PER_BATCH tokens over its longest prompt's estimated length,
at most START rows (short prompts keep 256): on 60 texts of 80-195 tokens at full context, 2,048 tokens (9 rows)
ran within 2% of the best fixed size by median, where 4,096 (18 rows) was 12% behind (docs/performance.md).
Generation keeps its row start: its steps are one token a row.
"""
from __future__ import annotations

from pathlib import Path

START = {"cpu": 256, "cuda": 256}
MEMORY_SHARE = 0.25
TOKENS_PER_BATCH = {"cpu": 2048, "cuda": 65536}     # scoring batches: rows × the longest prompt's tokens
CHARS_PER_TOKEN = 4                                 # jobs.plan.prompt_token_estimate's guess (no tokenizer here)


def start_size(model, units: list, accelerator: str) -> tuple[int, str]:
    """(rows per batch, why) for these units on this model."""
    start, why = START.get(accelerator, 64), ""
    if units and all(u.point is None for u in units):
        tokens = max(1, _longest_chars(units) // CHARS_PER_TOKEN)
        budget = TOKENS_PER_BATCH.get(accelerator, TOKENS_PER_BATCH["cpu"])
        if budget // tokens < start:
            start, why = max(1, budget // tokens), f" ({budget} tokens a batch, rows of up to ~{tokens})"
    available = _available_bytes(accelerator)
    per_row = _bytes_per_row(model, units)
    if not available or not per_row:
        return start, f"auto: {start}{why} (memory use not estimated)"
    fits = int(available * MEMORY_SHARE // per_row)
    if fits >= start:
        return start, f"auto: {start}{why}"
    size = max(1, fits)
    return size, (f"auto: {size}, capped from {start} so a batch's cache and logits (~{per_row / 2**20:.0f} MiB a "
                  f"row) fit in {MEMORY_SHARE:.0%} of the {available / 2**30:.1f} GiB available")


def _longest_chars(units: list) -> int:
    return max(len(u.prompt["prompt_text"]) + len(u.prompt.get("system_prompt") or "") for u in units)


def _bytes_per_row(model, units: list) -> int | None:
    """Key/value cache of the longest row (prompt characters bound its tokens) plus a few copies of logits."""
    config = getattr(getattr(model, "module", model), "config", None)
    if config is None or not units:
        return None
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_hidden_layers", None)
    heads = getattr(text, "num_attention_heads", None)
    hidden = getattr(text, "hidden_size", None)
    if not (layers and heads and hidden):
        return None
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    element = next((p.element_size() for p in model.parameters()), 4)
    new_tokens = max((u.point.max_new_tokens if u.point is not None else 0) for u in units)
    longest = _longest_chars(units) + new_tokens + 32              # + a chat template's own tokens
    vocab = getattr(text, "vocab_size", 0) or 0
    return 2 * layers * kv_heads * head_dim * element * longest + 4 * vocab * 4


def _available_bytes(accelerator: str) -> int | None:
    if accelerator == "cuda":
        import torch

        return torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
