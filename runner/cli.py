"""`lmsweep worker`: what a scheduler (or the local backend) launches for one element.

The worker's exit codes: 0 every unit of the element done; 1 some units failed (errors/), or the element
crashed (an unexpected error: the traceback goes to stderr, the element's log); 2 bad input (a plan or
argument it cannot act on, an experiment directory it cannot write: one `error: ...` line, before the
model loads); 3 preempted (SIGTERM/SIGINT). An element that ends with an error of its own (exit 1 by a
crash, or 2) leaves one line for `lmsweep status` in EXP/errors/element-NNNNN.json (runner/worker.py).
"""
from __future__ import annotations

import sys
import traceback
from pathlib import Path


def cmd_worker(args) -> int:
    from lmsweep.runner import signals

    # First, before the heavy imports: a stop request that comes while torch is imported is a stop request
    # (exit 3), not a KeyboardInterrupt traceback or a silent death by SIGTERM.
    signals.install()        # SIGTERM/SIGINT: finish or abandon the current batch, then exit 3
    from lmsweep.errors import LmsweepError, UsageError
    from lmsweep.runner.worker import check_element, record_element_error, run_element

    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"{args.batch_size}: a batch holds at least 1 unit", field="--batch-size")
    exp = Path(args.plan)
    check_element(exp, args.element)            # UsageError past the plan's last element; nothing recorded
    try:
        return run_element(exp, args.element, batch_size=args.batch_size)
    except LmsweepError as e:                   # bad input: `lmsweep` prints its line and exits with its code
        record_element_error(exp, args.element, "; ".join(e.lines()), e.exit_code)
        raise
    except OSError as e:
        from lmsweep.cli import USER_FIXABLE_ERRNOS, os_error_line
        if e.errno in USER_FIXABLE_ERRNOS and e.filename:   # a full disk, a read-only directory: one line, exit 2
            record_element_error(exp, args.element, os_error_line(e), 2)
            raise
        return _crashed(exp, args.element, e)
    except Exception as e:                      # a bug or a broken model file: the traceback stays in the log
        return _crashed(exp, args.element, e)


def _crashed(exp: Path, element: int, e: Exception) -> int:
    from lmsweep.runner.worker import EXIT_CRASHED, crash_line, record_element_error

    line = crash_line(e)
    record_element_error(exp, element, line, EXIT_CRASHED)
    if sys.excepthook is not sys.__excepthook__:
        # Under MPI (runner/distributed.abort_on_crash) the hook prints the traceback and aborts the other
        # ranks, which would otherwise wait in a collective for this one forever: it does not return.
        print(f"error: element {element} crashed: {line}", file=sys.stderr, flush=True)
        sys.excepthook(type(e), e, e.__traceback__)
    else:
        sys.stderr.write("".join(traceback.format_exception(type(e), e, e.__traceback__)))
        print(f"error: element {element} crashed: {line} (traceback above)", file=sys.stderr, flush=True)
    return EXIT_CRASHED


def register(sub) -> None:
    s = sub.add_parser("worker", help="run one element of a plan (what schedulers launch)")
    s.add_argument("--plan", required=True, help="experiment directory holding plan.json")
    s.add_argument("--element", type=int, required=True)
    s.add_argument("--batch-size", type=int)
    s.set_defaults(func=cmd_worker)
