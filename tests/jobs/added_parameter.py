"""Plan specs as if two decoding parameters had been added to jobs/decoding.py's table (run in its own process
by test_decoding_params.py: the table is read when the module is imported).

The module's source is read, two `Param(...)` entries are appended to `PARAMS` (exactly the edit
docs/adding-a-decoding-parameter.md asks for), and that source is imported as `lmsweep.jobs.decoding` before
anything else imports it. Then every spec named on the command line is planned, a probe spec is planned with an
engine that serves the new parameters and with one that does not (`lmsweep plan`, in this process), and what
was found is printed as one JSON object.

    python tests/jobs/added_parameter.py '{"specs": [...], "probe": "p.yaml", "probe_hf": "h.yaml", "out": "runs"}'

`probe` names backend `extended` (registered here, serving the added parameters), `probe_hf` backend hf.
"""
from __future__ import annotations

import ast
import contextlib
import importlib.abc
import importlib.util
import io
import json
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "jobs" / "decoding.py"
# One parameter unset by default (a sampling parameter), one whose default is a value (applies to every point).
ADDED = ('Param("min_p", float, None, "keep tokens at least this fraction of the top one\'s probability", gt=0, '
         'le=1, sampling=True, short="minp")',
         'Param("length_penalty", float, 1.0, "beam scores divided by length ** length_penalty", gt=-10, le=10, '
         'short="lp")')
ENGINE = "extended"          # a test engine serving the added parameters


def with_added_params(source: str) -> str:
    """`source` with ADDED appended to the PARAMS tuple (found by the syntax tree, not by its layout)."""
    tree = ast.parse(source)
    table = next(node.value for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                 and "PARAMS" in [t.id for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                                  if isinstance(t, ast.Name)])
    last = table.elts[-1]
    lines = source.splitlines(keepends=True)
    offset = sum(len(line) for line in lines[:last.end_lineno - 1]) + last.end_col_offset
    return source[:offset] + "".join(",\n    " + p for p in ADDED) + source[offset:]


class _Patched(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, source: str):
        self.source = source

    def find_spec(self, name, path, target=None):
        if name == "lmsweep.jobs.decoding":
            return importlib.util.spec_from_loader(name, self, origin=str(SOURCE))
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        module.__file__ = str(SOURCE)
        exec(compile(self.source, str(SOURCE), "exec"), module.__dict__)


def plan_ids(path: str) -> dict:
    """What tests/fixtures/unit_ids.json records of a spec's plan."""
    import lmsweep

    plan = lmsweep.plan(lmsweep.load_spec(path))
    units = plan.units.to_pydict()
    return {"spec_hash": plan.spec_hash, "n_units": plan.n_units, "n_elements": len(plan.elements),
            "units": sorted(map(list, zip(units["unit_id"], units["unit_key"], units["element"])))}


def ids_by_label(path: str) -> dict:
    """A spec's plan by decoding point: each point's label → its unit ids and its first sampled stream's seed."""
    import lmsweep
    from lmsweep.jobs.decoding import point_labels
    from lmsweep.runner.sampling import sequence_seed

    plan = lmsweep.plan(lmsweep.load_spec(path))
    labels = point_labels(plan.points)
    units = plan.units.to_pydict()
    out: dict[str, dict] = {}
    for uid, point, seed in zip(units["unit_id"], units["point"], units["seed"]):
        entry = out.setdefault(labels[point], {"ids": [], "stream": None})
        entry["ids"].append(uid)
        if entry["stream"] is None and seed is not None:
            entry["stream"] = sequence_seed(seed, plan.points[point], {"prompt_text": "x"}, 0)
    return out


def main(args: dict) -> dict:
    sys.meta_path.insert(0, _Patched(with_added_params(SOURCE.read_text())))
    from lmsweep.jobs import decoding

    assert {"min_p", "length_penalty"} <= set(decoding.PARAM_NAMES), decoding.PARAM_NAMES
    from lmsweep.cli import main as lmsweep
    from lmsweep.core.engine import register_engine
    from lmsweep.results.schema import schema_for
    from lmsweep.runner.engines.hf import HF

    @register_engine(ENGINE)
    class Extended(HF):
        decoding = HF.decoding | {"min_p", "length_penalty"}

    found = {"specs": {Path(p).name: plan_ids(p) for p in args["specs"]},
             "probe": ids_by_label(args["probe"]),
             "sampling_params": list(decoding.SAMPLING_PARAMS),
             "columns": {f.name: str(f.type) for f in schema_for("generate") if f.name in ("min_p", "length_penalty")}}
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = lmsweep(["plan", args["probe_hf"], "--output-dir", args["out"]])
        except SystemExit as e:
            code = e.code
    found["plan_with_hf"] = {"code": code, "stderr": err.getvalue()}
    return found


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
