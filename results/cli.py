"""`lmsweep results`, `plot`, `compare` and `report` (`status` joins the scheduler's view: submit/status.py)."""
from __future__ import annotations

import sys
from pathlib import Path

from lmsweep.console import console, err, print_df
from lmsweep.errors import UsageError


def report(exp: Path, quiet: bool = False) -> int:
    """Summary tables and the done/failed/missing line; exit 1 unless every unit is done."""
    from lmsweep.jobs.plan import read_plan
    from lmsweep.results.load import load, status
    from lmsweep.results.summary import summarize, task_examples

    st = status(exp)
    if not quiet:
        df = load(exp)
        task = read_plan(exp).meta["task"]["type"]
        print_df(summarize(df, task), f"summary: {exp}", more=f"lmsweep results {exp} --summary --wide or --csv")
        shown = task_examples(df, task)
        if shown is not None:
            print_df(shown, "examples")
    console.print(f"{st.counts(units=True)}; results in {exp / 'results'}", markup=False)
    for row in st.failures.head(5).itertuples():
        err.print(f"failed unit {row.unit_id} (element {row.element}): {row.error}", markup=False)
    for line in st.warnings():
        err.print(line, markup=False, highlight=False)
    return 0 if st.complete else 1


def cmd_results(args) -> int:
    from lmsweep.jobs.plan import read_plan
    from lmsweep.results.load import load
    from lmsweep.results.summary import summarize

    exp = Path(args.experiment)
    if args.trace:
        from lmsweep.results.report import trace

        print_df(trace(exp, args.trace), f"trace {args.trace}")
        return 0
    if args.compact:
        return compact(exp)
    plan = read_plan(exp)
    crash_notes(exp, plan)
    if args.sql:
        from lmsweep.results.scan import sql

        df = sql(exp, args.sql)
    else:
        df = load(exp)
    if args.summary:
        df = summarize(df, plan.meta["task"]["type"])
    elif args.columns:
        wanted = args.columns.split(",")
        unknown = [c for c in wanted if c not in df.columns]
        if unknown:
            raise UsageError(f"unknown column {unknown[0]!r}; the columns are listed in "
                             "docs/results.md#column-reference", field="--columns")
        df = df[wanted]
    if args.csv:
        df.to_csv(sys.stdout, index=False)
    else:
        print_df(df if args.summary or len(df) <= args.limit else df.head(args.limit), str(exp), wide=args.wide)
        if not args.summary and len(df) > args.limit:
            console.print(f"... {len(df)} rows; --limit N or --csv for all")
    return 0


def crash_notes(exp: Path, plan) -> None:
    """On stderr, each element a worker recorded as crashed (EXP/errors/element-NNNNN.json; deleted once the
    element ends cleanly), so the rows shown are not taken for the whole experiment; `status` counts them."""
    from lmsweep.results.load import element_errors, status

    crashed, skipped = element_errors(exp, set(range(len(plan.elements))))
    if crashed:                          # only the elements still unfinished (a record may be stale)
        crashed = status(exp).crashed
    for element, line in sorted(crashed.items()):
        err.print(f"note: element {element} crashed: {line}; its rows are missing (lmsweep status {exp})",
                  markup=False, highlight=False)
    for s in skipped:
        err.print(f"warning: skipped damaged crash record {s}", markup=False, highlight=False)


def compact(exp: Path) -> int:
    """`results --compact`: merge the parts of every element no worker is running now."""
    from lmsweep.core.kill_points import test_hook
    from lmsweep.results.compact import compact_experiment

    done, running = compact_experiment(exp, hook=test_hook("compact"))
    parts = sum(c.parts for c in done)
    size = sum(c.bytes for c in done) / 2**20
    line = (f"compacted {len({c.element for c in done})} element(s): {parts} part files into {len(done)} "
            f"({size:.1f} MiB)" if done else "nothing to compact: every element has at most one part")
    if running:
        line += f"; left {len(running)} running element(s) alone: {', '.join(map(str, running[:10]))}"
    console.print(line, markup=False)
    return 0


def tolerance_help() -> dict[str, str]:
    """Each tolerance key and its help, as the tasks declare them (runner/tasks, `Task.tolerances`)."""
    from lmsweep.core.task_registry import tolerances

    return {t.name: t.help for t in tolerances()}


