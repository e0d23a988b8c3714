"""PBS scripts for Polaris and Aurora: checked by the strict ALCF parser, then run here.

No PBS server installs from the registries, so (as shared/design.md plans it):
1. rendered scripts must pass tests/pbs_rules.check_pbs_script;
2. the rendered body runs locally with the variables the PBS MoM sets and the venv's real MPICH
   `mpiexec`. ALCF's launcher line uses Cray PALS flags (`--depth`, `--cpu-bind`) and PALS sets
   PMI_LOCAL_RANK / PALS_LOCAL_RANKID, which Hydra does not: a 10-line adapter named `mpiexec`
   drops those two flags, exports the PALS rank variables from Hydra's MPI_LOCALRANKID and execs the
   real Hydra `mpiexec` — the profile's launcher line itself is used unchanged. `module`/`conda` (the
   profile's site setup) are stubs that log their arguments, and the body runs with `bash` rather
   than `bash -l` (a login shell would reset PATH from /etc/profile).
3. `qsub`/`qstat`/`qdel` are stand-ins that record what they are given and replay the real
   OpenPBS transcripts in tests/fixtures/pbs, so submit/status/cancel run their real code paths.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lmsweep
from helpers.cli import FIXTURES as REPO_FIXTURES
from helpers.cli import cli
from helpers.pbs_rules import check_pbs_script
from helpers.profiles import profile_copy
from lmsweep.submit.backends.pbs import PbsScheduler
from lmsweep.submit.base import ArrayJob
from lmsweep.submit.jobs_dir import load_submissions
from lmsweep.submit.packing import PackingError, PackRequest, pack
from lmsweep.submit.systems import load_system

FIXTURES = REPO_FIXTURES / "pbs"
MPIEXEC = Path(sys.executable).with_name("mpiexec")

SHIMS = {
    "mpiexec": """#!/bin/bash
# Cray PALS mpiexec flags -> MPICH Hydra (see the module docstring of tests/test_pbs_render.py)
args=()
while (($#)); do
    case $1 in
        --depth|--cpu-bind) shift 2 ;;
        --depth=*|--cpu-bind=*) shift ;;
        -n|--ppn|--hostfile) args+=("$1" "$2"); shift 2 ;;
        *) break ;;
    esac
done
# Hydra's mpiexec writes to its proxies without ignoring SIGPIPE, and when the ranks exit within milliseconds
# (the canary does) it dies of SIGPIPE in ~10% of launches on a busy machine (exit 141). PALS is not Hydra, and
# a real rank lives for seconds: ignore SIGPIPE here, and Hydra reads the closed socket as the proxy gone.
trap '' PIPE
exec {mpiexec} "${{args[@]}}" /bin/bash -c \\
    'export PMI_LOCAL_RANK=$MPI_LOCALRANKID PALS_LOCAL_RANKID=$MPI_LOCALRANKID; exec "$@"' pals "$@"
""",
    "module": '#!/bin/bash\necho "module $*" >> "$SHIM_LOG"\n',
    "conda": '#!/bin/bash\necho "conda $*" >> "$SHIM_LOG"\n',
    "qsub": """#!/bin/bash
