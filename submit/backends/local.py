"""The `local` system as a scheduler: a detached bash process runs the array's tasks on this machine.

Same interface as PBS and Slurm, so `submit`, `status`, `resubmit` and `cancel` work on a laptop
or a login node. The job id is `local-<pid>@<start>`: the pid of the detached process (its own session,
so cancel signals the whole process group) and its start time (field 22 of /proc/<pid>/stat, clock ticks
since boot), read by the submitting shell right after the launch. A pid is reused once its process is
gone, so status and cancel first check that the process behind the pid is still the one that was
launched: a start time that differs, a zombie or no process at all is "gone", never signalled. Records
of older versions (`local-<pid>`, no start time) are checked by the process's working directory, which the
job script never leaves: it must be the submission's own directory.
Each task records `state/<index>.start` and `<index>.exit`.
`lmsweep run` (foreground, progress bar) stays the everyday local command.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from shlex import quote
from typing import Any

from lmsweep.submit.backends import register
from lmsweep.submit.base import ArrayJob, RecordedJob, Scheduler, SchedulerError, TaskState
from lmsweep.submit.render import body

VENV_PATH = 'PATH="$(dirname "$PYTHON"):$PATH"   # local: the venv\'s mpiexec (mpich wheel) first'


@register
class LocalScheduler(Scheduler):
    name = "local"
    script_suffix = ".sh"
    uses_queues = False
    one_machine = True

    def defaults(self, execution) -> dict[str, Any]:
        return {"array_limit": execution.concurrency}     # elements at once, as `lmsweep run` runs them

    def render(self, job: ArrayJob) -> str:
        lines = body(job, self.profile, "$1", "local", setup=(VENV_PATH,), launcher_for_one_rank=False)
        task = "\n".join("    " + line for line in lines)
        k = job.throttle or 1
        return "\n".join([
            "#!/bin/bash",
            f"# lmsweep local array: {job.n_tasks} task(s), at most {k} at once",
            'cd "$(dirname "$0")" || exit 1',
            "mkdir -p state logs",
            "task() (",
            task,
            ")",
            f"for ((i = 0; i < {job.n_tasks}; i++)); do",
            f"    while (( $(jobs -rp | wc -l) >= {k} )); do wait -n; done",
            '    ( : > "state/$i.start"; task "$i" >"logs/$i.out" 2>"logs/$i.err"; echo $? > "state/$i.exit" ) &',
            "done",
            "wait",
        ]) + "\n"

    def submit_command(self, script: Path) -> list[str]:
        # setsid: its own session and process group, detached from this terminal; $! is its pid. Its stat
        # line (start time) is read at once: the process is this shell's child, so the pid cannot have been
        # reused yet (setsid execs in place when, as here, the child is not a group leader: same pid).
        return ["/bin/bash", "-c", 'setsid /bin/bash "$1" </dev/null >local.out 2>&1 & pid=$!; '
                'echo "local-$pid"; cat "/proc/$pid/stat" 2>/dev/null; true', "lmsweep-submit", script.name]

    def parse_job_id(self, stdout: str) -> str:
        m = re.search(r"local-(\d+)", stdout)
        if not m:
            raise SchedulerError(f"local submit printed no pid: {stdout!r}")
        pid = m.group(1)
        for line in stdout.splitlines():
            if line.startswith(f"{pid} ("):
                start = _start_time_of(line)
                if start is not None:
                    return f"local-{pid}@{start}"
        if Path("/proc/self/stat").is_file():
            # no stat line: the process had already ended (and been reaped) when the shell looked
            return f"local-{pid}@0"
        return f"local-{pid}"          # no /proc on this system: the pid alone, as before

    def cancel_command(self, job_ids: list[str]) -> list[str]:
        # signal only the process groups whose leader is still the process that was launched
        groups = sorted({str(pid) for pid, start in filter(None, map(identity, job_ids))
                         if _same_process(pid, start)})
        if not groups:
            return ["true"]            # nothing of ours is left to signal
        return ["kill", "-TERM", "--", *[f"-{quote(p)}" for p in groups]]

    def query(self, jobs: list[RecordedJob]) -> dict[tuple[str, int], TaskState]:
        out = {}
        for job in jobs:
            ident = identity(job.job_id)
            alive = ident is not None and _same_process(*ident, directory=job.directory)
            state_dir = Path(job.directory) / "state"
            for i in range(job.n_tasks):
                exit_file, start = state_dir / f"{i}.exit", state_dir / f"{i}.start"
                name = f"{job.job_id}:{i}"
                if exit_file.is_file():
                    code = exit_file.read_text().strip()
                    out[(job.job_id, i)] = TaskState(job.job_id, i, "finished" if code == "0" else "failed",
                                                     f"exit {code}", name)
                elif alive:
                    state = "running" if start.is_file() else "queued"
                    out[(job.job_id, i)] = TaskState(job.job_id, i, state, state, name)
                else:
                    out[(job.job_id, i)] = TaskState(job.job_id, i, "cancelled", "gone", name,
                                                     "process ended without recording an exit status")
        return out


_JOB_ID = re.compile(r"^local-(\d+)(?:@(\d+))?(?::\d+)?$")     # a job id, or a task id (`:<index>`)


def identity(job_id: str) -> tuple[int, int | None] | None:
    """(pid, start time) of a job or task id; start None for records of older versions; None if malformed."""
    m = _JOB_ID.match(job_id)
    if m is None:
        return None
    return int(m.group(1)), (int(m.group(2)) if m.group(2) is not None else None)


def _start_time_of(stat_line: str) -> int | None:
    """Field 22 (starttime) of a /proc/<pid>/stat line; the command name (field 2) may hold spaces and ')'."""
    fields = stat_line.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])      # fields[0] is field 3 (state)
    except (IndexError, ValueError):
        return None


def _same_process(pid: int, start: int | None, directory: str | Path | None = None) -> bool:
    """Is `pid` still the process that was launched: alive (not a zombie), with the recorded start time;
    for an old record without one, working in the submission's directory (`directory`, or when not given,
    a directory whose submission record names this pid's job)."""
    if pid <= 1:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if not Path("/proc/self/stat").is_file():          # no /proc on this system: as before, the pid alone
            try:
                os.kill(pid, 0)
            except OSError:
                return False
            return True
        return False
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
        return False
    if start is not None:
        return _start_time_of(stat) == start
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False                 # not ours to look at (another user's process): not ours to signal
    if directory is not None:
        return cwd == Path(directory).resolve()
    return _records(cwd, f"local-{pid}")


def _records(directory: Path, job_id: str) -> bool:
    """Does `directory` hold a submission record (EXP/jobs/sub-NNNN/submission.json) of `job_id`?"""
    try:
        data = json.loads((directory / "submission.json").read_text())
        return any(a.get("job_id") == job_id for a in data["arrays"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
