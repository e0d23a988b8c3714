"""The `lmsweep` command. Each stage registers its own subcommands (lmsweep.jobs.cli, lmsweep.submit.cli, ...).

Exit codes: 0 success; 1 some units failed (or a regression); 2 bad input, nothing written;
3 preempted (SIGTERM/SIGINT: finished batches are kept; rerun to continue).
"""
from __future__ import annotations

import argparse

from lmsweep.console import err
from lmsweep.errors import USER_FIXABLE_ERRNOS, LmsweepError, os_error_line

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    from lmsweep import regress
    from lmsweep.jobs import cli as jobs_cli
    from lmsweep.results import cli as results_cli
    from lmsweep.runner import cli as runner_cli
    from lmsweep.submit import cli as submit_cli

    p = argparse.ArgumentParser(prog="lmsweep", description="Language-model inference sweeps as batch jobs.")
    sub = p.add_subparsers(dest="command", required=True)
    # regress runs (submit) and compares (results), so it registers after both
    for stage in (jobs_cli, runner_cli, submit_cli, results_cli, regress):
        stage.register(sub)
    # validate (jobs) also says what submit would make of the plan; jobs imports no later stage, so it is given here
    sub.choices["validate"].set_defaults(notes=(submit_cli.packing_note,))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LmsweepError as e:
        for line in e.lines():
            err.print(f"error: {line}", markup=False, highlight=False)
        return e.exit_code
    except OSError as e:
        if e.errno not in USER_FIXABLE_ERRNOS or not e.filename:
            raise
        err.print(f"error: {os_error_line(e)}", markup=False, highlight=False)
        return EXIT_BAD_INPUT
