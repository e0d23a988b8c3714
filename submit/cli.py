"""`lmsweep run`: plan a spec and run its elements on this machine."""
from __future__ import annotations

from jobs.cli import experiment_dir, print_plan, validated
from lmsweep.console import console


def cmd_run(args) -> int:
    from jobs.plan import write_plan
    from results.cli import report
    from results.load import status
    from submit.local import run_elements

    spec, plan = validated(args.spec)
    exp = experiment_dir(spec, args.output_dir)
    write_plan(plan, exp)
    print_plan(plan, exp)
    before = status(exp)
    todo = [int(e) for e in before.per_element.query("done < planned")["element"]]
    if not todo:
        console.print("all units already done; nothing to run")
    else:
        console.print(f"running {before.planned - before.done} unit(s) in {len(todo)} element(s) locally")
        ex = spec.execution
        run_elements(exp, todo, concurrency=ex.concurrency, ranks=ex.ranks_per_element,
                     threads=ex.threads_per_rank, show_progress=not args.quiet)
    return report(exp, quiet=args.quiet)


def register(sub) -> None:
    s = sub.add_parser("run", help="plan and run a spec locally, then print a summary")
    s.add_argument("spec")
    s.add_argument("--output-dir", help="parent of the experiment directory (default: the spec's output_dir)")
    s.add_argument("--quiet", action="store_true", help="no progress bar or tables")
    s.set_defaults(func=cmd_run)
