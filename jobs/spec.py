"""The experiment spec: a typed model of the YAML a scientist writes, and its loader."""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)

from lmsweep.core.engine import DEFAULT as ENGINE_DEFAULT
from lmsweep.core.task_registry import all_tasks, task_names, task_spec_union, tolerance_fields
from lmsweep.jobs.decoding import DecodingGrid
from lmsweep.jobs.errors import KeyProblems, SpecError, did_you_mean, raise_all
from lmsweep.jobs.gates import Gates
from lmsweep.jobs.yamlio import SpecSource, dotted, line_of, load_yaml

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_MAX_UNITS = 2_000_000


def _safe_name(value: str, what: str) -> str:
    if not SAFE_NAME.match(value) or ".." in value:
        raise ValueError(f"{what} {value!r} must be 1-64 characters of letters, digits, '.', '_', '-', "
                         "starting with a letter or digit")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(Strict):
    """One model. `source` is a local directory, `package:<name>`, or a Hub id found in the local cache."""

    alias: str | None = None
    source: str = Field(min_length=1)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    revision: str | None = None
    tensor_parallel: int = Field(1, ge=1, le=64)
    attn_implementation: Literal["eager", "sdpa"] | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False   # load *.bin checkpoints (pickle) only when asked for explicitly
    kernel_inject: bool | None = None   # deepspeed: fused kernels; null = where a policy exists (CUDA only)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"source": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _default_alias(self) -> ModelSpec:
        if self.alias is None:
            base = self.source.removeprefix("package:").rstrip("/").split("/")[-1]
            self.alias = re.sub(r"[^A-Za-z0-9._-]", "-", base)[:64] or "model"
        _safe_name(self.alias, "model alias")
        return self


class PromptItem(Strict):
    id: str = Field(min_length=1, max_length=200)
    text: str
    label: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


COLUMN_KEYS = ("text_column", "id_column", "label_column")
FilterValue = str | int | float | bool | None


class DatasetSource(Strict):
    """A Hugging Face dataset read as a prompt set (jobs/prompt_sources.py), never downloaded: a local `path`
    (a `save_to_disk` folder, an `.arrow` or `.parquet` shard, relative to the spec) or a `name` (and `config`)
    found in the offline datasets cache."""

    path: str | None = Field(None, min_length=1)
    name: str | None = Field(None, min_length=1)
    config: str | None = Field(None, min_length=1)
    cache_dir: str | None = Field(None, min_length=1)   # default: the datasets cache (HF_DATASETS_CACHE)
    split: str | None = Field(None, min_length=1)       # needed when the dataset has several splits
    filter: dict[str, FilterValue | list[FilterValue]] | None = None   # keep rows whose column equals (one of)
    limit: int | None = Field(None, ge=1)               # the first N rows (after the filter)
    sample: int | None = Field(None, ge=1)              # N rows drawn with `seed` (after the filter)
    seed: int = 0

    @model_serializer(mode="wrap")
    def _without_unset(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}

    @model_validator(mode="after")
    def _one_dataset(self) -> DatasetSource:
        if (self.path is None) == (self.name is None):
            raise ValueError("give exactly one of `path` (a save_to_disk folder, .arrow or .parquet shard) or "
                             "`name` (a dataset in the offline datasets cache)")
        if self.path is not None and (self.config or self.cache_dir):
            raise ValueError(f"{'config' if self.config else 'cache_dir'} applies to a cached dataset (`name`), "
                             "not to a `path`")
        if self.limit is not None and self.sample is not None:
            raise ValueError("give `limit` (the first N rows) or `sample` (N rows drawn with `seed`), not both")
        return self


class PromptSetSpec(Strict):
    """A prompt set: inline `items`, a `file` (YAML, JSONL, CSV, Parquet) relative to the spec, or a Hugging
    Face `dataset`."""

    name: str = "prompts"
    items: list[PromptItem | str] | None = None
    file: str | None = None
    dataset: DatasetSource | None = None   # a Hugging Face dataset (jobs/prompt_sources.py)
    system_prompt: str | None = None
    chat_template: bool = False
    text_column: str | None = None      # a file's column that holds the text (default `text`)
    id_column: str | None = None        # ... the id (default `id`; row numbers p0, p1, … when absent)
    label_column: str | None = None     # ... the gold label (default `label`)

    @model_serializer(mode="wrap")
    def _without_unset_columns(self, handler):
        """The column mapping appears in dumps (the spec hash, plan.json) only when given, so specs written
        before it existed keep their spec hash."""
        data = handler(self)
        for key in (*COLUMN_KEYS, "dataset"):
            if data.get(key) is None:
                data.pop(key, None)
        return data

    def columns(self) -> dict[str, str]:
        """lmsweep's name → the file's column, for id, text and label."""
        return {"id": self.id_column or "id", "text": self.text_column or "text",
                "label": self.label_column or "label"}

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _safe_name(v, "prompt set name")

    @field_validator("system_prompt")
    @classmethod
    def _system_prompt(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"contains an unpaired UTF-16 surrogate \\u{ord(v[e.start]):04x} (not valid "
                                 "Unicode text)") from None
            if "\x00" in v:
                raise ValueError("contains a NUL character")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> PromptSetSpec:
        if sum(x is not None for x in (self.items, self.file, self.dataset)) != 1:
            raise ValueError("give exactly one of `items` (inline prompts), `file` or `dataset`")
        if self.items is not None and not self.items:
            raise ValueError("items: empty prompt set")
        given = [k for k in COLUMN_KEYS if getattr(self, k) is not None]
        if self.items is not None and given:
            raise ValueError(f"{given[0]} maps a prompt file's columns; inline `items` use id, text and label")
        mapped = [getattr(self, k) for k in given]
        if len(set(mapped)) < len(mapped):
            raise ValueError(f"{', '.join(given)} name the same column twice")
        return self


