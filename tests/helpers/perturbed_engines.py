"""Engines that apply a decoding parameter wrongly, as a broken engine release would: the regression a nightly
sweep exists to catch. Each is the hf engine with the sampled points' parameters rewritten before it generates:
`hf-hot` samples at 9/7 of the asked temperature (0.7 -> 0.9), `hf-penalty` adds a repetition penalty of 1.2.
The backend is not part of a unit id, so such a run pairs unit for unit with a run of the same spec on `hf`
(`lmsweep compare`, `regress --baseline`). Registered from outside the package, like reference_engine.py."""
from __future__ import annotations

from lmsweep.core.engine import register_engine, unregister_engine
from lmsweep.runner.engines.base import GenerationRequest
from lmsweep.runner.engines.hf import HF

PERTURBATIONS = {
    "hf-hot": lambda p: {"temperature": (p.temperature or 1.0) * 0.9 / 0.7},
    "hf-penalty": lambda p: {"repetition_penalty": 1.2},
}


class Perturbed(HF):
    change = staticmethod(lambda point: {})

    def generate(self, ctx, requests: list[GenerationRequest]):
        moved = [GenerationRequest(r.prompt_ids, r.point.model_copy(update=self.change(r.point)), r.point_index,
                                   r.seeds) if r.point.do_sample else r for r in requests]
        return super().generate(ctx, moved)


def register() -> list[str]:
    for name, change in PERTURBATIONS.items():
        register_engine(name)(type(name.replace("-", "_"), (Perturbed,), {"change": staticmethod(change)}))
    return list(PERTURBATIONS)


def unregister() -> None:
    for name in PERTURBATIONS:
        unregister_engine(name)
