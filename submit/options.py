"""The options of one submission, resolved once from the system profile, the spec and the flags.

`submit` and `resubmit` both call `resolve_options`; a backend takes part only through its hooks
(`Scheduler.defaults`, its `execution.<scheduler>` block's `common()`), so this file never asks which
scheduler it serves. Layers, lowest first:

1. the profile and `execution` (queue: the profile's default queue; walltime, nodes: `execution.*`),
2. the backend's own defaults (`Scheduler.defaults`: profile facts its directives need),
3. the spec's `execution.<scheduler>` block, translated to the common names where it has its own
   (`renamed`, submitit's equivalence dict),
4. the flags (`--queue`, `--account`, `--walltime`, `--nodes`, `--array-limit`, `--python`).

Options a block declares that are not common ones (and the profile's and the block's extra `directives`) are
the backend's own: they travel as `SubmitOptions.scheduler`, a dict checked by the backend's block
(`Scheduler.own_options`), into `ArrayJob.scheduler` and submission.json; shared code never looks inside.

The worker's interpreter follows one rule: `--python`, else the profile's `python`, else the interpreter
running `lmsweep submit` (submit/checks.py checks it before anything is written).

`resubmit` replaces layers 1-3 by the options its submission recorded, then applies its own flags.
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_serializer

from lmsweep.errors import KeyProblems
from lmsweep.jobs.errors import SpecError

if TYPE_CHECKING:
    from lmsweep.submit.base import Scheduler

SCHEDULER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# An extra directive: a flag, then its value after '=' or one space; no quote, `;`, `$`, backtick, `|`, `&`,
# `<`, `>`, `\` or newline can reach the script (submitit's additional_parameters, held to a safe charset).
DIRECTIVE = re.compile(r"^-{1,2}[A-Za-z0-9][A-Za-z0-9_.-]*(?:[= ][A-Za-z0-9=:,._/+@-]+)?$")
DIRECTIVE_CHARS = "letters, digits, '-', '=', ':', ',', '.', '_', '/', '+', '@'"


def scheduler_name(value: str, what: str) -> str:
    """Accounts, queues, partitions, service classes: they go into directive lines, so only a plain charset passes."""
    if not SCHEDULER_NAME.fullmatch(value):
        raise ValueError(f"{what} {value!r} must be 1-64 letters, digits, '.', '_', '-', starting with a "
                         "letter or digit")
    return value


def directive(value: str, reserved: tuple[str, ...] = ()) -> str:
    """One extra directive (`--constraint=gpu`, `-l debug=true`): the safe charset, and none of the flags
    lmsweep sets itself (`reserved`: `--array`, `-J`, or a flag with a resource name, `-l walltime`)."""
    if not DIRECTIVE.fullmatch(value):
        raise ValueError(f"directive {value!r} must be a flag ('-x' or '--name') and an optional value after "
                         f"'=' or one space, of {DIRECTIVE_CHARS}")
    clash = next((r for r in reserved if _sets(value, r)), None)
    if clash:
        raise ValueError(f"directive {value!r} sets {clash}, which lmsweep sets itself")
    return value


def _sets(value: str, reserved: str) -> bool:
    """Does directive `value` set the `reserved` flag (`--array`, `-J`, `-sla`, or `-l walltime`: one
    resource of a flag that takes `name=value,...`)?"""
    flag, *resource = reserved.split()
    if flag.startswith("--"):
        # a long option may be abbreviated (`--arr=` is `--array=`): any prefix of a reserved one is it
        given = re.split(r"[= ]", value, maxsplit=1)[0]
        return value.startswith("--") and flag.startswith(given)
    if len(flag) == 2:
        hit = value.startswith(flag)                         # `-N2` and `-N 2` alike
    else:
        hit = value == flag or value.startswith((flag + " ", flag + "="))
    if not hit or not resource:
        return hit
    rest = value[len(flag):].lstrip(" =")
    return resource[0] in {re.split(r"[=:]", item, maxsplit=1)[0] for item in rest.split(",")}


class SchedulerBlock(BaseModel):
    """A backend's `execution.<scheduler>` block. Subclasses declare the scheduler's own option names;
    `renamed` maps those that differ from the common ones (`{"partition": "queue"}`), submitit's
    equivalence dict. Fields that are no common option are the backend's own (`own()`); every block has
    `directives`, a site's extra directive lines, checked against `reserved`: the flags the backend's
    script sets itself."""

    model_config = ConfigDict(extra="forbid")
    renamed: ClassVar[Mapping[str, str]] = {}
    reserved: ClassVar[tuple[str, ...]] = ()

    directives: list[str] = []          # extra directive lines, after the standard ones

    @field_validator("directives")
    @classmethod
    def _directives(cls, v: list[str]) -> list[str]:
        problems = []
        for i, line in enumerate(v):
            try:
                directive(line, cls.reserved)
            except ValueError as e:
                problems.append(((i,), str(e)))
        if problems:
            raise KeyProblems(problems)        # each at its own line: execution.<name>.directives[i]
        return v

    @model_serializer(mode="wrap")
    def _dump(self, handler) -> dict[str, Any]:
        # no directives: not in the dump, so a spec's hash (its execution block included) stays what it was
        data = handler(self)
        if not self.directives:
            data.pop("directives", None)
        return data

    @classmethod
    def own_keys(cls) -> frozenset[str]:
        """The block's keys that are the backend's own (no common option)."""
        return frozenset(k for k in cls.model_fields if cls.renamed.get(k, k) not in COMMON)

    def common(self) -> dict[str, Any]:
        """The block's values that are set, under the common option names."""
        return {self.renamed.get(k, k): v for k, v in self.model_dump().items()
                if v is not None and self.renamed.get(k, k) in COMMON}

    def own(self) -> dict[str, Any]:
        """The block's own options that are set (an empty list is unset)."""
        return {k: v for k, v in self.model_dump().items() if k in self.own_keys() and v not in (None, [])}

    @classmethod
    def key_of(cls, option: str) -> str:
        """This block's key for a common option name (`queue` → `partition` where `renamed` says so)."""
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
    preemptable: bool = False
    scheduler: Mapping[str, Any] = field(default_factory=dict)   # the backend's own options (JSON values)

    def record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> SubmitOptions:
        """Options as `record()` wrote them. A key that is no common option belongs to the backend: records
        of older versions kept the backends' options beside the common ones, and they move under
        `scheduler` here (the backend keeps those of its block: `Scheduler.own_options`)."""
        values = {k: v for k, v in data.items() if k in COMMON}
        values["scheduler"] = {**{k: v for k, v in data.items() if k not in COMMON and k != "scheduler"},
                               **(data.get("scheduler") or {})}
        return cls(**values)


