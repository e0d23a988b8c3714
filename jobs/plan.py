"""Expand a validated spec into work units and group them into elements; read and write the plan.

Pure expansion (`build_plan`) is separate from the files (`write_plan`, `read_plan`).
"""
from __future__ import annotations

import itertools
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, ValidationError

from lmsweep.core.task import PlannedUnits
from lmsweep.core.task_registry import get_task
from lmsweep.jobs.decoding import DecodingPoint
from lmsweep.jobs.errors import ExperimentError, SpecError
from lmsweep.jobs.model_facts import variants_per_model
from lmsweep.jobs.model_sources import ModelRef, resolve
from lmsweep.jobs.prompts import Prompt, load_prompt_set
from lmsweep.jobs.spec import ExecutionSpec, ExperimentSpec, ModelSpec
from lmsweep.jobs.units import canonical, unit_ids_block

PLAN_FORMAT = 1
ELEMENT_FILL = 0.8       # plan elements to 80% of the walltime, leaving room for model load and noise


@dataclass(frozen=True)
class Element:
    index: int
    model: str
    n_units: int
    est_seconds: float


@dataclass
class Plan:
    experiment: str
    spec_hash: str
    spec: dict
    spec_file: str
    models: dict[str, dict]            # alias → ModelSpec fields + resolved path and fingerprint
    task: dict
    variants: list[dict]               # task parameter sets (one unless the task sweeps its params)
    points: list[DecodingPoint]
    prompts: list[Prompt]
    units: pa.Table                    # one row per unit, see UNIT_SCHEMA
    elements: list[Element]
    created: float = field(default_factory=time.time)

    @property
    def n_units(self) -> int:
        return self.units.num_rows


UNIT_SCHEMA = pa.schema([
    ("unit_id", pa.string()), ("unit_key", pa.string()), ("element", pa.int32()), ("model", pa.string()),
    ("prompt_index", pa.int32()), ("variant", pa.int32()), ("point", pa.int32()), ("seed", pa.int64()),
    ("est_tokens", pa.int32()),
])


def prompt_token_estimate(text: str) -> int:
    """A tokenizer-free guess (~4 characters a token): planning must not load tokenizers."""
    return len(text) // 4 + 1


def unit_cost(prompt_tokens: int, generated_tokens: int) -> int:
    """A unit's cost in generated-token equivalents: prefill is batched and ~8x cheaper per token.

    The one cost model for sizing elements (build_plan here, re-packing for a cluster in submit/packing).
    """
    return prompt_tokens // 8 + generated_tokens


def resolve_models(spec: ExperimentSpec) -> dict[str, ModelRef]:
    out = {}
    for i, m in enumerate(spec.models):
        try:
            out[m.alias] = resolve(m.source, spec_dir=spec.source.directory, allow_pickle=m.allow_pickle,
                                   trust_remote_code=m.trust_remote_code, revision=m.revision)
        except SpecError as e:
            raise spec.source.error(e.message, f"models[{i}].source", ("models", i, "source")) from None
    return out


def load_prompts(spec: ExperimentSpec) -> list[Prompt]:
    src = spec.source
    return [p for i, ps in enumerate(spec.prompts)
            for p in load_prompt_set(ps, i, src.file or "<spec>", src.directory, src.lines)]


