"""Scheduler adapters: render, submit and watch jobs on PBS, Slurm or locally."""