def add_compare_options(s, spec_flag: bool = True) -> None:
    """Join mode and tolerance flags, shared by `compare` and `regress`; a flag overrides the spec."""
    s.add_argument("--by", choices=["auto", "id", "key"],
                   help="join on unit_id, or on unit_key to compare two models/backends (default: detect)")
    if spec_flag:
        s.add_argument("--spec", help="take tolerances from this spec's regression block "
                                      "(default: the current run's own spec)")
    for name, text in tolerance_help().items():
        s.add_argument("--" + name.replace("_", "-"), dest=name, metavar="X|off", help=text)
    s.add_argument("--report-dir", help="where compare.md/.html/-units.csv go (default: CURRENT/reports)")


def tolerance_overrides(args) -> dict:
    out = {}
    for name in tolerance_help():
        raw = getattr(args, name, None)
        if raw is None:
            continue
        out[name] = None if raw.lower() in ("off", "none", "null") else raw
    return out


def run_compare(baseline: Path, current: Path, args, regression: dict | None = None) -> int:
    """Compare, print the checks, write the reports; 0 within tolerance, 1 otherwise."""
    from lmsweep.jobs.plan import read_plan
    from lmsweep.jobs.spec import load_spec
    from lmsweep.results.compare import checks_frame, compare, gates_from, tolerances_from, verdict, write_reports

    if regression is None:
        if getattr(args, "spec", None):
            spec = load_spec(args.spec)
            regression = spec.regression.model_dump() if spec.regression else None
        else:
            regression = read_plan(current).meta["spec"].get("regression")
    tol, by = tolerances_from(regression, tolerance_overrides(args))
    result = compare(baseline, current, by=args.by or by, tolerances=tol, gates=gates_from(regression))
    print_df(checks_frame(result), f"compare {current} vs baseline {baseline}")
    console.print(result.reason)
    for title, table in (("differing units", result.diffs), ("units on one side only", result.unmatched)):
        if not table.empty:
            print_df(table.head(10), f"{title} ({len(table)})")
    paths = write_reports(result, Path(args.report_dir) if args.report_dir else current / "reports")
    (console if result.passed else err).print(verdict(result), markup=False)
    console.print(f"report: {paths['markdown']} {paths['html']}; all flagged units: {paths['csv']}")
    return 0 if result.passed else 1


def cmd_compare(args) -> int:
    return run_compare(Path(args.baseline), Path(args.current), args)


def cmd_report(args) -> int:
    from lmsweep.results.report import write_report

    out = write_report(Path(args.experiment), args.output)
    console.print(f"report: {out}")
    return 0


def cmd_plot(args) -> int:
    """`lmsweep plot <task> ...`: the task draws (`Task.plot`); each file it wrote is printed."""
    from lmsweep.core.task_registry import get_task

    for path in get_task(args.plot).plot(args):
        console.print(f"wrote {path}")
    return 0


def register_plots(kinds) -> None:
    """One `lmsweep plot <task>` per task that has a plot (`Task.plot_help`), with the flags it declares."""
    from lmsweep.core.task_registry import plot_tasks

    for task in plot_tasks():
        p = kinds.add_parser(task.name, help=task.plot_help)
        task.plot_arguments(p)
        p.set_defaults(func=cmd_plot)


def register(sub) -> None:
    s = sub.add_parser("plot", help="draw figures from an experiment's results")
    kinds = s.add_subparsers(dest="plot", required=True)
    register_plots(kinds)

    s = sub.add_parser("results", help="show an experiment's rows or summary")
    s.add_argument("experiment", help="experiment directory")
    s.add_argument("--summary", action="store_true")
    s.add_argument("--csv", action="store_true", help="write CSV to stdout")
    s.add_argument("--columns", help="comma-separated column names")
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--trace", metavar="UNIT_ID", help="where one unit's row came from: spec, model, host, "
                                                     "package versions of the run that wrote it")
    s.add_argument("--sql", metavar="QUERY", help="run a DuckDB query over the experiment's rows, as the view "
                                                  "`results` (plan-restricted, de-duplicated)")
    s.add_argument("--wide", action="store_true", help="every column, even past the terminal's width")
    s.add_argument("--compact", action="store_true", help="merge each element's part files into one (elements "
                                                          "a worker is running are left alone)")
    s.set_defaults(func=cmd_results)

    s = sub.add_parser("compare", help="compare two experiments unit by unit; exit 1 beyond tolerance")
    s.add_argument("baseline", help="baseline experiment directory")
    s.add_argument("current", help="current experiment directory")
    add_compare_options(s)
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("report", help="write a self-contained HTML report of an experiment")
    s.add_argument("experiment")
    s.add_argument("-o", "--output", help="HTML file (default: EXPERIMENT/report.html)")
    s.set_defaults(func=cmd_report)
