"""What `submit` checks and says before anything is written: the worker's interpreter, node-local paths,
why its element count differs from `validate`'s, where the throughput figure came from, `--dry-run --out`.

The compute-node side (the job's preflight before the launcher) runs in tests/submit/test_pbs_render.py.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers.cli import cli
from helpers.profiles import profile_copy
from lmsweep.submit.checks import node_local_root

SPEC = """\
name: {name}
output_dir: {out}
models:
  - {{alias: tiny, source: {model}}}
prompts:
  - {{name: p, items: {prompts}}}
task: generate
decoding: {{max_new_tokens: 64, temperature: [0.5, 1.0], seeds: {seeds}}}
execution:
  max_units_per_element: {per_element}
{extra}
"""


def spec_file(tmp: Path, model: Path, *, name: str = "checks", out: Path | None = None, per_element: int | str = 100,
              extra: str = "  pbs: {account: myproj}", seeds: int = 150) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, out=out or tmp / "runs", model=model, per_element=per_element,
                                prompts=["Once upon a time", "The capital of"], seeds=list(range(seeds)),
                                extra=extra))
    return path


def decision(stdout: str) -> list[str]:
    lines = stdout.split("\n# ---- ")[0].splitlines()
    return [x.strip() for x in lines]


# ---- the interpreter ------------------------------------------------------------------------------------

def test_a_missing_python_is_refused_and_nothing_is_written(tmp_path, tiny_llama):
    spec = spec_file(tmp_path, tiny_llama)
    for extra in ([], ["--dry-run"]):
        proc = cli("submit", str(spec), "--system", "polaris", "--python", str(tmp_path / "venv/bin/python"), *extra)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.strip() == (f"error: --python: interpreter {tmp_path / 'venv/bin/python'} does not exist "
                                       "or is not executable here; give an interpreter with lmsweep installed, on a "
                                       "filesystem the compute nodes see")
        assert not (tmp_path / "runs").exists()


def test_the_profiles_python_is_used_and_checked(tmp_path, tiny_llama):
    """The rule: --python, else the profile's `python`, else the interpreter running lmsweep."""
    import sys
    spec = spec_file(tmp_path, tiny_llama)
    site = profile_copy(tmp_path, "polaris", python=sys.executable)
    proc = cli("submit", str(spec), "--system", str(site), "--dry-run", check=True)
    assert f"python: {sys.executable} (system profile polaris's `python`)" in proc.stdout
    assert f'PYTHON={sys.executable}\n' in proc.stdout

    proc = cli("submit", str(spec), "--system", "polaris", "--dry-run", check=True)   # no `python` in the profile
    assert f"python: {sys.executable} (the interpreter running lmsweep; change with --python" in proc.stdout

    missing = profile_copy(tmp_path, "polaris", python="/nowhere/bin/python3")
    proc = cli("submit", str(spec), "--system", str(missing), "--dry-run")
    assert proc.returncode == 2 and f"{missing}: python: interpreter /nowhere/bin/python3 does not exist" in proc.stderr
    assert "(or pass --python)" in proc.stderr and not (tmp_path / "runs").exists()


def test_a_command_name_is_left_to_the_compute_node(tmp_path, tiny_llama):
    spec = spec_file(tmp_path, tiny_llama)
    proc = cli("submit", str(spec), "--system", "polaris", "--python", "python3", "--dry-run", check=True)
    assert "python: python3 (looked up on the compute node's PATH after the environment setup); each job " \
           "checks on its node that it runs lmsweep on CRAY MPICH (else exit 4)" in decision(proc.stdout)


# ---- node-local paths -----------------------------------------------------------------------------------

def test_node_local_roots():
    assert node_local_root("/tmp/x/runs") == "/tmp" and node_local_root("/dev/shm") == "/dev/shm"
    assert node_local_root("/var/tmp/a") == "/var/tmp" and node_local_root("/scratch/me/tmp", "/scratch/me") == \
        "/scratch/me"
    assert node_local_root("/eagle/proj/runs") is None and node_local_root("/tmpfoo/runs") is None


def test_an_experiment_under_tmp_is_warned_about_naming_the_filesystems(tmp_path, tiny_llama):
    assert str(tmp_path).startswith("/tmp/"), "the test needs pytest's tmp_path under /tmp"
    spec = spec_file(tmp_path, tiny_llama, extra="  pbs: {account: myproj}\n  slurm: {partition: debug}")
    exp = tmp_path / "runs" / "checks"
    proc = cli("submit", str(spec), "--system", "polaris", "--dry-run", check=True)
    assert (f"warning: experiment directory {exp} is under /tmp, which is local to each node: polaris's compute "
            "nodes cannot see it (the job requests filesystems=home:eagle); pass --output-dir on one of those"
            ) in proc.stderr
    proc = cli("submit", str(spec), "--system", "slurm-generic", "--dry-run", check=True)
    assert f"experiment directory {exp} is under /tmp" in proc.stderr and "use a shared filesystem" in proc.stderr
    # one machine: its own /tmp is where the jobs run
    assert "warning" not in cli("submit", str(spec), "--system", "local", "--dry-run", check=True).stderr


