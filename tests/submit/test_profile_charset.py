"""A system profile's scheduler fields are held to the spec's charset (issue 20): a queue name (the default
one or any other) or a PBS filesystem with `;`, `$(`, a backtick or a newline is refused when the profile loads, with
one line naming the profile file and the field, exit 2, before any script is rendered or anything written.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers.cli import cli as run_cli
from lmsweep.cli import main
from lmsweep.configs import SYSTEMS

HOSTILE = ["debug;touch PWNED", "debug$(touch PWNED)", "debug`touch PWNED`", "debug\n#PBS -l select=999"]


def spec(tmp: Path, model: Path) -> Path:
    path = tmp / "spec.yaml"
    path.write_text(f"name: charset\noutput_dir: {json.dumps(str(tmp / 'runs'))}\n"
                    f"models:\n  - {{alias: tiny, source: {json.dumps(str(model))}}}\n"
                    "prompts: [{name: p, items: [hello]}]\ntask: generate\ndecoding: {max_new_tokens: 2}\n"
                    "execution:\n  threads_per_rank: 1\n  pbs: {account: myproj}\n")
    return path


def profile(tmp: Path, base: str, change) -> Path:
    """A copy of a shipped profile, renamed to `hostile`, with one field changed."""
    data = yaml.safe_load((SYSTEMS / f"{base}.yaml").read_text())
    data["name"] = "hostile"
    change(data)
    path = tmp / "hostile.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def rename_queue(value: str):
    def change(data: dict) -> None:
        data["queues"] = {value if q == data["default_queue"] else q: v for q, v in data["queues"].items()}
        data["default_queue"] = value
    return change


def extra_queue(value: str):
    """A queue the submission does not even use: refused all the same, when the profile loads."""
    def change(data: dict) -> None:
        data["queues"][value] = dict(data["queues"][data["default_queue"]])
    return change


def filesystem(value: str):
    def change(data: dict) -> None:
        data["filesystems"] = ["home", value]
    return change


CASES = [(f"{field}-{base}-{i}", base, make(value), field)
         for field, base, make in [("queues", "polaris", rename_queue), ("queues", "slurm-generic", rename_queue),
                                   ("queues", "aurora", extra_queue),
                                   ("filesystems", "polaris", filesystem)]
         for i, value in enumerate(HOSTILE)]


@pytest.mark.parametrize("case,base,change,field", CASES, ids=[c[0] for c in CASES])
def test_hostile_profile_fields_are_refused_at_load(tmp_path, tiny_llama, capsys, case, base, change, field):
    path = profile(tmp_path, base, change)
    rc = main(["submit", str(spec(tmp_path, tiny_llama)), "--system", str(path), "--dry-run"])
    out, err = capsys.readouterr()
    assert rc == 2, out
    lines = err.splitlines()             # a line a problem (a renamed default queue is two), whatever the value
    assert lines and all(line.startswith("error: ") and str(path) in line for line in lines), err
    assert len(lines) <= 2 and f" {field}" in err, err                     # the profile file and its field
    assert "#!/bin/bash" not in out and "#PBS" not in out and "#SBATCH" not in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "PWNED").exists()


def test_a_hostile_queue_is_refused_by_the_real_command(tmp_path, tiny_llama):
    path = profile(tmp_path, "polaris", rename_queue("debug;touch PWNED"))
    proc = run_cli("submit", str(spec(tmp_path, tiny_llama)), "--system", str(path), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout
    lines = proc.stderr.splitlines()     # the default queue and the queue's own name: a line each
    assert len(lines) == 2 and all(line.startswith("error: ") and str(path) in line for line in lines), proc.stderr
    assert "queues." in proc.stderr, proc.stderr
    assert "#PBS" not in proc.stdout and not (tmp_path / "PWNED").exists() and not (tmp_path / "runs").exists()

