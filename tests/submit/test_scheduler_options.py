"""A scheduler's block owns its options end to end (docs/adding-a-scheduler.md, "Options"): an option only a
new backend's block declares reaches its script and its record; `directives` carries a site's extra lines,
held to a safe charset; shared code names no backend's option."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import Field

from helpers.cli import cli
from helpers.pbs_rules import check_pbs_script
from lmsweep.submit import backends
from lmsweep.submit.backends import register
from lmsweep.submit.backends.pbs import PbsScheduler
from lmsweep.submit.base import ArrayJob, RecordedJob, Scheduler, TaskState
from lmsweep.submit.options import Flags, SchedulerBlock, SubmitOptions, resolve_options
from lmsweep.submit.render import body
from lmsweep.submit.systems import ProfileError, load_system

SUBMIT = Path(backends.__file__).parents[1]


def test_shared_modules_name_no_backends_option():
    """The common options, the script body and the interface know no scheduler and none of its options."""
    words = re.compile(r"\b(filesystems|place|qos|gpus_per_node|pbs|slurm)\b", re.IGNORECASE)
    for name in ("options.py", "render.py", "base.py"):
        found = words.findall((SUBMIT / name).read_text())
        assert not found, (name, found)


# ---- a backend whose block has an option no built-in scheduler knows -------------------------------------

class TierBlock(SchedulerBlock):
    """`execution.tier`: `lane` is the common queue; `burst` is this scheduler's alone."""

    lane: str | None = None
    burst: int | None = Field(None, ge=1, le=9)
    renamed = {"lane": "queue"}
    reserved = ("--name",)


class TierScheduler(Scheduler):
    name = "tier"
    script_suffix = ".tier"
    block = TierBlock
    uses_queues = True

    def render(self, job: ArrayJob) -> str:
        own = job.scheduler
        head = [f"#TIER --lane {job.queue}", f"#TIER --burst {own.get('burst', 1)}",
                *(f"#TIER {d}" for d in own.get("directives", ()))]
        return "\n".join(["#!/bin/bash", *head, *body(job, self.profile, "${TIER_INDEX:-0}", "tier")]) + "\n"

    def submit_command(self, script: Path) -> list[str]:
        return ["/bin/echo", "tier-7"]

    def parse_job_id(self, stdout: str) -> str:
        return stdout.strip()

    def query(self, jobs: list[RecordedJob]) -> dict[tuple[str, int], TaskState]:
        return {(j.job_id, i): TaskState(j.job_id, i, "failed", "F", f"{j.job_id}.{i}")
                for j in jobs for i in range(j.n_tasks)}

    def cancel_command(self, job_ids: list[str]) -> list[str]:
        return ["/bin/true", *job_ids]


PROFILE = """\
name: tier-site
scheduler: tier
gpus_per_node: 0
cpus_per_node: 2
ranks_per_node: 1
default_queue: slow
queues:
  slow: {min_nodes: 1, max_nodes: 2, max_walltime: "02:00:00", max_queued: 100, max_running: null,
         max_concurrent_subjobs: null, preemptable: false}
filesystems: []
launcher: mpiexec -n {nranks}
gpu_bind: ""
env_setup: []
max_array_size: null
directives: ["--site=a"]
"""

SPEC = """\
name: {name}
output_dir: {out}
models:
  - {{alias: tiny, source: {model}}}
prompts: ["Once upon a time", "The capital of France is"]
task: generate
decoding: {{max_new_tokens: 4}}
execution:
  walltime: "00:30:00"
{block}
"""


@pytest.fixture
def tier_backend():
    backends.backends()
    register(TierScheduler)
    yield TierScheduler
    backends.unregister("tier")


def spec_file(tmp_path: Path, model: Path, block: str, name: str = "tiered") -> Path:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(SPEC.format(name=name, out=json.dumps(str(tmp_path / "runs")), model=json.dumps(str(model)),
                                block=block))
    return spec


def scripts(stdout: str) -> list[str]:
    return re.split(r"^# ---- .* ----\n", stdout, flags=re.MULTILINE)[1:]


