"""`submit` warns when the experiment directory, the worker's interpreter or a model path lies under none of
the profile's `shared_paths` (directories the compute nodes see): the job would fail after its queue wait."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import REPO, cli, write_spec
from helpers.profiles import profile_copy
from lmsweep.errors import ProfileError
from lmsweep.submit.checks import node_local_root, under
from lmsweep.submit.systems import load_system

SHARED = "/lmsweep-shared-not-written"      # never created: a dry run writes nothing


def spec(tmp: Path) -> Path:
    return write_spec(tmp / "shared.yaml", f"""\
name: shared
output_dir: {SHARED}/runs
models:
  - {{alias: smollm2, source: package:smollm2-135m-instruct}}
prompts:
  - {{name: p, items: ["Once upon a time"]}}
task: generate
decoding: {{max_new_tokens: 4}}
""")


def model_path() -> str:
    from lmsweep.jobs.cli import validated
    _, plan = validated(str(REPO / "configs" / "quickstart.yaml"))
    return plan.models["smollm2"]["path"]


def warnings(proc) -> list[str]:
    return [x for x in proc.stderr.splitlines() if x.startswith("warning:")]


def test_paths_outside_the_profiles_shared_paths_are_warned_about(tmp_path):
    profile = profile_copy(tmp_path, "polaris", shared_paths=f"[{SHARED}]")
    proc = cli("submit", str(spec(tmp_path)), "--system", str(profile), "--account", "p", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    where = f"under none of polaris's shared_paths ({SHARED}): the compute nodes may not see it"
    expected = []
    if not node_local_root(sys.executable):   # a checkout under /tmp gets the node-local warning instead
        expected.append(f"warning: interpreter {sys.executable} is {where}; install lmsweep there and pass --python")
    if not node_local_root(model_path()):
        expected.append(f"warning: model smollm2's path {model_path()} is {where}; copy it there (or a shared "
                        f"HF_HOME there) and plan again")
    assert [w for w in warnings(proc) if "shared_paths" in w] == expected
    assert not any("experiment directory" in w for w in warnings(proc))        # it is under SHARED
    assert not Path(SHARED).exists()


def test_paths_under_the_shared_paths_get_no_warning(tmp_path):
    roots = sorted({str(Path(sys.executable).parent), str(Path(model_path()).parent), SHARED})
    profile = profile_copy(tmp_path, "polaris", shared_paths="[" + ", ".join(roots) + "]")
    proc = cli("submit", str(spec(tmp_path)), "--system", str(profile), "--account", "p", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert not [w for w in warnings(proc) if "shared_paths" in w]


def test_the_experiment_directory_outside_them_is_warned_about(tmp_path):
    profile = profile_copy(tmp_path, "frontier")
    proc = cli("submit", str(spec(tmp_path)), "--system", str(profile), "--account", "abc123", "--dry-run")
    assert (f"warning: experiment directory {SHARED}/runs/shared is under none of frontier's shared_paths "
            "(/lustre/orion, /ccs/home, /ccs/proj): the compute nodes may not see it; pass --output-dir on one of "
            "them") in warnings(proc)


def test_profiles_without_shared_paths_and_one_machine_backends_do_not_check(tmp_path):
    for system in ("slurm-generic", "local"):
        proc = cli("submit", str(spec(tmp_path)), "--system", system, "--dry-run")
        assert proc.returncode == 0, proc.stderr
        assert not [w for w in warnings(proc) if "shared_paths" in w]


def test_under_follows_symlinks_and_whole_components(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert under(tmp_path / "link" / "x", (str(tmp_path / "real"),))
    assert not under(tmp_path / "realm" / "x", (str(tmp_path / "real"),))


@pytest.mark.parametrize("value", ["[relative/dir]", "[/]"])
def test_shared_paths_must_be_absolute_directories(tmp_path, value):
    with pytest.raises(ProfileError, match=r"polaris.yaml:\d+: shared_paths: expected absolute directories other "):
        load_system(profile_copy(tmp_path, "polaris", shared_paths=value))


def test_pbs_scripts_set_pbs_account_where_the_server_does_not(tmp_path):
    """Polaris's HF_HOME default uses PBS_ACCOUNT; the script sets it from the rendered -A when it is unset."""
    out = tmp_path / "scripts"
    cli("submit", str(spec(tmp_path)), "--system", "polaris", "--account", "MYPROJ", "--dry-run", "--out", str(out),
        check=True)
    [text] = [p.read_text() for p in out.iterdir()]
    lines = text.splitlines()
    account = lines.index('export PBS_ACCOUNT="${PBS_ACCOUNT:-MYPROJ}"')
    hf_home = next(i for i, x in enumerate(lines) if x.startswith("export HF_HOME="))
    assert all(x.startswith(("#!", "#PBS")) for x in lines[:account]) and account < hf_home
    snippet = "\n".join([lines[account], lines[hf_home], 'echo "$HF_HOME"'])
    env = {k: v for k, v in os.environ.items() if k not in ("PBS_ACCOUNT", "HF_HOME")}
    run = subprocess.run(["bash", "-c", snippet], capture_output=True, text=True, env=env, check=True)
    assert run.stdout.strip() == "/eagle/MYPROJ/hf_home"
    run = subprocess.run(["bash", "-c", snippet], capture_output=True, text=True, check=True,
                         env={**env, "PBS_ACCOUNT": "FROMPBS"})
    assert run.stdout.strip() == "/eagle/FROMPBS/hf_home"