def test_an_interpreter_under_tmp_is_warned_about(tmp_path, tiny_llama):
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/bash\n")
    python.chmod(0o755)
    # not node-local (the checkout, and even HOME, may be under /tmp in CI); outside aurora's shared_paths, it has
    # a warning of its own (tests/submit/test_shared_paths.py): only the interpreter's is looked at here
    shared = Path("/lmsweep-shared-not-written") / tmp_path.name
    spec = spec_file(tmp_path, tiny_llama, out=shared, per_element=1000)
    proc = cli("submit", str(spec), "--system", "aurora", "--python", str(python), "--dry-run", check=True)
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("warning: interpreter")]
    assert line == (f"warning: interpreter {python} is under /tmp, which is local to each node: aurora's compute "
                    "nodes cannot run it (the job requests filesystems=home:flare); install lmsweep there and pass "
                    "--python")
    assert not shared.exists()


# ---- element counts and throughput ----------------------------------------------------------------------

def test_validate_and_submit_explain_their_element_counts(tmp_path, tiny_llama):
    """600 units, 5 minutes per element: validate sizes elements for one rank at 50 tokens/s (several); submit
    re-packs them for Polaris debug at the profile's 400 tokens/s x 4 ranks (fewer). Both outputs say so."""
    spec = spec_file(tmp_path, tiny_llama, per_element="null",
                     extra='  system: polaris\n  walltime: "00:05:00"\n  pbs: {account: myproj}')
    val = " ".join(cli("validate", str(spec), check=True).stdout.split())     # rich wraps at 160 columns
    n_plan = int(re.search(r"600 unit\(s\) in (\d+) element\(s\)", val).group(1))
    predicted = re.search(r"`lmsweep submit --system polaris` re-packs them for queue debug: (\d+) element\(s\) "
                          r"of 1 node\(s\) x 4 rank\(s\), at 400 tokens/s per rank", val)
    assert "elements: sized for 1 rank(s) at 50 tokens/s within 80% of walltime 00:05:00" in val and predicted

    lines = decision(cli("submit", str(spec), "--dry-run", check=True).stdout)
    n_submit = int(next(x for x in lines if x.startswith("elements: ")).split()[1])
    assert n_submit == int(predicted.group(1)) < n_plan
    assert (f"the plan's {n_plan} element(s) (as `lmsweep validate`/`plan` size them, for `lmsweep run`) are "
            f"re-packed for polaris queue debug: {n_submit} element(s) of 1 node(s) x 4 rank(s)") in lines


def test_validate_says_why_submit_would_refuse_a_unit_beyond_the_walltime(tmp_path, tiny_llama):
    """One unit of 64 new tokens at 1 token/s is 64 s, beyond 80% of a 10 s walltime: submit refuses (exit 2);
    validate (which `lmsweep run` needs no walltime for) passes and says what submit would say, not just that
    submit 'says how' (it said so and was silent on why, found by the one-packer test)."""
    spec = spec_file(tmp_path, tiny_llama, seeds=1,
                     extra='  system: local\n  walltime: "00:00:10"\n  tokens_per_second: 1')
    refusal = "one unit is estimated at 64 s of work, more than 80% of walltime 00:00:10"
    val = " ".join(cli("validate", str(spec), check=True).stdout.split())
    assert f"`lmsweep submit --system local` would refuse them now: {refusal}" in val, val
    sub = cli("submit", str(spec), "--dry-run")
    assert sub.returncode == 2 and refusal in sub.stderr, sub.stderr


@pytest.mark.parametrize("system, extra, figure", [
    ("polaris", "", "400 tokens/s per rank (system profile polaris's default; set execution.tokens_per_second"),
    ("aurora", "", "200 tokens/s per rank (system profile aurora's default;"),
    ("slurm-generic", "", "50 tokens/s per rank (lmsweep's default; set execution.tokens_per_second)"),
    ("polaris", "  tokens_per_second: 1000\n", "1000 tokens/s per rank (execution.tokens_per_second)"),
])
def test_the_throughput_figure_says_where_it_came_from(tmp_path, tiny_llama, system, extra, figure):
    spec = spec_file(tmp_path, tiny_llama, per_element="null",
                     extra=extra + "  pbs: {account: myproj}\n  slurm: {partition: debug}")
    lines = decision(cli("submit", str(spec), "--system", system, "--dry-run", check=True).stdout)
    assert f"throughput: {figure}" in " ".join(lines)


