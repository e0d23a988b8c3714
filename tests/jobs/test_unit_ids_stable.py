"""Unit ids are content addresses: a refactor must not move them, or every finished experiment would rerun.

tests/fixtures/unit_ids.json was recorded from the example specs at main 10de86a (before the package
became one `lmsweep` namespace). Each spec must still plan to exactly those unit ids, unit keys,
elements and spec hash. A change that means to change ids (a new sampling derivation, say) versions
them and re-records this file in the same commit, saying why.
"""
from __future__ import annotations

import json

import pytest

import lmsweep
from helpers.cli import FIXTURES, REPO

RECORDED = json.loads((FIXTURES / "unit_ids.json").read_text())


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_example_spec_plans_to_the_recorded_unit_ids(name):
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