def build_plan(spec: ExperimentSpec, refs: dict[str, ModelRef], prompts: list[Prompt]) -> Plan:
    """Pure: the units and elements of a spec, given its resolved models and loaded prompts."""
    spec_file = spec.source.file or "<spec>"
    # Refuse a huge grid before expanding it (expanding millions of points alone takes minutes): the raw
    # grid size bounds the count from above, since exclude rules and normalisation only remove points.
    raw = (spec.decoding.point_count() if spec.task.uses_decoding else 1) * len(prompts) \
        * len(spec.task.variants()) * len(spec.models)
    if raw > spec.execution.max_units:
        raise SpecError(f"the spec expands to up to {raw:,} units before exclude rules, above "
                        f"execution.max_units={spec.execution.max_units:,}; raise the cap if you mean it",
                        file=spec_file, field="execution.max_units")
    try:
        points = spec.decoding.points() if spec.task.uses_decoding else [None]
    except ValueError as e:
        raise SpecError(str(e), file=spec_file, line=spec.source.line(("decoding",)),
                        field="decoding") from None
    seeds = spec.decoding.seeds
    variants = spec.task.variants()
    task = get_task(spec.task.type)
    facts, model_variants = variants_per_model(spec, task, refs, variants)
    variants, model_variants = expand_variants(task, variants, facts, model_variants)
    per_model = (sum(len(seeds) if (p is not None and p.do_sample) else 1 for p in points)
                 * len(prompts) * len(variants))
    total = per_model * len(spec.models)
    if total > spec.execution.max_units:
        raise SpecError(f"the spec expands to {total:,} units, above execution.max_units="
                        f"{spec.execution.max_units:,}; raise the cap if you mean it",
                        file=spec_file, field="execution.max_units")

    variant_json = [canonical(v) for v in variants]
    prompt_json = [canonical({"text": p.text, "system_prompt": p.system_prompt,
                              "chat_template": p.chat_template, **task.prompt_identity(spec.task, p)})
                   for p in prompts]
    prompt_tokens = [prompt_token_estimate(p.text) for p in prompts]
    point_json = [p.identity() if p is not None else "null" for p in points]

    # Units are built a block at a time (one variant × point × seed over all prompts): ids by
    # `unit_ids_block`, the other columns as numpy arrays, so a million units take seconds, not minutes.
    prompt_bytes = [j.encode() for j in prompt_json]
    prompt_cost = np.array([unit_cost(t, 0) for t in prompt_tokens], dtype=np.int64)
    prompt_tokens_np = np.array(prompt_tokens, dtype=np.int64)
    ids: list[str] = []
    keys: list[str] = []
    blocks: dict[str, list] = {"model": [], "variant": [], "point": [], "seed": [], "gen": [], "element": []}
    ex = spec.execution
    span = rank_span(ex.backend, max(m.tensor_parallel for m in spec.models))
    packer = ElementPacker(element_budget(ex.walltime_seconds, model_copies(ex.ranks_per_element, span),
                                          ex.tokens_per_second), ex.max_units_per_element, ex.tokens_per_second)
    for m in spec.models:
        ref = refs[m.alias]
        model_json = canonical({"source": m.source, "fingerprint": ref.fingerprint, "dtype": m.dtype,
                                "revision": m.revision})
        packer.start(m.alias)
        for vi, pi in itertools.product(model_variants[m.alias], range(len(points))):
            point = points[pi]
            point_seeds = seeds if (point is not None and point.do_sample) else [None]
            gen = (point.max_new_tokens * max(point.num_beams, point.num_return_sequences)
                   if point is not None else 1)
            for seed in point_seeds:
                block_ids, block_keys = unit_ids_block(model_json, variant_json[vi], prompt_bytes, point_json[pi],
                                                       seed)
                ids += block_ids
                keys += block_keys
                element = packer.add(prompt_cost + unit_cost(0, gen))
                for name, value in zip(blocks, (m.alias, vi, pi, seed, gen, element)):
                    blocks[name].append(value)
    elements = packer.close()
    per_block = len(prompts)

    def repeat(values: list, dtype) -> np.ndarray:
        return np.repeat(np.array(values, dtype=dtype), per_block)

    model_col = [alias for alias in blocks["model"] for _ in range(per_block)]
    prompt_col = np.tile(np.arange(per_block, dtype=np.int32), len(blocks["model"]))
    task.check_plan(spec, facts, prompts, PlannedUnits(model_col, prompt_col))
    no_seed = [s is None for s in blocks["seed"]]
    units = pa.table({
        "unit_id": ids, "unit_key": keys,
        "element": np.concatenate(blocks["element"] or [np.zeros(0, np.int32)]),
        "model": model_col, "prompt_index": prompt_col,
        "variant": repeat(blocks["variant"], np.int32), "point": repeat(blocks["point"], np.int32),
        "seed": pa.array(repeat([0 if s is None else s for s in blocks["seed"]], np.int64),
                         mask=repeat(no_seed, bool)),
        "est_tokens": (np.tile(prompt_tokens_np, len(blocks["gen"])) + repeat(blocks["gen"], np.int64)
                       ).astype(np.int32),
    }, schema=UNIT_SCHEMA)
    models = {m.alias: {**m.model_dump(mode="json"), "path": refs[m.alias].path,
                        "fingerprint": refs[m.alias].fingerprint, "kind": refs[m.alias].kind}
              for m in spec.models}
    return Plan(experiment=spec.name, spec_hash=spec.spec_hash(), spec=spec.canonical(), spec_file=spec_file,
                models=models, task=spec.task.canonical_params(), variants=variants,
                points=[p for p in points if p is not None], prompts=prompts, units=units, elements=elements)


