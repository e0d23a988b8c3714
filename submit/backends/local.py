"""The `local` system as a scheduler: a detached bash process runs the array's tasks on this machine.

Same interface as PBS and Slurm, so `submit`, `status`, `resubmit` and `cancel` work on a laptop
or a login node. The job id is `local-<pid>` of the detached process (its own session, so cancel
signals the whole process group). Each task records `state/<index>.start` and `<index>.exit`.
`lmsweep run` (foreground, progress bar) stays the everyday local command.
"""
from __future__ import annotations

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
        # setsid: its own session and process group, detached from this terminal; $! is its pid
        return ["/bin/bash", "-c", 'setsid /bin/bash "$1" </dev/null >local.out 2>&1 & echo "local-$!"',
                "lmsweep-submit", script.name]

    def parse_job_id(self, stdout: str) -> str:
        m = re.search(r"local-\d+", stdout)
        if not m:
            raise SchedulerError(f"local submit printed no pid: {stdout!r}")
        return m.group(0)

    def cancel_command(self, job_ids: list[str]) -> list[str]:
        pids = [j.removeprefix("local-").split(":")[0] for j in job_ids]
        return ["kill", "-TERM", "--", *[f"-{quote(p)}" for p in pids if p.isdigit()]]

    def query(self, jobs: list[RecordedJob]) -> dict[tuple[str, int], TaskState]:
        out = {}
        for job in jobs:
            alive = _alive(int(job.job_id.removeprefix("local-")))
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


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
