"""System profiles: the per-machine facts (queues, limits, launcher, GPU binding, environment).

Profiles are small YAML files in ``configs/systems/`` (schema documented at the top of
``polaris.yaml``) so a site can be added or corrected without touching code. They are
validated strictly on load, because a wrong limit only shows up hours later as a job that
PBS rejects or never starts. The schema is two pydantic models (`_Profile`, `_Queue`); the YAML is read,
and its key lines found, by the spec's own loader (`jobs/yamlio.py`), so every problem is one line naming
the file, the key's line and the key, all problems of a file at once:
``configs/systems/x.yaml:12: queues.prod.max_nodes: expected int, got 'ten'``.

Values that become scheduler directives (queue names, the default queue, PBS filesystems) are held to the
same plain charset as the spec's and the flags' (`submit/options.py` SCHEDULER_NAME, FILESYSTEM_NAME), so
a profile cannot put `;`, `$(`, a backtick or a newline into a directive line; so are its extra `directives`
(checked by the backend's block: the safe charset, none of the flags the backend sets itself). The launcher,
GPU binding and environment setup are shell by design: a profile is configuration like code.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, NoReturn

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from lmsweep.configs import SYSTEMS as CONFIG_DIR
from lmsweep.errors import KeyProblems, ProfileError, ProfileErrors, SpecError, did_you_mean
from lmsweep.jobs.yamlio import line_of, parse_yaml

PACKAGE_ROOT = CONFIG_DIR.parents[1]      # error messages name shipped profiles as configs/systems/<name>.yaml

LAUNCHER_FIELDS = frozenset({"nranks", "ppn", "depth", "nnodes"})
_WALLTIME = re.compile(r"^(\d+):([0-5]\d):([0-5]\d)$")
# PBS `-l filesystems=` names, as the spec's execution.pbs.filesystems takes them (submit/backends/pbs.py)
FILESYSTEM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def walltime_seconds(text: str) -> int:
    """``"HH:MM:SS"`` (hours may exceed 24) to seconds."""
    m = _WALLTIME.match(text)
    if not m:
        raise ValueError(f"walltime {text!r} is not HH:MM:SS")
    h, mi, s = (int(g) for g in m.groups())
    return h * 3600 + mi * 60 + s


@dataclass(frozen=True)
class QueueLimits:
    """One queue (PBS) or partition (Slurm). ``None`` means no limit is known."""

    name: str
    min_nodes: int
    max_nodes: int
    max_walltime: str
    max_queued: int | None
    max_running: int | None
    max_concurrent_subjobs: int | None
    preemptable: bool
    partition: str | None = None      # Slurm: what the queue is submitted as; both None: --partition=<name>
    qos: str | None = None

    @property
    def max_walltime_seconds(self) -> int:
        return walltime_seconds(self.max_walltime)

    def accepts(self, nodes: int, walltime: str) -> bool:
        """Would this queue take a job of ``nodes`` nodes for ``walltime``?"""
        return (
            self.min_nodes <= nodes <= self.max_nodes
            and walltime_seconds(walltime) <= self.max_walltime_seconds
        )


@dataclass(frozen=True)
class SystemProfile:
    """A validated system profile; see ``configs/systems/polaris.yaml`` for the field meanings."""

    name: str
    scheduler: str                      # a backend registered in submit/backends/
    gpus_per_node: int
    cpus_per_node: int
    ranks_per_node: int
    default_queue: str | None
    queues: Mapping[str, QueueLimits] = field(hash=False)
    filesystems: tuple[str, ...]
    launcher: str
    gpu_bind: str
    env_setup: tuple[str, ...]
    max_array_size: int | None
    python: str | None = None               # interpreter for the worker; None: the one running `lmsweep submit`
    mpi_library: str | None = None          # text mpi4py's MPI.Get_library_version() must hold; None: no preflight
    tokens_per_second: float | None = None  # per-rank throughput packing assumes unless the spec sets one
    directives: tuple[str, ...] = ()        # extra directive lines of every job, before the spec's own
    shared_paths: tuple[str, ...] = ()      # directories the compute nodes see; () = not known (no check)
    source: Path | None = field(default=None, compare=False)

    @property
    def cpus_per_rank(self) -> int:
        """The ``--depth`` for ``mpiexec --cpu-bind depth``: cores per node shared among its ranks."""
        return max(1, self.cpus_per_node // self.ranks_per_node)

    def queue(self, name: str | None = None) -> QueueLimits:
        """The named queue, or the default one; a clear error for a queue the profile lacks."""
        wanted = name if name is not None else self.default_queue
        if wanted is None or wanted not in self.queues:
            known = ", ".join(self.queues) or "none"
            raise ProfileError(f"system {self.name!r} has no queue {wanted!r} (known: {known})")
        return self.queues[wanted]


def list_systems(config_dir: Path = CONFIG_DIR) -> list[str]:
    """Names of the profiles shipped in ``configs/systems/`` (what ``load_system`` accepts)."""
    return sorted(p.stem for p in Path(config_dir).glob("*.yaml"))


def suggest_system(name: str, known: list[str]) -> str:
    """` (did you mean 'polaris'?)`: a name differing only in case first (`Polaris`), else the closest."""
    same = [k for k in known if k.lower() == name.lower()]
    return f" (did you mean {same[0]!r}?)" if same else did_you_mean(name.lower(), known)


def load_system(name_or_path: str | Path, config_dir: Path = CONFIG_DIR) -> SystemProfile:
    """Load a profile by name (``"polaris"``) or by path to a YAML file; raise ProfileError."""
    text_arg = str(name_or_path)
    is_path = isinstance(name_or_path, Path) or "/" in text_arg or text_arg.endswith((".yaml", ".yml"))
    path = Path(name_or_path) if is_path else Path(config_dir) / f"{text_arg}.yaml"
    if not path.is_file():
        if is_path:
            raise ProfileError(f"{_display(path)}: no such system profile")
        known = list_systems(config_dir)
        raise ProfileError(f"unknown system {text_arg!r}{suggest_system(text_arg, known)} (known: "
                           f"{', '.join(known) or 'none'}); or pass a path to a profile YAML")
    return parse_profile(path.read_text(), path)


def parse_profile(text: str, path: Path) -> SystemProfile:
    """Validate a profile's YAML text; ``path`` names it in errors and must match ``name``."""
    where = _display(path)
    try:
        data, lines = parse_yaml(text, where)     # the spec's YAML reader: key lines, duplicate keys, depth
    except SpecError as e:
        raise ProfileError(e.message, file=e.file, line=e.line, field=e.field) from None
    try:
        model = _Profile.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        hints = {(err["loc"][:-1], did_you_mean(str(err["loc"][-1]), _known(err["loc"])))
                 for err in errors if err["type"] == "extra_forbidden"}
        typos = [err for err in errors if err["type"] == "missing"   # a misspelt key is one problem, not two
                 and (err["loc"][:-1], did_you_mean(err["loc"][-1], [err["loc"][-1]])) in hints]
        _raise_all([p for err in errors if err not in typos for p in _problems(err, where, lines)])
    if model.name != path.stem:
        _raise_all([_error(where, lines, ("name",), f"{model.name!r} does not match the file name {path.stem!r}")])
    queues = {name: QueueLimits(name=name, **dict(q)) for name, q in model.queues.items()}
    return SystemProfile(**{**dict(model), "queues": MappingProxyType(queues),
                            "directives": model.directives or (), "shared_paths": model.shared_paths or (),
                            "source": path})


