"""Slurm backend: `sbatch --parsable`, `squeue -r -t all` (one call), `scancel`, `scontrol show config`.

Owns `execution.slurm` (`SlurmBlock`), its defaults, the script, the commands, the live limits
(MaxArraySize, MaxJobCount) and the parsers of what those commands print (below, pure functions).

Tasks that squeue no longer lists (finished longer than MinJobAge ago) are looked up in `sacct`
when accounting is configured, else in the jobcomp/filetxt log. States come from every task,
never from the array as a whole; `afterok` on an array is never used (a failed task leaves the
dependent pending forever, `DependencyNeverSatisfied`), and such jobs are flagged `never_runs`.
Formats: tests/infra/README.md (observed on Slurm 22.05).
"""
from __future__ import annotations

import re
from pathlib import Path
from shlex import quote
from typing import Any

from pydantic import Field, field_validator

from lmsweep.errors import SpecError
from lmsweep.jobs.spec import WALLTIME_PATTERN
from lmsweep.submit.backends import register
from lmsweep.submit.base import ArrayJob, RecordedJob, Scheduler, SchedulerError, State, TaskState, run
from lmsweep.submit.options import SchedulerBlock, scheduler_name
from lmsweep.submit.render import body

_STATES: dict[str, State] = {
    "PENDING": "queued", "REQUEUED": "queued", "REQUEUE_FED": "queued", "REQUEUE_HOLD": "held",
    "RUNNING": "running", "COMPLETING": "running", "CONFIGURING": "running", "STAGE_OUT": "running",
    "SIGNALING": "running", "RESIZING": "running", "SUSPENDED": "held", "STOPPED": "held",
    "COMPLETED": "finished",
    "FAILED": "failed", "TIMEOUT": "failed", "NODE_FAIL": "failed", "OUT_OF_MEMORY": "failed",
    "BOOT_FAIL": "failed", "DEADLINE": "failed",
    "CANCELLED": "cancelled", "PREEMPTED": "cancelled", "REVOKED": "cancelled",
}
NEVER_REASONS = frozenset({"DependencyNeverSatisfied"})
HELD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin"})
SQUEUE_FORMAT = "%i|%F|%K|%T|%r"


def normalize(raw: str, reason: str | None = None) -> State:
    word = raw.split()[0].rstrip("+") if raw.strip() else ""
    state = _STATES.get(word, "unknown")
    if state == "queued" and reason in HELD_REASONS:
        return "held"
    return state


class SlurmBlock(SchedulerBlock):
    """`execution.slurm`: sbatch options; unset values come from the system profile. `qos`,
    `gpus_per_node` and `directives` are this backend's own options (`ArrayJob.scheduler`)."""

    renamed = {"partition": "queue", "time": "walltime"}
    # what render() writes itself: an extra directive may not set these again (nor an abbreviation of one)
    reserved = ("--job-name", "-J", "--array", "-a", "--nodes", "-N", "--ntasks-per-node", "--cpus-per-task",
                "-c", "--gpus-per-node", "--time", "-t", "--partition", "-p", "--account", "-A", "--qos", "-q",
                "--requeue", "--no-requeue", "--open-mode", "--output", "-o", "--error", "-e", "--dependency",
                "-d")

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_node: int | None = Field(None, ge=0, le=64)
    time: str | None = Field(None, pattern=WALLTIME_PATTERN)       # overrides execution.walltime
    array_limit: int | None = Field(None, ge=1)  # --array=...%K

    @field_validator("partition", "account", "qos")
    @classmethod
    def _names(cls, v: str | None, info) -> str | None:
        return v if v is None else scheduler_name(v, info.field_name)


