"""The options of one submission, resolved once from the system profile, the spec and the flags.

`submit` and `resubmit` both call `resolve_options`; a backend takes part only through its hooks
(`Scheduler.defaults`, its `execution.<scheduler>` block's `common()`), so this file never asks which
scheduler it serves. Layers, lowest first:

1. the profile and `execution` (queue: the profile's default queue; walltime, nodes: `execution.*`),
2. the backend's own defaults (`Scheduler.defaults`: PBS filesystems from the profile, ...),
3. the spec's `execution.<scheduler>` block, translated to the common names (Slurm `partition` → `queue`),
4. the flags (`--queue`, `--account`, `--walltime`, `--nodes`, `--array-limit`, `--python`).

The worker's interpreter follows one rule: `--python`, else the profile's `python`, else the interpreter
running `lmsweep submit` (submit/checks.py checks it before anything is written).

`resubmit` replaces layers 1-3 by the options its submission recorded, then applies its own flags.
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from lmsweep.jobs.errors import SpecError

if TYPE_CHECKING:
    from lmsweep.submit.base import Scheduler

SCHEDULER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def scheduler_name(value: str, what: str) -> str:
    """Accounts, queues, partitions, QOS: they go into #PBS/#SBATCH lines, so only a plain charset passes."""
    if not SCHEDULER_NAME.match(value):
        raise ValueError(f"{what} {value!r} must be 1-64 letters, digits, '.', '_', '-', starting with a "
                         "letter or digit")
    return value


class SchedulerBlock(BaseModel):
    """A backend's `execution.<scheduler>` block. Subclasses declare the scheduler's own option names;
    `renamed` maps those that differ from the common ones (`{"partition": "queue"}`), submitit's
    equivalence dict."""

    model_config = ConfigDict(extra="forbid")
    renamed: ClassVar[Mapping[str, str]] = {}

    def common(self) -> dict[str, Any]:
        """The block's values that are set, under the common option names."""
        return {self.renamed.get(k, k): v for k, v in self.model_dump().items() if v is not None}

    @classmethod
    def key_of(cls, option: str) -> str:
        """This block's key for a common option name (`queue` → `partition` on Slurm)."""
        return next((k for k, v in cls.renamed.items() if v == option), option)


@dataclass(frozen=True)
class SubmitOptions:
    """What every array of one submission shares; recorded in submission.json as `options`."""

    queue: str | None
    account: str | None
    walltime: str
    nodes: int | None                   # per element; None: packing chooses
    ranks: int | None                   # execution.ranks_per_element when the spec set it
    ranks_per_node: int
    cpus_per_rank: int
    array_limit: int | None             # at most this many array tasks at once (%K)
    python: str                         # interpreter that runs `-m lmsweep worker`
    filesystems: tuple[str, ...] = ()   # PBS -l filesystems
    place: str = "scatter"              # PBS -l place
    qos: str | None = None              # Slurm --qos
    gpus_per_node: int = 0              # Slurm --gpus-per-node
    preemptable: bool = False

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        out["filesystems"] = list(self.filesystems)
        return out

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> SubmitOptions:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["filesystems"] = tuple(values.get("filesystems") or ())
        return cls(**values)


@dataclass(frozen=True)
class Flags:
    """The scheduler flags of `submit` / `resubmit`, checked before anything is planned."""

    queue: str | None = None
    account: str | None = None
    walltime: str | None = None
    nodes: int | None = None
    array_limit: int | None = None
    python: str | None = None

    @classmethod
    def from_args(cls, args) -> Flags:
        """Check the flags (a bad value costs nothing and writes nothing) and keep them typed."""
        for flag in ("nodes", "array_limit"):
            value = getattr(args, flag)
            if value is not None and value < 1:
                raise SpecError(f"must be >= 1, got {value}", field="--" + flag.replace("_", "-"))
        return cls(queue=_flag_name(args.queue, "--queue"), account=_flag_name(args.account, "--account"),
                   walltime=_flag_walltime(args.walltime), nodes=args.nodes or None,
                   array_limit=args.array_limit or None, python=_python(args.python) if args.python else None)

    def given(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _flag_name(value: str | None, flag: str) -> str | None:
    if value is None:
        return None
    try:
        return scheduler_name(value, flag.lstrip("-"))
    except ValueError as e:
        raise SpecError(str(e), field=flag) from None


def _flag_walltime(value: str | None) -> str | None:
    from lmsweep.jobs.spec import WALLTIME_PATTERN
    if value is not None and not re.match(WALLTIME_PATTERN, value):
        raise SpecError(f"expected HH:MM:SS, got {value!r}", field="--walltime")
    return value


def _python(flag: str | None) -> str:
    """The worker's interpreter: this one by default; a relative path is made absolute (jobs cd elsewhere)."""
    if not flag:
        return sys.executable
    return os.path.abspath(flag) if "/" in flag else flag


def spec_layers(sched: Scheduler, execution) -> dict[str, Any]:
    """Layers 1-3 for a spec's `execution`: profile and execution, the backend's defaults, its block."""
    p, ex = sched.profile, execution
    ppn = ex.ranks_per_node or p.ranks_per_node
    block = getattr(ex, sched.name, None) if sched.block else None
    return {
        "queue": p.default_queue, "account": None, "walltime": ex.walltime, "nodes": ex.nodes,
        "ranks": ex.ranks_per_element if "ranks_per_element" in ex.model_fields_set else None,
        "ranks_per_node": ppn, "cpus_per_rank": ex.threads_per_rank or max(1, p.cpus_per_node // ppn),
        "array_limit": None, "python": p.python or _python(None),
        **sched.defaults(ex),
        **(block.common() if block is not None else {}),
    }


def resolve_options(sched: Scheduler, flags: Flags, *, execution=None,
                    recorded: Mapping[str, Any] | None = None) -> SubmitOptions:
    """The one way options are built: from a spec's `execution` (submit) or a recorded submission
    (resubmit), then the flags on top; the queue and account are checked against the profile."""
    base = spec_layers(sched, execution) if recorded is None else dict(recorded)
    values = {**base, **flags.given()}
    p = sched.profile
    def block_key(option: str) -> str:
        return f"execution.{sched.name}." + (sched.block.key_of(option) if sched.block else option)

    if not sched.uses_queues:
        values["queue"] = None
    elif values["queue"] not in p.queues:
        where = "--queue" if flags.queue else block_key("queue") if recorded is None else "system"
        raise SpecError(f"system {p.name!r} has no queue {values['queue']!r} (known: {', '.join(p.queues)})",
                        field=where)
    if sched.account_directive and not values["account"]:
        key = block_key("account")
        raise SpecError(f"{p.name} needs a project for `{sched.account_directive}`: set {key} or pass --account",
                        field=key)
    queue = p.queues.get(values["queue"]) if values["queue"] else None
    values["preemptable"] = bool(queue and queue.preemptable)
    return SubmitOptions.from_record(values)


def with_packing(options: SubmitOptions, nodes: int, ranks_per_node: int) -> SubmitOptions:
    """The options as recorded: nodes and ranks per node as packing chose them."""
    return replace(options, nodes=nodes, ranks_per_node=ranks_per_node)