def _display(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(PACKAGE_ROOT))
    except ValueError:
        return str(path)


# -- the schema: pydantic models of the YAML; their errors become ProfileError lines (`_problems`) -----------

_MESSAGES = {     # pydantic's error types in the profile's own words ({input} is the value, ctx the rest)
    "missing": "missing",
    "int_type": "expected int, got {input!r}",
    "greater_than_equal": "must be >= {ge}, got {input!r}",
    "float_type": "expected a number > 0, got {input!r}",
    "greater_than": "expected a number > 0, got {input!r}",
    "string_type": "expected a string, got {input!r}",
    "bool_type": "expected true or false, got {input!r}",
    "tuple_type": "expected a list of strings, got {input!r}",
    "dict_type": "expected a mapping, got {input!r}",
    "model_type": "expected a mapping, got {input!r}",
}


def _raise_all(errors: list[ProfileError]) -> NoReturn:
    errors = sorted(errors, key=lambda e: e.line or 0)
    raise errors[0] if len(errors) == 1 else ProfileErrors(errors)


def _error(where: str, lines: dict, loc: tuple, message: str) -> ProfileError:
    """`file:line: key.path: message`, at the line of the key (a missing top-level key has no useful line)."""
    line = line_of(lines, loc) if loc and loc[:1] in lines else None
    return ProfileError(message, file=where, line=line, field=".".join(map(str, loc)) or "(top level)")


def _problems(err: dict, where: str, lines: dict) -> list[ProfileError]:
    """One pydantic error as the profile's problems, each at its key's own line."""
    loc = tuple(part for part in err["loc"] if part != "[key]")       # a bad queue name: the key's line
    ctx = err.get("ctx", {})
    if isinstance(ctx.get("error"), KeyProblems):      # a cross-field check, at the key(s) it names
        return [_error(where, lines, loc + sub, message) for sub, message in ctx["error"].problems]
    if err["type"] == "extra_forbidden":
        known = _known(loc)
        message = f"unknown key{did_you_mean(str(loc[-1]), known)}; expected one of: {', '.join(known)}"
    elif err["type"] in _MESSAGES:
        message = _MESSAGES[err["type"]].format(input=err.get("input"), **ctx)
    else:
        message = err["msg"].removeprefix("Value error, ")
    return [_error(where, lines, loc, message)]


