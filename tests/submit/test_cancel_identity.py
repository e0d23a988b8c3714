"""A local job's pid is checked before it is signalled or reported (issue 20).

A local job is recorded as `local-<pid>@<start time>`. When the job is gone (killed: `state/N.start` without
`N.exit`) its pid may belong to an unrelated process by now; `lmsweep cancel` must not kill that process's
group and `lmsweep status` must not report the job running. The "reused pid" here is real: an unrelated
`sleep` in a session of its own (so `kill -TERM -- -<pid>` would reach it), recorded with a start time that
is not its own, and, as records of older versions are, with the bare pid.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from helpers.cli import cli
from helpers.status_table import states


def start_time(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


@pytest.fixture()
def exp(tmp_path) -> Path:
    """An experiment (a real plan) with one local submission of element 0, whose job id the test sets."""
    from benchmarks.results import synthetic_plan
    from lmsweep.jobs.plan import write_plan

    plan = synthetic_plan(10, elements=1)
    exp = tmp_path / "runs" / "bench"
    write_plan(plan, exp)
    return exp


def record(exp: Path, job_id: str) -> Path:
    """EXP/jobs/sub-0001 as `lmsweep submit --system local` leaves it once its task has started."""
    from lmsweep.jobs.plan import read_plan
    from lmsweep.submit.jobs_dir import ArrayRecord, Submission, create

    directory = create(exp, "sub-0001")
    Submission(name="sub-0001", directory=directory, kind="submit", system="local", scheduler="local",
               plan_created=read_plan(exp).meta["created"], options={}, packing=["by hand"],
               arrays=[ArrayRecord(0, "array-00.sh", [0], job_id=job_id, submitted_at=1.0)]).save()
    (directory / "state").mkdir()
    (directory / "state" / "0.start").write_text("")            # started, never recorded an exit
    return directory


@pytest.fixture()
def stranger(tmp_path):
    """An unrelated process leading a process group of its own, as a reused pid would."""
    proc = subprocess.Popen(["sleep", "300"], cwd=tmp_path, start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def assert_untouched_and_gone(exp: Path, proc: subprocess.Popen, job_id: str) -> None:
    cancelled = cli("cancel", str(exp))
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"cancelled {job_id}" not in cancelled.stdout and "no queued or running jobs" in cancelled.stdout
    time.sleep(0.5)                                          # a TERM would have landed by now
    assert proc.poll() is None and alive(proc.pid), "cancel killed an unrelated process"
    status = cli("status", str(exp))
    assert states(status.stdout) == ["cancelled"], status.stdout + status.stderr
    assert "gone" in status.stdout and "running" not in states(status.stdout)


def test_a_reused_pid_with_another_start_time_is_gone_and_never_signalled(exp, stranger):
    job_id = f"local-{stranger.pid}@{start_time(stranger.pid) + 1}"     # the job's pid, now someone else's
    record(exp, job_id)
    assert_untouched_and_gone(exp, stranger, job_id)


def test_an_old_record_without_a_start_time_is_checked_by_its_directory(exp, stranger):
    """A record of an older version holds the pid alone: its process must work in the submission's directory
    (the job script never leaves it). A stranger is gone and untouched; the job's own process is cancelled."""
    job_id = f"local-{stranger.pid}"
    directory = record(exp, job_id)
    assert_untouched_and_gone(exp, stranger, job_id)

    proc = subprocess.Popen(["sleep", "300"], cwd=directory, start_new_session=True)
    try:
        data = json.loads((directory / "submission.json").read_text())
        data["arrays"][0]["job_id"] = f"local-{proc.pid}"
        (directory / "submission.json").write_text(json.dumps(data))
        assert states(cli("status", str(exp)).stdout) == ["running"]
        assert f"cancelled local-{proc.pid}" in cli("cancel", str(exp), check=True).stdout
        assert proc.wait(timeout=10) == -15
    finally:
        proc.kill()
        proc.wait()


def test_the_real_local_backend_records_the_start_time_and_cancel_signals_the_launched_group(tmp_path):
    from lmsweep.submit.backends.local import identity
    from lmsweep.submit.base import run, scheduler_for
    from lmsweep.submit.systems import load_system

    sched = scheduler_for(load_system("local"))
    script = tmp_path / "array-00.sh"
    script.write_text("#!/bin/bash\necho $$ > leader\nsleep 300 &\necho $! > child\nwait\n")
    job_id = sched.submit(script)
    pid, start = identity(job_id)
    assert job_id == f"local-{pid}@{start}" and start == start_time(pid)
    deadline = time.time() + 10
    while not (tmp_path / "child").is_file() or not (tmp_path / "child").read_text().strip():
        assert time.time() < deadline
        time.sleep(0.05)
    child = int((tmp_path / "child").read_text())
    assert run(sched.cancel_command([job_id])).returncode == 0
    deadline = time.time() + 10
    while alive(child) or alive(pid):                        # the whole group got TERM
        assert time.time() < deadline, "cancel did not stop the launched job"
        time.sleep(0.05)
    # the same id once the process is gone: nothing is signalled, whoever has the pid now
    assert sched.cancel_command([job_id]) == ["true"]
