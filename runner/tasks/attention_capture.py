"""Each layer's attention weights handed over while the forward pass runs on, one layer at a time.

With `output_attentions=True` transformers keeps every layer's (batch, heads, T, T) weights until the pass
returns: SmolLM2 (30 layers × 9 heads) at 2,048 tokens holds 30 × 9 × 2048² float32 = 4.5 GB per prompt.
A forward hook on each attention module instead gives the layer's weights to a callback as the layer
computes them; nothing else keeps them, so they are freed when the next layer starts, and a callback that
reduces them (the summaries) or copies a few heads holds at most one layer's weights at a time.

The attention modules are the ones transformers itself records `attentions` from: the model class's
`_can_record_outputs["attentions"]` (a module class, a class-name suffix, or an `OutputRecorder` with the
weights' index in the module's output tuple and an optional submodule name). A model that declares none, or
whose matches are not one module per layer (BLOOM and Falcon in transformers 5.23 declare none), runs with
`output_attentions=True` and the callback gets the returned layers in turn: the same weights, every layer
held at once.

No torch at import time (task discovery imports this module).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lmsweep.runner.units import PromptForward, TaskContext, Unit, UnitFailure, forward_prompts

NO_WEIGHTS = "the model returned no attention weights (needs attn_implementation: eager)"

# on_layer(layer index, number of layers, that layer's weights: (batch, query heads, T, T))
OnLayer = Callable[[int, int, Any], None]


def forward_by_layer(ctx: TaskContext, units: list[Unit], max_tokens: int, on_layer: OnLayer) -> PromptForward:
    """`forward_prompts` over the units, calling `on_layer` once per layer, in layer order, with its weights."""
    modules = attention_modules(ctx.model)
    if modules is None:
        forward = forward_prompts(ctx, units, max_tokens, output_attentions=True)
        attentions = forward.outputs.attentions
        if not attentions or attentions[0] is None:
            raise UnitFailure(NO_WEIGHTS)
        for layer, weights in enumerate(attentions):
            on_layer(layer, len(attentions), weights)
        return forward

    n_layers, seen = len(modules), []

    def hook(layer: int, index: int):
        def call(module, args, output):
            weights = output[index] if isinstance(output, tuple) and len(output) > index else None
            if weights is None:
                raise UnitFailure(NO_WEIGHTS)
            seen.append(layer)
            on_layer(layer, n_layers, weights)
        return call

    handles = [module.register_forward_hook(hook(layer, index)) for layer, (module, index) in enumerate(modules)]
    try:
        forward = forward_prompts(ctx, units, max_tokens)
    finally:
        for h in handles:
            h.remove()
    if seen != list(range(n_layers)):
        raise UnitFailure(f"attention hooks ran for layers {seen}, expected 0..{n_layers - 1} once each in order")
    return forward


def attention_modules(model: Any) -> list[tuple[Any, int]] | None:
    """(module, index of the weights in its output) for each layer in order, or None when the model does not
    declare them one per layer (then `forward_by_layer` asks for `output_attentions`)."""
    owner = model if hasattr(model, "_can_record_outputs") else getattr(model, "module", model)  # DeepSpeed wraps
    declared = (getattr(owner, "_can_record_outputs", None) or {}).get("attentions")
    if declared is None:
        return None
    recorders = [_recorder(d) for d in (declared if isinstance(declared, list) else [declared])]
    found = [(module, index) for name, module in owner.named_modules()
             for target, index, layer_name, class_name in recorders
             if _matches(name, module, target, layer_name, class_name)]
    config = getattr(owner, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if not found or len(found) != getattr(config, "num_hidden_layers", None):
        return None
    return found


def _recorder(declared: Any) -> tuple[type | None, int, str | None, str | None]:
    """(target class, output index, submodule name, class-name suffix) of one `_can_record_outputs` entry,
    read as transformers' install_all_output_capturing_hooks reads it (a bare class or name: index 1)."""
    if isinstance(declared, str):
        return None, 1, None, declared
    if isinstance(declared, type):
        return declared, 1, None, None
    return (getattr(declared, "target_class", None), getattr(declared, "index", 1),
            getattr(declared, "layer_name", None), getattr(declared, "class_name", None))


def _matches(name: str, module: Any, target: type | None, layer_name: str | None, class_name: str | None) -> bool:
    if not ((target is not None and isinstance(module, target)) or (class_name and name.endswith(class_name))):
        return False
    return layer_name is None or f".{layer_name.strip('.')}." in f".{name}."
