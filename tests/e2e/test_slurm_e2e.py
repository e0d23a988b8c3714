"""`lmsweep submit / status / resubmit / cancel` on a real one-node Slurm (tests/infra/slurm-up.sh).

Every element runs the real worker on a tiny random Llama as a real Slurm array task.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import lmsweep
from helpers.cli import cli
from helpers.slurm import slurm_conf
from helpers.status_table import states, table, wait_status
from lmsweep.submit.jobs_dir import ArrayRecord, Submission, load_submissions

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

PROMPTS = ["Once upon a time", "The capital of France is", "My dog really wanted", "I skip across the",
           "Shakespeare was a", "Search your feelings", "The animal didn't cross", "This game is great"]


@pytest.fixture(scope="session")
def slurm_env() -> dict:
    """Environment with SLURM_CONF for the test cluster; skip (with the reason) where it cannot start."""
    conf = slurm_conf()
    os.environ["SLURM_CONF"] = conf   # the in-process helpers below (squeue/sbatch) see it too
    return {"SLURM_CONF": conf, "PATH": f"{os.environ.get('PATH', '')}:/usr/bin:/usr/sbin"}


def write_spec(path: Path, models: list[tuple[str, Path]], prompts: list[str], per_element: int,
               array_limit: int) -> Path:
    model_lines = "\n".join(f"  - {{alias: {a}, source: {json.dumps(str(p))}}}" for a, p in models)
    path.write_text(f"""
name: {path.stem}
output_dir: {json.dumps(str(path.parent / 'runs'))}
models:
{model_lines}
prompts: {json.dumps(prompts)}
task: generate
decoding: {{max_new_tokens: 4}}
execution:
  batch_size: 4
  threads_per_rank: 1
  max_units_per_element: {per_element}
  slurm: {{partition: debug, array_limit: {array_limit}}}