def _known(loc: tuple) -> list[str]:
    """The keys the profile takes where `loc` (a key, e.g. ("queues", "prod", "max_runing")) is."""
    return list((_Queue if len(loc) == 3 else _Profile).model_fields)


def _nonblank(value: str) -> str:
    if not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _scheduler_name(what: str):
    """A value that goes into a #PBS/#SBATCH line: the spec's and the flags' charset (SCHEDULER_NAME)."""
    def check(value: str) -> str:
        from lmsweep.submit.options import scheduler_name
        return scheduler_name(value, what)
    return AfterValidator(check)


def _filesystem(value: str) -> str:
    if not FILESYSTEM_NAME.match(value):
        raise ValueError(f"filesystem {value!r} must be 1-32 lowercase letters, digits, '_', starting with a letter")
    return value


Count = Annotated[StrictInt, Field(ge=1)]
Line = Annotated[StrictStr, AfterValidator(_nonblank)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Queue(_Strict):
    """`queues.<name>`: every key required (null = no limit known)."""

    min_nodes: Count
    max_nodes: Count
    max_walltime: StrictStr
    max_queued: Count | None
    max_running: Count | None
    max_concurrent_subjobs: Count | None
    preemptable: StrictBool
    # Slurm only: the queue is this partition and/or QOS (Perlmutter's queues are QOS; Frontier's debug is the
    # batch partition with QOS debug); neither set: `--partition=<queue name>`
    partition: Annotated[StrictStr, _scheduler_name("partition")] | None = None
    qos: Annotated[StrictStr, _scheduler_name("qos")] | None = None

    @field_validator("max_walltime")
    @classmethod
    def _walltime(cls, value: str) -> str:
        if not _WALLTIME.match(value) or walltime_seconds(value) == 0:
            raise ValueError(f'expected "HH:MM:SS", got {value!r}')
        return value

    @model_validator(mode="after")
    def _node_range(self) -> _Queue:
        if self.max_nodes < self.min_nodes:
            raise KeyProblems([(("max_nodes",), f"{self.max_nodes} is below min_nodes {self.min_nodes}")])
        return self


class _Profile(_Strict):
    """The whole profile (the fields of SystemProfile but `source`); see configs/systems/polaris.yaml."""

    name: StrictStr
    scheduler: StrictStr
    gpus_per_node: Annotated[StrictInt, Field(ge=0)]
    cpus_per_node: Count
    ranks_per_node: Count | None = None              # default: one per GPU, or 1 without GPUs
    default_queue: Annotated[StrictStr, _scheduler_name("queue")] | None = None
    queues: dict[Annotated[StrictStr, _scheduler_name("queue name")], _Queue]
    filesystems: tuple[Annotated[Line, AfterValidator(_filesystem)], ...]
    launcher: StrictStr
    gpu_bind: StrictStr
    env_setup: tuple[Line, ...]
    max_array_size: Count | None = None
    python: StrictStr | None = None
    mpi_library: StrictStr | None = None
    tokens_per_second: Annotated[float, Field(strict=True, gt=0)] | None = None
    directives: tuple[Line, ...] | None = None
    shared_paths: tuple[Line, ...] | None = None

    @field_validator("shared_paths")
    @classmethod
    def _absolute(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for path in value or ():
            if not path.startswith("/") or path == "/":
                raise ValueError(f"expected absolute directories other than /, got {path!r}")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", value):
            raise ValueError(f"expected lowercase letters, digits, '-' or '_', got {value!r}")
        return value

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, value: str) -> str:
        from lmsweep.submit.backends import backends  # lazy: the backends import this module

        if value not in backends():
            raise ValueError(f"expected one of {', '.join(backends())}, got {value!r}")
        return value

    @field_validator("python")
    @classmethod
    def _python(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or ("/" in value and not value.startswith("/"))):
            raise ValueError(f"expected an absolute path or a command name, got {value!r}")
        return value

    @field_validator("launcher")
    @classmethod
    def _launcher(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        except ValueError as exc:
            raise ValueError(f"bad template: {exc}") from None
        unknown = sorted(names - LAUNCHER_FIELDS)
        if unknown:
            allowed = ", ".join("{" + f + "}" for f in sorted(LAUNCHER_FIELDS))
            raise ValueError(f"unknown placeholder {{{unknown[0]}}} (allowed: {allowed})")
        return value

    @model_validator(mode="after")
    def _fits_the_scheduler(self) -> _Profile:
        """What depends on the backend (queues or none, its directive block) and on the ranks per node."""
        from lmsweep.submit.backends import backends
        from lmsweep.submit.options import directive

        backend, problems = backends()[self.scheduler], []
        self.ranks_per_node = self.ranks_per_node or max(self.gpus_per_node, 1)
        if not backend.uses_queues:
            if self.queues:
                problems.append((("queues",), f"must be empty for scheduler {self.scheduler}"))
            if self.default_queue is not None:
                problems.append((("default_queue",), f"must be null for scheduler {self.scheduler}"))
        elif not self.queues:
            problems.append((("queues",), f"scheduler {self.scheduler} needs at least one queue"))
        elif self.default_queue not in self.queues:
            problems.append((("default_queue",),
                             f"{self.default_queue!r} is not one of the queues ({', '.join(self.queues)})"))
        # a queue submitted as a partition and/or QOS: only where the backend's block has a qos (Slurm)
        takes_qos = backend.block is not None and "qos" in backend.block.model_fields
        for name, q in self.queues.items() if not takes_qos else ():
            for key in ("partition", "qos"):
                if getattr(q, key) is not None:
                    problems.append((("queues", name, key), f"scheduler {self.scheduler} takes no queue {key}"))
        if self.directives and backend.block is None:
            problems.append((("directives",), f"scheduler {self.scheduler} takes no directives"))
        for i, line in enumerate(self.directives if backend.block is not None and self.directives else ()):
            try:
                directive(line, backend.block.reserved)
            except ValueError as exc:
                problems.append((("directives", i), str(exc)))
        if m := re.search(r"--cpu-bind[ =]list:(\S+)", self.launcher):
            groups = len(m.group(1).split(":"))
            if groups != self.ranks_per_node:
                problems.append((("launcher",), f"--cpu-bind list has {groups} core groups but "
                                                f"ranks_per_node is {self.ranks_per_node}"))
        if problems:
            raise KeyProblems(problems)
        return self


# -- the profile library, as `lmsweep systems` shows it (pure: text in, text out) ----------------------------

def gpus_text(profile: SystemProfile) -> str:
    return str(profile.gpus_per_node) if profile.gpus_per_node else "none (CPU)"


def describe(profile: SystemProfile) -> list[str]:
    """`lmsweep systems show NAME`: what packing and rendering will take from the profile, one fact a line."""
    out = [f"system {profile.name} ({_display(profile.source) if profile.source else 'no file'})",
           f"scheduler: {profile.scheduler}",
           f"per node: {gpus_text(profile)} GPU(s), {profile.cpus_per_node} cores, {profile.ranks_per_node} rank(s) "
           f"({profile.cpus_per_rank} core(s) each)",
           f"max array size: {profile.max_array_size or 'no limit known'}"]
    if profile.queues:
        out.append(f"queues (default {profile.default_queue}):")
        for q in profile.queues.values():
            limits = [f"{q.min_nodes}-{q.max_nodes} nodes", f"<= {q.max_walltime}",
                      f"{q.max_queued if q.max_queued else 'no'} queued limit",
                      f"{q.max_running if q.max_running else 'no'} running limit",
                      f"%{q.max_concurrent_subjobs}" if q.max_concurrent_subjobs else "no subjob throttle"]
            if q.preemptable:
                limits.append("preemptable")
            submitted = ", ".join(f"--{k}={v}" for k, v in (("partition", q.partition), ("qos", q.qos)) if v)
            out.append(f"  {q.name}: {', '.join(limits)}" + (f" (submitted as {submitted})" if submitted else ""))
    out += [f"filesystems: {', '.join(profile.filesystems) or 'none'}",
            f"launcher: {profile.launcher}",
            f"gpu binding: {profile.gpu_bind or 'none'}",
            "environment setup:", *(f"  {line}" for line in profile.env_setup)]
    if profile.directives:
        out.append(f"extra directives: {'; '.join(profile.directives)}")
    if profile.python:
        out.append(f"python: {profile.python}")
    if profile.mpi_library:
        out.append(f"mpi_library (checked on the compute node): {profile.mpi_library}")
    out.append(f"tokens_per_second: {profile.tokens_per_second or 'unset (50)'}")
    return out


def renamed_copy(text: str, source: Path, name: str) -> str:
    """A profile's YAML text under another name (its `name:` line), checked as a profile before anything is
    written; a name the schema refuses raises ProfileError."""
    new, n = re.subn(r"^name:.*$", f"name: {name}", text, count=1, flags=re.MULTILINE)
    if not n:
        raise ProfileError(f"{_display(source)}: has no top-level `name:` line to rename")
    header = f"# Copied from {source.name} by `lmsweep systems new`: edit for your site, then `--system PATH`.\n"
    return header + new
