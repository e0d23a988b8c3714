"""Hostile values never become shell: names are restricted, everything else is quoted and inert.

Each rendered script is checked with `bash -n` and then actually run with a harmless canary in
place of python: the canary records the exact arguments it got, and the test checks that no
`$(...)`, backtick, `;` or newline in a path did anything (the PWNED file never appears) and that
the worker would have received the path byte for byte.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from test_pbs_render import make_shims, pbs_env, run_body, scripts_in

from helpers.cli import cli as run_cli

NAUGHTY = "we ird $(touch {pwned}) `touch {pwned}`; echo hi > {pwned} & 'sq' \"dq\" \\ {{a,b}} * ~ #"

SPEC = """
name: {name}
output_dir: {out}
models:
  - {{alias: tiny, source: {model}}}
prompts: {prompts}
task: generate
decoding: {{max_new_tokens: 2}}
execution:
  threads_per_rank: 1
{extra}
"""

ARGV_CANARY = """#!/bin/bash
# stands in for python: records its argv, NUL-separated, so newlines in arguments survive; under a lock,
# since the ranks of one launch append at once and bash's printf may write an argument at a time.
# The job's preflight check (Polaris) passes without a record.
if [ "$2" = lmsweep.submit.preflight ]; then exit 0; fi
exec 9>>"$CANARY_LOG"
flock 9
printf '%s\\0' "$@" >&9
"""

SRUN_SHIM = """#!/bin/bash
# stands in for srun outside an allocation: drop its options, run the command once
while (($#)); do case $1 in -n|--ntasks-per-node|--cpus-per-task) shift 2 ;; *) break ;; esac; done
exec "$@"
"""


def spec_file(tmp: Path, model: Path, *, name: str = "safe", out: str | None = None, extra: str = "",
              prompts: list[str] | None = None) -> Path:
    spec = tmp / "spec.yaml"
    spec.write_text(SPEC.format(name=json.dumps(name), out=json.dumps(out or str(tmp / "runs")),
                                model=json.dumps(str(model)), prompts=json.dumps(prompts or ["hello"]),
                                extra=extra))
    return spec


@pytest.fixture
def hostile(tmp_path):
    pwned = tmp_path / "PWNED"
    out = tmp_path / NAUGHTY.format(pwned=pwned)
    canary = tmp_path / "canary python $(touch PWNED)"
    canary.write_text(ARGV_CANARY)
    canary.chmod(0o755)
    return pwned, out, canary


def nul_args(log: Path) -> list[str]:
    return log.read_bytes().decode().split("\0")[:-1]


def test_hostile_paths_and_prompts_render_inert_scripts(tmp_path, tiny_llama, hostile):
    pwned, out, canary = hostile
    evil_prompt = f"$(touch {pwned}) `touch {pwned}`; rm -rf ~"
    spec = spec_file(tmp_path, tiny_llama, out=str(out), prompts=[evil_prompt, "fine"],
                     extra="  pbs: {account: myproj}\n  slurm: {array_limit: 2}\n  max_units_per_element: 1")
    shims = make_shims(tmp_path / "shims")
    (shims / "srun").write_text(SRUN_SHIM)
    (shims / "srun").chmod(0o755)
    exp = out / "safe"
    for system, index_var in (("polaris", "PBS_ARRAY_INDEX"), ("slurm-generic", "SLURM_ARRAY_TASK_ID")):
        proc = run_cli("submit", str(spec), "--system", system, "--python", str(canary), "--dry-run", check=True)
        (script_text,) = scripts_in(proc.stdout)
        assert "rm -rf" not in script_text     # prompts never reach a script (the worker reads the plan)
        script = tmp_path / f"{system}.sh"
        script.write_text(script_text)
        assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
        log = tmp_path / f"{system}.argv"
        env = pbs_env(shims, tmp_path, 1, tmp_path) | {"CANARY_LOG": str(log), index_var: "1"}
        exp.mkdir(parents=True, exist_ok=True)      # the body cds into the experiment directory
        result = run_body(script, env)
        assert result.returncode == 0, result.stderr
        runs = nul_args(log)
        assert runs[:6] == ["-m", "lmsweep", "worker", "--plan", str(exp), "--element"] and runs[6] == "1"
        assert not pwned.exists(), f"{system} script executed part of a path"
    assert not (out / "safe" / "plan.json").exists()   # dry runs wrote nothing


def test_a_newline_in_a_path_stays_inside_its_quotes(tmp_path):
    """Specs refuse control characters in output_dir, but the renderer must not depend on that."""
    from lmsweep.submit.backends.pbs import PbsScheduler
    from lmsweep.submit.base import ArrayJob
    from lmsweep.submit.systems import load_system

    pwned = tmp_path / "PWNED"
    exp = tmp_path / f"two\nlines $(touch {pwned})\n#PBS -q evil"
    exp.mkdir(parents=True)
    canary = tmp_path / "canary"
    canary.write_text(ARGV_CANARY)
    canary.chmod(0o755)
    profile = load_system("polaris")
    job = ArrayJob("x", str(exp), "sub-0001", 0, (0, 1), 1, 4, 8, "00:30:00", "debug", "p", 1, str(canary))
    text = PbsScheduler(profile).render(job)
    assert "#PBS -q evil" not in [line for line in text.splitlines() if line.startswith("#PBS")]
    script = tmp_path / "job.pbs"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    log = tmp_path / "argv"
    env = pbs_env(make_shims(tmp_path / "shims"), tmp_path, 1, tmp_path) | {"CANARY_LOG": str(log)}
    assert run_body(script, env).returncode == 0
    assert nul_args(log)[4] == str(exp) and not pwned.exists()


def test_a_newline_in_output_dir_is_refused(tmp_path, capsys):
    spec = spec_file(tmp_path, tmp_path / "m", out=str(tmp_path / "a\nb"))
    rc, err = cli(capsys, "submit", str(spec), "--system", "slurm-generic", "--dry-run")
    assert rc == 2 and "output_dir" in err and not (tmp_path / "a\nb").exists()


def cli(capsys, *argv: str) -> tuple[int, str]:
    """The real CLI in-process (refusals happen before any model or scheduler is touched)."""
    from lmsweep.cli import main
    rc = main(list(argv))
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--account", "$(touch PWNED)"), ("--account", "proj;id"),
                                         ("--queue", "prod\n#PBS -l select=999"), ("--partition", "debug`id`"),
                                         ("--walltime", "1:00:00; id")])
def test_hostile_scheduler_flags_are_refused(tmp_path, capsys, flag, value):
    spec = spec_file(tmp_path, tmp_path / "no-model-needed", extra="  pbs: {account: myproj}")
    rc, err = cli(capsys, "submit", str(spec), "--system", "polaris", flag, value, "--dry-run")
    shown_as = "--queue" if flag == "--partition" else flag
    assert rc == 2 and err.startswith(f"error: {shown_as}: ") and err.count("\n") == 1   # one line, always
    assert not (tmp_path / "runs").exists() and not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("block", ["pbs: {account: '$(id)'}", "pbs: {account: p, queue: 'a b'}",
                                   "pbs: {account: p, filesystems: ['home;id']}",
                                   "slurm: {partition: 'x`id`'}", "slurm: {qos: \"q'\"}"])
def test_hostile_scheduler_values_in_the_spec_are_refused(tmp_path, capsys, block):
    spec = spec_file(tmp_path, tmp_path / "no-model-needed", extra=f"  {block}")
    rc, err = cli(capsys, "submit", str(spec), "--system", "polaris", "--dry-run")
    assert rc == 2 and err.startswith(f"error: {spec}:") and ": execution." in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["x; rm -rf ~", "$(id)", "a b", "../up", "-rf"])
def test_hostile_experiment_names_are_refused(tmp_path, capsys, name):
    rc, err = cli(capsys, "submit", str(spec_file(tmp_path, tmp_path / "m", name=name)), "--system",
                  "slurm-generic", "--dry-run")
    assert rc == 2 and "name: experiment name" in err
    assert not (tmp_path / "runs").exists()


def test_local_script_with_hostile_paths_runs_inert(tmp_path, tiny_llama, hostile):
    """The local backend's script, run from a jobs directory under the hostile path."""
    pwned, out, canary = hostile
    spec = spec_file(tmp_path, tiny_llama, out=str(out), extra="  concurrency: 2")
    proc = run_cli("submit", str(spec), "--system", "local", "--python", str(canary), "--dry-run", check=True)
    (text,) = scripts_in(proc.stdout)
    where = out / "safe" / "jobs" / "sub-0001"
    where.mkdir(parents=True)
    (where / "array-00.sh").write_text(text)
    log = tmp_path / "local.argv"
    result = subprocess.run(["bash", str(where / "array-00.sh")], capture_output=True, text=True,
                            env={**os.environ, "CANARY_LOG": str(log)}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (where / "state" / "0.exit").read_text().strip() == "0"
    assert nul_args(log)[:5] == ["-m", "lmsweep", "worker", "--plan", str(out / "safe")]
    assert not pwned.exists()
