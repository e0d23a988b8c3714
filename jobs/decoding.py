"""Decoding parameters and the grid that expands into decoding points. Pure.

Every decoding parameter is declared once, in `PARAMS` (one `Param` each). From that table come the spec's
`decoding:` keys and their range checks (`DecodingValues`), the normalised point (`DecodingPoint`), the
sampling-only parameters (`SAMPLING_PARAMS`), the point's label, the result columns (`columns()`, read by
results/schema.py), what a unit id and a sampled sequence's random stream are keyed by (`identity()`,
`stream_fields()`) and the plan-time refusal of a parameter an engine does not serve (`refusal()`, called by
each engine with the parameters it declares it serves). docs/adding-a-decoding-parameter.md has the steps.
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_serializer,
    model_validator,
)

from lmsweep.jobs.errors import KeyProblems, did_you_mean


@dataclass(frozen=True)
class Param:
    """One decoding parameter: the spec key, its type and range, its default, how it shows in labels and
    result rows. A `DecodingPoint` holds every parameter; a spec that leaves one out gets its `default`."""

    name: str                       # the spec key, the point's field and the result column
    type: type                      # bool, int or float
    default: Any                    # a point's value when the spec leaves it out (None: unset)
    doc: str                        # what it does, one line (docs)
    ge: float | None = None         # the spec's range: value >= ge, > gt, <= le
    gt: float | None = None
    le: float | None = None
    sampling: bool = False          # applies only when sampling: must stay unset in greedy and beam points
    short: str | None = None        # its name in a point's label (`t` → `sample t=0.7`); None: not shown
    label_format: str = "g"         # format spec of its value in the label
    label_when: Literal["set", "varies"] = "set"   # shown when not at its default / when it varies across points
    column: str = ""                # the result column's Arrow type (pyarrow.type_for_alias); "": from `type`

    @property
    def arrow_type(self) -> str:
        return self.column or {bool: "bool", int: "int32", float: "float64"}[self.type]

    def differs(self, value: Any) -> bool:
        """Whether `value` is not this parameter's default (the default means: the parameter has no effect)."""
        return value != self.default


# The table. Order is the order of the result columns and of the labels' parts.
PARAMS: tuple[Param, ...] = (
    Param("do_sample", bool, False, "sample (true) or decode greedily / by beam search (false)"),
    Param("num_beams", int, 1, "beams of a beam search; 1: no beam search", ge=1, le=64),
    Param("temperature", float, None, "divides the logits before sampling", gt=0, le=100, sampling=True,
          short="t"),
    Param("top_k", int, None, "sample from the k most probable tokens", ge=1, sampling=True, short="k"),
    Param("top_p", float, None, "sample from the smallest set of tokens holding this probability (nucleus)",
          gt=0, le=1, sampling=True, short="p"),
    Param("repetition_penalty", float, 1.0, "divides the logits of tokens already in the sequence (CTRL)",
          gt=0, le=100, short="rep"),
    Param("no_repeat_ngram_size", int, 0, "no n-gram of this size occurs twice; 0: off", ge=0, short="nrng",
          label_format=""),
    Param("max_new_tokens", int, 32, "new tokens at most", ge=1, le=1_000_000, short="max_new", label_format="",
          label_when="varies"),
    Param("num_return_sequences", int, 1, "sequences returned per prompt (sampled, or the best beams)", ge=1,
          le=1024, short="n", label_format=""),
)
BY_NAME: dict[str, Param] = {p.name: p for p in PARAMS}
PARAM_NAMES = tuple(BY_NAME)
SAMPLING_PARAMS = tuple(p.name for p in PARAMS if p.sampling)

# The parameters that unit ids, sampled streams and spec hashes have always serialised, default or not (they
# existed when ids were first recorded, tests/fixtures/unit_ids.json). NEVER add a name here: a parameter
# declared later is serialised only where it differs from its default (`_identity_fields`), so declaring
# one moves no existing id, stream or spec hash.
LEGACY = frozenset({"do_sample", "num_beams", "temperature", "top_k", "top_p", "repetition_penalty",
                    "no_repeat_ngram_size", "max_new_tokens", "num_return_sequences"})

