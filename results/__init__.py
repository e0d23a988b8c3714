"""Stage 4: read an experiment's rows. `results.load(exp_dir)` gives one pandas DataFrame."""
from lmsweep.results.load import load, status

__all__ = ["load", "status"]