@register
class SlurmScheduler(Scheduler):
    name = "slurm"
    script_suffix = ".sbatch"
    block = SlurmBlock

    def defaults(self, execution) -> dict[str, Any]:
        return {"gpus_per_node": self.profile.gpus_per_node}

    def render(self, job: ArrayJob) -> str:
        own = job.scheduler
        gpus, qos = own.get("gpus_per_node", self.profile.gpus_per_node), own.get("qos")
        d = ["#!/bin/bash", f"#SBATCH --job-name={quote(job.job_name)}"]
        if job.is_array:
            throttle = f"%{job.throttle}" if job.throttle else ""
            d.append(f"#SBATCH --array=0-{job.n_tasks - 1}{throttle}")
        d += [f"#SBATCH --nodes={job.nodes}",
              f"#SBATCH --ntasks-per-node={job.ranks_per_node}",
              f"#SBATCH --cpus-per-task={job.cpus_per_rank}"]
        if gpus:
            d.append(f"#SBATCH --gpus-per-node={gpus}")
        d.append(f"#SBATCH --time={quote(job.walltime)}")
        partition, qos = self.queue_options(job.queue, qos)
        if partition:
            d.append(f"#SBATCH --partition={quote(partition)}")
        if job.account:
            d.append(f"#SBATCH --account={quote(job.account)}")
        if qos:
            d.append(f"#SBATCH --qos={quote(qos)}")
        # relative to sbatch's working directory (EXP/jobs/<submission>/): no user path in a directive
        out = "logs/%A_%a" if job.is_array else "logs/%j"
        d += ["#SBATCH --requeue", "#SBATCH --open-mode=append",
              f"#SBATCH --output={out}.out", f"#SBATCH --error={out}.err"]
        if job.depends_on:
            d.append(f"#SBATCH --dependency=afterany:{quote(job.depends_on)}")
        d += [f"#SBATCH {x}" for x in own.get("directives", ())]    # checked against SlurmBlock's charset
        job_id = "${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-}}_${SLURM_ARRAY_TASK_ID:-}"
        return "\n".join(d + body(job, self.profile, "${SLURM_ARRAY_TASK_ID:-0}", job_id)) + "\n"

    def queue_options(self, queue: str | None, qos: str | None) -> tuple[str | None, str | None]:
        """(partition, QOS) for the profile's queue: what the profile says it is submitted as (Perlmutter's
        queues are QOS; Frontier's debug is partition batch with QOS debug), else a partition of its name. A
        QOS asked for in execution.slurm.qos may not contradict the queue's own."""
        q = self.profile.queues.get(queue) if queue else None
        if q is None or (q.partition is None and q.qos is None):
            return queue, qos
        if qos and q.qos and qos != q.qos:
            raise SpecError(f"queue {q.name} of system {self.profile.name} is QOS {q.qos}; choose the queue "
                            f"(--queue / execution.slurm.partition) rather than a different qos {qos!r}",
                            field="execution.slurm.qos")
        return q.partition, qos or q.qos

    def submit_command(self, script: Path) -> list[str]:
        return ["sbatch", "--parsable", script.name]

    def parse_job_id(self, stdout: str) -> str:
        """`sbatch --parsable` prints `123` or `123;cluster`."""
        for line in reversed(stdout.strip().splitlines()):
            m = re.fullmatch(r"(\d+)(?:;\S+)?", line.strip())
            if m:
                return m.group(1)
        raise SchedulerError(f"sbatch printed no job id: {stdout.strip()!r}")

    def cancel_command(self, job_ids: list[str]) -> list[str]:
        return ["scancel", *job_ids]

    # -- limits and states ---------------------------------------------------------------------------
    def config(self) -> dict[str, str]:
        proc = run(["scontrol", "show", "config"])
        if proc.returncode != 0:
            raise SchedulerError(f"scontrol show config: {proc.stderr.strip()}")
        return parse_config(proc.stdout)

    def live_limits(self, queue: str | None) -> dict[str, int]:
        try:
            cfg = self.config()
        except SchedulerError:
            return {}
        out = {}
        for key, name in (("MaxArraySize", "max_array_size"), ("MaxJobCount", "max_queued")):
            if cfg.get(key, "").isdigit():
                out[name] = int(cfg[key])
        return out

    def query(self, jobs: list[RecordedJob]) -> dict[tuple[str, int], TaskState]:
        if not jobs:
            return {}
        ids = [j.job_id for j in jobs]
        proc = run(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(ids), "-o", SQUEUE_FORMAT])
        if proc.returncode != 0:
            # one expired id makes `squeue -j` fail as a whole: ask for all of this user's jobs instead
            proc = run(["squeue", "-h", "-r", "-t", "all", "--me", "-o", SQUEUE_FORMAT])
            if proc.returncode != 0:
                raise SchedulerError(f"squeue: {proc.stderr.strip()}")
        found = parse_squeue(proc.stdout)
        missing = [(j, i) for j in jobs for i in range(j.n_tasks) if (j.job_id, i) not in found]
        if missing:
            found = {**self._finished(missing, {j.job_id for j, _ in missing}), **found}
        return {(j.job_id, i): found.get((j.job_id, i)) or
                TaskState(j.job_id, i, "unknown", "?", task_name(j, i), "not known to squeue/sacct/jobcomp")
                for j in jobs for i in range(j.n_tasks)}

    def _finished(self, missing, ids: set[str]) -> dict[tuple[str, int], TaskState]:
        """Tasks squeue has forgotten: sacct with accounting, else the jobcomp/filetxt log."""
        try:
            cfg = self.config()
        except SchedulerError:
            return {}
        if cfg.get("AccountingStorageType", "accounting_storage/none") != "accounting_storage/none":
            proc = run(["sacct", "-n", "-P", "-X", "-j", ",".join(sorted(ids)), "-o", "JobID,State,ExitCode"])
            if proc.returncode == 0:
                return parse_sacct(proc.stdout)
        if cfg.get("JobCompType") == "jobcomp/filetxt" and cfg.get("JobCompLoc"):
            path = Path(cfg["JobCompLoc"])
            if path.is_file():
                return parse_jobcomp(path.read_text(errors="replace"), ids)
        return {}


