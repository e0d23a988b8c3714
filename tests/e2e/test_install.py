"""The installed product, away from the checkout: build the wheel, install it without `-e` into a fresh
venv, and from a temporary directory validate, dry-run a Polaris submission and run a small real job on
the packaged SmolLM2.

The fresh venv gets lmsweep from the wheel alone (`--no-deps`); its dependencies (torch, transformers, …)
come from the test venv's site-packages through a `.pth` line, which Python appends to sys.path without
running the `.pth` files there — so the test venv's editable install of lmsweep stays invisible.
"""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers.cli import REPO

pytestmark = pytest.mark.slow

PACKAGES = {"lmsweep": "lmsweep", "jobs": "lmsweep/jobs", "runner": "lmsweep/runner",
            "submit": "lmsweep/submit", "results": "lmsweep/results", "configs": "lmsweep/configs"}

SMALL = """\
name: installed
models:
  - {alias: smol, source: package:smollm2-135m-instruct}
prompts: ["The capital of France is", "Water boils at"]
task: generate
decoding: {max_new_tokens: 4}
"""


def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # Built from a copy, so setuptools' build/ and egg-info land outside the checkout; no build isolation:
    # the build backend (setuptools) is the test venv's, nothing is downloaded.
    source = tmp_path_factory.mktemp("source") / "lmsweep"
    # (".venv*": .venv-vllm alone is 3.9 GB in 71k files; copying it was most of this fixture's minute)
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv*", "runs", "build", "*.egg-info",
                                                                 "__pycache__", ".*_cache"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        cwd=out, env=dict(os.environ))
    (whl,) = out.glob("lmsweep-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, dict, set[str]]:
    """(the fresh venv's bin/, an environment for it, what `pip install` added to its site-packages)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = next((venv / "lib").glob("python3*/site-packages"))
    before = set(os.listdir(purelib))
    # The test venv's pip installs into the fresh venv (its scripts into venv/bin); --ignore-installed, or pip
    # would see the test venv's editable lmsweep and install nothing.
    run([sys.executable, "-m", "pip", "install", "--no-deps", "--ignore-installed", "--no-warn-script-location",
         "-q", "--prefix", str(venv), str(wheel)],
        cwd=venv, env=dict(os.environ))
    added = set(os.listdir(purelib)) - before
    (purelib / "zz_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1")
    return venv / "bin", env, added


def test_the_wheel_holds_every_module_and_the_package_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, inside in PACKAGES.items():
        source = REPO / folder
        for path in source.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".yaml"):
                assert f"{inside}/{path.relative_to(source).as_posix()}" in names, f"{path} is not in the wheel"
    assert "lmsweep/configs/systems/polaris.yaml" in names and "lmsweep/configs/prompts/game_reviews.yaml" in names


def test_install_puts_only_lmsweep_in_site_packages(installed):
    _, _, added = installed
    assert {n for n in added if not n.endswith(".dist-info")} == {"lmsweep"}
    assert [n for n in added if n.endswith(".dist-info")] == ["lmsweep-0.1.0.dist-info"]


def test_installed_lmsweep_validates_submits_and_runs_away_from_the_checkout(installed, tmp_path, smollm2_dir):
    bin_dir, env, _ = installed
    python = bin_dir / "python"
    where = run([str(python), "-c", "import lmsweep.jobs, lmsweep.configs as c; print(lmsweep.jobs.__file__, c.ROOT)"],
                cwd=tmp_path, env=env).stdout
    assert str(REPO) not in where, f"imported from the checkout: {where}"

    lm = [str(python), "-m", "lmsweep"]
    run(lm + ["examples", "quickstart"], cwd=tmp_path, env=env)
    ok = run(lm + ["validate", "quickstart.yaml"], cwd=tmp_path, env=env).stdout
    assert "ok: quickstart.yaml" in ok and "66 unit(s)" in ok

    for system in ("polaris", "aurora", "slurm-generic", "local"):
        dry = run(lm + ["submit", "quickstart.yaml", "--system", system, "--account", "MYPROJ", "--dry-run"],
                  cwd=tmp_path, env=env).stdout
        assert "-m lmsweep worker" in dry, dry
    dry = run(lm + ["submit", "quickstart.yaml", "--system", "polaris", "--account", "MYPROJ", "--dry-run"],
              cwd=tmp_path, env=env).stdout
    assert "#PBS -A MYPROJ" in dry and "filesystems=home:eagle" in dry
    profile = tmp_path / "mine.yaml"
    profile.write_text((Path(where.split()[1]) / "systems" / "slurm-generic.yaml").read_text()
                       .replace("name: slurm-generic", "name: mine"))
    run(lm + ["submit", "quickstart.yaml", "--system", str(profile), "--dry-run"], cwd=tmp_path, env=env)

    (tmp_path / "small.yaml").write_text(SMALL)
    run(lm + ["run", "small.yaml", "--quiet"], cwd=tmp_path, env=env)
    check = ("import lmsweep; df = lmsweep.load('runs/installed'); "
             "print(len(df), df.text.str.len().gt(0).all(), df.num_new_tokens.le(4).all(), "
             "lmsweep.status('runs/installed').complete)")
    assert run([str(python), "-c", check], cwd=tmp_path, env=env).stdout.split() == ["2", "True", "True", "True"]
    assert (bin_dir / "lmsweep").is_file()
