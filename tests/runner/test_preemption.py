"""SIGTERM / preemption: finish or abandon the current batch within the grace, keep what is written, exit 3.

Locally the signal comes from the worker's own test hook (`LMSWEEP_TEST_KILL_AT=batch:2@TERM`, exact
and cheap) or from `os.kill` while a long batch runs. On the real one-node Slurm from
tests/infra/slurm-up.sh, an element submitted with `lmsweep submit` (srun launcher) gets it from
`scancel --signal=TERM` (delivered to job steps, i.e. the worker) and from `scontrol requeue`.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_kill_resume import (
    PROMPTS,
    Zygote,
    _parts,
    assert_exactly_once_and_identical,
    copy_plan,
    plan_experiment,
    raw_rows,
    write_spec,
)

import lmsweep
from helpers.slurm import slurm_conf
from helpers.tiny_models import make_tiny_llama
from lmsweep.runner import locks

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def zygote():
    return Zygote()


@pytest.fixture(scope="module")
def template(tmp_path_factory, tiny_llama) -> Path:
    return plan_experiment(tmp_path_factory.mktemp("preempt-plan"), tiny_llama)


@pytest.fixture(scope="module")
def slow_llama(tmp_path_factory) -> Path:
    """A 50M-parameter random Llama, slow enough for a signal to land inside a batch: on one thread of this
    2-core machine a batch of 4 × 200 new tokens takes ~4 s and 3 × 96 ~2 s (runner/decode.py made the
    10M model of before finish such a batch inside the 1 s grace)."""
    return make_tiny_llama(tmp_path_factory.mktemp("models") / "slow-llama", hidden_size=768, intermediate_size=2048,
                           num_hidden_layers=8, num_attention_heads=6, num_key_value_heads=2,
                           max_position_embeddings=512)


def test_sigterm_lets_the_current_batch_finish_then_exits_3_and_a_rerun_completes(template, zygote, tmp_path):
    exp = copy_plan(template, tmp_path / "kill")
    base = copy_plan(template, tmp_path / "base" / "kill")
    assert zygote.run(base)[0] == 0
    rc, _, log = zygote.run(exp, kill_at="batch:2@TERM")     # TERM arrives while batch 2 is in flight
    assert rc == 3, log
    assert "SIGTERM received: finishing the current batch" in log
    assert "preempted: element 0 rank 0 stopped after 6 of 12 units; exit 3" in log
    assert len(_parts(exp)) == 2                                # batch 2 was finished and written
    assert not list(exp.rglob(".part-*.tmp"))
    rc, _, log = zygote.run(exp)
    assert rc == 0 and "PROGRESS 6 12" in log, log
    assert_exactly_once_and_identical(exp, lmsweep.load(base))


@pytest.mark.slow
def test_lmsweep_run_reports_preemption_with_exit_3_and_a_second_run_finishes(tmp_path, tiny_llama):
    spec = write_spec(tmp_path / "spec.yaml", tiny_llama)
    cmd = [sys.executable, "-m", "lmsweep", "run", str(spec), "--output-dir", str(tmp_path / "runs"), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(cmd, env={**env, "LMSWEEP_TEST_KILL_AT": "batch:3@TERM"}, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 3, first.stdout + first.stderr
    assert "9/12 units done" in first.stdout and "preempted; rerun" in first.stdout
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and "running 3 unit(s)" in second.stdout, second.stdout + second.stderr
    raw = raw_rows(tmp_path / "runs" / "kill")
    assert len(raw) == 12 and raw["unit_id"].is_unique


def test_sigterm_during_model_load_exits_3_before_any_batch(template, zygote, tmp_path):
    exp = copy_plan(template, tmp_path / "kill")
    rc, _, log = zygote.run(exp, kill_at="load@TERM")
    assert rc == 3, log
    assert "stopped after 0 of 12 units" in log and not _parts(exp)


def test_sigterm_abandons_a_batch_that_outlasts_the_grace(slow_llama, zygote, tmp_path):
    """A batch longer than LMSWEEP_PREEMPT_GRACE is cut short: exit 3 within the grace, nothing half-written."""
    exp = plan_experiment(tmp_path, slow_llama, prompts=PROMPTS[:4], batch=4, max_new_tokens=200)
    proc, log = zygote.start(exp, env={"LMSWEEP_PREEMPT_GRACE": "1"})
    deadline = time.monotonic() + 240
    while "loaded model" not in (log.read_text() if log.exists() else ""):
        assert proc.is_alive() and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    time.sleep(0.3)                                   # now inside the only batch (seconds long)
    sent = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    proc.join(60)
    took = time.monotonic() - sent
    text = log.read_text()
    assert proc.exitcode == 3, text
    assert took < 1 + 3, f"exited {took:.1f}s after SIGTERM with a 1s grace"
    assert "grace of 1s over: abandoning the current batch" in text
    assert not list(exp.rglob("part-*.parquet"))


def test_sigterm_while_waiting_for_the_element_lock_exits_3(template, zygote, tmp_path):
    exp = copy_plan(template, tmp_path / "kill")
    held = locks.acquire(exp, 0)                      # another worker holds element 0
    try:
        proc, log = zygote.start(exp)
        deadline = time.monotonic() + 120
        while "waiting for it to finish" not in (log.read_text() if log.exists() else ""):
            assert proc.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        assert f"pid {os.getpid()}" in log.read_text()          # the message names the holder
        os.kill(proc.pid, signal.SIGTERM)
        proc.join(30)
        assert proc.exitcode == 3, log.read_text()
        assert not (exp / "results").exists()
    finally:
        held.release()


# ---- the real Slurm, through `lmsweep submit` (submit/slurm.py) ----------------------------------------------


@pytest.fixture(scope="module")
def slurm_env() -> dict:
    return {**os.environ, "SLURM_CONF": slurm_conf(), "PATH": f"/usr/bin:/usr/sbin:{os.environ['PATH']}"}


def job_info(env: dict, job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True,
                         check=True).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def wait_for(what: str, check, timeout: float, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


def first_progress_per_run(out: str) -> list[int]:
    """Units already done when each run (the first start and every requeue) began."""
    runs = out.split("lmsweep: job ")[1:]
    return [int(re.search(r"^PROGRESS (\d+) ", run, flags=re.M).group(1)) for run in runs]


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_scancel_term_and_requeue_keep_every_unit_exactly_once(slurm_env, slow_llama, tmp_path):
    """An element submitted with `lmsweep submit` (srun launcher): `scancel --signal=TERM` reaches the
    worker, which finishes its batch and exits 3 (the job's exit code); `scontrol requeue` of that job
    reruns it from where it stopped; `scontrol requeue` while it runs kills it (srun aborts the step) and
    the restart again skips what is written. Every unit exactly once at the end."""
    prompts = [f"{p} {i}" for i in range(2) for p in PROMPTS]          # 24 units, 8 batches of ~2 s
    spec = write_spec(tmp_path / "spec.yaml", slow_llama, prompts=prompts, batch=3, max_new_tokens=96,
                      name="preempt")
    env = slurm_env
    proc = subprocess.run([sys.executable, "-m", "lmsweep", "submit", str(spec), "--system", "slurm-generic",
                           "--output-dir", str(tmp_path / "runs")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = re.search(r"submitted (\d+)", proc.stdout).group(1)
    exp = tmp_path / "runs" / "preempt"
    logs = exp / "jobs" / "sub-0001" / "logs"

    def log(kind: str) -> str:
        return "".join(p.read_text() for p in logs.glob(f"*.{kind}")) if logs.exists() else ""

    def ended():
        info = job_info(env, job)
        return info if info["JobState"] in ("FAILED", "COMPLETED", "CANCELLED", "TIMEOUT") else None

    try:
        # 1. scancel --signal=TERM (to the job's steps, i.e. the srun'd worker) once a batch is written.
        # (--full also signals srun, which then force-terminates the step: see README, Guarantees)
        wait_for("the first part", lambda: len(_parts(exp)) >= 1, 300)
        subprocess.run(["scancel", "--signal=TERM", job], env=env, check=True)
        sent = time.monotonic()
        info = wait_for("the job to end", ended, 60, poll=0.2)
        took = time.monotonic() - sent
        assert (info["JobState"], info["ExitCode"]) == ("FAILED", "3:0"), (info, log("out"), log("err"))
        assert took < 8 + 5, f"job ended {took:.1f}s after TERM (grace 8s)"
        assert "SIGTERM received: finishing the current batch" in log("err")
        assert "element 0 exited 3" in log("out")
        done1 = len(set(raw_rows(exp)["unit_id"]))
        assert 0 < done1 <= 6, done1                   # the batch in flight at most, then it stopped

        # 2. requeue the preempted job: it runs again from where it stopped
        subprocess.run(["scontrol", "requeue", job], env=env, check=True)
        wait_for("a part from the second run", lambda: len(_parts(exp)) > done1 // 3, 300)

        # 3. requeue it while it runs: the running batch is lost at most; the restart skips the rest
        assert job_info(env, job)["JobState"] == "RUNNING"
        subprocess.run(["scontrol", "requeue", job], env=env, check=True)
        wait_for("the third run", lambda: log("out").count("lmsweep: job ") == 3, 300)
        info = wait_for("the job to complete", ended, 300)
    finally:
        subprocess.run(["scancel", job], env=env, capture_output=True)
    out = log("out")
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "2"), (info, out)
    firsts = first_progress_per_run(out)
    assert len(firsts) == 3 and firsts[0] == 0 and firsts[1] == done1 and firsts[2] > done1, (firsts, out)
    raw = raw_rows(exp)
    assert raw.groupby("unit_id").size().max() == 1 and len(raw) == len(prompts)
    assert lmsweep.status(exp).complete


def test_the_stop_is_acknowledged_when_the_main_thread_sees_it_before_the_watchdog(monkeypatch, capsys):
    """Under load a batch can end, and the worker exit 3, before the watchdog thread gets the GIL to say the
    signal arrived: the log then said "preempted" with no word of the SIGTERM (seen in a fresh-clone run). The
    main thread's check acknowledges it then, once, whoever comes first."""
    from lmsweep.runner import signals

    monkeypatch.setattr(signals, "_state", {**signals._state, "signum": None, "acknowledged": False})
    assert not signals.stop_requested() and capsys.readouterr().err == ""
    signals._handler(signal.SIGTERM, None)          # what the signal handler does; no watchdog runs here
    assert signals.stop_requested() and signals.stop_requested()
    assert capsys.readouterr().err.count("SIGTERM received: finishing the current batch") == 1
    signals._acknowledge(signal.SIGTERM)            # the watchdog, late: nothing more
    assert capsys.readouterr().err == ""
