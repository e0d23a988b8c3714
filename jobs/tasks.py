"""Task parameters as data. Each task's execution lives in runner/tasks/<name>.py."""
from __future__ import annotations

import itertools
from typing import Annotated, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class _Task(BaseModel):
    """Task parameters. Fields named in SWEEP may be given as a list: each value is a task variant,
    and the plan crosses variants with models, decoding points and prompts."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    SWEEP: ClassVar[tuple[str, ...]] = ()

    uses_decoding: bool = Field(False, exclude=True)

    def canonical_params(self) -> dict:
        return self.model_dump(exclude={"uses_decoding"})

    def variants(self) -> list[dict]:
        """The product of the sweepable fields given as lists; one dict of plain params per variant."""
        params = self.canonical_params()
        axes = {k: params[k] for k in self.SWEEP if isinstance(params.get(k), list)}
        if not axes:
            return [params]
        return [{**params, **dict(zip(axes, combo))} for combo in itertools.product(*axes.values())]


class GenerateTask(_Task):
    """Free text generation over the decoding grid."""

    type: Literal["generate"] = "generate"
    uses_decoding: bool = Field(True, exclude=True)


class NextTokenTask(_Task):
    """Top-k next-token probabilities after the prompt (one forward pass)."""

    type: Literal["next_token"] = "next_token"
    top_k: int = Field(10, ge=1, le=1000)


TaskSpec = Annotated[Union[GenerateTask, NextTokenTask], Field(discriminator="type")]
TASK_NAMES = ("generate", "next_token")
