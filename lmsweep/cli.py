"""The `lmsweep` command. Each stage registers its own subcommands (lmsweep.jobs.cli, lmsweep.submit.cli, ...).

Exit codes: 0 success; 1 some units failed (or a regression); 2 bad input, nothing written;
3 preempted (SIGTERM/SIGINT: finished batches are kept; rerun to continue).
"""
from __future__ import annotations

import argparse

from lmsweep.console import err
from lmsweep.jobs.errors import SpecError

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    from lmsweep.jobs import cli as jobs_cli
    from lmsweep.results import cli as results_cli
    from lmsweep.runner import cli as runner_cli
    from lmsweep.submit import cli as submit_cli
    from lmsweep.submit import regress

    p = argparse.ArgumentParser(prog="lmsweep", description="Language-model inference sweeps as batch jobs.")
    sub = p.add_subparsers(dest="command", required=True)
    # regress runs (submit) and compares (results), so it registers after both
    for stage in (jobs_cli, submit_cli, runner_cli, results_cli, regress):
        stage.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as e:
        for one in e.all():
            err.print(f"error: {one}", markup=False, highlight=False)
        return EXIT_BAD_INPUT
