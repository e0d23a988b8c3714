"""lmsweep: language-model inference sweeps as batch jobs (local, Slurm, PBS)."""
__version__ = "0.1.0"
