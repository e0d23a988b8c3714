"""The one small interface every scheduler implements (submitit's shape: a backend is a few hooks).

A backend (one module in `submit/backends/`, registered with `@register`) knows: its `execution.<name>`
block and the defaults it adds to the common options, the text of a job script (a pure function of an
`ArrayJob`), the command that submits it, how to read the job id from that command's output, how to ask
the scheduler about many jobs in one call, how to cancel, and the limits the running scheduler reports.
Everything else — options, packing, recording, status, resubmit — is written once against this
interface (`submit/options.py`, `submit/cli.py`, `submit/tracking.py`) and never asks which scheduler
it serves. docs/adding-a-scheduler.md lists the hooks.

An `ArrayJob` runs `len(elements)` array tasks; task `i` runs plan element `elements[i]`. Indices are
always 0..n-1 (so the array directive stays within the scheduler's largest array size); the script maps
an index to its element, which lets a resubmit run any subset of elements. `ArrayJob.scheduler` holds the
backend's own options (its block's keys, the profile's and the block's extra directives), which shared
code passes along without reading.
"""
from __future__ import annotations

import shlex
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from lmsweep.errors import SchedulerError
from lmsweep.submit.systems import SystemProfile

if TYPE_CHECKING:
    from lmsweep.submit.options import SchedulerBlock

State = Literal["queued", "held", "running", "finished", "failed", "cancelled", "unknown"]
ACTIVE_STATES: frozenset[str] = frozenset({"queued", "held", "running"})


@dataclass(frozen=True)
class ArrayJob:
    """Everything a script needs; rendering reads nothing else (no clock, no environment)."""

    experiment: str
    exp_dir: str                        # absolute path of the experiment directory
    submission: str                     # e.g. "sub-0001"; scripts and logs live in EXP/jobs/<submission>/
    part: int                           # array number within the submission (several when split)
    elements: tuple[int, ...]           # task index i runs element elements[i]
    nodes: int                          # per element
    ranks_per_node: int
    cpus_per_rank: int                  # --depth / --cpus-per-task / OMP_NUM_THREADS
    walltime: str                       # HH:MM:SS
    queue: str | None                   # queue / partition
    account: str | None
    throttle: int | None                # at most this many tasks at once (%K)
    python: str                         # interpreter that runs `-m lmsweep worker`
    depends_on: str | None = None       # job id this array starts after (afterany: never afterok)
    preemptable: bool = False
    scheduler: Mapping[str, Any] = field(default_factory=dict, hash=False)   # the backend's own options

    @property
    def n_tasks(self) -> int:
        return len(self.elements)

    @property
    def is_array(self) -> bool:
        return len(self.elements) > 1

    @property
    def ranks(self) -> int:
        return self.nodes * self.ranks_per_node

    @property
    def job_name(self) -> str:
        # experiment names are restricted to [A-Za-z0-9._-]; schedulers want a leading letter
        return f"lms-{self.experiment}"


@dataclass(frozen=True)
class TaskState:
    """What the scheduler says about one array task (or a plain job: index 0)."""

    job_id: str           # the id `submit` recorded for the array/job
    index: int
    state: State
    raw: str              # the scheduler's own word (COMPLETED, F, PENDING, ...)
    task_id: str          # how the scheduler names this task: 12_3, 45[3].server, local-99:3
    reason: str | None = None
    never_runs: bool = False   # pending forever (dependency never satisfied, can never run): cancel it

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


@dataclass
class RecordedJob:
    """A submitted array as recorded under EXP/jobs/: enough to query and cancel it later."""

    job_id: str
    n_tasks: int
    submission: str
    part: int
    elements: list[int] = field(default_factory=list)
    directory: str = ""     # EXP/jobs/<submission>: scripts, logs (and the local backend's state files)


class Scheduler(ABC):
    """A backend: render, submit, parse the id, query states in one batched call, cancel."""

    name: ClassVar[str]                      # `scheduler:` in a system profile; the spec block execution.<name>
    script_suffix: ClassVar[str]             # array-00<suffix> under EXP/jobs/<submission>/
    block: ClassVar[type[SchedulerBlock] | None] = None   # the model of execution.<name>; None: no block
    uses_queues: ClassVar[bool] = True       # False: the profile has no queues and jobs get none
    one_machine: ClassVar[bool] = False      # True: every rank runs on this machine (packing: one node)
    account_directive: ClassVar[str | None] = None   # set: an account is required (named in the error)

    def __init__(self, profile: SystemProfile):
        self.profile = profile

    def defaults(self, execution) -> dict[str, Any]:
        """Options this backend fills in below the spec's block and the flags: common ones, or its own
        (keys of its block) from profile facts. `execution` is the spec's ExecutionSpec."""
        return {}

    def own_options(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """This backend's own options out of `values` (resolved or recorded), checked by its block: the
        keys the block declares, set and not empty; other keys (another backend's, in a record of an
        older version) are dropped. pydantic's ValidationError for a bad value."""
        if self.block is None:
            return {}
        keys = self.block.own_keys()
        return self.block.model_validate({k: v for k, v in values.items()
                                          if k in keys and v not in (None, [], ())}).own()

    # -- the four hooks ------------------------------------------------------------------------------
    @abstractmethod
    def render(self, job: ArrayJob) -> str:
        """The whole job script. Pure: the same job gives the same text."""

    @abstractmethod
    def submit_command(self, script: Path) -> list[str]:
        """argv that submits `script`; it runs with the script's directory as working directory."""

    @abstractmethod
    def parse_job_id(self, stdout: str) -> str:
        """The job id from what the submit command printed."""

    @abstractmethod
    def query(self, jobs: list[RecordedJob]) -> dict[tuple[str, int], TaskState]:
        """States of every task of `jobs`, from one batched scheduler call (plus fallbacks for the
        tasks it no longer knows). Tasks the scheduler cannot tell about come back `unknown`."""

    @abstractmethod
    def cancel_command(self, job_ids: list[str]) -> list[str]:
        """argv that cancels all of `job_ids` (whole arrays) in one call."""

    def cancel_task_command(self, tasks: list[TaskState]) -> list[str]:
        """argv that cancels single tasks (used for tasks pending forever)."""
        return self.cancel_command([t.task_id for t in tasks])

    def live_limits(self, queue: str | None) -> dict[str, int]:
        """Limits read from the running scheduler for `queue`: `max_array_size`, `max_queued`
        (the largest array, the most jobs queued); {} when unknown or unreachable."""
        return {}

    # -- shared plumbing -----------------------------------------------------------------------------
    def submit(self, script: Path) -> str:
        cmd = self.submit_command(script)
        proc = run(cmd, cwd=script.parent)
        if proc.returncode != 0:
            raise SchedulerError(self.explain_submit_failure(cmd, proc))
        return self.parse_job_id(proc.stdout)

    def explain_submit_failure(self, cmd: list[str], proc: subprocess.CompletedProcess) -> str:
        said = (proc.stderr.strip() or proc.stdout.strip()).replace("\n", " | ")
        return f"`{shlex.join(cmd)}` exited {proc.returncode}: {said}"


def run(cmd: list[str], cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a scheduler client command; a missing command is a SchedulerError, not a traceback."""
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SchedulerError(f"`{cmd[0]}` not found: is this a login node of the right system?") from None
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"`{shlex.join(cmd)}` did not answer within {timeout:.0f}s") from None


def scheduler_for(profile: SystemProfile) -> Scheduler:
    """The backend of a system profile, from the registry of `submit/backends/`."""
    from lmsweep.submit.backends import backend_class
    return backend_class(profile.scheduler)(profile)
