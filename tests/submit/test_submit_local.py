"""The local system behind the same interface: submit detaches, status/cancel/resubmit work from files."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from helpers.cli import cli
from helpers.status_table import states, wait_status

pytestmark = pytest.mark.slow

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
  concurrency: 2
"""


def spec(tmp: Path, model: Path, name: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, out=json.dumps(str(tmp / "runs")), model=json.dumps(str(model))))
    return path


def test_local_submit_detaches_and_status_follows_it(tmp_path, tiny_llama):
    """The backend plumbing with a canary for python (the real worker runs in the Slurm and PBS tests)."""
    canary = tmp_path / "canary"
    canary.write_text('#!/bin/bash\necho "$*" >> "$(dirname "$0")/calls"\nsleep 2\n[ "$7" != 1 ]\n')
    canary.chmod(0o755)
    proc = cli("submit", str(spec(tmp_path, tiny_llama, "bg")), "--system", "local", "--python", str(canary),
                   check=True)
    assert "submitted local-" in proc.stdout and "at most 2 running at once" in proc.stdout
    exp = tmp_path / "runs" / "bg"
    out = wait_status(exp, {}, lambda rc, out: not {"running", "queued"} & set(states(out)), timeout=60)
    assert states(out) == ["finished", "failed"]          # the canary fails element 1, as a worker would
    calls = sorted((tmp_path / "calls").read_text().splitlines())
    assert calls == [f"-m lmsweep worker --plan {exp} --element {e}" for e in (0, 1)]
    assert "lmsweep resubmit" in out


def test_local_cancel_kills_the_process_group(tmp_path, tiny_llama):
    sleeper = tmp_path / "sleepy"
    sleeper.write_text("#!/bin/bash\necho $$ >> \"$(dirname \"$0\")/pids\"\nsleep 300\n")
    sleeper.chmod(0o755)
    cli("submit", str(spec(tmp_path, tiny_llama, "stop")), "--system", "local", "--python", str(sleeper),
            check=True)
    exp = tmp_path / "runs" / "stop"
    wait_status(exp, {}, lambda rc, out: states(out) == ["running", "running"], timeout=60)
    refused = cli("submit", str(spec(tmp_path, tiny_llama, "stop")), "--system", "local")
    assert refused.returncode == 2 and "still queued or running" in refused.stderr
    assert "cancelled local-" in cli("cancel", str(exp), check=True).stdout
    out = wait_status(exp, {}, lambda rc, out: not {"running", "queued"} & set(states(out)), timeout=60)
    assert set(states(out)) <= {"failed", "cancelled"}
    for pid in (tmp_path / "pids").read_text().split():
        deadline = time.time() + 10
        while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
            assert time.time() < deadline, f"sleeper {pid} survived cancel"
            time.sleep(0.2)
    # resubmit picks up exactly the two unfinished elements again
    dry = cli("resubmit", str(exp), "--dry-run", check=True)
    assert "resubmitting 2 element(s) with missing or failed units: 0, 1" in dry.stdout


def test_a_submission_whose_name_was_taken_meanwhile_moves_to_the_next_name(tmp_path, tiny_llama, monkeypatch):
    """Another submit creates sub-0001 between this one choosing the name and making its directory: this one
    writes and records everything under sub-0002 and leaves the other's directory alone."""
    from lmsweep.cli import main
    from lmsweep.submit import jobs_dir

    canary = tmp_path / "canary"
    canary.write_text("#!/bin/bash\nexit 0\n")
    canary.chmod(0o755)
    real_create = jobs_dir.create

    def raced(exp: Path, name: str) -> Path:
        (jobs_dir.jobs_root(exp) / name).mkdir(parents=True)          # the concurrent submit wins the name
        return real_create(exp, name)

    monkeypatch.setattr(jobs_dir, "create", raced)
    assert main(["submit", str(spec(tmp_path, tiny_llama, "race")), "--system", "local",
                 "--python", str(canary)]) == 0
    script = tmp_path / "runs" / "race" / "jobs" / "sub-0002" / "array-00.sh"
    assert script.exists() and "lmsweep local array: 2 task(s)" in script.read_text()
    assert not list((tmp_path / "runs" / "race" / "jobs" / "sub-0001").iterdir())
    recorded = json.loads((script.parent / "submission.json").read_text())
    assert recorded["name"] == "sub-0002"