echo "qsub $* (in $PWD)" >> "$SHIM_LOG"
if grep -q '^#PBS -J' "$1"; then echo "5[].pbshost"; else echo "4.pbshost"; fi
""",
    "qstat": '#!/bin/bash\necho "qstat $*" >> "$SHIM_LOG"\ncat "$FAKE_QSTAT"\n',
    "qdel": '#!/bin/bash\necho "qdel $*" >> "$SHIM_LOG"\n',
}

CANARY_PYTHON = """#!/bin/bash
# stands in for python: shows what one rank was started with (and, apart, the job's preflight call)
if [ "$2" = lmsweep.submit.preflight ]; then echo "$*" >> "$CANARY_LOG.preflight"; exit 0; fi
echo "rank=$PMI_LOCAL_RANK cuda=${CUDA_VISIBLE_DEVICES-unset} ze=${ZE_AFFINITY_MASK-unset} args=$*" >> "$CANARY_LOG"
"""


def make_shims(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in SHIMS.items():
        (directory / name).write_text(text.format(mpiexec=MPIEXEC) if name == "mpiexec" else text)
        (directory / name).chmod(0o755)
    return directory


def pbs_env(shims: Path, tmp: Path, index: int | None, workdir: Path, nodes: int = 1, ncpus: int = 2) -> dict:
    """What the PBS MoM sets for a (sub)job (fixture 07_subjob_env_index1.txt), plus the shims."""
    nodefile = tmp / "nodefile"
    nodefile.write_text("localhost\n" * nodes)
    job = "5[].pbshost" if index is not None else "4.pbshost"
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "SHIM_LOG": str(tmp / "shim.log"),
           "PBS_JOBID": job.replace("[]", f"[{index}]") if index is not None else job,
           "PBS_JOBNAME": "lms-x", "PBS_NODEFILE": str(nodefile), "PBS_O_WORKDIR": str(workdir),
           "PBS_ENVIRONMENT": "PBS_BATCH", "TMPDIR": str(tmp), "NCPUS": str(ncpus), "PBS_ACCOUNT": "myproj"}
    if index is not None:
        env |= {"PBS_ARRAY_INDEX": str(index), "PBS_ARRAY_ID": job}
    return env


def run_body(script: Path, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=env["PBS_O_WORKDIR"])


def scripts_in(stdout: str) -> list[str]:
    """The scripts a `--dry-run` printed, each after its `# ---- path ----` line."""
    parts = re.split(r"^# ---- .* ----\n", stdout, flags=re.MULTILINE)
    return parts[1:]


def render(system: str, queue: str, n_units: int, *, ranks: int | None = None, nodes: int | None = None,
           walltime: str = "01:00:00", tps: float = 50.0, account: str = "myproj", models: int = 1) -> str:
    profile = load_system(system)
    q = profile.queue(queue)
    req = PackRequest(system, q, profile.ranks_per_node, walltime, tps, nodes=nodes, ranks=ranks)
    packing = pack([f"m{i % models}" for i in range(n_units)], np.full(n_units, 300.0), req)
    job = ArrayJob("sweep", "/eagle/myproj/runs/sweep", "sub-0001", 0, packing.arrays[0], packing.nodes,
                   packing.ranks_per_node, profile.cpus_per_rank, walltime, queue, account, packing.throttle,
                   "/soft/venv/bin/python", preemptable=q.preemptable)
    return PbsScheduler(profile).render(job)


def directives(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#PBS ")]


# ---- 1. the strict parser --------------------------------------------------------------------------------

def test_polaris_prod_array_follows_alcf_rules():
    text = render("polaris", "prod", 1_000_000)
    assert check_pbs_script(text, "polaris") == []
    d = directives(text)
    assert "#PBS -A myproj" in d and "#PBS -q prod" in d and "#PBS -l place=scatter" in d
    assert "#PBS -l select=10:system=polaris" in d and "#PBS -l filesystems=home:eagle" in d
    assert "#PBS -l walltime=01:00:00" in d and "#PBS -r y" in d
    (array,) = [x for x in d if x.startswith("#PBS -J")]
    assert re.fullmatch(r"#PBS -J 0-(\d+)%10", array) and int(array.split("-")[2].split("%")[0]) < 100
    assert "mpiexec -n 40 --ppn 4 --depth 8 --cpu-bind depth" in text
    assert "export CUDA_VISIBLE_DEVICES=$((3 - PMI_LOCAL_RANK % 4))" in text
    assert "PBS_ARRAY_INDEX" in text and "module load conda" in text and "export HF_HUB_OFFLINE=1" in text


def test_polaris_debug_single_job_has_no_array():
    text = render("polaris", "debug", 10)
    assert check_pbs_script(text, "polaris") == []
    assert not [x for x in directives(text) if x.startswith(("#PBS -J", "#PBS -r"))]
    assert "#PBS -l select=1:system=polaris" in text and "#PBS -o logs/job.out" in text


def test_polaris_preemptable_single_job_is_rerunnable():
    text = render("polaris", "preemptable", 10)
    assert check_pbs_script(text, "polaris") == [] and "#PBS -r y" in text


@pytest.mark.parametrize("queue, nodes, n_units", [("debug", 1, 2_000), ("prod", 256, 2_000_000)])
def test_aurora_scripts_follow_alcf_rules(queue, nodes, n_units):
    text = render("aurora", queue, n_units, tps=20.0)
    assert check_pbs_script(text, "aurora") == []
    assert f"#PBS -l select={nodes}:system=aurora" in text and "#PBS -l filesystems=home:flare" in text
    assert f"mpiexec -n {nodes * 12} --ppn 12 --cpu-bind list:1-8:" in text
    assert "export ZE_AFFINITY_MASK=$((PALS_LOCAL_RANKID % 12))" in text and "module load frameworks" in text
    assert ("#PBS -J 0-" in text) == (queue == "prod")   # Aurora debug queues one job per user


def test_aurora_debug_refuses_more_than_one_job():
    with pytest.raises(PackingError, match=r"more than the 1 jobs aurora queue debug"):
        render("aurora", "debug", 200_000)


def test_rendering_is_pure():
    assert render("polaris", "prod", 5000) == render("polaris", "prod", 5000)


def test_strict_parser_rejects_what_pbs_would():
    """Guard that the oracle bites: the same script with the throttle dropped fails on prod."""
    text = render("polaris", "prod", 1_000_000)
    broken = re.sub(r"(#PBS -J 0-\d+)%10", r"\1", text)
    assert any("throttle" in e for e in check_pbs_script(broken, "polaris"))


# ---- 2. the CLI: --dry-run, refusal --------------------------------------------------------------------

SPEC = """
name: {name}
output_dir: {out}
models:
  - {{alias: tiny, source: {model}}}
