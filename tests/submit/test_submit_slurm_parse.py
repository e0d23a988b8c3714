"""Slurm output parsers on the formats observed on Slurm 22.05 (tests/infra/README.md), incl. sacct,
which the CI cluster lacks (no slurmdbd): every task is read on its own, the last jobcomp line wins."""
from __future__ import annotations

from lmsweep.submit.backends.slurm import (
    SlurmScheduler,
    normalize,
    parse_config,
    parse_jobcomp,
    parse_sacct,
    parse_squeue,
)
from lmsweep.submit.systems import load_system

SQUEUE = """\
13_0|13|0|COMPLETED|None
13_1|13|1|RUNNING|None
13_2|13|2|PENDING|JobArrayTaskLimit
13_3|13|3|FAILED|NonZeroExitCode
14|14|N/A|PENDING|DependencyNeverSatisfied
15|15|N/A|PENDING|JobHeldUser
16_[2-3%1]|16|2-3%1|PENDING|JobArrayTaskLimit
"""

JOBCOMP = (
    "JobId=3 UserId=root(0) GroupId=root(0) Name=wrap JobState=COMPLETED Partition=debug TimeLimit=UNLIMITED "
    "StartTime=2026-11-22T08:33:13 EndTime=2026-11-22T08:33:15 NodeList=vm NodeCnt=1 ProcCnt=1 "
    "WorkDir=/tmp/x ReservationName= Tres=cpu=1,mem=512M,node=1,billing=1 Account= QOS= WcKey= Cluster=unknown "
    "SubmitTime=2026-11-22T08:33:13 EligibleTime=2026-11-22T08:33:13 ArrayJobId=1 ArrayTaskId=1 "
    "DerivedExitCode=0:0 ExitCode=0:0 \n"
    "JobId=8 UserId=root(0) Name=wrap JobState=FAILED Partition=debug ArrayJobId=5 ArrayTaskId=1 "
    "DerivedExitCode=0:0 ExitCode=3:0 \n"
    "JobId=14 UserId=root(0) Name=wrap JobState=PENDING Partition=debug DerivedExitCode=0:0 ExitCode=0:0 \n"
    "JobId=14 UserId=root(0) Name=wrap JobState=COMPLETED Partition=debug DerivedExitCode=0:0 ExitCode=0:0 \n"
    "JobId=1 UserId=root(0) Name=wrap JobState=COMPLETED Partition=debug ArrayJobId=1 ArrayTaskId=3 "
    "DerivedExitCode=0:0 ExitCode=0:0 \n"
)


def test_squeue_gives_one_state_per_task():
    s = parse_squeue(SQUEUE)
    assert {k: v.state for k, v in s.items() if k[0] == "13"} == {
        ("13", 0): "finished", ("13", 1): "running", ("13", 2): "queued", ("13", 3): "failed"}
    assert s[("13", 3)].task_id == "13_3" and s[("13", 3)].reason == "NonZeroExitCode"
    assert s[("14", 0)].never_runs and s[("14", 0)].active
    assert s[("15", 0)].state == "held" and not s[("15", 0)].never_runs
    assert ("16", 2) not in s                # an unexpanded range is skipped (we always ask with -r)


def test_jobcomp_last_line_wins_and_the_last_task_may_carry_the_array_id():
    s = parse_jobcomp(JOBCOMP, {"1", "5", "14"})
    assert s[("1", 1)].state == "finished" and s[("1", 3)].state == "finished"
    assert s[("5", 1)].state == "failed" and "3:0" in s[("5", 1)].reason
    assert s[("14", 0)].state == "finished"          # requeued (PENDING line), then completed
    assert ("3", 0) not in s                         # a task's own JobId is not the array's id


def test_sacct_lines():
    s = parse_sacct("12_0|COMPLETED|0:0\n12_1|FAILED|3:0\n12_[2-3]|PENDING|0:0\n14|CANCELLED by 0|0:15\n")
    assert s[("12", 0)].state == "finished" and s[("12", 1)].state == "failed"
    assert s[("14", 0)].state == "cancelled" and ("12", 2) not in s


def test_states_normalize():
    assert [normalize(x) for x in ("TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "REQUEUED",
                                   "COMPLETING", "SUSPENDED", "WHATEVER")] == \
        ["failed", "failed", "failed", "cancelled", "queued", "running", "held", "unknown"]


def test_config_and_job_id():
    cfg = parse_config("MaxArraySize            = 1001\nJobCompType             = jobcomp/filetxt\n")
    assert cfg == {"MaxArraySize": "1001", "JobCompType": "jobcomp/filetxt"}
    sched = SlurmScheduler(load_system("slurm-generic"))
    assert sched.parse_job_id("42\n") == "42" and sched.parse_job_id("43;cluster\n") == "43"
