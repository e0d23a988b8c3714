"""`lmsweep status EXP --watch` against a real local submission: it follows the run to the end (exit 0),
stops when no job is left to finish the work (exit 1), and Ctrl-C ends it with 130."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.cli import cli
from lmsweep.submit.watch import MAX_BACKOFF, next_wait

SPEC = """
name: {name}
output_dir: {out}
models:
  - {{alias: tiny, source: {model}}}
prompts: ["Once upon a time", "The capital of France is", "My dog", "I skip across"]
task: generate
decoding: {{max_new_tokens: 4}}
execution:
  threads_per_rank: 1
  max_units_per_element: 2
  concurrency: 1
"""
LINE = re.compile(r"^\d\d:\d\d:\d\d (\d+)/(\d+) done, (\d+) failed, (\d+) missing(?:; scheduler: (.*))?$", re.M)


def spec(tmp: Path, model: Path, name: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, out=json.dumps(str(tmp / "runs")), model=json.dumps(str(model))))
    return path


def _foreground_job() -> None:
    # Ctrl-C reaches a terminal's foreground job with SIGINT's default disposition. A suite started in the
    # background by a non-interactive shell (`make test &`) hands its children SIGINT ignored, and a watch
    # that ignores SIGINT rightly keeps watching (as under nohup): give the child the terminal's disposition.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def watch(exp: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lmsweep", "status", str(exp), "--watch", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=_foreground_job)


def test_backoff_doubles_while_nothing_changes_and_resets_on_a_change():
    waits, w = [], 2.0
    for _ in range(8):
        w = next_wait(w, 2.0, changed=False)
        waits.append(w)
    assert waits[:4] == [4, 8, 16, 20] and max(waits) == 2.0 * MAX_BACKOFF
    assert next_wait(20, 2.0, changed=True) == 2.0


@pytest.mark.slow
def test_watch_follows_a_local_submission_until_complete(tmp_path, tiny_llama):
    cli("submit", str(spec(tmp_path, tiny_llama, "w")), "--system", "local", check=True)
    exp = tmp_path / "runs" / "w"
    proc = watch(exp, "--interval", "0.5")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    seen = [(int(d), int(p), sched or "") for d, p, _, _, sched in LINE.findall(out)]
    assert seen[-1][:2] == (4, 4) and "complete" in out.splitlines()[-1]
    assert len(seen) >= 2 and [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)   # it followed the run
    assert any("running" in s or "queued" in s for _, _, s in seen), out                  # with the scheduler's view
    assert len(set(seen)) == len(seen)                  # a line only when something changed


@pytest.mark.slow
def test_watch_stops_with_1_when_the_jobs_ended_with_units_unfinished(tmp_path, tiny_llama):
    canary = tmp_path / "canary"                        # a "python" that fails every task at once
    canary.write_text("#!/bin/bash\nexit 1\n")
    canary.chmod(0o755)
    cli("submit", str(spec(tmp_path, tiny_llama, "f")), "--system", "local", "--python", str(canary), check=True)
    proc = watch(tmp_path / "runs" / "f", "--interval", "0.3")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    assert "0/4 done" in out and "lmsweep resubmit" in out


def test_ctrl_c_ends_the_watch_with_130(tmp_path, tiny_llama):
    exp = tmp_path / "runs" / "p"
    cli("plan", str(spec(tmp_path, tiny_llama, "p")), check=True)
    proc = watch(exp, "--interval", "0.2")
    deadline = time.time() + 60
    while time.time() < deadline:                       # wait for its first line, then interrupt it
        line = proc.stdout.readline()
        if LINE.match(line.strip()):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out + err
    assert line.strip().endswith("0/4 done, 0 failed, 4 missing")


@pytest.mark.slow
@pytest.mark.slurm
def test_watch_follows_a_real_slurm_array_until_complete(tmp_path, tiny_llama):
    """The same against the one-node Slurm of tests/infra: the states come from its batched query."""

    from helpers.slurm import slurm_conf

    env = {"SLURM_CONF": slurm_conf()}
    path = spec(tmp_path, tiny_llama, "sw")
    path.write_text(path.read_text() + "  slurm: {partition: debug}\n")
    cli("submit", str(path), "--system", "slurm-generic", env=env, check=True)
    proc = subprocess.run([sys.executable, "-m", "lmsweep", "status", str(tmp_path / "runs" / "sw"), "--watch",
                           "--interval", "1"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = LINE.findall(proc.stdout)
    assert seen[-1][:2] == ("4", "4") and "complete" in proc.stdout.splitlines()[-1]
    assert any(sched for *_, sched in seen), proc.stdout           # Slurm's states were shown