# ---- --dry-run --out ------------------------------------------------------------------------------------

def test_dry_run_out_writes_the_scripts_and_nothing_else(tmp_path, tiny_llama):
    spec = spec_file(tmp_path, tiny_llama, per_element=40)
    out = tmp_path / "preview"
    proc = cli("submit", str(spec), "--system", "polaris", "--dry-run", "--out", str(out), check=True)
    written = sorted(p.name for p in out.iterdir())
    printed = re.findall(r"^# ---- (\S+) ----$", proc.stdout, flags=re.MULTILINE)
    assert written == printed and written
    for name in written:
        assert (out / name).read_text() in proc.stdout
    assert f"dry run: wrote {len(written)} script(s) to {out}/ (nothing else; a submit writes them to " in proc.stdout
    assert not (tmp_path / "runs").exists()


def test_out_without_dry_run_is_refused_before_anything_is_written(tmp_path, tiny_llama):
    spec = spec_file(tmp_path, tiny_llama)
    proc = cli("submit", str(spec), "--system", "local", "--out", str(tmp_path / "preview"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: --out: only with --dry-run (a real submit writes its scripts to "
                                   "EXP/jobs/sub-NNNN/)")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "preview").exists()


def test_dry_run_without_out_says_it_wrote_nothing(tmp_path, tiny_llama):
    spec = spec_file(tmp_path, tiny_llama)
    proc = cli("submit", str(spec), "--system", "local", "--dry-run", check=True)
    assert "when submitted (dry run: nothing written; --out DIR writes the scripts there)" in proc.stdout


# ---- throughput measured by finished elements ----------------------------------------------------------

MEASURED = """\
name: measured
output_dir: {out}
models:
  - {{alias: tiny, source: {model}}}
prompts:
  - {{name: p, items: {prompts}}}
task: generate
decoding: {{max_new_tokens: 24, do_sample: false}}
execution: {{batch_size: 4{extra}}}
"""


def test_the_throughput_is_learned_from_the_experiments_finished_elements(tmp_path, tiny_llama, monkeypatch):
    """Units run here; submitting the same spec again takes the throughput they measured: the plan's cost of
    the units done over the batch seconds the sidecars recorded. A figure in the spec still wins. The tiny
    model's batches take well under MIN_SECONDS (10 s, the product's floor against measuring per-batch
    overhead), so the test lowers the floor to what they took: the rule under test is the arithmetic and
    where the figure comes from, not the floor."""
    import json

    from lmsweep.jobs.plan import plan_spec
    from lmsweep.jobs.spec import load_spec
    from lmsweep.submit import throughput
    from lmsweep.submit.packing import plan_unit_costs

    prompts = [f"Write a sentence about the number {i}." for i in range(16)]
    spec = tmp_path / "measured.yaml"
    spec.write_text(MEASURED.format(out=tmp_path / "runs", model=tiny_llama, prompts=prompts, extra=""))
    before = decision(cli("submit", str(spec), "--system", "local", "--dry-run", check=True).stdout)
    assert "throughput: 50 tokens/s per rank (system profile local's default;" in " ".join(before)

    cli("run", str(spec), "--quiet", check=True)
    exp = tmp_path / "runs" / "measured"
    seconds = sum(json.loads(p.read_text())["timers"]["task_s"] for p in (exp / "meta" / "history").iterdir())
    assert 0 < seconds < throughput.MIN_SECONDS
    # under the floor the measurement is not used
    assert "system profile local's default" in " ".join(
        decision(cli("submit", str(spec), "--system", "local", "--dry-run", check=True).stdout))
    monkeypatch.setattr(throughput, "MIN_SECONDS", seconds)
    expected = round(float(plan_unit_costs(plan_spec(load_spec(spec))).sum()) / seconds, 1)
    after = " ".join(decision(cli("submit", str(spec), "--system", "local", "--dry-run", check=True).stdout))
    assert (f"throughput: {expected:g} tokens/s per rank (measured by 1 finished element run(s) of this "
            "experiment on CPU; set execution.tokens_per_second to override)") in after
    # measured on CPU: no figure for an accelerator system
    gpu = " ".join(decision(cli("submit", str(spec), "--system", "polaris", "--account", "p", "--dry-run",
                                check=True).stdout))
    assert "throughput: 400 tokens/s per rank (system profile polaris's default;" in gpu

    spec.write_text(MEASURED.format(out=tmp_path / "runs", model=tiny_llama, prompts=prompts,
                                    extra=", tokens_per_second: 77"))
    pinned = " ".join(decision(cli("submit", str(spec), "--system", "local", "--dry-run", check=True).stdout))
    assert "throughput: 77 tokens/s per rank (execution.tokens_per_second)" in pinned