def test_an_option_only_a_new_block_declares_reaches_its_script_and_record(tmp_path, tiny_llama, tier_backend):
    profile = tmp_path / "tier-site.yaml"
    profile.write_text(PROFILE)
    spec = spec_file(tmp_path, tiny_llama, "  tier: {lane: slow, burst: 4, directives: [--extra=b]}")
    dry = cli("submit", str(spec), "--system", str(profile), "--dry-run", check=True)
    (script,) = scripts(dry.stdout)
    assert script.splitlines()[1:5] == ["#TIER --lane slow", "#TIER --burst 4", "#TIER --site=a", "#TIER --extra=b"]

    cli("submit", str(spec), "--system", str(profile), check=True)
    (record,) = (tmp_path / "runs" / "tiered" / "jobs").glob("sub-*/submission.json")
    options = json.loads(record.read_text())["options"]
    assert options["scheduler"] == {"burst": 4, "directives": ["--site=a", "--extra=b"]}
    restored = SubmitOptions.from_record(options)
    assert restored.record() == options and restored.scheduler["burst"] == 4
    # resubmit starts from the record: the option is still there
    again = cli("resubmit", str(tmp_path / "runs" / "tiered"), "--dry-run", check=True)
    assert "#TIER --burst 4\n#TIER --site=a\n#TIER --extra=b\n" in again.stdout


def test_a_new_blocks_unknown_key_is_refused_with_the_valid_ones(tmp_path, tiny_llama, tier_backend):
    spec = spec_file(tmp_path, tiny_llama, "  tier:\n    lane: slow\n    burts: 4")
    proc = cli("validate", str(spec))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {spec}:12: execution.tier.burts: unknown key (did you mean 'burst'?); "
                                   "expected one of: directives, lane, burst")


# ---- extra directives on the shipped backends ------------------------------------------------------------

def test_a_slurm_dry_run_shows_the_extra_directives_after_its_own(tmp_path, tiny_llama):
    spec = spec_file(tmp_path, tiny_llama,
                     '  slurm: {partition: debug, directives: ["--constraint=gpu", "--mem=0"]}')
    (script,) = scripts(cli("submit", str(spec), "--system", "slurm-generic", "--dry-run", check=True).stdout)
    sbatch = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert sbatch[-2:] == ["#SBATCH --constraint=gpu", "#SBATCH --mem=0"]
    assert "#SBATCH --error=logs/%j.err" in sbatch


def test_a_pbs_dry_run_shows_them_and_passes_the_alcf_rules(tmp_path, tiny_llama):
    spec = spec_file(tmp_path, tiny_llama,
                     '  pbs: {account: myproj, directives: ["-m be", "-M me@example.org"]}')
    (script,) = scripts(cli("submit", str(spec), "--system", "polaris", "--dry-run", check=True).stdout)
    assert [line for line in script.splitlines() if line.startswith("#PBS")][-2:] == ["#PBS -m be",
                                                                                    "#PBS -M me@example.org"]
    assert check_pbs_script(script, "polaris") == []


@pytest.mark.parametrize(("block", "key", "why"), [
    ('slurm: {directives: ["--comment=a;id"]}', "slurm.directives[0]", "must be a flag"),
    ('slurm: {directives: ["--comment=$(id)"]}', "slurm.directives[0]", "must be a flag"),
    ('slurm: {directives: ["--mem=0", "--x=`id`"]}', "slurm.directives[1]", "must be a flag"),
    ('pbs: {directives: ["-l debug=true\\n#PBS -q evil"]}', "pbs.directives[0]", "must be a flag"),
    ('pbs: {directives: ["-m be\\n"]}', "pbs.directives[0]", "must be a flag"),
    ('slurm: {directives: ["--mem=0 | id"]}', "slurm.directives[0]", "must be a flag"),
    ('slurm: {directives: ["--array=0-9"]}', "slurm.directives[0]", "sets --array, which lmsweep sets itself"),
    ('slurm: {directives: ["--arr=0-9"]}', "slurm.directives[0]", "sets --array, which lmsweep sets itself"),
    ('slurm: {directives: ["-J evil"]}', "slurm.directives[0]", "sets -J, which lmsweep sets itself"),
    ('slurm: {directives: ["--output=/tmp/x"]}', "slurm.directives[0]", "sets --output"),
    ('pbs: {directives: ["-l debug=true,walltime=99:00:00"]}', "pbs.directives[0]", "sets -l walltime"),
    ('pbs: {directives: ["-lselect=9"]}', "pbs.directives[0]", "sets -l select"),
])
def test_a_bad_directive_is_one_line_naming_its_key(tmp_path, tiny_llama, block, key, why):
    spec = spec_file(tmp_path, tiny_llama, "  " + block)
    proc = cli("validate", str(spec))
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {spec}:10: execution.{key}: directive ") and why in line, line


