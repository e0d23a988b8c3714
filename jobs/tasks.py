"""Task parameters as data. Each task's execution lives in runner/tasks/<name>.py."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class _Task(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    uses_decoding: bool = Field(False, exclude=True)

    def canonical_params(self) -> dict:
        return self.model_dump(exclude={"uses_decoding"})


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
