"""`lmsweep status EXP`: done / failed / missing units per element, joined with the scheduler's view.

The counting is results' (results.load.status: plan minus rows); for a submitted experiment each element's
latest array task and its scheduler state are added (submit/tracking.py), which is why the verb is submit's:
results/ imports no scheduler code. `--watch` refreshes it until the work ends (submit/watch.py).
"""
from __future__ import annotations

from pathlib import Path

from lmsweep.console import console, err, print_df


def cmd_status(args) -> int:
    if args.watch:
        from lmsweep.submit.watch import watch

        return watch(Path(args.experiment), args.interval)

    from lmsweep.results.load import status

    st = status(Path(args.experiment))
    per, notes = st.per_element, []
    if (Path(args.experiment) / "jobs").is_dir():   # submitted: add the scheduler's view of each element
        from lmsweep.submit.tracking import scheduler_view
        per, notes = scheduler_view(Path(args.experiment), per)
    print_df(per if len(per) <= args.elements else per.query("done < planned"),
             f"status per element: {args.experiment}")
    if len(st.per_model) > 1 or len(st.per_element) > args.elements:
        print_df(st.per_model, "status per model")
    console.print(st.counts(), markup=False)
    for row in st.failures.head(args.errors).itertuples():
        console.print(f"failed {row.unit_id} (element {row.element}): {row.error}", markup=False)
    for line in st.warnings():
        err.print(line, markup=False, highlight=False)
    for note in notes:
        console.print(note, markup=False)
    return 0 if st.complete else 1


def register(sub) -> None:
    s = sub.add_parser("status", help="done / failed / missing units per element")
    s.add_argument("experiment")
    s.add_argument("--errors", type=int, default=10, help="show this many failures")
    s.add_argument("--elements", type=int, default=50,
                   help="above this many elements, list only unfinished ones and add a per-model table")
    s.add_argument("--watch", action="store_true", help="refresh until every unit is done (exit 0) or Ctrl-C (130)")
    s.add_argument("--interval", type=float, default=30.0, metavar="S",
                   help="seconds between refreshes with --watch (doubling, up to 10x, while nothing changes)")
    s.set_defaults(func=cmd_status)