def expand_variants(task, variants: list[dict], facts: dict, model_variants: dict[str, list[int]]
                    ) -> tuple[list[dict], dict[str, list[int]]]:
    """Each variant as the concrete variants it stands for on each model that runs it (`Task.expand_variant`):
    (the variants, indices of those each model runs). In order of the variants, then of each one's expansion
    over the models (in spec order); a concrete variant two models share is one variant. A task that does not
    expand gets its variants and indices back unchanged."""
    out: list[dict] = []
    index: dict[tuple[int, str], int] = {}
    per_model: dict[str, list[int]] = {alias: [] for alias in model_variants}
    for vi, v in enumerate(variants):
        for alias, vis in model_variants.items():
            if vi not in vis:
                continue
            for concrete in task.expand_variant(v, facts.get(alias)):
                key = (vi, canonical(concrete))
                if key not in index:
                    index[key] = len(out)
                    out.append(concrete)
                per_model[alias].append(index[key])
    return out, per_model


# ---- packing: the one way units become elements ------------------------------------------------------

def rank_span(backend: str, tensor_parallel: int) -> int:
    """Ranks one model copy spans, as the engine declares its tensor-parallel placement (runner/engines): an
    engine whose groups span ranks has a copy per group of `tensor_parallel` ranks; one that keeps tensor
    parallelism inside a rank (or has none) has a copy per rank."""
    from lmsweep.core.engine import get_engine

    return max(1, get_engine(backend).model_copies(tensor_parallel))