# How sampled units' random streams are derived (runner/sampling.py), part of their unit ids.
# 1 (unversioned ids, until 2026-12): keyed by the unit key, which holds max_new_tokens, so the same seed
#   drew unrelated texts at two lengths. 2: keyed by everything but max_new_tokens.
SAMPLING_STREAM = 2
GRID_KEYS = ("sweep", "include", "exclude", "seeds")


def table_problems(params: tuple[Param, ...]) -> list[str]:
    """What is inconsistent in a parameter table (checked at import, and by tests for a table they extend)."""
    problems = []
    names = [p.name for p in params]
    shorts = [p.short for p in params if p.short]
    if len(set(names)) != len(names):
        problems.append(f"a parameter is declared twice: {sorted({n for n in names if names.count(n) > 1})}")
    if len(set(shorts)) != len(shorts):
        problems.append(f"two parameters share a label name: {sorted({s for s in shorts if shorts.count(s) > 1})}")
    for p in params:
        if p.type not in (bool, int, float):
            problems.append(f"{p.name}: type is bool, int or float, got {p.type!r}")
        if p.sampling and p.default is not None:
            problems.append(f"{p.name}: a sampling parameter's default is None (unset unless sampling)")
        if p.name in GRID_KEYS or p.name == "sampling_stream":
            problems.append(f"{p.name}: the name is taken by the grid or the unit id")
    if not LEGACY <= set(names):
        problems.append(f"a legacy parameter is missing from the table: {sorted(LEGACY - set(names))}")
    return problems


if _problems := table_problems(PARAMS):
    raise RuntimeError("jobs/decoding.py PARAMS: " + "; ".join(_problems))


def _identity_fields(values: Mapping[str, Any], exclude: Collection[str] = ()) -> dict[str, Any]:
    """THE RULE for everything hashed into an id (unit ids, sampled streams, spec hashes): a LEGACY parameter is
    always serialised, as it always was; any other is serialised only when its value differs from its default
    (None for spec values). So a parameter added to PARAMS leaves every existing id, stream and spec hash
    byte-identical, and setting it to anything but its default makes new ones."""
    return {k: v for k, v in values.items()
            if k not in exclude and (k in LEGACY or k not in BY_NAME or BY_NAME[k].differs(v))}


class _Values(BaseModel):
    """Any subset of decoding parameters, each range-checked. Used for fixed values, axes and rules."""

    model_config = ConfigDict(extra="forbid", strict=False)

    @model_serializer(mode="wrap")
    def _dump(self, handler) -> dict[str, Any]:
        """A dump (the spec snapshot, the spec hash) leaves out an unset parameter that is not LEGACY."""
        return {k: v for k, v in handler(self).items() if k in LEGACY or v is not None}


