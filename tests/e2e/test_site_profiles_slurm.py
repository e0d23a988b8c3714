"""The Perlmutter and Frontier profiles' jobs on the real one-node Slurm (tests/infra/slurm-up.sh), with what
only the site has stripped: the GPU constraint and GPU requests, its partitions (the local one is `debug`), the
Cray MPICH preflight, and node sizes (this node: 2 CPUs, no GPU). What stays is the site's own: the QOS and
account directives, the srun launcher line (`--cpu-bind=cores`, `-c`), the GPU binding and environment lines
(a missing `module` command only prints an error). Each element runs the real worker on a tiny Llama."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from helpers.cli import cli, write_spec
from helpers.slurm import slurm_conf
from lmsweep.configs import SYSTEMS
from lmsweep.results.load import status

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


@pytest.fixture(scope="module")
def slurm_env() -> dict:
    return {"SLURM_CONF": slurm_conf(), "PATH": f"{os.environ.get('PATH', '')}:/usr/bin:/usr/sbin"}


def local_copy(tmp: Path, site: str) -> Path:
    """The shipped profile with the site-only parts stripped (see the module docstring)."""
    text = (SYSTEMS / f"{site}.yaml").read_text()
    for key, value in {"gpus_per_node": "0", "cpus_per_node": "2", "ranks_per_node": "1"}.items():
        text = re.sub(rf"^{key}:.*$", f"{key}: {value}", text, flags=re.MULTILINE)
    text = re.sub(r"^(directives|mpi_library):.*\n", "", text, flags=re.MULTILINE)
    text = text.replace("partition: batch", "partition: debug").replace(" --gpus-per-task=1 --gpu-bind=closest", "")
    text = re.sub(r"^(  )(batch|extended):\n", r"\1\2:\n\1  partition: debug\n", text, flags=re.MULTILINE)
    (tmp / "profiles").mkdir(exist_ok=True)
    path = tmp / "profiles" / f"{site}.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("site", "queue", "qos"), [("perlmutter", "debug", "debug"),
                                                      ("frontier", "debug", "debug")])
def test_site_script_runs_on_the_local_slurm(tmp_path, tiny_llama, slurm_env, site, queue, qos):
    spec = write_spec(tmp_path / "site.yaml", f"""\
name: site
output_dir: {tmp_path / "runs"}
models:
  - {{alias: tiny, source: {tiny_llama}}}
prompts:
  - {{name: p, items: ["Once upon a time", "The capital of"]}}
task: generate
decoding: {{max_new_tokens: 4}}
execution:
  walltime: "00:10:00"
  threads_per_rank: 1
""")
    proc = cli("submit", str(spec), "--system", str(local_copy(tmp_path, site)), "--queue", queue,
               "--account", "m1234", env=slurm_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    exp = tmp_path / "runs" / "site"
    [script] = (exp / "jobs").glob("sub-*/array-00.sbatch")
    text = script.read_text()
    assert f"#SBATCH --qos={qos}" in text and "#SBATCH --account=m1234" in text
    assert "--cpu-bind=cores" in text or " -c 1 " in text
    deadline = time.time() + 240
    while not re.search(r"lmsweep: element \d+ exited", out := "".join(
            p.read_text() for p in sorted(script.parent.glob("logs/*")))):
        assert time.time() < deadline, f"the job did not end in 240 s:\n{out}"
        time.sleep(2)
    assert "exited 0" in out, out
    st = status(exp)
    assert int(st.per_element["done"].sum()) == int(st.per_element["planned"].sum()) == 2
