"""PBS Pro / OpenPBS backend (ALCF Polaris and Aurora): `qsub`, `qstat -x -f -t`, `qdel`, `qmgr`.

Owns `execution.pbs` (`PbsBlock`), its defaults, the script, the commands and the live limits.
Parsing is `pbs_parse.py` beside it, tested against real transcripts (tests/fixtures/pbs/). Per-subjob
states come from `qstat -x -f -t` (the text form: this OpenPBS build's `-F json` prints only the first
of several ids), never from the array parent, whose Exit_status reflects only the last subjob to finish.
"""
from __future__ import annotations

import re
from pathlib import Path
from shlex import quote
from typing import Any

from pydantic import Field, field_validator

from lmsweep.jobs.spec import WALLTIME_PATTERN
from lmsweep.submit.backends import pbs_parse, register
from lmsweep.submit.base import ArrayJob, RecordedJob, Scheduler, SchedulerError, TaskState, run
from lmsweep.submit.options import SchedulerBlock, scheduler_name
from lmsweep.submit.render import body

_STATE_MAP = {"exiting": "running"}


class PbsBlock(SchedulerBlock):
    """`execution.pbs`: PBS directives (ALCF Polaris/Aurora); unset values come from the system profile.
    `filesystems`, `place` and `directives` are this backend's own options (`ArrayJob.scheduler`)."""

    # what render() writes itself: an extra directive may not set these again
    reserved = ("-N", "-A", "-q", "-l select", "-l place", "-l walltime", "-l filesystems", "-J", "-r",
                "-o", "-e", "-W depend")

    account: str | None = None                   # -A project
    queue: str | None = None                     # -q
    filesystems: list[str] | None = Field(None, min_length=1)   # -l filesystems=a:b
    place: str = Field("scatter", pattern=r"^(scatter|pack|free)(:(excl|exclhost|shared|group=[A-Za-z0-9_]+))*$")
    walltime: str | None = Field(None, pattern=WALLTIME_PATTERN)   # overrides execution.walltime
    array_limit: int | None = Field(None, ge=1)  # -J ...%K

    @field_validator("account", "queue")
    @classmethod
    def _names(cls, v: str | None, info) -> str | None:
        return v if v is None else scheduler_name(v, info.field_name)

    @field_validator("filesystems")
    @classmethod
    def _filesystems(cls, v: list[str] | None) -> list[str] | None:
        for fs in v or []:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", fs):
                raise ValueError(f"filesystem {fs!r} must be lowercase letters, digits, '_'")
        return v


@register
class PbsScheduler(Scheduler):
    name = "pbs"
    script_suffix = ".pbs"
    block = PbsBlock
    account_directive = "#PBS -A"

    def defaults(self, execution) -> dict[str, Any]:
        return {"filesystems": list(self.profile.filesystems)}

    def live_limits(self, queue: str | None) -> dict[str, int]:
        """`max_array_size` of the server and the queue's `max_queued` from `qmgr -c "print server"`
        (readable by users on OpenPBS); {} where qmgr is missing or refuses."""
        try:
            proc = run(["qmgr", "-c", "print server"])
        except SchedulerError:
            return {}
        if proc.returncode != 0:
            return {}
        return limits_from_qmgr(proc.stdout, queue)

    def render(self, job: ArrayJob) -> str:
        p, own = self.profile, job.scheduler
        filesystems = own.get("filesystems", p.filesystems)
        d = ["#!/bin/bash -l", f"#PBS -N {quote(job.job_name)}"]
        if job.account:
            d.append(f"#PBS -A {quote(job.account)}")
        if job.queue:
            d.append(f"#PBS -q {quote(job.queue)}")
        d += [f"#PBS -l select={job.nodes}:system={quote(p.name)}",
              f"#PBS -l place={quote(own.get('place', 'scatter'))}",
              f"#PBS -l walltime={quote(job.walltime)}"]
        if filesystems:
            d.append(f"#PBS -l filesystems={quote(':'.join(filesystems))}")
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
        d += [f"#PBS {x}" for x in own.get("directives", ())]      # checked against PbsBlock's charset
        # PBS_ACCOUNT is the -A project; OpenPBS puts it in the job's environment (tests/fixtures/pbs/
        # 07_subjob_env_index1.txt), and a profile's environment lines may use it (Polaris's HF_HOME default):
        # set it from the account rendered here where the server does not
        account = [f'export PBS_ACCOUNT="${{PBS_ACCOUNT:-{job.account}}}"'] if job.account else []
        return "\n".join(d + account + body(job, p, "${PBS_ARRAY_INDEX:-0}", "${PBS_JOBID:-}")) + "\n"

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
        errors = pbs_parse.parse_job_errors(proc.stderr)
        if proc.returncode != 0 and not proc.stdout.strip() and errors.other:
            # not "unknown job" but qstat itself failing (no server): say so rather than report every task unknown
            raise SchedulerError(f"qstat exited {proc.returncode}: {' | '.join(errors.other)}")
        return states_from_qstat(jobs, proc.stdout, proc.stderr)

    def cancel_command(self, job_ids: list[str]) -> list[str]:
        return ["qdel", *job_ids]


