"""Scheduler states of an experiment's recorded jobs, joined to the results-side status.

Results decide whether an element is done (units written), the scheduler says whether it is
still queued or running and how each task ended; neither an array's own exit status nor a
dependency on it is trusted. Tasks pending forever (Slurm `DependencyNeverSatisfied`, PBS
"Can Never Run") are cancelled here, since no one else would ever notice them.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from lmsweep.submit.base import RecordedJob, SchedulerError, TaskState, run, scheduler_for
from lmsweep.submit.jobs_dir import Submission, latest_tasks, load_submissions
from lmsweep.submit.systems import ProfileError, load_system


def current_submissions(exp: Path) -> list[Submission]:
    """Submissions made for the plan as it is now (a later submit may have re-grouped elements)."""
    from lmsweep.jobs.plan import read_plan

    created = read_plan(exp).meta["created"]
    return [s for s in load_submissions(exp) if s.plan_created == created]


def query_states(subs: list[Submission]) -> tuple[dict[tuple[str, int], TaskState], list[str]]:
    """Every recorded task's state: one batched query per system used (normally one)."""
    by_system: dict[str, list[RecordedJob]] = {}
    for sub in subs:
        by_system.setdefault(sub.system, []).extend(sub.recorded_jobs())
    states: dict[tuple[str, int], TaskState] = {}
    problems: list[str] = []
    for system, jobs in by_system.items():
        try:
            states |= scheduler_for(load_system(system)).query(jobs)
        except (SchedulerError, ProfileError, ValueError) as e:   # one system out of reach: the rest still shown
            problems.append(f"scheduler query for {system} failed: {e}")
    return states, problems


def cancel_never_running(subs: list[Submission], states: dict[tuple[str, int], TaskState]) -> list[str]:
    notes = []
    for sub in {s.system: s for s in subs}.values():
        mine = {j.job_id for s in subs if s.system == sub.system for j in s.recorded_jobs()}
        stuck = [t for t in states.values() if t.never_runs and t.active and t.job_id in mine]
        if not stuck:
            continue
        sched = scheduler_for(load_system(sub.system))
        proc = run(sched.cancel_task_command(stuck))
        names = ", ".join(t.task_id for t in stuck)
        if proc.returncode == 0:
            notes.append(f"cancelled {names}: pending forever ({stuck[0].reason}); `lmsweep resubmit` reruns them")
        else:
            notes.append(f"could not cancel {names} (pending forever): {proc.stderr.strip()}")
    return notes


def scheduler_view(exp: Path, per_element: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """per_element plus `job`, `scheduler` and `detail` columns, and notes for the user."""
    subs = current_submissions(exp)
    if not subs:
        return per_element, []
    states, notes = query_states(subs)
    failed_query = bool(notes)
    notes += cancel_never_running(subs, states)
    latest = latest_tasks(subs)
    jobs, sched, detail = [], [], []
    for element in per_element["element"]:
        job_index = latest.get(int(element))
        t = states.get((job_index[0].job_id, job_index[1])) if job_index else None
        jobs.append(t.task_id if t else (f"{job_index[0].job_id}#{job_index[1]}" if job_index else "-"))
        sched.append(t.state if t else "-")
        detail.append(f"{t.raw}" + (f" ({t.reason})" if t.reason else "") if t else "")
    out = per_element.assign(job=jobs, scheduler=sched, detail=detail)
    unfinished = out[(out["done"] < out["planned"]) & ~out["scheduler"].isin(["queued", "held", "running"])]
    if len(unfinished) and not failed_query:
        ids = ", ".join(str(e) for e in unfinished["element"].head(10))
        more = "" if len(unfinished) <= 10 else f" and {len(unfinished) - 10} more"
        notes.append(f"{len(unfinished)} element(s) have unfinished units and no live job ({ids}{more}): "
                     f"`lmsweep resubmit {exp}` runs only those")
    return out, notes
