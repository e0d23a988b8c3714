"""One packer: `validate`, `plan` and `submit --dry-run` report the same elements for every example spec.

The plan's elements and submit's come from the one packer (jobs.plan.ElementPacker) with a capacity from the
one rule (jobs.plan.element_budget: walltime x 80% x model copies x tokens/s). Where a queue's capacity is the
plan's (`local`, a one-rank Slurm partition, Polaris with the spec's 4 ranks per element and its throughput),
submit keeps the plan's elements unit for unit, and neither command prints a note; where it is not, submit's
decision and validate's note say what differs (tests/submit/test_submit_checks.py). None of the three loads
a model's weights.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers.cli import REPO, cli

CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
# flags of each system; the spec changes it needs for a capacity equal to the plan's
SYSTEMS = {"local": ([], {}), "slurm-generic": ([], {}), "polaris": (["--account", "myproj"], {"ranks_per_element": 4})}
# as shipped (every model's units fit one element), and tight: elements of 16 s at 20 tokens/s per rank, so
# most specs cut a model into several elements (quickstart 66 units into 9 for one rank); no shorter, or one
# unit of attention_summary.yaml (a 2,048-token document, ~13 s) would not fit one and submit refuses the spec
VARIANTS = {"shipped": {}, "tight": {"walltime": "00:00:20", "tokens_per_second": 20}}


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> Path:
    """A copy of configs/ (specs and the prompt files they read) to write variants into."""
    out = tmp_path_factory.mktemp("one-packer") / "configs"
    shutil.copytree(REPO / "configs", out, ignore=shutil.ignore_patterns("systems", "__*"))
    return out


def variant(configs: Path, name: str, execution: dict) -> Path:
    if not execution:
        return configs / name
    spec = yaml.safe_load((configs / name).read_text())
    spec["execution"] = {**(spec.get("execution") or {}), **execution}
    path = configs / f"{Path(name).stem}-{abs(hash(json.dumps(execution, sort_keys=True))) % 10**8}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def units_each(sizes: list[int]) -> str:
    lo, hi = min(sizes), max(sizes)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


@pytest.mark.parametrize("system", sorted(SYSTEMS))
@pytest.mark.parametrize("kind", sorted(VARIANTS))
def test_validate_plan_and_submit_report_the_same_elements(configs, tmp_path, system, kind):
    flags, needs = SYSTEMS[system]
    for name in CONFIGS:
        spec = variant(configs, name, {**VARIANTS[kind], **needs})
        val = " ".join(cli("validate", str(spec), cwd=tmp_path, check=True).stdout.split())   # rich wraps
        n_units, n_val = map(int, re.search(r"(\d+) unit\(s\) in (\d+) element\(s\)", val).groups())
        assert "re-packs" not in val and "elements: sized for" not in val, val     # no note: nothing differs

        out = tmp_path / "runs" / kind
        planned = " ".join(cli("plan", str(spec), "--output-dir", str(out), cwd=tmp_path, check=True).stdout.split())
        (plan_json,) = out.glob("*/plan.json")
        elements = json.loads(plan_json.read_text())["elements"]
        shutil.rmtree(out)
        sizes = [e["n_units"] for e in elements]
        assert f"{n_units} units, {n_val} elements" in planned and len(elements) == n_val and sum(sizes) == n_units

        dry = cli("submit", str(spec), "--system", system, "--dry-run", *flags, cwd=tmp_path, check=True).stdout
        decision = dry.split("\n# ---- ")[0]
        assert f"elements: {n_val} for {n_units} unit(s), {units_each(sizes)} units each" in decision, (name, decision)
        assert "re-packed" not in decision, (name, decision)      # the plan's elements, unit for unit
        if kind == "tight" and name in ("quickstart.yaml", "homework.yaml"):
            assert n_val > len(yaml.safe_load(spec.read_text())["models"])   # the tight case cuts models


def test_none_of_them_loads_a_model(configs, tmp_path):
    """In a fresh process (the test process may have them from other tests): validate, plan and submit
    --dry-run of every example spec import neither torch, transformers, safetensors nor an engine."""
    script = f"""
import sys
from lmsweep.cli import main
configs, out = {str(configs)!r}, {str(tmp_path / "runs")!r}
for name in {CONFIGS!r}:
    spec = f"{{configs}}/{{name}}"
    for args in (["validate", spec], ["plan", spec, "--output-dir", out],
                 ["submit", spec, "--system", "local", "--dry-run", "--output-dir", out],
                 ["submit", spec, "--system", "polaris", "--account", "p", "--dry-run", "--output-dir", out]):
        assert main(args) == 0, args
heavy = {{"torch", "transformers", "safetensors", "vllm", "deepspeed"}}
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & heavy)
print("LOADED", loaded, file=sys.stderr)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED []" in proc.stderr, proc.stderr[-3000:]