class _Point(BaseModel):
    """One complete, normalised decoding setting. Sampling parameters are None unless sampling."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def canonical(self) -> str:
        return json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))

    def identity(self) -> str:
        """The point as unit ids see it: its parameters by the rule of `_identity_fields` (every LEGACY one, any
        other only when not at its default), plus the sampling stream's version for sampled points, so rows
        drawn under another derivation of the random streams never count as done."""
        fields = _identity_fields(self.model_dump())
        if self.do_sample:
            fields["sampling_stream"] = SAMPLING_STREAM
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))

    def stream_fields(self) -> dict[str, Any]:
        """What a sampled sequence's random stream is keyed by: the parameters by the rule of `_identity_fields`
        but max_new_tokens, so the same seed draws the same text up to the shorter of two lengths."""
        return _identity_fields(self.model_dump(), exclude={"max_new_tokens"})

    @property
    def strategy(self) -> str:
        return "sample" if self.do_sample else ("beam" if self.num_beams > 1 else "greedy")

    def label(self, show_length: bool = False, varying: Collection[str] = ()) -> str:
        """A short human name, e.g. `sample t=0.2 p=0.9` or `beam4`: each labelled parameter that is not at its
        default, then those labelled when they vary (max_new_tokens: `max_new=48`) that are in `varying` (or
        max_new_tokens when `show_length`): see `point_labels`."""
        shown = set(varying) | ({"max_new_tokens"} if show_length else set())
        parts = [self.strategy + (str(self.num_beams) if self.num_beams > 1 else "")]
        for when in ("set", "varies"):
            for p in PARAMS:
                value = getattr(self, p.name)
                if p.short and p.label_when == when and (p.name in shown if when == "varies" else p.differs(value)):
                    parts.append(f"{p.short}={value:{p.label_format}}")
        return " ".join(parts)


def _values_model(params: tuple[Param, ...]) -> type[_Values]:
    fields = {p.name: (p.type | None, Field(None, ge=p.ge, gt=p.gt, le=p.le, description=p.doc)) for p in params}
    return create_model("DecodingValues", __base__=_Values, __module__=__name__, **fields)


def _point_model(params: tuple[Param, ...]) -> type[_Point]:
    fields = {p.name: (p.type | None if p.default is None else p.type, Field(p.default, description=p.doc))
              for p in params}
    return create_model("DecodingPoint", __base__=_Point, __module__=__name__, **fields)


DecodingValues = _values_model(PARAMS)
DecodingPoint = _point_model(PARAMS)


def columns() -> list[tuple[str, str]]:
    """The result columns of the decoding parameters: (name, Arrow type alias), in table order."""
    return [(p.name, p.arrow_type) for p in PARAMS]


def refusal(engine: str, serves: Collection[str], point: _Point, messages: Mapping[str, str] | None = None,
            serving: Callable[[str], list[str]] | None = None) -> str | None:
    """The plan-time message for the first parameter of `point` that is not at its default and that the engine
    named `engine` does not serve (`serves`: the parameters its module declares). `messages` may word a
    parameter's refusal (why, and what to use instead); otherwise it names the engines that serve it
    (`serving(name)`)."""
    for p in PARAMS:
        value = getattr(point, p.name)
        if p.name in serves or not p.differs(value):
            continue
        message = (messages or {}).get(p.name)
        if message is None:
            others = [e for e in (serving(p.name) if serving else []) if e != engine]
            message = (f"decoding parameter {p.name} is not served by backend {engine}"
                       + (f"; use execution.backend: {_either(others)}" if others else ""))
        return f"{message} ({p.name}: {value})"
    return None


def served_by(engine: Any) -> frozenset[str]:
    """The decoding parameters an engine serves: its module's `decoding` declaration; an engine declaring none
    (written before the declaration existed) serves the LEGACY ones but those it `refuses`."""
    declared = getattr(engine, "decoding", None)
    return frozenset(declared) if declared is not None else LEGACY - set(engine.refuses)


def engine_refusal(engine: Any, point: _Point, engines: Collection[Any] = ()) -> str | None:
    """`refusal` for an engine object (its `name`, its `decoding` declaration, its `refuses` messages); the
    generic message names those of `engines` (every registered one) that serve the parameter."""
    return refusal(engine.name, served_by(engine), point, engine.refuses,
                   lambda name: [e.name for e in engines if name in served_by(e)])


def _either(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def point_labels(points: list[DecodingPoint]) -> list[str]:
    """Each point's label, naming every parameter that varies across `points`: every labelled parameter shows
    whenever it is not its default, and those labelled when they vary (max_new_tokens) show when they vary."""
    varying = [p.name for p in PARAMS if p.label_when == "varies"
               and len({getattr(point, p.name) for point in points}) > 1]
    return [point.label(varying=varying) for point in points]


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