WALLTIME_PATTERN = r"^\d{1,3}:[0-5]\d:[0-5]\d$"


class ExecutionSpec(Strict):
    """`execution:` how and where the plan runs.

    `execution.<scheduler>` blocks (`pbs:`, `slurm:`, and any other registered backend's) belong to the
    scheduler backends: each backend in submit/backends/ declares its block's model, and
    `_scheduler_blocks` validates a block with it (imported on first use: jobs loads no scheduler code
    until a spec names a block). `pbs` and `slurm` stay declared fields because every recorded spec hash
    holds their `null`; another backend's block is kept as an extra key, present only when given, so
    adding a backend changes no existing spec hash. Any other unknown key is refused as before.
    """

    model_config = ConfigDict(extra="allow")

    backend: str = ENGINE_DEFAULT      # an engine of runner/engines (`_backend` checks the registry)
    system: str = "local"
    batch_size: int | str = 8          # units per batch, or "auto": the runner picks and backs off on OOM
    ranks_per_element: int = Field(1, ge=1, le=100_000)
    threads_per_rank: int | None = Field(None, ge=1, le=1024)
    concurrency: int = Field(1, ge=1, le=64)          # local backend: elements run at once
    walltime: str = Field("01:00:00", pattern=r"^\d{1,3}:[0-5]\d:[0-5]\d$")
    tokens_per_second: float = Field(50.0, gt=0)      # per-rank throughput guess for cost estimates
    max_units_per_element: int | None = Field(None, ge=1)
    max_units: int = Field(DEFAULT_MAX_UNITS, ge=1)
    nodes: int | None = Field(None, ge=1, le=100_000)            # per element on a cluster; default: packing
    ranks_per_node: int | None = Field(None, ge=1, le=1024)      # default: the system profile's
    pbs: Any = None        # PbsBlock (submit/backends/pbs.py)
    slurm: Any = None      # SlurmBlock (submit/backends/slurm.py)

    @model_validator(mode="wrap")
    @classmethod
    def _scheduler_blocks(cls, data: Any, handler):
        if not isinstance(data, dict) or not any(
                k not in cls.model_fields or (cls.model_fields[k].annotation is Any and v is not None)
                for k, v in data.items()):
            return handler(data)
        from lmsweep.core.schedulers import block_models  # lazy: scheduler code only for a block
        models, blocks, errors = block_models(), {}, []
        for key, value in data.items():
            if key in cls.model_fields and key not in models:
                continue
            if key not in models:
                errors.append({"type": "extra_forbidden", "loc": (key,), "input": value})
            elif value is not None:
                try:
                    blocks[key] = models[key].model_validate(value)
                except ValidationError as e:
                    errors += [{"type": d["type"], "loc": (key, *d["loc"]), "input": d["input"],
                                **({"ctx": d["ctx"]} if "ctx" in d else {})} for d in e.errors()]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return handler({**data, **blocks})

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        """One of the registered engines (runner/engines); listing them imports none of their libraries."""
        from lmsweep.core.engine import engine_names, unknown_message

        if v not in engine_names():
            raise ValueError(unknown_message(v))
        return v

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, v: Any) -> int | str:
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096):
            return v
        raise ValueError(f"must be an integer from 1 to 4096, or auto; got {v!r}")

    @property
    def walltime_seconds(self) -> int:
        h, m, s = (int(x) for x in self.walltime.split(":"))
        return h * 3600 + m * 60 + s


# The `task:` block: one of the registered tasks' parameters, told apart by `type` (runner/tasks).
TaskSpec = task_spec_union()
TASK_NAMES = task_names()

