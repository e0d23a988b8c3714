"""The `lmsweep` command. Each subcommand is a thin adapter over the four stages.

Exit codes: 0 success; 1 some units failed (or a regression); 2 bad input, nothing written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from jobs.errors import SpecError

EXIT_BAD_INPUT = 2
console = Console(stderr=False, highlight=False, soft_wrap=False, width=160)
err = Console(stderr=True, highlight=False)


def experiment_dir(spec, output_dir: str | None) -> Path:
    return Path(output_dir or spec.output_dir) / spec.name


def _validated(spec_path: str):
    """Everything that can be checked without running: spec, prompts, models, expansion."""
    from jobs.plan import plan_spec
    from jobs.spec import load_spec

    spec = load_spec(spec_path)
    return spec, plan_spec(spec)


def cmd_validate(args) -> int:
    spec, plan = _validated(args.spec)
    console.print(f"ok: {args.spec}: experiment {spec.name!r}, {len(plan.models)} model(s), "
                  f"{len(plan.prompts)} prompt(s), {max(len(plan.points), 1)} decoding point(s), "
                  f"{plan.n_units} unit(s) in {len(plan.elements)} element(s)")
    return 0


def cmd_plan(args) -> int:
    from jobs.plan import write_plan

    spec, plan = _validated(args.spec)
    exp = experiment_dir(spec, args.output_dir)
    write_plan(plan, exp)
    _print_plan(plan, exp)
    return 0


def _print_plan(plan, exp: Path) -> None:
    table = Table(title=f"plan {plan.experiment} ({plan.spec_hash}) → {exp}")
    for col in ("element", "model", "units", "est. time"):
        table.add_column(col, justify="right" if col != "model" else "left")
    shown = plan.elements if len(plan.elements) <= 20 else plan.elements[:10] + plan.elements[-5:]
    for e in shown:
        table.add_row(str(e.index), e.model, str(e.n_units), _hms(e.est_seconds))
    console.print(table)
    total = sum(e.est_seconds for e in plan.elements)
    console.print(f"{plan.n_units} units, {len(plan.elements)} elements, estimated {_hms(total)} of rank time")


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


def cmd_run(args) -> int:
    from jobs.plan import write_plan
    from results.load import status
    from submit.local import run_elements

    spec, plan = _validated(args.spec)
    exp = experiment_dir(spec, args.output_dir)
    write_plan(plan, exp)
    _print_plan(plan, exp)
    before = status(exp)
    todo = [int(e) for e in before.per_element.query("done < planned")["element"]]
    if not todo:
        console.print("all units already done; nothing to run")
    else:
        console.print(f"running {before.planned - before.done} unit(s) in {len(todo)} element(s) locally")
        ex = spec.execution
        run_elements(exp, todo, concurrency=ex.concurrency, ranks=ex.ranks_per_element,
                     threads=ex.threads_per_rank, show_progress=not args.quiet)
    return _report(exp, quiet=args.quiet)


def _report(exp: Path, quiet: bool = False) -> int:
    from jobs.plan import read_plan
    from results.load import load, status
    from results.summary import examples, summarize

    st = status(exp)
    if not quiet:
        df = load(exp)
        task = read_plan(exp).meta["task"]["type"]
        _print_df(summarize(df, task), f"summary: {exp}")
        if task == "generate":
            _print_df(examples(df), "examples")
    console.print(f"{st.done}/{st.planned} units done, {st.failed} failed, {st.missing} missing; "
                  f"results in {exp / 'results'}")
    for row in st.failures.head(5).itertuples():
        err.print(f"failed unit {row.unit_id} (element {row.element}): {row.error}")
    return 0 if st.complete else 1


def _print_df(df, title: str) -> None:
    if df is None or df.empty:
        return
    table = Table(title=title)
    for col in df.columns:
        table.add_column(str(col), overflow="fold")
    for row in df.itertuples(index=False):
        table.add_row(*[f"{v:.3g}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)


def cmd_worker(args) -> int:
    from runner.worker import run_element

    return run_element(Path(args.plan), args.element, batch_size=args.batch_size)


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
        df = df[args.columns.split(",")]
    if args.csv:
        df.to_csv(sys.stdout, index=False)
    else:
        _print_df(df if args.summary or len(df) <= args.limit else df.head(args.limit), str(exp))
        if not args.summary and len(df) > args.limit:
            console.print(f"... {len(df)} rows; --limit N or --csv for all")
    return 0


def cmd_status(args) -> int:
    from results.load import status

    st = status(Path(args.experiment))
    _print_df(st.per_element, f"status: {args.experiment}")
    console.print(f"{st.done}/{st.planned} done, {st.failed} failed, {st.missing} missing")
    for row in st.failures.head(args.errors).itertuples():
        console.print(f"failed {row.unit_id} (element {row.element}): {row.error}")
    return 0 if st.complete else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmsweep", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("validate", help="check a spec, its prompt files and models; write nothing")
    s.add_argument("spec")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("plan", help="expand a spec into units and elements; write the plan")
    s.add_argument("spec")
    s.add_argument("--output-dir", help="parent of the experiment directory (default: the spec's output_dir)")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("run", help="plan and run a spec locally, then print a summary")
    s.add_argument("spec")
    s.add_argument("--output-dir")
    s.add_argument("--quiet", action="store_true", help="no progress bar or tables")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("worker", help="run one element of a plan (what schedulers launch)")
    s.add_argument("--plan", required=True, help="experiment directory holding plan.json")
    s.add_argument("--element", type=int, required=True)
    s.add_argument("--batch-size", type=int)
    s.set_defaults(func=cmd_worker)

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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as e:
        err.print(f"error: {e}", markup=False, highlight=False)
        return EXIT_BAD_INPUT
    except KeyError as e:
        if args.command in ("results",) and getattr(args, "columns", None):
            err.print(f"error: --columns: unknown column {e}", markup=False)
            return EXIT_BAD_INPUT
        raise
