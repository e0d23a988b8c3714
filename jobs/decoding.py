"""Decoding parameters and the grid that expands into decoding points. Pure."""
from __future__ import annotations

import itertools
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lmsweep.jobs.errors import KeyProblems, did_you_mean

SAMPLING_PARAMS = ("temperature", "top_k", "top_p")
# How sampled units' random streams are derived (runner/sampling.py), part of their unit ids.
# 1 (unversioned ids, until 2026-12): keyed by the unit key, which holds max_new_tokens, so the same seed
#   drew unrelated texts at two lengths. 2: keyed by everything but max_new_tokens.
SAMPLING_STREAM = 2
GRID_KEYS = ("sweep", "include", "exclude", "seeds")


class DecodingValues(BaseModel):
    """Any subset of decoding parameters, each range-checked. Used for fixed values, axes and rules."""

    model_config = ConfigDict(extra="forbid", strict=False)

    do_sample: bool | None = None
    num_beams: int | None = Field(None, ge=1, le=64)
    temperature: float | None = Field(None, gt=0, le=100)
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=100)
    no_repeat_ngram_size: int | None = Field(None, ge=0)
    max_new_tokens: int | None = Field(None, ge=1, le=1_000_000)
    num_return_sequences: int | None = Field(None, ge=1, le=1024)


PARAM_NAMES = tuple(DecodingValues.model_fields)