Tolerances = create_model("Tolerances", __base__=Strict, __module__=__name__, **tolerance_fields())
Tolerances.__doc__ = """How far a run may drift from its baseline before `compare` exits 1. `null` switches a check off.

Defaults suit CPU reruns, which are bit-for-bit reproducible; loosen them across GPUs or backends.
Timing checks are off by default because shared machines make timings noisy. The keys, their defaults
and their help are declared by the tasks whose compare rules read them (runner/tasks, `Task.tolerances`).
"""


class RegressionSpec(Strict):
    """`regression:` where the baseline run lives and how close a new run must stay to it."""

    baseline: str | None = Field(None, min_length=1)   # an experiment directory, relative to the working dir
    by: Literal["auto", "id", "key"] = "auto"          # join on unit_id, on unit_key (model/backend swaps), or detect
    tolerances: Tolerances = Field(default_factory=Tolerances)
    gates: Gates | None = None                         # statistical gates (jobs/gates.py); absent: reported only


class ExperimentSpec(Strict):
    name: str
    description: str = ""
    output_dir: str = "runs"
    models: list[ModelSpec] = Field(min_length=1)
    prompts: list[PromptSetSpec] = Field(min_length=1)
    task: TaskSpec
    decoding: DecodingGrid = Field(default_factory=DecodingGrid)
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec)
    regression: RegressionSpec | None = None
    _source: SpecSource = PrivateAttr(default_factory=SpecSource)

    @property
    def source(self) -> SpecSource:
        """The file this spec was loaded from and the line of each key (see `load_spec`)."""
        return self._source

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _safe_name(v, "experiment name")

    @field_validator("output_dir")
    @classmethod
    def _output_dir(cls, v: str) -> str:
        return check_output_dir(v, "output_dir")

    @model_validator(mode="before")
    @classmethod
    def _shortcuts(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("the spec must be a mapping with keys name, models, prompts, task, ...")
        data = dict(data)
        if isinstance(data.get("task"), str):        # an unknown name is reported by load_spec at the task line
            data["task"] = {"type": data["task"]}
        prompts = data.get("prompts")
        if isinstance(prompts, list) and prompts and all(isinstance(p, str) for p in prompts):
            data["prompts"] = [{"name": "prompts", "items": prompts}]
        elif isinstance(prompts, (dict, str)):
            data["prompts"] = [prompts if isinstance(prompts, dict) else {"file": prompts}]
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> ExperimentSpec:
        aliases = [m.alias for m in self.models]
        dup = {a for a in aliases if aliases.count(a) > 1}
        if dup:
            raise ValueError(f"models: duplicate alias {sorted(dup)[0]!r}; give each model a distinct alias")
        names = [p.name for p in self.prompts]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"prompts: duplicate prompt set name {sorted(dup)[0]!r}")
        if not self.task.uses_decoding and self.decoding.point_count() > 1:
            raise ValueError(f"decoding: task {self.task.type} ignores decoding; remove the grid")
        return self

    def canonical(self) -> dict:
        return self.model_dump(mode="json")

    def spec_hash(self) -> str:
        """Hash of what the experiment computes; the regression block only says how to judge it."""
        blob = json.dumps(self.model_dump(mode="json", exclude={"regression"}), sort_keys=True,
                          separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


RESULTS_ROOT_ENV = "LMSWEEP_RESULTS_ROOT"


def check_output_dir(value: str, what: str, allow_parent: bool = False) -> str:
    """A spec's output_dir is a plain path: no control characters, no `..` component. (`--output-dir`
    on the command line is the operator's own choice and may use `..`.)"""
    if not value.strip():
        raise ValueError(f"{what} is empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{what} {value!r} contains a control character")
    if not allow_parent and ".." in Path(value).parts:
        raise ValueError(f"{what} {value!r} contains '..'; experiment outputs must stay under the results root")
    return value


def experiment_path(spec: ExperimentSpec, cli_output_dir: str | None = None) -> Path:
    """`<output_dir>/<name>`, refused if it would put outputs outside the results root.

    The experiment directory must not be a symlink, and when LMSWEEP_RESULTS_ROOT is set (a shared
    installation running other people's specs should set it) it must resolve, symlinks followed,
    to a path inside that root."""
    if cli_output_dir is not None:
        where = {"file": None, "line": None, "field": "--output-dir"}
        try:
            check_output_dir(cli_output_dir, "--output-dir", allow_parent=True)
        except ValueError as e:
            raise SpecError(str(e), **where) from None
    else:
        where = {"file": spec.source.file, "line": spec.source.line(("output_dir",)),
                 "field": "output_dir"}
    exp = Path(cli_output_dir or spec.output_dir) / spec.name
    if exp.is_symlink():
        raise SpecError(f"experiment directory {exp} is a symlink (to {exp.resolve()}); outputs must be "
                        "written to a real directory under the results root", **where)
    root = os.environ.get(RESULTS_ROOT_ENV)
    if root:
        real_root, real = Path(root).resolve(), exp.resolve()
        if not real.is_relative_to(real_root):
            raise SpecError(f"experiment directory {exp} resolves to {real}, outside the results root "
                            f"{real_root} ({RESULTS_ROOT_ENV})", **where)
    return exp


def load_spec(path: str | Path) -> ExperimentSpec:
    """Parse and validate a spec file; every problem becomes a one-line SpecError with file and line."""
    path = Path(path)
    data, lines = load_yaml(path)
    try:
        spec = ExperimentSpec.model_validate(data)
    except ValidationError as e:
        raise_all(_most_specific([p for err in e.errors() for p in _spec_errors(err, str(path), lines)]))
    spec._source = SpecSource(file=str(path), directory=path.resolve().parent, lines=lines)
    _check_parallelism(spec)
    return spec


def _check_parallelism(spec: ExperimentSpec) -> None:
    """Backend/tensor-parallel combinations that are wrong on any machine, as the engine declares them
    (runner/engines, `Engine.spec_problems`). What depends on the node's accelerator (float16 or kernel
    injection on CPU) is checked by the worker before it runs a unit."""
    from lmsweep.core.engine import get_engine

    ex = spec.execution
    engine = get_engine(ex.backend)
    for i, m in enumerate(spec.models):
        problems = engine.spec_problems(ex, m)
        if problems:
            key, message = problems[0]
            raise spec.source.error(message, f"models[{i}].{key}", ("models", i, key))


def _spec_errors(err: dict, file: str, lines: dict) -> list[SpecError]:
    """One pydantic error as the user's problems: `file:line: field: message`, each at its key's line."""
    loc = _clean_loc(err["loc"])
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, KeyProblems):       # a block read as a whole (decoding): each key at its own line
        return [SpecError(message, file=file, line=line_of(lines, loc + sub), field=dotted(loc + sub))
                for sub, message in cause.problems]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = f"unknown key{did_you_mean(str(loc[-1]), _known_keys(loc[:-1]))}"
        if len(loc) == 3 and loc[0] == "execution":      # a scheduler block: say every key it takes
            msg += f"; expected one of: {', '.join(_known_keys(loc[:-1]))}"
    elif err["type"] == "union_tag_invalid" and loc == ("task",):
        tag = err.get("ctx", {}).get("tag", "")
        msg = f"unknown task {tag!r}{did_you_mean(tag, TASK_NAMES)}; expected one of {', '.join(TASK_NAMES)}"
    elif err["type"] == "missing":
        msg = "required field is missing"
    elif "input" in err and err["type"] not in ("value_error", "assertion_error") \
            and not isinstance(err["input"], (dict, list)):
        msg = f"{msg}, got {err['input']!r}"
    return [SpecError(msg, file=file, line=line_of(lines, loc), field=dotted(loc) or None)]