def model_copies(ranks: int, span: int) -> int:
    """Model copies working at once in an element of `ranks` ranks (each through its own units)."""
    return max(1, ranks // span)


def element_budget(walltime_seconds: float, copies: int, tokens_per_second: float) -> float:
    """Cost units one element may hold: ELEMENT_FILL of its walltime, `copies` model copies at
    `tokens_per_second` each. The capacity rule of every packing: the plan's (the spec's `execution`, what
    `lmsweep run` runs) and submit's (the queue's nodes x ranks, the throughput it chose)."""
    return walltime_seconds * ELEMENT_FILL * copies * tokens_per_second


class ElementPacker:
    """Groups units into elements: greedy, in plan order, one model per element. A unit opens a new element
    when it would push the open one past `budget` cost units or `max_units` units (an element always takes
    its first unit). The one packer: build_plan feeds it a block of units at a time, submit/packing.pack a
    model's units at once for a queue's budget; the same units, budget and max_units give the same elements.

        packer.start(alias); packer.add(costs) -> element index per unit; ...; packer.close() -> elements
    """

    def __init__(self, budget: float, max_units: int | None, tokens_per_second: float):
        self.budget, self.max_units, self.tokens_per_second = budget, max_units, tokens_per_second
        self.elements: list[Element] = []
        self._model: str | None = None
        self._first = self._n = 0
        self._tokens: float = 0

    def start(self, alias: str) -> None:
        """The next units are `alias`'s: close the open element of the model before."""
        self._finish()
        self._model, self._first, self._tokens, self._n = alias, len(self.elements), 0, 0

    def add(self, costs: np.ndarray) -> np.ndarray:
        """Place the next units of the started model; their element indices."""
        assert self._model is not None, "start(alias) first"
        out, self._tokens, self._n = _split(costs, self.elements, self._model, self._tokens, self._n,
                                            self.budget, self.max_units, self.tokens_per_second)
        return out

    def close(self) -> list[Element]:
        self._finish()
        return self.elements

    def _finish(self) -> None:
        # a model's last element; a model given no units still has one (empty)
        if self._model is not None and (self._n or len(self.elements) == self._first):
            self.elements.append(Element(len(self.elements), self._model, self._n,
                                         self._tokens / self.tokens_per_second))
        self._model = None


def _split(costs: np.ndarray, elements: list[Element], alias: str, tokens: float, n: int, budget: float,
           max_units: int | None, tokens_per_second: float) -> tuple[np.ndarray, float, int]:
    """ElementPacker.add: one block of units, in order, after an open element of (tokens, n). Appends the
    elements it closes; returns each unit's element index and the open element's (tokens, n). Integer costs
    (the plan's) stay integers; float costs are summed as floats."""
    out = np.empty(len(costs), dtype=np.int32)
    cum = np.cumsum(costs)
    limit = math.floor(budget)
    pos = 0
    while pos < len(costs):
        done = cum[pos - 1].item() if pos else 0          # cost of this block's units already placed
        room = int(np.searchsorted(cum[pos:], limit - tokens + done, side="right"))
        if max_units:
            room = min(room, max_units - n)
        if n == 0:
            room = max(room, 1)
        take = min(room, len(costs) - pos)
        out[pos:pos + take] = len(elements)
        tokens += cum[pos + take - 1].item() - done if take else 0
        n += take
        pos += take
        if pos < len(costs):
            elements.append(Element(len(elements), alias, n, tokens / tokens_per_second))
            tokens, n = 0, 0
    return out, tokens, n


def plan_spec(spec: ExperimentSpec) -> Plan:
    return build_plan(spec, resolve_models(spec), load_prompts(spec))


# ---- files -------------------------------------------------------------------------------------------

PROMPT_SCHEMA = pa.schema([
    ("prompt_index", pa.int32()), ("prompt_set", pa.string()), ("prompt_id", pa.string()),
    ("prompt_text", pa.string()), ("label", pa.string()), ("meta", pa.string()),
    ("system_prompt", pa.string()), ("chat_template", pa.bool_()),
])


def write_plan(plan: Plan, exp_dir: Path) -> None:
    """plan.parquet and prompts.parquet first, plan.json last: plan.json's presence means a whole plan."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    _atomic_parquet(plan.units, exp_dir / "plan.parquet")
    prompts = pa.table({
        "prompt_index": list(range(len(plan.prompts))),
        "prompt_set": [p.set for p in plan.prompts], "prompt_id": [p.id for p in plan.prompts],
        "prompt_text": [p.text for p in plan.prompts], "label": [p.label for p in plan.prompts],
        "meta": [p.meta for p in plan.prompts], "system_prompt": [p.system_prompt for p in plan.prompts],
        "chat_template": [p.chat_template for p in plan.prompts],
    }, schema=PROMPT_SCHEMA)
    _atomic_parquet(prompts, exp_dir / "prompts.parquet")
    meta = {
        "format": PLAN_FORMAT, "experiment": plan.experiment, "spec_hash": plan.spec_hash,
        "spec_file": plan.spec_file, "created": plan.created, "spec": plan.spec, "models": plan.models,
        "task": plan.task, "variants": plan.variants, "points": [p.model_dump() for p in plan.points],
        "elements": [asdict(e) for e in plan.elements], "n_units": plan.n_units,
    }
    tmp = exp_dir / f".plan.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(tmp, exp_dir / "plan.json")


def _atomic_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


class ModelInfo(ModelSpec):
    """A model as the plan resolved it: the spec's fields (defaults and checks from ModelSpec) plus where
    its files are and their fingerprint, so a worker never re-resolves a source or re-states a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str                # directory, or the GGUF file for GGUF packages
    fingerprint: str         # part of every unit id
    kind: str                # "dir" | "package" | "hub" (jobs/model_sources.ModelRef.kind)


def _stored(model: type[BaseModel], data: dict) -> BaseModel:
    """Validate a block plan.json stores with the spec model that wrote it. A plan is a record: a field a
    later lmsweep no longer has is ignored (so older plans keep loading); one it added takes its default."""
    return model.model_validate({k: v for k, v in data.items() if k in model.model_fields})


def _run_settings(execution: dict) -> ExecutionSpec:
    """`execution:` without its scheduler blocks (`pbs:`, `slurm:`, ...: the nested ones). Those are
    submit's, read from the spec, never from a plan; leaving them out keeps a plan readable by workers and
    the results stage whatever a scheduler backend's block model becomes, and loads no scheduler code."""
    return _stored(ExecutionSpec, {k: v for k, v in execution.items() if not isinstance(v, dict)})


class StoredElement(BaseModel):
    """One element as plan.json stores it (the shape `read_plan` checks before building an Element)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    index: int
    model: str
    n_units: int
    est_seconds: float


class StoredTask(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str


class StoredPlan(BaseModel):
    """plan.json's shape, as `write_plan` writes it: what `read_plan` checks before anything reads a field."""

    model_config = ConfigDict(extra="ignore")

    format: int
    experiment: str
    spec_hash: str
    spec_file: str | None = None
    created: float
    spec: dict[str, Any]
    models: dict[str, dict[str, Any]]
    task: StoredTask
    variants: list[dict[str, Any]]
    points: list[dict[str, Any]]
    elements: list[StoredElement]
    n_units: int


# What every reader of an experiment may find there: files that must be files, directories that must be
# directories. A part of the tree of the wrong type (`results` left as a file by a copy gone wrong) is one
# ExperimentError naming it, not an empty result or a traceback later.
PLAN_TABLES = {"plan.parquet": "the plan's unit table", "prompts.parquet": "the plan's prompt table"}
EXPERIMENT_DIRS = ("results", "errors", "meta", "jobs", "locks", "logs", "quarantine")
REPLAN = "re-plan with `lmsweep plan SPEC` (finished units are kept)"


@dataclass(frozen=True)
class PlanFiles:
    """A written plan, as a worker or the results stage sees it: plan.json read and typed once by
    `read_plan`; the unit and prompt tables stay on disk and are read per element (`units`, `prompts`)."""

    exp_dir: Path
    meta: dict                           # plan.json as stored; the fields below are its typed views
    experiment: str
    spec_hash: str
    spec_file: str | None
    task_type: str
    execution: ExecutionSpec             # run settings; scheduler blocks left out (see _run_settings)
    models: dict[str, ModelInfo]         # alias → model
    variants: list[dict]                 # task parameter sets, indexed by a unit's `variant`
    points: list[DecodingPoint]          # decoding points, indexed by a unit's `point`
    elements: list[Element]

    @classmethod
    def from_meta(cls, exp_dir: Path, meta: dict) -> PlanFiles:
        stored = StoredPlan.model_validate(meta)
        return cls(exp_dir=exp_dir, meta=meta, experiment=stored.experiment, spec_hash=stored.spec_hash,
                   spec_file=stored.spec_file, task_type=stored.task.type,
                   execution=_run_settings(stored.spec.get("execution", {})),
                   models={alias: _stored_model(exp_dir, alias, m) for alias, m in stored.models.items()},
                   variants=stored.variants, points=[DecodingPoint(**p) for p in stored.points],
                   elements=[Element(**e.model_dump()) for e in stored.elements])

    def model_field(self, alias: str) -> str:
        """Where a model's settings are in the spec (`models[i]`), for errors a worker raises about them."""
        models = self.meta["spec"].get("models", [])
        aliases = [m.get("alias") for m in models if isinstance(m, dict)] if isinstance(models, list) else []
        return f"models[{aliases.index(alias)}]" if alias in aliases else f"model {alias}"

    def units(self, element: int | None = None, columns: list[str] | None = None) -> pa.Table:
        filters = [("element", "=", element)] if element is not None else None
        return _read_table(self.exp_dir / "plan.parquet", columns=columns, filters=filters)

    def prompts(self) -> pa.Table:
        return _read_table(self.exp_dir / "prompts.parquet")


def _stored_model(exp_dir: Path, alias: str, data: dict) -> ModelInfo:
    try:
        return _stored(ModelInfo, data)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(["models", alias, *map(str, first["loc"])])
        raise ExperimentError(f"does not read as a plan ({first['msg']}); {REPLAN}",
                              file=str(exp_dir / "plan.json"), field=field) from None


def _read_table(path: Path, columns: list[str] | None = None, filters=None) -> pa.Table:
    """One of the plan's tables; ExperimentError naming it when it is gone or does not read."""
    what = PLAN_TABLES[path.name]
    if not path.is_file():
        _missing(path, what)
    try:
        return pq.read_table(path, columns=columns, filters=filters)
    except (pa.ArrowException, ValueError, OSError) as e:
        raise ExperimentError(f"cannot be read as {what} ({_first_line(e)}); {REPLAN}", file=str(path)) from None


def _missing(path: Path, what: str) -> None:
    if path.is_dir():
        raise ExperimentError(f"is a directory; expected {what} (a file); {REPLAN}", file=str(path))
    raise ExperimentError(f"missing: {what} is gone (a copy cut short?); {REPLAN}", file=str(path))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def _check_table(path: Path, schema: pa.Schema, rows: int | None) -> None:
    """The table is there, reads as Parquet (its footer), has the columns it should and, for the unit table,
    one row per planned unit. Reads the footer only."""
    what = PLAN_TABLES[path.name]
    if not path.is_file():
        _missing(path, what)
    try:
        meta = pq.read_metadata(path)
        names = set(meta.schema.to_arrow_schema().names)
    except (pa.ArrowException, ValueError, OSError) as e:
        raise ExperimentError(f"cannot be read as {what} (damaged or cut short: {_first_line(e)}); {REPLAN}",
                              file=str(path)) from None
    lacking = [name for name in schema.names if name not in names]
    if lacking:
        raise ExperimentError(f"has no column {lacking[0]!r}: not {what}; {REPLAN}", file=str(path))
    if rows is not None and meta.num_rows != rows:
        raise ExperimentError(f"holds {meta.num_rows} unit(s) but plan.json plans {rows}: the two do not belong "
                              f"together; {REPLAN}", file=str(path))


def check_layout(exp_dir: Path, task: str) -> None:
    """The experiment's directories are directories (where they exist)."""
    for name in (*EXPERIMENT_DIRS, f"results/task={task}"):
        path = exp_dir / name
        if path.exists() and not path.is_dir():
            raise ExperimentError("is not a directory (a file of that name is in the way); move it aside",
                                  file=str(path))


def read_plan(exp_dir: str | Path) -> PlanFiles:
    """The experiment's plan, checked: plan.json (JSON, its shape, a known task), the unit and prompt
    tables (present, Parquet, the right columns, one row per unit) and the directories' types. Anything
    damaged, missing or of the wrong type is one ExperimentError naming the file."""
    from lmsweep.core.task_registry import task_names

    exp_dir = Path(exp_dir)
    meta_file = exp_dir / "plan.json"
    if not exp_dir.is_dir():
        what = "is not a directory" if exp_dir.exists() else "does not exist"
        raise ExperimentError(f"no plan here: {what} (an experiment directory holds plan.json)", file=str(exp_dir))
    if meta_file.is_dir():
        raise ExperimentError(f"is a directory; expected the plan `lmsweep plan` writes; {REPLAN}",
                              file=str(meta_file))
    if not meta_file.exists():
        raise ExperimentError("no plan here: missing; run `lmsweep plan SPEC` first", file=str(meta_file))
    try:
        meta = json.loads(meta_file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ExperimentError(f"is not valid JSON (damaged or cut short: {_first_line(e)}); {REPLAN}",
                              file=str(meta_file)) from None
    if not isinstance(meta, dict):
        raise ExperimentError(f"expected a JSON object (the plan), found {type(meta).__name__}; {REPLAN}",
                              file=str(meta_file))
    if meta.get("format") != PLAN_FORMAT:
        raise ExperimentError(f"plan format {meta.get('format')!r} is not {PLAN_FORMAT}; re-plan with this lmsweep",
                              file=str(meta_file))
    try:
        plan = PlanFiles.from_meta(exp_dir, meta)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or None
        raise ExperimentError(f"does not read as a plan ({first['msg']}); {REPLAN}", file=str(meta_file),
                              field=where) from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ExperimentError(f"does not read as a plan ({_first_line(e)}); {REPLAN}", file=str(meta_file)) from None
    if plan.task_type not in task_names():
        raise ExperimentError(f"unknown task {plan.task_type!r} (known: {', '.join(task_names())})",
                              file=str(meta_file), field="task.type")
    for i, element in enumerate(plan.elements):
        if element.model not in plan.models:
            raise ExperimentError(f"element {i} runs model {element.model!r}, which the plan's models lack; {REPLAN}",
                                  file=str(meta_file), field=f"elements.{i}.model")
    _check_table(exp_dir / "plan.parquet", UNIT_SCHEMA, meta["n_units"])
    _check_table(exp_dir / "prompts.parquet", PROMPT_SCHEMA, None)
    check_layout(exp_dir, plan.task_type)
    return plan
