"""`lmsweep results` and `lmsweep status`."""
from __future__ import annotations

import sys
from pathlib import Path

from jobs.errors import SpecError
from lmsweep.console import console, err, print_df


def report(exp: Path, quiet: bool = False) -> int:
    """Summary tables and the done/failed/missing line; exit 1 unless every unit is done."""
    from jobs.plan import read_plan
    from results.load import load, status
    from results.summary import examples, summarize

    st = status(exp)
    if not quiet:
        df = load(exp)
        task = read_plan(exp).meta["task"]["type"]
        print_df(summarize(df, task), f"summary: {exp}")
        if task == "generate":
            print_df(examples(df), "examples")
    console.print(f"{st.done}/{st.planned} units done, {st.failed} failed, {st.missing} missing; "
                  f"results in {exp / 'results'}")
    for row in st.failures.head(5).itertuples():
        err.print(f"failed unit {row.unit_id} (element {row.element}): {row.error}", markup=False)
    return 0 if st.complete else 1


def cmd_results(args) -> int:
    from jobs.plan import read_plan
    from results.load import load
    from results.summary import summarize

    exp = Path(args.experiment)
    plan = read_plan(exp)
    df = load(exp)
    if args.summary:
        df = summarize(df, plan.meta["task"]["type"])
    elif args.columns:
        wanted = args.columns.split(",")
        unknown = [c for c in wanted if c not in df.columns]
        if unknown:
            raise SpecError(f"unknown column {unknown[0]!r}; see the README's column reference", field="--columns")
        df = df[wanted]
    if args.csv:
        df.to_csv(sys.stdout, index=False)
    else:
        print_df(df if args.summary or len(df) <= args.limit else df.head(args.limit), str(exp))
        if not args.summary and len(df) > args.limit:
            console.print(f"... {len(df)} rows; --limit N or --csv for all")
    return 0


def cmd_status(args) -> int:
    from results.load import status

    st = status(Path(args.experiment))
    per, notes = st.per_element, []
    if (Path(args.experiment) / "jobs").is_dir():   # submitted: add the scheduler's view of each element
        from submit.tracking import scheduler_view
        per, notes = scheduler_view(Path(args.experiment), per)
    print_df(per, f"status: {args.experiment}")
    console.print(f"{st.done}/{st.planned} done, {st.failed} failed, {st.missing} missing")
    for row in st.failures.head(args.errors).itertuples():
        console.print(f"failed {row.unit_id} (element {row.element}): {row.error}", markup=False)
    for note in notes:
        console.print(note, markup=False)
    return 0 if st.complete else 1


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SpecError(f"expected comma-separated integers, got {text!r}", field="--layers/--heads") from None


def cmd_plot_attention(args) -> int:
    from results.plots import plot_attention

    png, page = plot_attention(Path(args.experiment), args.unit, Path(args.out) if args.out else None,
                               layers=_int_list(args.layers) if args.layers else None,
                               heads=_int_list(args.heads) if args.heads else None)
    console.print(f"wrote {png}\nwrote {page}")
    return 0


def register(sub) -> None:
    s = sub.add_parser("plot", help="draw figures from an experiment's results")
    kinds = s.add_subparsers(dest="plot", required=True)
    a = kinds.add_parser("attention", help="one unit's attention: PNG heatmap grid + interactive HTML head view")
    a.add_argument("experiment", help="experiment directory of an attention task")
    a.add_argument("--unit", required=True, help="unit id (or a unique prefix), e.g. from `lmsweep results`")
    a.add_argument("--out", help="output directory (default: EXPERIMENT/plots)")
    a.add_argument("--layers", help="only these layers, e.g. 0,5,29")
    a.add_argument("--heads", help="only these heads (-1 = the head mean)")
    a.set_defaults(func=cmd_plot_attention)

    s = sub.add_parser("results", help="show an experiment's rows or summary")
    s.add_argument("experiment", help="experiment directory")
    s.add_argument("--summary", action="store_true")
    s.add_argument("--csv", action="store_true", help="write CSV to stdout")
    s.add_argument("--columns", help="comma-separated column names")
    s.add_argument("--limit", type=int, default=20)
    s.set_defaults(func=cmd_results)

    s = sub.add_parser("status", help="done / failed / missing units per element")
    s.add_argument("experiment")
    s.add_argument("--errors", type=int, default=10, help="show this many failures")
    s.set_defaults(func=cmd_status)
