"""`lmsweep systems`: the shipped profiles listed, one shown, one copied to edit; a did-you-mean for --system."""
from __future__ import annotations

from helpers.cli import cli, write_spec
from lmsweep.submit.systems import list_systems, load_system


def test_systems_lists_every_shipped_profile_with_scheduler_gpus_and_queues():
    proc = cli("systems", check=True)
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[1:] if line.split()}
    for name in list_systems():
        p = load_system(name)
        assert p.scheduler in rows[name]
        assert all(q in rows[name] for q in p.queues)
    assert "4" in rows["polaris"].split() and "none (CPU)" in rows["local"]


def test_systems_show_prints_the_queues_and_their_limits():
    out = cli("systems", "show", "polaris", check=True).stdout
    assert "scheduler: pbs" in out and "4 GPU(s), 32 cores, 4 rank(s) (8 core(s) each)" in out
    assert "  prod: 10-496 nodes, <= 24:00:00, 100 queued limit, 10 running limit, %10" in out
    assert "  preemptable: 1-10 nodes, <= 72:00:00" in out and "preemptable" in out
    assert "export CUDA_VISIBLE_DEVICES=$((3 - PMI_LOCAL_RANK % 4))" in out


def test_systems_show_unknown_name_suggests_the_case_insensitive_match():
    proc = cli("systems", "show", "Polaris")
    assert proc.returncode == 2
    assert "unknown system 'Polaris' (did you mean 'polaris'?)" in proc.stderr


def test_systems_new_writes_a_renamed_copy_that_loads(tmp_path):
    dest = tmp_path / "mysite.yaml"
    proc = cli("systems", "new", "--from", "slurm-generic", str(dest), check=True)
    assert "wrote" in proc.stdout and dest.is_file()
    copy = load_system(dest)
    original = load_system("slurm-generic")
    assert copy.name == "mysite"
    assert (copy.queues, copy.launcher, copy.env_setup) == (original.queues, original.launcher, original.env_setup)


def test_systems_new_into_a_directory_keeps_the_name_and_refuses_to_overwrite(tmp_path):
    cli("systems", "new", "--from", "polaris", str(tmp_path), check=True)
    assert load_system(tmp_path / "polaris.yaml").name == "polaris"
    again = cli("systems", "new", "--from", "polaris", str(tmp_path))
    assert again.returncode == 2 and "exists; pass --force" in again.stderr


def test_systems_new_refuses_a_file_name_that_is_no_profile_name(tmp_path):
    proc = cli("systems", "new", "--from", "polaris", str(tmp_path / "My Site.yaml"))
    assert proc.returncode == 2 and "cannot be written" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_submit_with_a_misspelt_system_gets_a_did_you_mean(tmp_path, tiny_llama):
    spec = write_spec(tmp_path / "s.yaml", f"""\
name: s
output_dir: {tmp_path / "runs"}
models:
  - {{alias: tiny, source: {tiny_llama}}}
prompts:
  - {{name: p, items: ["Once upon a time"]}}
task: generate
decoding: {{max_new_tokens: 4}}
""")
    for asked in ("Polaris", "polaries"):
        proc = cli("submit", str(spec), "--system", asked, "--dry-run")
        assert proc.returncode == 2
        assert f"--system: unknown system '{asked}' (did you mean 'polaris'?)" in proc.stderr
        assert not (tmp_path / "runs").exists()