def _most_specific(errors: list[SpecError]) -> list[SpecError]:
    """A value that fits no branch of a union (`items: [PromptItem | str]`) fails once per branch: keep
    the deepest error of each place (`items[0].id`, not also `items[0]`), and each place once."""
    fields = [e.field or "" for e in errors]
    kept, seen = [], set()
    for e, field in zip(errors, fields):
        deeper = any(other != field and (other.startswith(field + ".") or other.startswith(field + "["))
                     for other in fields) if field else False
        if not deeper and field not in seen:
            seen.add(field)
            kept.append(e)
    return kept


def _known_keys(parent: tuple) -> list[str]:
    """The keys the spec accepts under `parent` (for a did-you-mean), found by walking the spec's models."""
    if len(parent) == 2 and parent[0] == "execution":      # a scheduler's block: its backend's model
        from lmsweep.core.schedulers import block_models
        block = block_models().get(str(parent[1]))
        return list(block.model_fields) if block is not None else []
    model: Any = ExperimentSpec
    for part in parent:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = next((t for t in _model_types(field.annotation)), None)
        if model is None:
            return []
    if parent == ("task",):          # a task's own parameters: any registered task's
        return sorted({name for task in all_tasks() for name in task.Params.model_fields})
    return list(getattr(model, "model_fields", {}))


def _model_types(annotation: Any):
    """The pydantic models inside an annotation such as `list[ModelSpec] | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in get_args(annotation):
        yield from _model_types(arg)


def _clean_loc(loc: tuple) -> tuple:
    """Drop pydantic's union/discriminator tags so the path matches the YAML keys."""
    out = []
    for part in loc:
        if isinstance(part, str) and (part in TASK_NAMES or part.startswith("function-")
                                      or part in ("str", "PromptItem", "fixed", "axes")):
            continue
        out.append(part)
    return tuple(out)
