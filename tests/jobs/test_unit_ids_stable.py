"""Unit ids are content addresses: a refactor must not move them, or every finished experiment would rerun.

tests/fixtures/unit_ids.json was recorded from the example specs at main 10de86a (before the package
became one `lmsweep` namespace). Each spec must still plan to exactly those unit ids, unit keys,
elements and spec hash. A change that means to change ids (a new sampling derivation, say) versions
them and re-records this file in the same commit, saying why.
"""
from __future__ import annotations

import importlib.util
import json
import os

import pytest
import yaml

import lmsweep
from helpers.cli import FIXTURES, REPO

RECORDED = json.loads((FIXTURES / "unit_ids.json").read_text())


def _uninstalled_packages(path) -> list[str]:
    """The spec's opt-in packaged models that are not installed (Gemma 3 270M: LMSWEEP_GEMMA=1 make test)."""
    from lmsweep.jobs.model_sources import PACKAGES

    sources = [m if isinstance(m, str) else m["source"] for m in yaml.safe_load(path.read_text())["models"]]
    return [s for s in sources if s.startswith("package:")
            and importlib.util.find_spec(PACKAGES[s.removeprefix("package:")].module) is None]


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_example_spec_plans_to_the_recorded_unit_ids(name):
    missing = _uninstalled_packages(REPO / "configs" / name)
    if missing and os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        pytest.skip(f"{', '.join(missing)} not installed (opt-in: LMSWEEP_GEMMA=1 make test installs it; CI does)")
    plan = lmsweep.plan(lmsweep.load_spec(REPO / "configs" / name))
    units = plan.units.to_pydict()
    got = sorted(map(list, zip(units["unit_id"], units["unit_key"], units["element"])))
    want = RECORDED[name]
    assert plan.spec_hash == want["spec_hash"]
    assert (plan.n_units, len(plan.elements)) == (want["n_units"], want["n_elements"])
    assert got == want["units"]


def test_every_example_spec_is_recorded():
    assert sorted(p.name for p in (REPO / "configs").glob("*.yaml")) == sorted(RECORDED)


def record() -> None:
    """Re-record the fixture (only in a commit that means to move ids, saying why):
    `PYTHONPATH=tests .venv/bin/python tests/jobs/test_unit_ids_stable.py`."""
    out = {}
    for path in sorted((REPO / "configs").glob("*.yaml")):
        plan = lmsweep.plan(lmsweep.load_spec(path))
        units = plan.units.to_pydict()
        out[path.name] = {"spec_hash": plan.spec_hash, "n_units": plan.n_units, "n_elements": len(plan.elements),
                          "units": sorted(map(list, zip(units["unit_id"], units["unit_key"], units["element"])))}
    (FIXTURES / "unit_ids.json").write_text(json.dumps(out, separators=(",", ":")))


if __name__ == "__main__":
    record()
