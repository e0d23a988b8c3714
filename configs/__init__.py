"""Example specs and system profiles, shipped inside the package as `lmsweep.configs`.

In a checkout this is the top-level `configs/` folder; installed, it is `site-packages/lmsweep/configs/`.
`lmsweep examples` lists the example specs and copies one out.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
SYSTEMS = ROOT / "systems"


def examples() -> list[Path]:
    """The example experiment specs, by file name."""
    return sorted(ROOT.glob("*.yaml"))
