"""Stage 4: read an experiment's rows. `results.load(exp_dir)` gives one pandas DataFrame."""
from results.load import load, status

__all__ = ["load", "status"]
