"""The `lmsweep` command. Each stage registers its own subcommands (jobs/cli.py, submit/cli.py, ...).

Exit codes: 0 success; 1 some units failed (or a regression); 2 bad input, nothing written;
3 preempted (SIGTERM/SIGINT: finished batches are kept; rerun to continue).
"""
from __future__ import annotations

import argparse

from jobs.errors import SpecError
from lmsweep.console import err

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    import jobs.cli
    import results.cli
    import runner.cli
    import submit.cli
    import submit.regress

    p = argparse.ArgumentParser(prog="lmsweep", description="Language-model inference sweeps as batch jobs.")
    sub = p.add_subparsers(dest="command", required=True)
    # regress runs (submit) and compares (results), so it registers after both
    for stage in (jobs.cli, submit.cli, runner.cli, results.cli, submit.regress):
        stage.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as e:
        err.print(f"error: {e}", markup=False, highlight=False)
        return EXIT_BAD_INPUT
