"""lmsweep: language-model inference sweeps as batch jobs (local, Slurm, PBS).

The notebook API, in one namespace:

    import lmsweep
    df = lmsweep.load("runs/quickstart")            # every row of an experiment, one pandas DataFrame
    st = lmsweep.status("runs/quickstart")          # plan minus results: done / failed / missing
    rel = lmsweep.scan("runs/quickstart")           # lazy DuckDB relation, for results bigger than memory
    spec = lmsweep.load_spec("configs/quickstart.yaml")
    plan = lmsweep.plan(spec)                       # units and elements, nothing written
    diff = lmsweep.compare("runs/a", "runs/b")      # unit-by-unit comparison of two experiments
    model, tok = lmsweep.load_model("runs/quickstart", "smollm2")   # the weights and tokenizer its workers used

The stages are subpackages: `lmsweep.jobs` (spec → plan), `lmsweep.submit` (schedulers), `lmsweep.runner`
(workers and tasks), `lmsweep.results` (Parquet and analysis), and `lmsweep.core` holds what they agree on
(docs/development.md#package-layering). Names are imported on first use, by module name, so `import lmsweep`
(and the `lmsweep` command's start) stays cheap.
"""
from __future__ import annotations

__version__ = "0.1.0"

_API = {
    "load": ("lmsweep.results.load", "load"),
    "status": ("lmsweep.results.load", "status"),
    "scan": ("lmsweep.results.scan", "scan"),
    "compare": ("lmsweep.results.compare", "compare"),
    "load_spec": ("lmsweep.jobs.spec", "load_spec"),
    "plan": ("lmsweep.jobs.plan", "plan_spec"),
    "load_model": ("lmsweep.runner.plan_model", "load_model"),
    "SpecError": ("lmsweep.errors", "SpecError"),
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        import importlib

        module, attr = _API[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lmsweep' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