prompts: {prompts}
task: generate
decoding: {{max_new_tokens: 4}}
execution:
  threads_per_rank: 1
  max_units_per_element: {per_element}
{extra}
"""


def write_spec(tmp: Path, model: Path, name: str = "pbsrun", prompts=("Once upon a time", "The capital of",
               "My dog", "I skip"), per_element: int = 2, extra: str = "  pbs: {account: myproj}") -> Path:
    spec = tmp / f"{name}.yaml"
    spec.write_text(SPEC.format(name=name, out=tmp / "runs", model=model, prompts=list(prompts),
                                per_element=per_element, extra=extra))
    return spec


def test_dry_run_prints_decision_and_valid_scripts_and_writes_nothing(tmp_path, tiny_llama):
    spec = write_spec(tmp_path, tiny_llama)
    proc = cli("submit", str(spec), "--system", "polaris", "--dry-run", check=True)
    assert "packing decision:" in proc.stdout and "per element: 1 node(s) x 4 rank(s)" in proc.stdout
    (script,) = scripts_in(proc.stdout)
    assert check_pbs_script(script, "polaris") == []
    assert "#PBS -J 0-1%1" in script and "#PBS -q debug" in script
    assert not (tmp_path / "runs").exists()


def test_one_gpu_per_element_on_polaris_prod_is_refused(tmp_path, tiny_llama):
    spec = write_spec(tmp_path, tiny_llama, extra="  ranks_per_element: 1\n  pbs: {account: myproj, queue: prod}")
    proc = cli("submit", str(spec), "--system", "polaris", "--dry-run")
    assert proc.returncode == 2
    assert "one GPU per array element" in proc.stderr and "10-496 nodes" in proc.stderr
    assert "lmsweep packs few large elements (10 nodes x 4 ranks each)" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_pbs_needs_a_project(tmp_path, tiny_llama):
    spec = write_spec(tmp_path, tiny_llama, extra="")
    proc = cli("submit", str(spec), "--system", "aurora", "--dry-run")
    assert proc.returncode == 2 and "execution.pbs.account" in proc.stderr and "--account" in proc.stderr


# ---- 3. the body runs here -------------------------------------------------------------------------------

@pytest.mark.parametrize("system, queue, ranks, bind", [("polaris", "debug", 4, ["3", "2", "1", "0"]),
                                                         ("aurora", "capacity", 12, [str(i) for i in range(12)])])
def test_body_maps_index_to_element_and_binds_one_gpu_per_rank(tmp_path, system, queue, ranks, bind):
    """The rendered body with a canary in place of python: which element, which GPU per local rank."""
    shims = make_shims(tmp_path / "shims")
    canary = tmp_path / "canary-python"
    canary.write_text(CANARY_PYTHON)
    canary.chmod(0o755)
    profile = load_system(system)
    job = ArrayJob("sweep", str(tmp_path / "exp"), "sub-0001", 0, (4, 5, 6), 1, profile.ranks_per_node, 1,
                   "00:30:00", queue, "myproj", 1, str(canary))
    (tmp_path / "exp").mkdir()
    script = tmp_path / "job.pbs"
    script.write_text(PbsScheduler(profile).render(job))
    assert check_pbs_script(script.read_text(), system) == []
    env = pbs_env(shims, tmp_path, 2, tmp_path, ncpus=profile.cpus_per_node) | {"CANARY_LOG": str(tmp_path / "c.log")}
    proc = run_body(script, env)
    assert proc.returncode == 0, proc.stderr
    assert "index 2 -> element 6" in proc.stdout
    lines = (tmp_path / "c.log").read_text().splitlines()
    assert len(lines) == ranks
    device = "cuda" if system == "polaris" else "ze"
    got = {re.search(r"rank=(\d+)", x).group(1): re.search(rf"{device}=(\S+)", x).group(1) for x in lines}
    assert [got[str(r)] for r in range(ranks)] == bind
    assert all(x.endswith(f"-m lmsweep worker --plan {tmp_path / 'exp'} --element 6") for x in lines)
    mpi = "CRAY MPICH" if system == "polaris" else "MPICH"    # once per job, before the launcher
    assert (tmp_path / "c.log.preflight").read_text() == f"-m lmsweep.submit.preflight --mpi-library {mpi}\n"
    assert "module load" in (tmp_path / "shim.log").read_text()


def test_body_refuses_an_index_outside_the_array(tmp_path):
    profile = load_system("polaris")
    job = ArrayJob("sweep", str(tmp_path), "sub-0001", 0, (0, 1), 1, 4, 8, "00:30:00", "debug", "p", 1,
                   "/bin/false")
    script = tmp_path / "job.pbs"
    script.write_text(PbsScheduler(profile).render(job))
    proc = run_body(script, pbs_env(make_shims(tmp_path / "shims"), tmp_path, 7, tmp_path))
    assert proc.returncode == 2 and "out of range 0-1" in proc.stderr


def preflight_script(tmp_path: Path, python: str, profile) -> Path:
    job = ArrayJob("sweep", str(tmp_path / "exp"), "sub-0001", 0, (4, 5, 6), 1, 2, 1, "00:30:00", "debug",
                   "myproj", 1, python)
    (tmp_path / "exp").mkdir(exist_ok=True)
    script = tmp_path / "job.pbs"
    script.write_text(PbsScheduler(profile).render(job))
    return script


def test_preflight_stops_an_element_whose_mpi4py_is_not_the_sites(tmp_path):
    """This venv's mpi4py runs on the pip `mpich` wheel, not Cray MPICH: on Polaris the job stops before the
    launcher with exit 4 and says what it found, instead of starting ranks on the wrong MPI."""
    script = preflight_script(tmp_path, sys.executable, load_system("polaris"))
    proc = run_body(script, pbs_env(make_shims(tmp_path / "shims"), tmp_path, 2, tmp_path))
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "lmsweep: preflight: mpi4py's MPI library is not 'CRAY MPICH' (found: 'MPICH Version:" in proc.stderr
    assert "preflight failed on" in proc.stderr
    assert "element 6 not started (exit 4; docs/cluster.md#which-python-runs-the-worker)" in proc.stderr
    assert "index 2 -> element 6" in proc.stdout and "exited" not in proc.stdout   # the launcher never ran


def test_preflight_stops_an_element_whose_interpreter_is_missing_on_the_node(tmp_path):
    gone = tmp_path / "login-node-only" / "bin" / "python"
    script = preflight_script(tmp_path, str(gone), load_system("aurora"))
    proc = run_body(script, pbs_env(make_shims(tmp_path / "shims"), tmp_path, 0, tmp_path))
    assert proc.returncode == 4
    assert f"lmsweep: preflight: interpreter {gone} not found on" in proc.stderr and "exited" not in proc.stdout


def test_preflight_passes_the_expected_mpi_and_the_launcher_runs(tmp_path):
    """A site profile expecting MPICH (what this venv has): the check passes, says what it found, and the
    launcher starts the worker (which then refuses the empty experiment: no plan.json)."""
    profile = load_system(profile_copy(tmp_path, "polaris", mpi_library="MPICH"))
    script = preflight_script(tmp_path, sys.executable, profile)
    proc = run_body(script, pbs_env(make_shims(tmp_path / "shims"), tmp_path, 1, tmp_path))
    assert re.search(r"lmsweep: preflight ok: python 3\.\d+\.\d+ \(.*\), lmsweep from .*, mpi4py [\d.]+ on MPICH "
                     r"Version:", proc.stdout), proc.stdout + proc.stderr
    assert "element 5 exited" in proc.stdout and proc.returncode not in (0, 4)


@pytest.mark.slow
def test_submitted_polaris_script_runs_the_worker_and_produces_its_element(tmp_path, tiny_llama):
    """`lmsweep submit --system polaris` (qsub stand-in), then subjob 1's recorded script runs with the
    PBS variables and MPICH's mpiexec (2 ranks) and writes exactly element 1's units. The profile is
    Polaris's with this venv's MPI (MPICH, not Cray MPICH) as the one its preflight expects."""
    shims = make_shims(tmp_path / "shims")
    spec = write_spec(tmp_path, tiny_llama, extra="  ranks_per_node: 2\n  pbs: {account: myproj, queue: debug}")
    env = pbs_env(shims, tmp_path, 1, tmp_path)
    polaris = profile_copy(tmp_path, "polaris", mpi_library="MPICH")
    proc = cli("submit", str(spec), "--system", str(polaris), env={"PATH": env["PATH"], "SHIM_LOG": env["SHIM_LOG"]},
                   check=True)
    assert "submitted 5[].pbshost" in proc.stdout
    exp = tmp_path / "runs" / "pbsrun"
    (sub,) = load_submissions(exp)
    script = sub.directory / sub.arrays[0].script
    assert check_pbs_script(script.read_text(), "polaris") == []
    assert f"qsub {script.name} (in {sub.directory})" in (tmp_path / "shim.log").read_text()

    env["PBS_O_WORKDIR"] = str(sub.directory)
    proc = run_body(script, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "index 1 -> element 1" in proc.stdout and "element 1 exited 0" in proc.stdout
    assert "lmsweep: preflight ok:" in proc.stdout
    df = lmsweep.load(exp)
    plan = lmsweep.status(exp).per_element.set_index("element")
    assert set(df["element"]) == {1} and df["unit_id"].nunique() == plan.loc[1, "planned"] == 2
    # the profile's launcher line started 2 MPI ranks that found each other as one element
    meta = json.loads((exp / "meta" / "element-00001.json").read_text())
    assert meta["world_size"] == 2 and sorted(r["rank"] for r in meta["ranks"]) == [0, 1]


def test_status_reads_every_subjob_not_the_array_parent(tmp_path, tiny_llama):
    """Six elements as `5[]`; the real final `qstat -xf -t 5[]` transcript has subjob 3 failed while the
    parent's Exit_status is 0. Status must show element 3 failed and the others finished."""
    shims = make_shims(tmp_path / "shims")
    prompts = [f"prompt {i}" for i in range(6)]
    spec = write_spec(tmp_path, tiny_llama, name="six", prompts=prompts, per_element=1)
    env = {"PATH": f"{shims}:{os.environ['PATH']}", "SHIM_LOG": str(tmp_path / "shim.log"),
           "FAKE_QSTAT": str(FIXTURES / "02_qstat_xf_t_final.stdout.txt")}
    cli("submit", str(spec), "--system", "polaris", env=env, check=True)
    exp = tmp_path / "runs" / "six"
    proc = cli("status", str(exp), env=env)
    assert proc.returncode == 1     # no units done: the jobs were never really run
    rows = {line.split("│")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("│ ")}
    assert "failed" in rows["3"] and "5[3].pbshost" in rows["3"]
    assert all("finished" in rows[str(i)] for i in (0, 1, 2, 4, 5))
    assert "qstat -x -f -t 5[].pbshost" in (tmp_path / "shim.log").read_text()
    assert "lmsweep resubmit" in proc.stdout

    # while the array runs, cancel deletes the whole array. The running array was captured only as
    # `qstat -f -F json -t`; its records are written out in the `-f` text form the backend asks for
    running = json.loads((FIXTURES / "02_qstat_f_json_t_running.stdout.json").read_text())["Jobs"]
    (tmp_path / "running.txt").write_text("".join(
        f"Job Id: {jid}\n" + "".join(f"    {k} = {v}\n" for k, v in attrs.items() if not isinstance(v, dict)) + "\n"
        for jid, attrs in running.items()))
    env["FAKE_QSTAT"] = str(tmp_path / "running.txt")
    proc = cli("cancel", str(exp), env=env, check=True)
    assert "cancelled 5[].pbshost" in proc.stdout
    assert "qdel 5[].pbshost" in (tmp_path / "shim.log").read_text()