@pytest.mark.parametrize(("line", "ok"), [
    ("--mem=0", True), ("--constraint=a100", True), ("-l debug=true", True), ("-M me@example.org", True),
    ("--time-min=00:10:00", True), ("-Jx", False), ("-J x", False), ("--arr=0-3", False),
    ("-l ngpus=4,walltime=9:00:00", False), ("-W depend=afterok:1", False), ("-W group_list=g", True),
])
def test_a_directive_may_not_set_what_lmsweep_sets(line, ok):
    from lmsweep.submit.options import directive
    reserved = ("-J", "--array", "-l walltime", "-W depend")
    if ok:
        assert directive(line, reserved) == line
    else:
        with pytest.raises(ValueError, match="which lmsweep sets itself"):
            directive(line, reserved)


def test_an_unknown_slurm_key_gets_a_did_you_mean_and_the_valid_ones(tmp_path, tiny_llama):
    spec = spec_file(tmp_path, tiny_llama, "  slurm:\n    partition: debug\n    directive: [--mem=0]")
    proc = cli("validate", str(spec))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: {spec}:12: execution.slurm.directive: unknown key (did you mean 'directives'?); expected one of: "
        "directives, partition, account, qos, gpus_per_node, time, array_limit")


def test_a_profiles_directives_are_checked_at_their_line(tmp_path):
    text = (Path(load_system("slurm-generic").source).read_text()
            + 'directives: ["--constraint=gpu", "--time=1:00:00"]\n')
    path = tmp_path / "slurm-generic.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError, match=r"slurm-generic\.yaml:\d+: directives\.1: directive '--time=1:00:00' "
                                           r"sets --time, which lmsweep sets itself") as info:
        load_system(path)
    assert info.value.exit_code == 2


# ---- records of older versions ---------------------------------------------------------------------------

OLD_PBS_RECORD = {"queue": "debug", "account": "myproj", "walltime": "00:30:00", "nodes": 1, "ranks": None,
                  "ranks_per_node": 4, "cpus_per_rank": 8, "array_limit": None, "python": "/soft/py",
                  "filesystems": ["home", "eagle"], "place": "scatter:excl", "qos": None, "gpus_per_node": 0,
                  "preemptable": False}


def test_an_older_record_with_the_options_beside_the_common_ones_renders_as_before():
    sched = PbsScheduler(load_system("polaris"))
    opts = resolve_options(sched, Flags(), recorded=OLD_PBS_RECORD)
    assert opts.scheduler == {"filesystems": ["home", "eagle"], "place": "scatter:excl"}   # Slurm's are dropped
    assert SubmitOptions.from_record(json.loads(json.dumps(opts.record()))) == opts
    job = ArrayJob("x", "/eagle/myproj/runs/x", "sub-0001", 0, (0, 1), 1, 4, 8, "00:30:00", "debug", "myproj",
                   1, "/soft/py", scheduler=opts.scheduler)
    text = sched.render(job)
    assert "#PBS -l place=scatter:excl\n" in text and "#PBS -l filesystems=home:eagle\n" in text
    assert check_pbs_script(text, "polaris") == []
