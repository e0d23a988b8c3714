"""The Slurm GPU site profiles (NERSC Perlmutter, OLCF Frontier, the generic slurm-gpu): their limits agree
with an oracle written from each site's documentation (tests/helpers/slurm_rules.py), and the scripts a dry
run renders pass it."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers.cli import cli, write_spec
from helpers.slurm_rules import SITES, check_slurm_script, directives
from lmsweep.submit.systems import load_system


def spec(tmp: Path, model: Path, extra: str = "") -> Path:
    return write_spec(tmp / "sweep.yaml", f"""\
name: sweep
output_dir: {tmp / "runs"}
models:
  - {{alias: tiny, source: {model}}}
prompts:
  - {{name: p, items: ["Once upon a time", "The capital of"]}}
task: generate
decoding: {{max_new_tokens: 16, seeds: [0, 1, 2]}}
execution:
  walltime: "00:30:00"
{extra}""")


def render(tmp: Path, model: Path, system: str, *flags: str, extra: str = "") -> list[str]:
    out = tmp / f"out-{system}-{'-'.join(flags) or 'default'}"
    proc = cli("submit", str(spec(tmp, model, extra)), "--system", system, "--account", "m1234", "--dry-run",
               "--out", str(out), *flags)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (tmp / "runs").exists()
    return [p.read_text() for p in sorted(out.iterdir())]


@pytest.mark.parametrize("site", ["perlmutter", "frontier"])
def test_the_profile_agrees_with_the_sites_rules(site):
    p, rule = load_system(site), SITES[site]
    assert (p.gpus_per_node, p.cpus_per_node) == (rule.gpus, rule.cores)
    assert p.ranks_per_node * p.cpus_per_rank <= rule.cores
    for q in p.queues.values():
        qos = q.qos or ""
        limits = rule.qos[qos]
        partition = q.partition or (None if q.qos else q.name)
        if partition is not None:
            assert partition in rule.partitions, q.name
            if rule.partition_rules and partition in rule.partition_rules and qos != "debug":
                limits = rule.partition_rules[partition]
        assert limits.min_nodes <= q.min_nodes <= q.max_nodes <= limits.max_nodes, q.name
        assert q.max_walltime_seconds <= limits.max_walltime_s, q.name
        assert q.max_queued is not None and q.max_queued <= limits.max_jobs, q.name
        if partition == "batch" and qos != "debug":       # each batch queue is one bin, at the bin's walltime
            assert (q.min_nodes, q.max_nodes, q.max_walltime_seconds) in rule.batch_bins, q.name


@pytest.mark.parametrize(("site", "flags", "want"), [
    ("perlmutter", (), {"--qos": "regular", "--constraint": "gpu", "--gpus-per-node": "4"}),
    ("perlmutter", ("--queue", "debug"), {"--qos": "debug"}),
    ("frontier", (), {"--partition": "batch", "--gpus-per-node": "8", "--cpus-per-task": "7"}),
    ("frontier", ("--queue", "extended", "--walltime", "03:00:00"), {"--partition": "extended"}),
    ("frontier", ("--queue", "debug"), {"--partition": "batch", "--qos": "debug"}),
])
def test_dry_run_scripts_pass_the_sites_rules(tmp_path, tiny_llama, site, flags, want):
    scripts = render(tmp_path, tiny_llama, site, *flags)
    for text in scripts:
        assert check_slurm_script(text, site) == []
        got = dict(directives(text))
        assert {k: got.get(k) for k in want} == want
        if site == "perlmutter":
            assert "--partition" not in got and got["--account"] == "m1234"


def test_the_checker_catches_what_the_sites_refuse(tmp_path, tiny_llama):
    """The oracle is not vacuous: each broken line is named."""
    [text] = render(tmp_path, tiny_llama, "perlmutter")
    unconstrained = text.replace("#SBATCH --constraint=gpu\n", "")
    assert check_slurm_script(unconstrained, "perlmutter") == ["missing --constraint=gpu"]
    assert "--partition=gpu" in check_slurm_script(
        text.replace("#SBATCH --qos=regular", "#SBATCH --partition=gpu\n#SBATCH --qos=regular"), "perlmutter")[0]
    [text] = render(tmp_path, tiny_llama, "frontier")
    late = text.replace("--time=00:30:00", "--time=03:00:00")
    assert check_slurm_script(late, "frontier") == ["--time=03:00:00 above the 2 h of the 1-node bin"]
    assert any("CUDA_VISIBLE_DEVICES" in p for p in check_slurm_script(
        text.replace("--gpus-per-task=1 ", "") + "# CUDA_VISIBLE_DEVICES\n", "frontier"))


def test_frontier_batch_refuses_a_walltime_above_its_bin(tmp_path, tiny_llama):
    proc = cli("submit", str(spec(tmp_path, tiny_llama)), "--system", "frontier", "--account", "abc123",
               "--walltime", "03:00:00", "--dry-run")
    assert proc.returncode == 2
    assert "walltime 03:00:00 is above the maximum of frontier queue batch (1-91 nodes, <= 02:00:00" in proc.stderr


def test_a_qos_that_contradicts_the_queue_is_refused(tmp_path, tiny_llama):
    proc = cli("submit", str(spec(tmp_path, tiny_llama, "  slurm: {qos: premium}")), "--system", "perlmutter",
               "--dry-run")
    assert proc.returncode == 2
    assert "queue regular of system perlmutter is QOS regular" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_slurm_gpu_is_a_template_that_renders_one_gpu_per_rank(tmp_path, tiny_llama):
    [text] = render(tmp_path, tiny_llama, "slurm-gpu")
    got = dict(directives(text))
    assert (got["--partition"], got["--gpus-per-node"], got["--ntasks-per-node"]) == ("gpu", "4", "4")
    assert "export CUDA_VISIBLE_DEVICES=$SLURM_LOCALID; exec" in text


def test_a_pbs_queue_cannot_name_a_partition_or_qos(tmp_path):
    from helpers.profiles import profile_copy
    from lmsweep.errors import ProfileError
    path = profile_copy(tmp_path, "polaris")
    path.write_text(path.read_text().replace("  debug:\n", "  debug:\n    qos: x\n", 1))
    with pytest.raises(ProfileError, match=r"polaris.yaml:\d+: queues.debug.qos: scheduler pbs takes no queue qos"):
        load_system(path)
