"""Shared test helpers (a package on pytest's pythonpath): the CLI runner, tiny offline models, task runs,
the ALCF PBS rule checker."""
