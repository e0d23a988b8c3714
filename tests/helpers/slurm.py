"""The one-node Slurm of tests/infra, started (or found running) for a test; the test skips, saying why,
where it cannot start."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UP = Path(__file__).resolve().parents[1] / "infra" / "slurm-up.sh"


def slurm_conf() -> str:
    """SLURM_CONF of the running test cluster (tests/infra/slurm-up.sh starts it once per machine)."""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    if not Path("/usr/bin/sbatch").exists() and os.geteuid() != 0:
        pytest.skip("no Slurm installed and not root: tests/infra/slurm-up.sh cannot install one")
    proc = subprocess.run(["bash", str(UP)], capture_output=True, text=True, timeout=300)
    found = re.search(r"^slurm up: SLURM_CONF=(\S+)", proc.stdout, re.M)
    if proc.returncode != 0 or not found:
        pytest.skip(f"Slurm could not start here (tests/infra/slurm-up.sh exited {proc.returncode}): "
                    f"{proc.stderr.strip()[-400:]}")
    return found.group(1)
