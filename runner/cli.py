"""`lmsweep worker` (what a scheduler, or the local backend, launches for one element) and `lmsweep run` (every
element of a spec on this machine, as worker processes).

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
        from lmsweep.errors import USER_FIXABLE_ERRNOS, os_error_line
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


def cmd_run(args) -> int:
    """`lmsweep run SPEC`: validate, plan and run every unfinished element here as real `lmsweep worker`
    processes (runner/local.py), with a progress bar, then print the summary."""
    import signal

    from lmsweep.console import console
    from lmsweep.errors import UsageError
    from lmsweep.jobs.cli import experiment_dir, missing_engine, print_plan, validated
    from lmsweep.jobs.plan import write_plan
    from lmsweep.results.cli import report
    from lmsweep.results.load import status
    from lmsweep.runner.local import Stopper, run_elements
    from lmsweep.runner.signals import EXIT_PREEMPTED

    # SIGTERM/SIGINT/SIGHUP from here on stop the run: passed on to the workers, which finish their batch
    # and exit 3; the run waits for them, then exits 3 (runner/local.py). None starts after a stop request.
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"{args.batch_size}: a batch holds at least 1 unit", field="--batch-size")
    _not_a_directory(Path(args.spec))
    with Stopper() as stopper:
        spec, plan = validated(args.spec)
        missing = missing_engine(spec)      # validate only warns; running here needs the engine: refuse, no plan
        if missing:
            raise spec.source.error(missing, "execution.backend", ("execution", "backend"))
        exp = experiment_dir(spec, args.output_dir)
        write_plan(plan, exp)
        if not args.quiet:
            print_plan(plan, exp)
        before = status(exp)
        todo = [int(e) for e in before.per_element.query("done < planned")["element"]]
        ran = []
        if todo:
            console.print(f"running {before.planned - before.done} unit(s) in {len(todo)} element(s) locally")
            ex = spec.execution
            ran = run_elements(exp, todo, concurrency=ex.concurrency, ranks=ex.ranks_per_element,
                               threads=ex.threads_per_rank, show_progress=not args.quiet, stopper=stopper,
                               batch_size=args.batch_size)
    if any(r.returncode == 2 for r in ran):   # a worker refused its input (printed above): bad input
        return 2
    if stopper.stopped or any(r.returncode == EXIT_PREEMPTED for r in ran):   # finished batches are kept
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            for sig, handler in previous.items():                               # another one: just exit 3
                if handler is not signal.SIG_IGN:
                    signal.signal(sig, lambda *_: sys.exit(EXIT_PREEMPTED))
            report(exp, quiet=True)
            console.print("preempted; rerun the same command to continue where it stopped")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return EXIT_PREEMPTED
    if not todo:
        console.print("all units already done; nothing to run")
    code = report(exp, quiet=args.quiet)            # its counts line names each crashed element
    return 1 if any(r.crashed for r in ran) and code == 0 else code


def _not_a_directory(path: Path) -> None:
    """`lmsweep run runs/nt` (an experiment directory, not its spec): say what it is and what runs on it."""
    from lmsweep.errors import UsageError

    if not path.is_dir():
        return
    if (path / "plan.json").is_file():
        import json

        try:
            spec_file = json.loads((path / "plan.json").read_text()).get("spec_file") or "SPEC"
        except (OSError, ValueError):
            spec_file = "SPEC"
        raise UsageError(f"{path} is an experiment directory, not a spec: `lmsweep status {path}` and "
                         f"`lmsweep results {path} --summary` read it; `lmsweep run {spec_file}` runs (or resumes) "
                         "it", field="spec")
    raise UsageError(f"{path} is a directory; expected a spec file (YAML), e.g. one from `lmsweep examples`",
                     field="spec")


def register(sub) -> None:
    s = sub.add_parser("run", help="plan and run a spec locally, then print a summary")
    s.add_argument("spec")
    s.add_argument("--output-dir", help="parent of the experiment directory (default: the spec's output_dir)")
    s.add_argument("--quiet", action="store_true", help="no progress bar or tables")
    s.add_argument("--batch-size", type=int, help="units per batch, in place of the spec's execution.batch_size "
                   "(unit ids and the spec hash do not change)")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("worker", help="run one element of a plan (what schedulers launch)")
    s.add_argument("--plan", required=True, help="experiment directory holding plan.json")
    s.add_argument("--element", type=int, required=True)
    s.add_argument("--batch-size", type=int)
    s.set_defaults(func=cmd_worker)