def task_name(job: RecordedJob, index: int) -> str:
    return f"{job.job_id}_{index}" if job.n_tasks > 1 else job.job_id


def parse_config(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def parse_squeue(stdout: str) -> dict[tuple[str, int], TaskState]:
    """`squeue -h -r -t all -o '%i|%F|%K|%T|%r'`: one line per task (or plain job)."""
    out: dict[tuple[str, int], TaskState] = {}
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 5:
            continue
        name, array_id, task, raw, reason = parts
        if task.isdigit():
            key, index = (array_id, int(task))
        elif task in ("N/A", ""):
            key, index = (array_id, 0)
        else:
            continue   # a not-expanded pending range; -r makes these one line per task
        reason = None if reason in ("None", "") else reason
        out[(key, index)] = TaskState(key, index, normalize(raw, reason), raw, name, reason,
                                      never_runs=reason in NEVER_REASONS)
    return out


def parse_sacct(stdout: str) -> dict[tuple[str, int], TaskState]:
    """`sacct -n -P -X -o JobID,State,ExitCode`: `12_3|FAILED|3:0`, `14|COMPLETED|0:0`."""
    out: dict[tuple[str, int], TaskState] = {}
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2:
            continue
        m = re.fullmatch(r"(\d+)(?:_(\d+))?", parts[0])
        if not m:
            continue   # pending ranges like 12_[3-5]
        key, index = m.group(1), int(m.group(2) or 0)
        out[(key, index)] = TaskState(key, index, normalize(parts[1]), parts[1], parts[0],
                                      f"exit {parts[2]}" if len(parts) > 2 else None)
    return out


def parse_jobcomp(text: str, ids: set[str]) -> dict[tuple[str, int], TaskState]:
    """jobcomp/filetxt lines (`JobId=.. JobState=.. ArrayJobId=.. ArrayTaskId=.. ExitCode=..`).

    A job appears again after each requeue; the last line wins.
    """
    out: dict[tuple[str, int], TaskState] = {}
    for line in text.splitlines():
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        array_id, task = fields.get("ArrayJobId"), fields.get("ArrayTaskId", "")
        if array_id in ids and task.isdigit():
            key, index, name = array_id, int(task), f"{array_id}_{task}"
        elif fields.get("JobId") in ids and not array_id:
            key, index, name = fields["JobId"], 0, fields["JobId"]
        else:
            continue
        raw = fields.get("JobState", "")
        out[(key, index)] = TaskState(key, index, normalize(raw), raw, name,
                                      f"exit {fields.get('ExitCode', '?')} (jobcomp)")
    return out