COMMON = frozenset(f.name for f in fields(SubmitOptions)) - {"scheduler"}


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
    """Layers 1-3 for a spec's `execution`: profile and execution, the backend's defaults, its block.
    Common and own options side by side; extra directives add up: the profile's, then the block's."""
    p, ex = sched.profile, execution
    ppn = ex.ranks_per_node or p.ranks_per_node
    block = getattr(ex, sched.name, None) if sched.block else None
    layers = {
        "queue": p.default_queue, "account": None, "walltime": ex.walltime, "nodes": ex.nodes,
        "ranks": ex.ranks_per_element if "ranks_per_element" in ex.model_fields_set else None,
        "ranks_per_node": ppn, "cpus_per_rank": ex.threads_per_rank or max(1, p.cpus_per_node // ppn),
        "array_limit": None, "python": p.python or _python(None),
        **sched.defaults(ex),
        **(block.common() | block.own() if block is not None else {}),
    }
    directives = [*p.directives, *layers.pop("directives", [])]
    if directives:
        layers["directives"] = directives
    return layers


def resolve_options(sched: Scheduler, flags: Flags, *, execution=None,
                    recorded: Mapping[str, Any] | None = None) -> SubmitOptions:
    """The one way options are built: from a spec's `execution` (submit) or a recorded submission
    (resubmit), then the flags on top; the queue and account are checked against the profile."""
    if recorded is None:
        base = spec_layers(sched, execution)
    else:
        restored = SubmitOptions.from_record(recorded)
        base = {**{k: getattr(restored, k) for k in COMMON}, **restored.scheduler}
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
    try:
        own = sched.own_options({k: v for k, v in values.items() if k not in COMMON})
    except ValidationError as e:
        first = e.errors()[0]
        raise SpecError(first["msg"].removeprefix("Value error, "),
                        field=".".join(map(str, (f"execution.{sched.name}", *first["loc"])))) from None
    return SubmitOptions(**{k: v for k, v in values.items() if k in COMMON}, scheduler=own)


def with_packing(options: SubmitOptions, nodes: int, ranks_per_node: int) -> SubmitOptions:
    """The options as recorded: nodes and ranks per node as packing chose them."""
    return replace(options, nodes=nodes, ranks_per_node=ranks_per_node)
