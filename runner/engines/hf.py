"""`execution.backend: hf`: the transformers model as `from_pretrained` loads it (runner/loading.py), one
copy per rank (ranks are data parallel), on the rank's device. It serves every task; its primitives run
runner/engines/transformers_batch.py (torch, imported on a worker only)."""
from __future__ import annotations

from typing import Any

from lmsweep.core.engine import Engine, Settings, register_engine
from lmsweep.runner.engines.base import GenerationRequest, TopK
from lmsweep.runner.units import TaskContext


@register_engine("hf")
class HF(Engine):
    tasks = None                      # every task: a transformers model does whatever a task asks of it
    # The decoding parameters it serves (jobs/decoding.py PARAMS): the decode loop's own, the penalties'
    # processors (transformers_batch.PENALTIES) and the sampling warpers (runner.sampling.WARPERS). A point
    # setting any other parameter is refused at plan time, naming this engine.
    decoding = frozenset({"do_sample", "num_beams", "max_new_tokens", "num_return_sequences",
                          "repetition_penalty", "no_repeat_ngram_size", "temperature", "top_k", "top_p"})
    tensor_parallel = "none"
    packages = ("torch", "transformers")

    def load(self, model, model_class, attn_implementation, settings: Settings, tp_group: Any, device: str, *,
             spec_file: str | None = None, where: str = "model", todo=()) -> tuple[Any, dict]:
        from lmsweep.runner import loading

        loaded = loading.load(model, model_class, attn_implementation)
        if loaded.model is None:
            return loaded, {"backend": self.name}
        wrapped, recorded = self.wrap(loaded.model, settings, tp_group, device, spec_file=spec_file, where=where)
        return loading.LoadedModel(wrapped, loaded.tokenizer, loaded.load_seconds, loaded.path), recorded

    def promise(self, settings: Settings, point) -> str:
        """On the CPU, each row of the decode loop is its own computation and sampling draws from the sequence's
        own stream (tests/runner/test_reproducibility.py); beam search goes through transformers' padded batch.
        CUDA kernels pick algorithms by shape: nothing is promised there."""
        if settings.accelerator != "cpu":
            return "none"
        return "same_batch" if point is not None and point.num_beams > 1 else "any_batch"

    def wrap(self, model, settings: Settings, tp_group: Any, device: str, *, spec_file: str | None = None,
             where: str = "model") -> tuple[Any, dict]:
        """The model tasks will call, and the backend config to record."""
        if device != "cpu":
            model = model.to(device)
        return model, {"backend": self.name, "device": device}

    # ---- primitives ---------------------------------------------------------------------------------------

    def eos_ids(self, ctx: TaskContext) -> list[int]:
        from lmsweep.runner.engines import transformers_batch

        return transformers_batch.eos_ids(ctx.model, ctx.tokenizer)

    def generate(self, ctx: TaskContext, requests: list[GenerationRequest]) -> list[list[list[int]]]:
        from lmsweep.runner.engines import transformers_batch

        return transformers_batch.generate(ctx.model, ctx.tokenizer, requests, self.eos_ids(ctx), ctx.device)

    def next_token(self, ctx: TaskContext, prompts: list[list[int]], k: int) -> list[TopK]:
        from lmsweep.runner.engines import transformers_batch

        return transformers_batch.next_token(ctx.model, ctx.tokenizer, prompts, k, ctx.device)
