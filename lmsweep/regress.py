"""`lmsweep regress SPEC --baseline DIR`: run a spec afresh, compare it with a baseline run, report,
and optionally promote the run to be the next baseline. It composes the stages (it runs, submits and
compares), so it lives beside the CLI in the top package rather than in one of them.

By default it runs locally (a laptop, or inside the allocation of a cron/scrontab/PBS job that calls
it); with `--system NAME` it submits the spec to that system's scheduler (`lmsweep submit`) and waits for
every task to end. Either way a scheduled regression sweep is one command whose exit code says pass (0),
regression (1) or bad input (2). Each run gets its own directory: a rerun in the same directory would
skip every unit as already done.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from lmsweep.console import console, err
from lmsweep.jobs.errors import SpecError, UsageError


def run_dir(parent: Path, name: str) -> Path:
    """A fresh directory per regression run, named by the UTC start time."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    exp = parent / f"{name}-regress-{stamp}"
    n = 1
    while exp.exists():
        exp = parent / f"{name}-regress-{stamp}-{n}"
        n += 1
    return exp


def promote(run: Path, baseline: Path, note: dict) -> None:
    """Copy the run into place as the baseline: copy beside it, then swap by rename, so a reader sees the
    old or the new baseline whole (for a moment, between the two renames, none)."""
    baseline = baseline.resolve()
    baseline.parent.mkdir(parents=True, exist_ok=True)
    tmp = baseline.with_name(f".{baseline.name}.promote-{os.getpid()}")
    old = baseline.with_name(f".{baseline.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(run, tmp)
    (tmp / "PROMOTED.json").write_text(json.dumps({**note, "promoted_at": time.time(), "from": str(run.resolve())},
                                                  indent=1))
    if baseline.exists():
        os.replace(baseline, old)
    os.replace(tmp, baseline)
    shutil.rmtree(old, ignore_errors=True)


def recheck_plan(plan, n: int, seed: int = 0):
    """(plan, batch size) to rerun `n` of a plan's units drawn at random (seeded), in reverse order, one element
    per model, at another batch size (1; 2 if the run's was 1): the same units in another batch composition
    and order, so any difference from the run is the engine's own noise, not a change of software."""
    import dataclasses

    import numpy as np
    import pyarrow as pa

    from lmsweep.jobs.plan import Element

    pick = np.sort(np.random.default_rng(seed).choice(plan.n_units, size=min(n, plan.n_units), replace=False))[::-1]
    units = plan.units.take(pa.array(pick))
    models = list(dict.fromkeys(units.column("model").to_pylist()))
    units = units.take(pa.array(np.argsort([models.index(m) for m in units.column("model").to_pylist()],
                                           kind="stable")))    # one element per model, reverse order kept
    element = [models.index(m) for m in units.column("model").to_pylist()]
    units = units.set_column(units.schema.get_field_index("element"), "element", pa.array(element, pa.int32()))
    elements = [Element(index=i, model=m, n_units=element.count(i), est_seconds=0.0) for i, m in enumerate(models)]
    batch = plan.spec["execution"]["batch_size"]
    return dataclasses.replace(plan, units=units, elements=elements), (2 if batch == 1 else 1)


def noise_floor(run: Path, recheck: Path):
    """compare of the recheck with the same units of the run, joined on unit_id at the default tolerances."""
    from lmsweep.jobs.spec import Tolerances
    from lmsweep.results.compare import compare_frames, read_rows, side_info

    base, cur = side_info(run), side_info(recheck)
    cur_df = read_rows(recheck, cur.task)
    base_df = read_rows(run, base.task)
    return compare_frames(base_df[base_df["unit_id"].isin(set(cur_df["unit_id"]))], cur_df, base, cur, by="id",
                          tolerances=Tolerances())


def _recheck(plan, exp: Path, n: int, ex, quiet: bool) -> None:
    """`--recheck N`: rerun N units of this run in another batch composition beside it and print how far the
    engine disagrees with itself; reported, never gating (its exit code is the comparison's)."""
    from lmsweep.jobs.plan import write_plan
    from lmsweep.results.cli import print_df
    from lmsweep.results.compare import checks_frame, write_reports
    from lmsweep.runner.local import run_elements

    sub, batch = recheck_plan(plan, n)
    where = exp.with_name(exp.name + "-recheck")
    write_plan(sub, where)
    run_elements(where, [e.index for e in sub.elements], concurrency=ex.concurrency, ranks=ex.ranks_per_element,
                 threads=ex.threads_per_rank, show_progress=not quiet, batch_size=batch)
    floor = noise_floor(exp, where)
    title = (f"noise floor: {floor.matched} rows of {sub.n_units} units rerun at batch size {batch} in reverse "
             "order (the engine against itself; reported, not gating)")
    frame = checks_frame(floor)
    print_df(frame[~frame["check"].str.startswith(("latency", "throughput", "units on one side"))], title)
    paths = write_reports(floor, where / "reports", stem="noise-floor")
    console.print(f"noise floor report: {paths['markdown']}")


def _check_baseline(baseline: Path, task: str) -> bool:
    """True if a usable baseline exists; UsageError if something is there but is not one."""
    if not baseline.exists():
        return False
    from lmsweep.jobs.plan import read_plan

    meta = read_plan(baseline).meta
    if meta["task"]["type"] != task:
        raise UsageError(f"baseline is a {meta['task']['type']} experiment but the spec's task is {task}",
                        file=str(baseline))
    return True


def _runs_here(system: str) -> bool:
    """A system whose backend runs every rank on this machine is run here, in the foreground."""
    from lmsweep.submit.base import scheduler_for
    from lmsweep.submit.cli import load_profile
    return scheduler_for(load_profile(system, "--system")).one_machine


def submit_and_wait(spec_path: str, system: str, exp: Path, timeout: float, quiet: bool) -> int:
    """`lmsweep submit` into `exp` (<parent>/<name>), then poll (backing off to once a minute) until the results are
    complete or every recorded task has ended. 0 when it ended, submit's exit code if it failed, 1 on timeout."""
    from lmsweep.cli import main
    from lmsweep.results.load import status
    from lmsweep.submit.tracking import current_submissions, query_states

    said = io.StringIO()               # submit's own report, shown unless quiet (always when it failed)
    with contextlib.redirect_stdout(said):
        code = main(["submit", spec_path, "--system", system, "--output-dir", str(exp.parent)])
    if not quiet or code:
        sys.stdout.write(said.getvalue())
    if code:
        return code
    delays = itertools.chain([2, 4, 8, 15, 30], itertools.repeat(60))
    deadline, shown = time.monotonic() + timeout, None
    while True:
        st = status(exp)
        if st.complete:
            return 0
        states, problems = query_states(current_submissions(exp))
        active = sum(t.active for t in states.values())
        if states and not active:
            return 0                       # every task ended; the results say what got done
        if time.monotonic() > deadline:
            err.print(f"gave up waiting after {timeout:.0f} s: {st.done}/{st.planned} units done, {active} task(s) "
                      f"still queued or running; `lmsweep status {exp}`")
            return 1
        line = f"waiting for {system}: {st.done}/{st.planned} units done, {active} task(s) queued or running" + \
            (f" ({'; '.join(problems)})" if problems else "")
        if line != shown:
            console.print(line, markup=False)
            shown = line
        time.sleep(next(delays))


def cmd_regress(args) -> int:
    from lmsweep.jobs.cli import print_plan, validated
    from lmsweep.jobs.plan import write_plan
    from lmsweep.results.cli import report, run_compare, tolerance_overrides
    from lmsweep.results.compare import tolerances_from
    from lmsweep.results.load import status
    from lmsweep.runner.local import run_elements

    # Everything that can be wrong with the input is checked before anything is written.
    spec, plan = validated(args.spec)
    regression = spec.regression.model_dump() if spec.regression else None
    tolerances_from(regression, tolerance_overrides(args))
    baseline_arg = args.baseline or (spec.regression.baseline if spec.regression else None)
    if not baseline_arg:
        raise SpecError("no baseline: give --baseline DIR or regression.baseline in the spec", file=args.spec,
                        field="regression.baseline")
    baseline = Path(baseline_arg)
    if args.recheck is not None and args.system and not _runs_here(args.system):
        raise UsageError("--recheck reruns units on this machine; it cannot follow a --system submission",
                         field="--recheck")
    have_baseline = _check_baseline(baseline, spec.task.type)
    if not have_baseline and not args.promote:
        raise UsageError(f"baseline {baseline} does not exist; run once with --promote to make this run the "
                        "baseline", field="--baseline")

    from lmsweep.jobs.cli import experiment_dir

    # experiment_dir applies the output-directory rules (no '..', results root); regress runs beside it
    exp = run_dir(experiment_dir(spec, args.output_dir).parent, spec.name)
    if args.system and not _runs_here(args.system):
        exp = exp / spec.name
        rc = submit_and_wait(args.spec, args.system, exp, args.wait_timeout, args.quiet)
        if rc:
            return rc
    else:
        write_plan(plan, exp)
        print_plan(plan, exp)
        ex = spec.execution
        run_elements(exp, [e.index for e in plan.elements], concurrency=ex.concurrency,
                     ranks=ex.ranks_per_element, threads=ex.threads_per_rank, show_progress=not args.quiet)
    complete = report(exp, quiet=args.quiet) == 0
    if args.recheck:
        _recheck(plan, exp, args.recheck, spec.execution, args.quiet)

    if not have_baseline:
        if not complete:
            err.print(f"run {exp} has failed or missing units; not promoting it to be the first baseline")
            return 1
        promote(exp, baseline, {"verdict": "first baseline", "spec": str(args.spec)})
        console.print(f"no baseline yet: promoted {exp} to {baseline}")
        return 0

    rc = run_compare(baseline, exp, args, regression=regression)
    if args.promote:
        if rc == 0 and complete and status(exp).complete:
            promote(exp, baseline, {"verdict": "pass", "spec": str(args.spec)})
            console.print(f"promoted {exp} to baseline {baseline}")
        else:
            err.print(f"not promoting: the run {'regressed' if rc else 'is incomplete'}; baseline {baseline} kept")
    return rc if complete else 1


def _positive(text: str) -> int:
    import argparse

    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a number of units, 1 or more; got {text!r}")
    return int(text)


def register(sub) -> None:
    from lmsweep.results.cli import add_compare_options

    s = sub.add_parser("regress", help="run a spec afresh and compare it with a baseline run (exit 1 on a "
                                       "regression); --promote makes a passing run the new baseline")
    s.add_argument("spec")
    s.add_argument("--baseline", help="baseline experiment directory (default: regression.baseline in the spec)")
    s.add_argument("--output-dir", help="parent of the run directory <name>-regress-<UTC time> "
                                        "(default: the spec's output_dir)")
    s.add_argument("--system", help="submit to this system's scheduler (as `lmsweep submit --system`) and wait, "
                                    "instead of running here; the experiment is then <run directory>/<name>")
    s.add_argument("--wait-timeout", type=float, default=86_400, metavar="SECONDS",
                   help="with --system: give up (exit 1) after this long (default: one day)")
    s.add_argument("--promote", action="store_true",
                   help="on success, copy the run to the baseline directory (creates it the first time)")
    s.add_argument("--quiet", action="store_true", help="no progress bar or summary tables")
    s.add_argument("--recheck", type=_positive, metavar="N",
                   help="then rerun N random units of the run at another batch size, in reverse order, and report "
                        "how far the engine disagrees with itself (the noise floor; never gates)")
    add_compare_options(s, spec_flag=False)
    s.set_defaults(func=cmd_regress)
