"""Where an intervention acts in a transformers causal LM, by architecture family, and the hooks that act there.

Three sites per block (layer i of `num_layers`):

- `head`: one attention head's output, before the heads are mixed: the slice `[h·d, (h+1)·d)` of the input of
  the attention output projection (Llama's `o_proj`, GPT-2's `c_proj`; `d` = its width / the query heads).
  Setting it to zero removes exactly that head's term from the projection's output.
- `mlp`: the MLP's output, what it adds to the residual stream.
- `layer`: the whole block's contribution, its output minus its input (attention and MLP together).

An intervention replaces the site's activation at every position of a sequence: by zero, by a given vector
(mean ablation: the prompt's own mean over its positions), or by another run's activation (patching). The
families differ only in module names (`FAMILIES`); a model whose family is not listed fails with a message
naming the class, never with a hook in the wrong place.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from lmsweep.runner.units import UnitFailure


@dataclass(frozen=True)
class Family:
    """Module paths of one architecture family: the blocks under the base model, then inside a block the
    attention output projection (its input holds the heads side by side) and the module whose output is the
    MLP's contribution (not one that adds the residual itself, as BLOOM's `mlp` does)."""

    blocks: str
    attn_out: str
    mlp: str


LLAMA = Family("layers", "self_attn.o_proj", "mlp")
FAMILIES = {
    # Llama-style: SmolLM2, Llama, Mistral, Qwen2/3, Gemma 1-3, OLMo
    **{t: LLAMA for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo",
                          "olmo2", "smollm3")},
    "gpt2": Family("h", "attn.c_proj", "mlp"),
    "gptj": Family("h", "attn.out_proj", "mlp"),
    "gpt_neox": Family("layers", "attention.dense", "mlp"),
    "phi": Family("layers", "self_attn.dense", "mlp"),
    "falcon": Family("h", "self_attention.dense", "mlp"),
    "bloom": Family("h", "self_attention.dense", "mlp.dense_4h_to_h"),
    "opt": Family("decoder.layers", "self_attn.out_proj", "fc2"),
}
SITES = ("head", "mlp", "layer")


def _get(module, path: str):
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


@dataclass(frozen=True)
class Sites:
    """The blocks of one loaded model and how many query heads each has."""

    blocks: Any                   # the ModuleList of blocks
    family: Family
    num_heads: int

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def module(self, site: str, layer: int):
        """The module whose input (head) or output (mlp, layer) the site is."""
        block = self.blocks[layer]
        return block if site == "layer" else _get(block, self.family.attn_out if site == "head" else
                                                   self.family.mlp)


def sites_of(causal) -> Sites:
    """The sites of a causal LM (a DeepSpeed engine unwrapped by the caller); UnitFailure naming the class and
    the families known when its architecture is not one of them."""
    config = causal.config.get_text_config() if hasattr(causal.config, "get_text_config") else causal.config
    family = FAMILIES.get(getattr(config, "model_type", None))
    base = getattr(causal, "base_model", None)
    blocks = _get(base, family.blocks) if family is not None and base is not None else None
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    if family is None or blocks is None or not heads or \
            any(_get(blocks[0], p) is None for p in (family.attn_out, family.mlp)):
        raise UnitFailure(f"{type(causal).__name__} (model_type {getattr(config, 'model_type', None)!r}) is not an "
                          f"architecture ablate knows; it knows {', '.join(sorted(FAMILIES))}")
    return Sites(blocks, family, int(heads))


def head_slice(width: int, num_heads: int, head: int) -> slice:
    d = width // num_heads
    return slice(head * d, (head + 1) * d)


# ---- hooks ---------------------------------------------------------------------------------------------------
# A Replace computes, from the site's clean activation (batch, positions, width), the one to use instead.
Replace = Callable[[Any], Any]


@contextmanager
def intervene(sites: Sites, site: str, layer: int, head: int | None, replace: Replace, shape: tuple[int, int]):
    """While open, the site's activation is `replace(activation)`: for `head`, the head's slice of the output
    projection's input; for `mlp`, the MLP's output; for `layer`, the block's contribution (output − input).
    `shape` is the batch's (sequences, positions): `replace` always sees (sequences, positions, width)."""
    module = sites.module(site, layer)
    replace = per_position(replace, shape)
    if site == "head":
        def pre(mod, args, kwargs):
            x = args[0] if args else kwargs["input"]
            cut = head_slice(x.shape[-1], sites.num_heads, head)
            x = x.clone()
            x[..., cut] = replace(x[..., cut])
            return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "input": x})
        handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    elif site == "mlp":
        handle = module.register_forward_hook(lambda mod, args, out: _with_first(out, replace(_first(out))))
    else:
        def post(mod, args, kwargs, out):
            before = args[0] if args else kwargs["hidden_states"]
            after = _first(out)
            return _with_first(out, before + replace(after - before))
        handle = module.register_forward_hook(post, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def record(sites: Sites, wanted: list[tuple[str, int]], see: Callable[[tuple[str, int], Any], None],
           shape: tuple[int, int]):
    """While open, each (site, layer) of `wanted` passes its activation, (sequences, positions, width), to
    `see((site, layer), activation)` (for `head`, the whole output-projection input, heads side by side): one
    clean pass serves every site."""
    handles = [_hook_for(sites, site, layer, per_position(lambda x, key=(site, layer): see(key, x), shape))
               for site, layer in wanted]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _hook_for(sites: Sites, site: str, layer: int, see: Replace):
    """A hook that passes the site's whole activation through `see` (heads side by side for `head`)."""
    module = sites.module(site, layer)
    if site == "head":
        def pre(mod, args, kwargs):
            see(args[0] if args else kwargs["input"])
        return module.register_forward_pre_hook(pre, with_kwargs=True)
    if site == "mlp":
        def out_hook(mod, args, out):
            see(_first(out))
        return module.register_forward_hook(out_hook)

    def post(mod, args, kwargs, out):
        see(_first(out) - (args[0] if args else kwargs["hidden_states"]))
    return module.register_forward_hook(post, with_kwargs=True)


def per_position(fn, shape: tuple[int, int]):
    """`fn` of a (sequences, positions, width) activation, also applied to one the model flattened to
    (sequences · positions, width) (OPT runs its MLP so), its result shaped back."""
    def apply(x):
        if x.dim() != 2:
            return fn(x)
        out = fn(x.view(*shape, x.shape[-1]))
        return None if out is None else out.reshape(x.shape)
    return apply


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _with_first(out, value):
    return (value, *out[1:]) if isinstance(out, tuple) else value
