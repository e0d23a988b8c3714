"""The decoding loop behind the generate task: greedy steps over processed logits, built for batch throughput.

`model.generate` does the same arithmetic, but on a CPU three things it does cost a third of the time:
its key/value cache grows by concatenation (every step copies the whole cache: 13-18% of a step at batch
64-256), a batch's prompts are prefilled padded to the longest one (a batch mixing 4- and 47-token prompts
prefills ~2.5x the tokens it needs), and rows that reached EOS keep being computed until the last row
ends. Here the cache grows in place into spare capacity (`GrowingLayer`), prompts are prefilled in
length-sorted chunks and their caches left-padded into one batch, and finished rows leave the batch.

Each row's arithmetic is unchanged: the same forward on the same tokens and positions, the same
processors, argmax. Greedy outputs are token for token those of `model.generate` (tests/test_decode.py
and the batching invariants); sampling stays exact and batch-invariant because it is argmax over logits
plus per-sequence Gumbel noise (runner/sampling.py), a processor like any other.

Models whose cache is not a plain full-attention cache (sliding windows, DeepSpeed's injected kernels
with their own cache) and beam search use `model.generate`; `supported()` says which path a model takes.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

# Prefill chunks: at most this many rows, cut where padding would exceed a quarter of the chunk's tokens.
PREFILL_ROWS = 32
# Finished rows leave the batch once they are this fraction of it (a compaction copies the cache once).
COMPACT_FRACTION = 1 / 16

# processors(rows, pads) → a LogitsProcessor over the current batch (or None): `rows` are the caller's
# row indices in batch order, `pads` each row's left padding in the `input_ids` the processor will see.
ProcessorFactory = Callable[[list[int], torch.Tensor], Callable | None]


class GrowingLayer(DynamicLayer):
    """A full-attention cache layer whose tensors grow into preallocated capacity instead of by `torch.cat`.

    `update` writes the new positions in place and returns views of the filled part, so attention sees
    exactly the tensors a `DynamicLayer` would hold."""

    def __init__(self, capacity: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def fill(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        """Start from prefilled states (batch, heads, length, dim), leaving room for `capacity` positions."""
        self.lazy_initialization(keys, values)
        b, h, n, _ = keys.shape
        self._k = keys.new_empty((b, h, max(capacity, n), keys.shape[-1]))
        self._v = values.new_empty((b, h, max(capacity, n), values.shape[-1]))
        self._k[:, :, :n] = keys
        self._v[:, :, :n] = values
        self.length = n
        self._views()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized or self.length == 0:
            self.fill(key_states, value_states, self.capacity)
            return self.keys, self.values
        n = key_states.shape[-2]
        if self.length + n > self._k.shape[2]:         # past the planned capacity: double, like a list
            self.fill(self.keys, self.values, 2 * (self.length + n))
        self._k[:, :, self.length:self.length + n] = key_states
        self._v[:, :, self.length:self.length + n] = value_states
        self.length += n
        self._views()
        return self.keys, self.values

    def _views(self) -> None:
        self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.length:
            self._k, self._v = self._k[indices], self._v[indices]
            self._views()

    def reset(self) -> None:
        self.length = 0
        super().reset()


def supported(model) -> bool:
    """True when `decode` can run this model: a causal LM whose cache transformers would build from plain
    full-attention layers (no sliding windows), with a forward that takes a cache object; not DeepSpeed
    with injected kernels (they keep their own cache)."""
    module = getattr(model, "module", model)                  # a DeepSpeed InferenceEngine wraps the model
    config = getattr(module, "config", None)
    if config is None or getattr(getattr(model, "_config", None), "replace_with_kernel_inject", False):
        return False
    if getattr(config, "is_encoder_decoder", False):
        return False
    try:
        layers = DynamicCache(config=config).layers
    except Exception:                                          # a config transformers cannot map to layers
        return False
    params = _forward_params(model)
    return (all(type(layer) is DynamicLayer for layer in layers)
            and "past_key_values" in params and "attention_mask" in params)


def decode(model, prompts: list[list[int]], processors: ProcessorFactory, eos_ids: list[int], pad_id: int,
           max_new_tokens: int, device="cpu", logprobs: list[list[float]] | None = None) -> list[list[int]]:
    """Greedy decoding of each prompt (over processed logits): the new tokens of every row, in `prompts`
    order, each up to and including its first EOS or `max_new_tokens` long.

    `logprobs`, when given (an empty list), receives per row the log-probability of each new token under the
    model's raw logits (log-softmax before any processor: penalties, temperature, top-k/p, sampling noise), in
    float32 as the logits are."""
    accepts = _forward_params(model)
    # A prompt repeated across decoding points, seeds and returned sequences is prefilled once.
    unique = list(dict.fromkeys(tuple(p) for p in prompts))
    slot = {p: i for i, p in enumerate(unique)}
    order = range(len(prompts))                         # batch rows stay in the caller's order
    prefill = sorted(range(len(unique)), key=lambda u: len(unique[u]))      # unique prompts, shortest first
    width = max(len(p) for p in unique)
    logits, layer_states = [], []
    for chunk in _prefill_chunks([len(unique[u]) for u in prefill]):
        ids, mask = left_pad([list(unique[prefill[i]]) for i in chunk], pad_id, device)
        kwargs = {"logits_to_keep": 1} if "logits_to_keep" in accepts else {}
        if "position_ids" in accepts:
            kwargs["position_ids"] = _positions(mask)
        out = model(input_ids=ids, attention_mask=mask, past_key_values=DynamicCache(), use_cache=True, **kwargs)
        logits.append(out.logits[:, -1, :].float())
        layer_states.append([(layer.keys, layer.values) for layer in out.past_key_values.layers])
    # One batch: each chunk's cache left-padded to the widest prompt (the padding is masked out), then a
    # row per batch row, in `order`.
    position = {u: i for i, u in enumerate(prefill)}
    pick = torch.tensor([position[slot[tuple(prompts[i])]] for i in order], device=device)
    capacity = width + max_new_tokens
    cache = DynamicCache()
    cache.layers = []
    for li in range(len(layer_states[0])):
        layer = GrowingLayer(capacity)
        keys = torch.cat([_pad_left(states[li][0], width) for states in layer_states])
        values = torch.cat([_pad_left(states[li][1], width) for states in layer_states])
        layer.fill(keys[pick], values[pick], capacity)
        cache.layers.append(layer)
    del layer_states
    scores = torch.cat(logits)[pick]
    rows = list(order)                                         # caller's row index of each batch row
    lengths = torch.tensor([len(prompts[i]) for i in rows], device=device)
    ids, mask = left_pad([prompts[i] for i in rows], pad_id, device)
    input_ids = torch.full((len(rows), width + max_new_tokens), pad_id, dtype=torch.long, device=device)
    input_ids[:, :width] = ids
    attention = torch.zeros((len(rows), width + max_new_tokens), dtype=mask.dtype, device=device)
    attention[:, :width] = mask
    pads = width - lengths
    process = processors(rows, pads)
    eos = torch.tensor(eos_ids, device=device)
    new: dict[int, list[int]] = {i: [] for i in rows}
    new_lp: dict[int, list[float]] = {i: [] for i in rows}
    finished = torch.zeros(len(rows), dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        t = width + step                                       # sequence length before this step's token
        raw = torch.log_softmax(scores, dim=-1) if logprobs is not None else None   # processors change scores
        if process is not None:
            scores = process(input_ids[:, :t], scores)
        token = scores.argmax(dim=-1)
        if raw is not None:
            for r, lp in zip(rows, raw.gather(1, token.unsqueeze(1)).squeeze(1).tolist()):
                new_lp[r].append(lp)
        input_ids[:, t] = token
        attention[:, t] = 1
        finished |= torch.isin(token, eos)
        for r, tok in zip(rows, token.tolist()):
            new[r].append(tok)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        if finished.sum() >= max(1, int(len(rows) * COMPACT_FRACTION)):
            keep = (~finished).nonzero().flatten()
            cache.batch_select_indices(keep)
            rows = [rows[i] for i in keep.tolist()]
            input_ids, attention, pads, lengths, token, finished = (
                input_ids[keep], attention[keep], pads[keep], lengths[keep], token[keep], finished[keep])
            process = processors(rows, pads)
        kwargs = {"position_ids": (lengths + step).unsqueeze(1)} if "position_ids" in accepts else {}
        out = model(input_ids=token.unsqueeze(1), attention_mask=attention[:, :t + 1], past_key_values=cache,
                    use_cache=True, **kwargs)
        scores = out.logits[:, -1, :].float()
    out = [_until_eos(new[i], set(eos_ids)) for i in range(len(prompts))]
    if logprobs is not None:
        logprobs.extend(new_lp[i][:len(out[i])] for i in range(len(prompts)))
    return out


def _prefill_chunks(lengths: list[int]) -> list[list[int]]:
    """Consecutive runs of length-sorted rows: at most PREFILL_ROWS, padding at most a quarter of a chunk."""
    chunks, current = [], []
    for i, n in enumerate(lengths):
        if current and (len(current) >= PREFILL_ROWS or
                        n * (len(current) + 1) > 1.25 * (sum(lengths[j] for j in current) + n)):
            chunks.append(current)
            current = []
        current.append(i)
    return chunks + [current]


def left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as (input_ids, attention_mask) on `device`, padded on the left to the longest, so every row's
    last token is in the last column (decoding, scoring a context's next token)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """As `generate` numbers them: real tokens from 0, padding 0."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def _pad_left(states: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - states.shape[-2]
    if missing == 0:
        return states
    pad = states.new_zeros((*states.shape[:-2], missing, states.shape[-1]))
    return torch.cat([pad, states], dim=-2)


def _until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    cut = next((k for k, t in enumerate(tokens) if t in eos), None)
    return tokens if cut is None else tokens[:cut + 1]


def _forward_params(model) -> set[str]:
    module = getattr(model, "module", model)                  # DeepSpeed wraps the HF model
    return set(inspect.signature(module.forward).parameters)