class DecodingPoint(BaseModel):
    """One complete, normalised decoding setting. Sampling parameters are None unless sampling."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    do_sample: bool = False
    num_beams: int = 1
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    max_new_tokens: int = 32
    num_return_sequences: int = 1

    def canonical(self) -> str:
        return json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))

    def identity(self) -> str:
        """The point as unit ids see it: `canonical()`, plus the sampling stream's version for sampled
        points, so rows drawn under another derivation of the random streams never count as done."""
        fields = self.model_dump()
        if self.do_sample:
            fields["sampling_stream"] = SAMPLING_STREAM
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))

    def stream_fields(self) -> dict[str, Any]:
        """What a sampled sequence's random stream is keyed by: every parameter but max_new_tokens, so the
        same seed draws the same text up to the shorter of two lengths."""
        return self.model_dump(exclude={"max_new_tokens"})

    @property
    def strategy(self) -> str:
        return "sample" if self.do_sample else ("beam" if self.num_beams > 1 else "greedy")

    def label(self, show_length: bool = False) -> str:
        """A short human name, e.g. `sample t=0.2 p=0.9` or `beam4`; `max_new=48` too when asked (when the
        plan sweeps max_new_tokens: see `point_labels`)."""
        parts = [self.strategy + (str(self.num_beams) if self.num_beams > 1 else "")]
        for name, short in (("temperature", "t"), ("top_k", "k"), ("top_p", "p")):
            if getattr(self, name) is not None:
                parts.append(f"{short}={getattr(self, name):g}")
        if self.repetition_penalty != 1.0:
            parts.append(f"rep={self.repetition_penalty:g}")
        if self.no_repeat_ngram_size:
            parts.append(f"nrng={self.no_repeat_ngram_size}")
        if self.num_return_sequences > 1:
            parts.append(f"n={self.num_return_sequences}")
        if show_length:
            parts.append(f"max_new={self.max_new_tokens}")
        return " ".join(parts)


def point_labels(points: list[DecodingPoint]) -> list[str]:
    """Each point's label, naming every parameter that varies across `points`: every parameter but
    max_new_tokens shows whenever it is not its default, and max_new_tokens shows when it varies."""
    show_length = len({p.max_new_tokens for p in points}) > 1
    return [p.label(show_length) for p in points]


class DecodingGrid(BaseModel):
    """The `decoding:` block: scalars are fixed, lists are axes; `sweep` combines axes.

    If the block has `include` and no list-valued axis, the points are exactly the include entries
    (each merged over the fixed values). Otherwise the axes' product (or zip) is taken and
    `include` entries are added, each crossed with every axis it does not set itself, so an include
    point never drops an axis (`max_new_tokens: [16, 48]` gives the greedy include point at 16 and at
    48). Sampling-only axes (temperature, top_k, top_p) are not applied to an include point that does
    not sample (greedy or beams). `exclude` entries drop every point matching all their keys.
    """

    model_config = ConfigDict(extra="forbid")

    sweep: Literal["product", "zip"] = "product"
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    fixed: DecodingValues = Field(default_factory=DecodingValues)
    axes: dict[str, list[Any]] = Field(default_factory=dict)
    include: list[DecodingValues] = Field(default_factory=list)
    exclude: list[DecodingValues] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _split(cls, data: Any) -> Any:
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ValueError("must be a mapping of decoding parameters")
        if "fixed" in data or "axes" in data:
            return data
        out: dict[str, Any] = {k: data[k] for k in GRID_KEYS if k in data}
        fixed, axes = {}, {}
        problems: list[tuple[tuple, str]] = []       # every key's problem, each reported at its own line
        for key, value in data.items():
            if key in GRID_KEYS:
                continue
            if key not in PARAM_NAMES:
                problems.append(((key,), f"unknown decoding parameter {key!r}"
                                 f"{did_you_mean(key, PARAM_NAMES + GRID_KEYS)}; expected one of "
                                 f"{', '.join(PARAM_NAMES + GRID_KEYS)}"))
            elif isinstance(value, list):
                if not value:
                    problems.append(((key,), "an axis needs at least one value"))
                for i, v in enumerate(value):   # range-check each axis value with the same rules as scalars
                    problems += [((key, i), message) for message in _value_problems(key, v)]
                axes[key] = value
            else:
                problems += [((key,), message) for message in _value_problems(key, value)]
                fixed[key] = value
        if problems:
            raise KeyProblems(problems)
        out["fixed"], out["axes"] = fixed, axes
        return out

    @model_validator(mode="after")
    def _check(self) -> DecodingGrid:
        if self.sweep == "zip" and len({len(v) for v in self.axes.values()}) > 1:
            sizes = ", ".join(f"{k}={len(v)}" for k, v in self.axes.items())
            raise ValueError(f"sweep: zip needs axes of equal length, got {sizes}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: duplicate seed values")
        return self

    def point_count(self) -> int:
        """Number of raw points before rules and normalisation (for size caps, computed cheaply)."""
        if not self.axes:
            base = 0 if self.include else 1
        elif self.sweep == "zip":
            base = len(next(iter(self.axes.values())))
        else:
            base = 1
            for v in self.axes.values():
                base *= len(v)
        return base + sum(len(self._axis_rows(inc)) for inc in self.include)

    def _axis_rows(self, entry: DecodingValues) -> list[dict[str, Any]]:
        """The axis values an include entry is crossed with: every axis it does not set, except
        sampling-only axes when the entry (over the fixed values) does not sample."""
        merged = {**self.fixed.model_dump(exclude_none=True), **entry.model_dump(exclude_none=True)}
        samples = merged.get("do_sample", any(merged.get(k) is not None for k in SAMPLING_PARAMS))
        if merged.get("num_beams", 1) > 1 and merged.get("do_sample") is not True:
            samples = False
        keys = [k for k in self.axes if k not in merged and (samples or k not in SAMPLING_PARAMS)]
        if not keys:
            return [{}]
        if self.sweep == "zip":
            combos = zip(*(self.axes[k] for k in keys))
            rows = [dict(zip(keys, c)) for c in combos]
            return list({json.dumps(r, sort_keys=True): r for r in rows}.values())   # distinct, in order
        return [dict(zip(keys, c)) for c in itertools.product(*(self.axes[k] for k in keys))]

    def points(self) -> list[DecodingPoint]:
        """Expand to distinct normalised points, in a stable order. Raises ValueError on a bad combination."""
        fixed = self.fixed.model_dump(exclude_none=True)
        raw: list[dict[str, Any]] = []
        if self.axes:
            keys = list(self.axes)
            combos = (zip(*self.axes.values()) if self.sweep == "zip"
                      else itertools.product(*self.axes.values()))
            raw = [{**fixed, **dict(zip(keys, combo))} for combo in combos]
        elif not self.include:
            raw = [dict(fixed)]
        raw += [{**fixed, **row, **inc.model_dump(exclude_none=True)}
                for inc in self.include for row in self._axis_rows(inc)]
        rules = [r.model_dump(exclude_none=True) for r in self.exclude]
        seen: dict[str, DecodingPoint] = {}
        for values in raw:
            if any(all(values.get(k) == v for k, v in rule.items()) for rule in rules):
                continue
            point = make_point(values)
            seen.setdefault(point.canonical(), point)
        if not seen:
            raise ValueError("no decoding points left after exclude")
        return list(seen.values())


def _value_problems(key: str, value: Any) -> list[str]:
    """What is wrong with one decoding parameter's value, as the spec loader words pydantic's errors."""
    try:
        DecodingValues.model_validate({key: value})
    except ValidationError as e:
        return [f"{err['msg']}, got {err['input']!r}" for err in e.errors()]
    return []


def make_point(values: dict[str, Any]) -> DecodingPoint:
    """Apply the combination rules explicitly; never drop a parameter silently."""
    sampling = [k for k in SAMPLING_PARAMS if values.get(k) is not None]
    do_sample = values.get("do_sample")
    if do_sample is None:
        do_sample = bool(sampling)
    if not do_sample and sampling:
        names = " and ".join(sampling) if len(sampling) < 3 else ", ".join(sampling)
        verb = "applies" if len(sampling) == 1 else "apply"
        raise ValueError(f"{names} {verb} only when sampling, but point {_show(values)} has do_sample: false; "
                         f"set do_sample: true in it, or leave {names} out of greedy points")
    beams = values.get("num_beams", 1)
    if do_sample and beams > 1:
        raise ValueError(f"beam search with sampling is not supported: {_show(values)}")
    n = values.get("num_return_sequences", 1)
    if n > 1 and not do_sample and n > beams:
        raise ValueError(f"num_return_sequences={n} needs sampling or at least {n} beams: {_show(values)}")
    params = {k: v for k, v in values.items() if v is not None}
    params["do_sample"] = do_sample
    return DecodingPoint(**params)


def _show(values: dict[str, Any]) -> str:
    """A point as the user would write it in YAML (`do_sample: false`, not Python's `False`)."""
    def yaml_value(v: Any) -> str:
        return "true" if v is True else "false" if v is False else "null" if v is None else str(v)
    return "{" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in values.items()) + "}"
