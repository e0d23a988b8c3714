"""What was submitted, recorded under EXP/jobs/ so status, resubmit and cancel work from files.

    EXP/jobs/sub-0001/submission.json   system, options, packing decision, arrays with job ids
    EXP/jobs/sub-0001/array-00.pbs      the exact script given to qsub/sbatch
    EXP/jobs/sub-0001/logs/             scheduler output files (paths in the scripts are relative)

A submission is written before the scheduler is called (job_id null) and updated after each
array is accepted, so a crash in between still leaves a trace. `plan_created` ties a submission
to the plan grouping it was made for: a later `submit` may re-group elements, and status then
ignores submissions of the old grouping.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from lmsweep.errors import ExperimentError
from lmsweep.submit.base import RecordedJob

JOBS_DIR = "jobs"


@dataclass
class ArrayRecord:
    part: int
    script: str                      # file name inside the submission directory
    elements: list[int]
    job_id: str | None = None
    submitted_at: float | None = None
    depends_on: str | None = None
    error: str | None = None


@dataclass
class Submission:
    name: str
    directory: Path
    kind: str                        # submit | resubmit
    system: str                      # profile name (or path) to load again for resubmit/cancel
    scheduler: str
    plan_created: float
    options: dict                    # resolved ArrayJob fields shared by all arrays
    packing: list[str]
    arrays: list[ArrayRecord] = field(default_factory=list)
    created: float = field(default_factory=time.time)

    def save(self) -> None:
        data = asdict(self)
        data["directory"] = str(self.directory)
        tmp = self.directory / f".submission.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.directory / "submission.json")

    def recorded_jobs(self) -> list[RecordedJob]:
        # an array without elements is a plain job recorded alongside (e.g. one chained after an array)
        return [RecordedJob(a.job_id, max(1, len(a.elements)), self.name, a.part, list(a.elements),
                            str(self.directory)) for a in self.arrays if a.job_id]


def jobs_root(exp: Path) -> Path:
    return Path(exp) / JOBS_DIR


def next_name(exp: Path) -> str:
    """The name the next submission will get (also what a dry run shows)."""
    root = jobs_root(exp)
    taken = [int(p.name[4:]) for p in root.glob("sub-[0-9][0-9][0-9][0-9]")] if root.is_dir() else []
    return f"sub-{max(taken, default=0) + 1:04d}"


def create(exp: Path, name: str) -> Path:
    """Make the submission directory; a name taken by a concurrent submit moves on to the next free one."""
    while True:
        directory = jobs_root(exp) / name
        try:
            directory.mkdir(parents=True)
        except FileExistsError:
            name = next_name(exp)
            continue
        (directory / "logs").mkdir()
        return directory


class _StoredArray(BaseModel):
    model_config = ConfigDict(extra="ignore")

    part: int
    script: str
    elements: list[int]
    job_id: str | None = None
    submitted_at: float | None = None
    depends_on: str | None = None
    error: str | None = None


class _StoredSubmission(BaseModel):
    """submission.json's shape, as `Submission.save` writes it."""

    model_config = ConfigDict(extra="ignore")

    name: str
    kind: str
    system: str
    scheduler: str
    plan_created: float
    options: dict[str, Any]
    packing: list[str]
    arrays: list[_StoredArray]
    created: float


def read_submission(path: Path) -> Submission:
    """One submission record, checked; ExperimentError naming the file when it is damaged or of the wrong shape."""
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "is missing"
        raise ExperimentError(f"{what}; expected the submission record `lmsweep submit` writes", file=str(path))
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
        stored = _StoredSubmission.model_validate(data)
    except (UnicodeDecodeError, ValueError) as e:      # JSONDecodeError and ValidationError are ValueErrors
        if isinstance(e, ValidationError):
            first = e.errors()[0]
            why = f"{'.'.join(map(str, first['loc'])) or 'the record'}: {first['msg']}"
        else:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ExperimentError(f"is not a submission record (damaged or cut short: {why}); move the submission "
                              f"directory {path.parent.name} aside (its jobs are then no longer tracked)",
                              file=str(path)) from None
    fields = stored.model_dump()
    fields["arrays"] = [ArrayRecord(**a) for a in fields["arrays"]]
    return Submission(directory=path.parent, **fields)


def load_submissions(exp: Path) -> list[Submission]:
    """Every submission recorded under EXP/jobs/, oldest name first (ExperimentError on a damaged record)."""
    root = jobs_root(exp)
    if root.exists() and not root.is_dir():
        raise ExperimentError("is not a directory (a file of that name is in the way); move it aside",
                              file=str(root))
    if not root.is_dir():
        return []
    # a sub-NNNN without its record is a submit that stopped before writing it: nothing was sent
    return [read_submission(d / "submission.json") for d in sorted(root.glob("sub-*"))
            if d.is_dir() and (d / "submission.json").exists()]


def latest_tasks(subs: list[Submission]) -> dict[int, tuple[RecordedJob, int]]:
    """For each element, the job and task index that last ran (or will run) it."""
    out: dict[int, tuple[RecordedJob, int]] = {}
    for sub in sorted(subs, key=lambda s: (s.created, s.name)):
        for job in sub.recorded_jobs():
            for index, element in enumerate(job.elements):
                out[element] = (job, index)
    return out
