"""PBS Pro / OpenPBS backend (ALCF Polaris and Aurora): `qsub`, `qstat -x -f -t`, `qdel`.

Parsing is `submit/pbs_parse.py`, tested against real transcripts; this file only renders the
script and wires the commands. Per-subjob states come from `qstat -x -f -t` (the text form: this
OpenPBS build's `-F json` prints only the first of several ids), never from the array parent,
whose Exit_status reflects only the last subjob to finish.
"""
from __future__ import annotations

from pathlib import Path
from shlex import quote

from lmsweep.submit import pbs_parse
from lmsweep.submit.base import ArrayJob, RecordedJob, Scheduler, TaskState, run
from lmsweep.submit.render import body

_STATE_MAP = {"exiting": "running"}


class PbsScheduler(Scheduler):
    name = "pbs"
    script_suffix = ".pbs"

    def render(self, job: ArrayJob) -> str:
        p = self.profile
        d = ["#!/bin/bash -l", f"#PBS -N {quote(job.job_name)}"]
        if job.account:
            d.append(f"#PBS -A {quote(job.account)}")
        if job.queue:
            d.append(f"#PBS -q {quote(job.queue)}")
        d += [f"#PBS -l select={job.nodes}:system={quote(p.name)}",
              f"#PBS -l place={quote(job.place)}",
              f"#PBS -l walltime={quote(job.walltime)}"]
        if job.filesystems:
            d.append(f"#PBS -l filesystems={quote(':'.join(job.filesystems))}")
        if job.is_array:
            throttle = f"%{job.throttle}" if job.throttle else ""
            d.append(f"#PBS -J 0-{job.n_tasks - 1}{throttle}")
        if job.is_array or job.preemptable:
            d.append("#PBS -r y")
        # relative to qsub's working directory (EXP/jobs/<submission>/): no user path in a directive
        out = "logs/^array_index^" if job.is_array else "logs/job"
        d += [f"#PBS -o {out}.out", f"#PBS -e {out}.err"]
        if job.depends_on:
            d.append(f"#PBS -W depend=afterany:{quote(job.depends_on)}")
        return "\n".join(d + body(job, p, "${PBS_ARRAY_INDEX:-0}", "${PBS_JOBID:-}")) + "\n"

    def submit_command(self, script: Path) -> list[str]:
        return ["qsub", script.name]

    def parse_job_id(self, stdout: str) -> str:
        return pbs_parse.parse_qsub_output(stdout)

    def explain_submit_failure(self, cmd, proc) -> str:
        why = pbs_parse.classify_qsub_error(proc.stderr or proc.stdout)
        return f"qsub refused the job: {why.message} ({why.hint})"

    def query_command(self, jobs: list[RecordedJob]) -> list[str]:
        return ["qstat", "-x", "-f", "-t", *[j.job_id for j in jobs]]

    def query(self, jobs: list[RecordedJob]) -> dict[tuple[str, int], TaskState]:
        if not jobs:
            return {}
        proc = run(self.query_command(jobs))
        return states_from_qstat(jobs, proc.stdout, proc.stderr)

    def cancel_command(self, job_ids: list[str]) -> list[str]:
        return ["qdel", *job_ids]


def _key(job_id: str) -> tuple[int, str | None]:
    jid = pbs_parse.parse_job_id(job_id)
    return jid.seq, jid.server


def states_from_qstat(jobs: list[RecordedJob], stdout: str, stderr: str = "") -> dict[tuple[str, int], TaskState]:
    """Per-task states of recorded jobs from `qstat -x -f -t` output (pure; tested on real transcripts).

    An array's outcome is read from each subjob; the parent line only supplies nothing but its id.
    Ids PBS has forgotten (history expired) come back `unknown`.
    """
    listed = pbs_parse.parse_qstat(stdout) if stdout.strip() else []
    pbs_parse.parse_job_errors(stderr)   # unknown ids simply stay unknown below
    by_seq: dict[int, list[pbs_parse.JobState]] = {}
    for s in listed:
        by_seq.setdefault(_key(s.job_id)[0], []).append(s)
    out: dict[tuple[str, int], TaskState] = {}
    for job in jobs:
        seq, server = _key(job.job_id)
        mine = by_seq.get(seq, [])
        is_array = "[" in job.job_id
        for index in range(job.n_tasks):
            task_id = f"{seq}[{index}]" + (f".{server}" if server else "") if is_array else job.job_id
            match = [s for s in mine if (s.array_index == index if is_array else not s.is_array_parent)]
            if not match:
                out[(job.job_id, index)] = TaskState(job.job_id, index, "unknown", "?", task_id,
                                                     "not in qstat -x (history expired?)")
                continue
            s = match[-1]
            out[(job.job_id, index)] = TaskState(
                job.job_id, index, _STATE_MAP.get(s.normalized, s.normalized), s.state, task_id,
                reason=s.comment, never_runs=s.can_never_run)
    return out