""")
    return path


def wait_slurm(job_ids: list[str], timeout: float = 300) -> None:
    """Until Slurm has nothing of these jobs pending or running (squeue is cheap; `lmsweep status` is not)."""
    deadline = time.time() + timeout
    while subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-t", "PD,CF,R,CG,S", "-o", "%i"],
                         capture_output=True, text=True).stdout.strip():
        assert time.time() < deadline, f"jobs {job_ids} still active after {timeout}s"
        time.sleep(1)


def scontrol_job(job: str, env: dict) -> str:
    return subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True,
                          env={**os.environ, **env}).stdout


def row(out: str, element: int) -> dict[str, str]:
    return next(r for r in table(out) if r["element"] == str(element))


def settled(out: str) -> bool:
    return bool(states(out)) and not {"queued", "held", "running", "-"} & set(states(out))


def all_finished(rc: int, out: str) -> bool:
    return rc == 0 and bool(states(out)) and set(states(out)) == {"finished"}


def test_array_of_four_runs_every_unit_once(tmp_path, tiny_llama, slurm_env):
    spec = write_spec(tmp_path / "e2e.yaml", [("tiny", tiny_llama)], PROMPTS, per_element=2, array_limit=2)
    proc = cli("submit", str(spec), "--system", "slurm-generic", env=slurm_env, check=True)
    assert "elements: 4 for 8 unit(s)" in proc.stdout and "at most 2 running at once" in proc.stdout
    exp = tmp_path / "runs" / "e2e"
    (sub,) = load_submissions(exp)
    (array,) = sub.arrays
    script = (sub.directory / array.script).read_text()
    assert "#SBATCH --array=0-3%2" in script and "SLURM_ARRAY_TASK_ID" in script
    # Slurm itself holds the throttle
    assert "ArrayTaskThrottle=2" in scontrol_job(array.job_id, slurm_env)

    wait_slurm([array.job_id])
    wait_status(exp, slurm_env, all_finished, timeout=30)
    df = lmsweep.load(exp)
    assert len(df) == 8 and df["unit_id"].is_unique
    assert sorted(df["element"].unique()) == [0, 1, 2, 3]
    assert set(df["prompt_text"]) == set(PROMPTS)
    # one log per task, each naming its element; every task ran the worker
    for index in range(4):
        out = (sub.directory / "logs" / f"{array.job_id}_{index}.out").read_text()
        assert f"index {index} -> element {index}" in out and f"element {index} exited 0" in out


def test_failed_element_shows_and_resubmit_runs_only_it(tmp_path, tiny_llama, slurm_env, request):
    model_b = tmp_path / "model-b"
    shutil.copytree(tiny_llama, model_b)
    spec = write_spec(tmp_path / "fail.yaml", [("a", tiny_llama), ("b", model_b)], PROMPTS[:3], per_element=3,
                      array_limit=1)
    cli("submit", str(spec), "--system", "slurm-generic", env=slurm_env, check=True)
    # The plan is valid; now the environment breaks under it. With %1, element 1 (model b) cannot
    # start before element 0 has loaded and run, so it will find its model gone.
    hidden = tmp_path / "model-b.hidden"
    model_b.rename(hidden)
    exp = tmp_path / "runs" / "fail"
    (sub,) = load_submissions(exp)
    array_id = sub.arrays[0].job_id

    # a job someone chained with afterok on the array: it would wait forever once a task fails
    dep = subprocess.run(["sbatch", "--parsable", f"--dependency=afterok:{array_id}", "-o", "/dev/null",
                          "--wrap", "true"], capture_output=True, text=True, check=True).stdout.strip()
    request.addfinalizer(lambda: subprocess.run(["scancel", dep], capture_output=True))  # even if we fail
    d = exp / "jobs" / "sub-0900"
    (d / "logs").mkdir(parents=True)
    Submission("sub-0900", d, "submit", "slurm-generic", "slurm", sub.plan_created, dict(sub.options), ["afterok"],
               [ArrayRecord(0, "none", [], job_id=dep)]).save()

    wait_slurm([array_id])
    out = wait_status(exp, slurm_env, lambda rc, out: settled(out), timeout=30)
    row1 = row(out, 1)
    assert (row1["model"], row1["planned"], row1["done"], row1["missing"]) == ("b", "3", "0", "3")
    assert (row1["scheduler"], row1["detail"].split()[0]) == ("failed", "FAILED")
    assert row(out, 0)["scheduler"] == "finished" and row(out, 0)["done"] == "3"
    assert "lmsweep resubmit" in out
    # the afterok dependent was pending forever (DependencyNeverSatisfied) and status cancelled it
    deadline = time.time() + 30
    while "JobState=CANCELLED" not in scontrol_job(dep, slurm_env):
        assert time.time() < deadline, scontrol_job(dep, slurm_env)
        cli("status", str(exp), env=slurm_env)
        time.sleep(2)

    hidden.rename(model_b)
    proc = cli("resubmit", str(exp), env=slurm_env, check=True)
    assert "resubmitting 1 element(s) with missing or failed units: 1" in proc.stdout
    subs = [s for s in load_submissions(exp) if s.kind == "resubmit"]
    wait_slurm([subs[0].arrays[0].job_id])
    wait_status(exp, slurm_env, lambda rc, out: rc == 0 and settled(out), timeout=30)
    assert len(subs) == 1 and [a.elements for a in subs[0].arrays] == [[1]]
    # the resubmission was a single job for element 1 only
    script = (subs[0].directory / subs[0].arrays[0].script).read_text()
    assert "--array" not in script and "element=$(( 1 + index ))" in script
    df = lmsweep.load(exp)
    assert len(df) == 6 and df["unit_id"].is_unique
    # element 0 ran exactly once: one metadata sidecar from the first array, none from the resubmit
    assert len(list((exp / "meta").glob("element-00000-*.json"))) == 1


def test_cancel_stops_queued_and_running_tasks(tmp_path, tiny_llama, slurm_env):
    """`lmsweep cancel` removes every live task of the experiment in one scancel."""
    sleeper = tmp_path / "sleepy-python"      # stands in for the worker: the test is about the scheduler
    sleeper.write_text("#!/bin/bash\nsleep 300\n")
    sleeper.chmod(0o755)
    spec = write_spec(tmp_path / "cancel.yaml", [("m", tiny_llama)], ["a", "b", "c"], per_element=1,
                      array_limit=1)
    cli("submit", str(spec), "--system", "slurm-generic", "--python", str(sleeper), env=slurm_env, check=True)
    exp = tmp_path / "runs" / "cancel"
    wait_status(exp, slurm_env, lambda rc, out: "running" in states(out), timeout=60)
    proc = cli("cancel", str(exp), env=slurm_env, check=True)
    assert "cancelled" in proc.stdout
    out = wait_status(exp, slurm_env, lambda rc, out: settled(out), timeout=60)
    assert states(out) == ["cancelled"] * 3
