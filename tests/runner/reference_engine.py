"""A reference engine that lives outside the package: batch 1, plain `model.generate` and one forward pass,
no optimisation. It registers itself with `register()` (no entry point) and proves the engine contract:
tasks build their rows from its primitives exactly as from the shipped engines' (tests/runner/test_engines.py).
"""
from __future__ import annotations

from lmsweep.core.engine import Engine, register_engine, unregister_engine
from lmsweep.runner.engines.base import GenerationRequest, TopK

NAME = "reference"


class Reference(Engine):
    tasks = ("generate", "next_token")
    refuses = {"num_beams": f"beam search is not served by backend {NAME} (batch 1, greedy and sampling only); "
                            "use execution.backend: hf or deepspeed for beam points"}
    halves_on_oom = False

    def load(self, model, model_class, attn_implementation, settings, tp_group, device, *, spec_file=None,
             where="model", todo=()):
        from lmsweep.runner import loading

        loaded = loading.load(model, model_class, attn_implementation)
        return loaded, {"backend": self.name, "device": device}

    def eos_ids(self, ctx) -> list[int]:
        ids = ctx.model.generation_config.eos_token_id
        ids = list(ids) if isinstance(ids, list) else [ids] if ids is not None else []
        if ctx.tokenizer.eos_token_id is not None and ctx.tokenizer.eos_token_id not in ids:
            ids.append(ctx.tokenizer.eos_token_id)
        return ids

    def generate(self, ctx, requests: list[GenerationRequest]) -> list[list[list[int]]]:
        import torch

        out = []
        for r in requests:
            seqs = []
            for seed in r.seeds:
                p = r.point
                kwargs = {"do_sample": p.do_sample, "max_new_tokens": p.max_new_tokens,
                          "repetition_penalty": p.repetition_penalty, "eos_token_id": self.eos_ids(ctx),
                          "pad_token_id": ctx.tokenizer.pad_token_id}
                if p.do_sample:
                    torch.manual_seed(seed)
                    kwargs |= {"temperature": p.temperature or 1.0, "top_k": p.top_k or 0, "top_p": p.top_p or 1.0}
                ids = torch.tensor([r.prompt_ids])
                with torch.inference_mode():
                    new = ctx.model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
                seqs.append(new[0, ids.shape[1]:].tolist())
            out.append(seqs)
        return out

    def next_token(self, ctx, prompts: list[list[int]], k: int) -> list[TopK]:
        import torch

        found = []
        for ids in prompts:
            with torch.inference_mode():
                logits = ctx.model(torch.tensor([ids])).logits[0, -1].float()
            logp = torch.log_softmax(logits, -1)
            probs = logp.exp()
            top = probs.topk(min(k, probs.shape[-1]))
            found.append(TopK(top.indices.tolist(), top.values.tolist(),
                              float(-(probs * logp).nan_to_num().sum())))
        return found


def register() -> type[Reference]:
    return register_engine(NAME)(Reference)


def unregister() -> None:
    unregister_engine(NAME)