def _key(job_id: str) -> tuple[int, str | None]:
    jid = pbs_parse.parse_job_id(job_id)
    return jid.seq, jid.server


def limits_from_qmgr(text: str, queue: str | None) -> dict[str, int]:
    """Live limits from `qmgr -c "print server"`: the server's max_array_size and, for `queue`, the
    smallest of its max_queued entries (user, project or overall: each one binds a single submitter)."""
    out = {}
    server = pbs_parse.parse_server_attributes(text)
    if isinstance(server.get("max_array_size"), int):
        out["max_array_size"] = server["max_array_size"]
    queued = pbs_parse.parse_queue_limits(text).get(queue or "", {}).get("max_queued")
    if isinstance(queued, dict) and queued:
        out["max_queued"] = min(queued.values())
    elif isinstance(queued, int):
        out["max_queued"] = queued
    return out


def _log_file(job: RecordedJob, index: int) -> Path:
    """The task's stderr file as the script names it (`-e logs/^array_index^.err` / `logs/job.err`)."""
    return Path(job.directory) / "logs" / (f"{index}.err" if "[" in job.job_id else "job.err")


def _kill_notice(job: RecordedJob, index: int) -> str | None:
    try:
        return pbs_parse.parse_job_kill_message(_log_file(job, index).read_text(errors="replace"))
    except OSError:
        return None


def states_from_qstat(jobs: list[RecordedJob], stdout: str, stderr: str = "") -> dict[tuple[str, int], TaskState]:
    """Per-task states of recorded jobs from `qstat -x -f -t` output (tested on real transcripts).

    An array's outcome is read from each subjob; the parent line supplies nothing but its id.
    Ids PBS has forgotten (history expired: `Unknown Job Id` on stderr) come back `unknown`, or
    `failed` when the task's own stderr file holds the MoM's kill notice (walltime, memory).
    """
    listed = pbs_parse.parse_qstat_full(stdout) if stdout.strip() else []
    forgotten = {_key(j)[0] for j in pbs_parse.parse_job_errors(stderr).unknown if pbs_parse.JOB_ID.match(j)}
    return task_states(jobs, listed, forgotten)


def task_states(jobs: list[RecordedJob], listed: list[pbs_parse.JobState],
                forgotten: set[int] = frozenset()) -> dict[tuple[str, int], TaskState]:
    """Per-task states from parsed qstat records; `forgotten`: job numbers qstat called unknown."""
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
                killed = _kill_notice(job, index)
                why = "qstat: Unknown Job Id (history expired)" if seq in forgotten else \
                    "not in qstat -x (history expired?)"
                out[(job.job_id, index)] = (
                    TaskState(job.job_id, index, "failed", "killed", task_id, f"PBS: job killed: {killed}")
                    if killed else TaskState(job.job_id, index, "unknown", "?", task_id, why))
                continue
            s = match[-1]
            out[(job.job_id, index)] = TaskState(
                job.job_id, index, _STATE_MAP.get(s.normalized, s.normalized), s.state, task_id,
                reason=s.comment, never_runs=s.can_never_run)
    return out
