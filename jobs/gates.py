"""`regression.gates`: the statistical regression gates of a spec (evaluated by results.gates).

Exact-match and |Δ| tolerances judge a rerun on the same software; across a new engine version, driver or
GPU, seeded samples all differ and scores move a little. A gate fails a comparison only on a shift that is
both significant (its p-value, adjusted over every group × metric by `correction`, below `alpha`) and
larger than a practical threshold. The metrics and their default thresholds are declared by the tasks
(`Task.metrics`); `thresholds` overrides them by name (null: report, never gate).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmsweep.core.task import Metric


def gate_metrics() -> dict[str, Metric]:
    """Every metric a task offers the gates, by name (first declaration in task-name order wins)."""
    from lmsweep.core.task_registry import all_tasks

    out: dict[str, Metric] = {}
    for task in all_tasks():
        for m in task.metrics:
            out.setdefault(m.name, m)
    return out


class Gates(BaseModel):
    """`regression.gates:` present, the gates can fail a comparison; absent, compare still reports the same
    statistics with their verdicts (at these defaults) without gating on them."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(0.01, gt=0, lt=1)                  # significance after the correction
    correction: Literal["holm", "bh", "none"] = "holm"      # over every group × metric of one comparison
    power: float = Field(0.8, gt=0, lt=1)                   # for the minimum detectable effect shown
    seed: int = 0                                           # the bootstrap's: the same rows, the same CIs
    resamples: int = Field(2000, ge=100, le=100_000)        # bootstrap resamples per CI
    thresholds: dict[str, float | None] = Field(default_factory=dict)   # metric → practical threshold

    @field_validator("thresholds")
    @classmethod
    def _known_metrics(cls, v: dict[str, float | None]) -> dict[str, float | None]:
        known = gate_metrics()
        for name, value in v.items():
            if name not in known:
                raise ValueError(f"unknown metric {name!r}; the tasks offer: {', '.join(sorted(known))}")
            if value is not None and value < 0:
                raise ValueError(f"{name}: a threshold is a size, >= 0; got {value}")
        return v
