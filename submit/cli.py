"""`lmsweep run` (plan and run here, in the foreground) and `lmsweep submit / resubmit / cancel`.

submit: validate → plan → pick the system profile and its backend (submit/backends/) → resolve the
options (submit/options.py: profile, spec `execution` and its `execution.<scheduler>` block, flags; resubmit
uses the same function on the recorded options) → pack for the queue → re-group the plan → render one script
per array → (dry run: print and stop) → write the plan → record and submit. Every check runs before
anything is written, so bad input exits 2 with nothing on disk.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lmsweep.console import console, err
from lmsweep.jobs.cli import experiment_dir, validated
from lmsweep.jobs.errors import SpecError, SpecErrors, UsageError

# ---- options ---------------------------------------------------------------------------------------------

def load_profile(name: str, field: str):
    from lmsweep.submit.systems import ProfileError, load_system
    try:
        return load_system(name)
    except ProfileError as e:       # each problem on its own line, behind the flag or key that named the profile
        problems = [SpecError(line, field=field) for line in e.lines()]
        raise (problems[0] if len(problems) == 1 else SpecErrors(problems)) from None


def pack_request(sched, opts, *, tokens_per_second: float = 1.0, tensor_parallel: int = 1,
                 live: dict | None = None, max_units_per_element: int | None = None, ranks: int | None = None):
    """What packing needs from the options, the profile's queue and the scheduler's live limits."""
    from lmsweep.submit.packing import PackRequest
    profile, live = sched.profile, live or {}
    q = profile.queues.get(opts.queue) if opts.queue else None
    max_array = min((x for x in (profile.max_array_size, live.get("max_array_size")) if x), default=None)
    max_queued = live.get("max_queued")
    if max_queued and q is not None and q.max_queued:
        max_queued = min(max_queued, q.max_queued)
    return PackRequest(system=profile.name, queue=q, ranks_per_node=opts.ranks_per_node, walltime=opts.walltime,
                       tokens_per_second=tokens_per_second, nodes=opts.nodes, ranks=ranks,
                       tensor_parallel=tensor_parallel, max_units_per_element=max_units_per_element,
                       max_array_size=max_array, max_queued=max_queued, array_limit=opts.array_limit,
                       other_queues=tuple(v for k, v in profile.queues.items() if k != opts.queue),
                       one_machine=sched.one_machine)


def array_jobs(exp: Path, experiment: str, submission: str, arrays, throttle, opts) -> list:
    """One ArrayJob per array; `opts` (SubmitOptions) already holds the packing's nodes and ranks per node."""
    from lmsweep.submit.base import ArrayJob
    return [ArrayJob(experiment=experiment, exp_dir=str(exp), submission=submission, part=i, elements=tuple(els),
                     nodes=opts.nodes, ranks_per_node=opts.ranks_per_node, cpus_per_rank=opts.cpus_per_rank,
                     walltime=opts.walltime, queue=opts.queue, account=opts.account, throttle=throttle,
                     python=opts.python, preemptable=opts.preemptable, scheduler=opts.scheduler)
            for i, els in enumerate(arrays)]


def _active_jobs(exp: Path) -> list[str]:
    """Job tasks of this experiment still queued or running (any grouping): a new plan must wait for them."""
    from lmsweep.submit.jobs_dir import load_submissions
    from lmsweep.submit.tracking import query_states
    subs = load_submissions(exp)
    if not subs:
        return []
    states, problems = query_states(subs)
    if problems:
        raise UsageError("; ".join(problems) + " — cannot tell whether earlier jobs still run", file=str(exp))
    return sorted({t.task_id for t in states.values() if t.active})


def shown(path: Path) -> str:
    """A path for a terminal: as is, or escaped when it holds newlines or other control characters."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def dry_run_out(args) -> Path | None:
    """`--out DIR` (with `--dry-run` only): where the dry run writes its scripts, checked before planning."""
    if args.out is None:
        return None
    if not args.dry_run:
        raise UsageError("only with --dry-run (a real submit writes its scripts to EXP/jobs/sub-NNNN/)",
                        field="--out")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{shown(out)} exists and is not a directory", field="--out")
    return out


def _print_scripts(decision: list[str], jobs, scripts: list[str], sub_dir: Path, suffix: str,
                   out_dir: Path | None = None) -> None:
    """The dry run's output; with `--out DIR` the scripts are also written there, and nothing else is."""
    out = sys.stdout
    out.write("packing decision:\n" + "".join(f"  {line}\n" for line in decision))
    if out_dir is None:
        out.write(f"scripts go to {shown(sub_dir)}/ when submitted (dry run: nothing written; "
                  f"--out DIR writes the scripts there)\n")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        for job, text in zip(jobs, scripts):
            (out_dir / f"array-{job.part:02d}{suffix}").write_text(text)
        out.write(f"dry run: wrote {len(scripts)} script(s) to {shown(out_dir)}/ (nothing else; a submit writes "
                  f"them to {shown(sub_dir)}/)\n")
    for job, text in zip(jobs, scripts):
        out.write(f"\n# ---- array-{job.part:02d}{suffix} ----\n{text}")
    out.flush()


def _submit_arrays(sched, sub, jobs, decision) -> list[str]:
    """Print the packing decision, then write and submit each array's script, chained by dependency.
    Scripts are rendered again here (the callers' render, before anything is written, is the dry run and
    the check): a script names its submission, which a concurrent submit may have moved to the next name,
    and the id it depends on is known only once the previous array is accepted."""
    from lmsweep.submit.base import SchedulerError
    from lmsweep.submit.jobs_dir import ArrayRecord
    for line in decision:
        console.print(line, markup=False)
    ids = []
    previous = None
    for job in jobs:
        job = replace(job, submission=sub.name, depends_on=previous)     # the real id, not the dry run's placeholder
        text = sched.render(job)
        name = f"array-{job.part:02d}{sched.script_suffix}"
        (sub.directory / name).write_text(text)
        record = ArrayRecord(job.part, name, list(job.elements), depends_on=job.depends_on)
        sub.arrays.append(record)
        sub.save()
        try:
            record.job_id = sched.submit(sub.directory / name)
        except SchedulerError as e:
            record.error = str(e)
            sub.save()
            err.print(f"error: {e}", markup=False)
            break
        record.submitted_at = time.time()
        sub.save()
        ids.append(record.job_id)
        previous = record.job_id if len(jobs) > 1 else None
    return ids


def packing_error(e, spec, flags, sched) -> SpecError:
    """Point at the flag or the spec line that asked for what the queue cannot take."""
    option = {"execution.nodes": "nodes", "execution.walltime": "walltime", "array_limit": "array_limit"}.get(e.field)
    if option and getattr(flags, option) is not None:
        return SpecError(str(e), field="--" + option.replace("_", "-"))
    key = sched.block.key_of("array_limit") if sched.block else "array_limit"
    path = tuple(e.field.split(".")) if e.field != "array_limit" else ("execution", sched.name, key)
    line = spec.source.line(path) or spec.source.line(("execution",))
    return SpecError(str(e), file=spec.source.file, line=line, field=".".join(path))


def _system_ref(asked: str, profile) -> str:
    """What to load again later: the name of a shipped profile, or the absolute path of a profile file."""
    is_path = "/" in asked or asked.endswith((".yaml", ".yml"))
    return str(Path(profile.source).resolve()) if is_path and profile.source else profile.name


@dataclass(frozen=True)
class SubmitPacking:
    """A spec packed for one system's queue: what `submit` (and `validate`'s note) report."""

    sched: Any
    options: Any                       # SubmitOptions, with the packing's nodes and ranks per node
    request: Any                       # PackRequest
    packing: Any                       # Packing
    live: dict
    tokens_per_second: float
    tps_source: str


def pack_spec(spec, plan, system: str, system_field: str, flags, *, live: bool = True,
              exp: Path | None = None) -> SubmitPacking:
    """Profile → backend → options → packing for `system`; bad input raises SpecError. With `exp`, the
    throughput may come from what its finished elements measured (submit/throughput.py). The packer is the
    plan's own (jobs.plan.ElementPacker), so where the queue's capacity is the plan's the elements are too."""
    from lmsweep.jobs.plan import rank_span
    from lmsweep.submit.base import scheduler_for
    from lmsweep.submit.options import resolve_options, with_packing
    from lmsweep.submit.packing import PackingError, pack, plan_unit_costs
    from lmsweep.submit.throughput import choose, measured

    profile = load_profile(system, system_field)
    sched = scheduler_for(profile)
    opts = resolve_options(sched, flags, execution=spec.execution)
    limits = sched.live_limits(opts.queue) if live else {}
    costs = plan_unit_costs(plan)
    learned = None
    if exp is not None and (exp / "meta" / "history").is_dir() and (exp / "results").is_dir():
        from lmsweep.results.load import done_unit_ids
        learned = measured(exp, plan.units.column("unit_id").to_pylist(), costs,
                           done_unit_ids(exp, plan.task["type"]), accelerated=profile.gpus_per_node > 0)
    rate = choose(spec.execution, profile, learned)
    tps, source = rate.tokens_per_second, rate.source
    tp = rank_span(spec.execution.backend, max(int(m.get("tensor_parallel") or 1) for m in plan.models.values()))
    req = pack_request(sched, opts, tokens_per_second=tps, tensor_parallel=tp, live=limits,
                       max_units_per_element=spec.execution.max_units_per_element, ranks=opts.ranks)
    try:
        packing = pack(plan.units.column("model").to_pylist(), costs, req, model_order=list(plan.models))
    except PackingError as e:
        raise packing_error(e, spec, flags, sched) from None
    return SubmitPacking(sched, with_packing(opts, packing.nodes, packing.ranks_per_node), req, packing,
                         limits, tps, source)


def same_elements(plan, sp: SubmitPacking) -> bool:
    """Whether submit's packing is the plan's own: the same packer with the same capacity gives the same."""
    p = sp.packing
    return (len(plan.elements) == len(p.elements)
            and plan.units.column("element").to_numpy().tolist() == p.element_of_unit.tolist())


def capacity_difference(spec, sp: SubmitPacking) -> str:
    """What makes submit's element capacity other than the plan's (jobs.plan.element_budget's inputs)."""
    from lmsweep.jobs.plan import model_copies
    from lmsweep.submit.systems import walltime_seconds
    ex, p = spec.execution, sp.packing
    mine = model_copies(ex.ranks_per_element, p.tensor_parallel)
    diffs = []
    if p.groups != mine:
        diffs.append(f"{p.groups} model copies per element instead of {mine}")
    if sp.tokens_per_second != ex.tokens_per_second:
        diffs.append(f"{sp.tokens_per_second:g} tokens/s per rank instead of {ex.tokens_per_second:g}")
    if walltime_seconds(p.walltime) != ex.walltime_seconds:
        diffs.append(f"walltime {p.walltime} instead of {ex.walltime}")
    return "the plan's packer with another capacity: " + ", ".join(diffs) if diffs else "the plan's packer"


def regrouped(spec, plan, sp: SubmitPacking) -> list[str]:
    """The decision's line when `submit` makes other elements than `validate`/`plan` (a queue of another
    capacity); none when they are the same."""
    if same_elements(plan, sp):
        return []
    p = sp.packing
    return [f"the plan's {len(plan.elements)} element(s) (as `lmsweep validate`/`plan` size them, for `lmsweep run`) "
            f"are re-packed for {sp.sched.profile.name}" + (f" queue {p.queue}" if p.queue else "") + ": "
            f"{len(p.elements)} element(s) of {p.nodes} node(s) x {p.ranks_per_node} rank(s)",
            f"({capacity_difference(spec, sp)})"]


def packing_note(spec, plan) -> list[str]:
    """`validate`'s note, only when `submit` to the spec's system would make other elements: how the plan's
    were sized, and what submit makes of them (one packer: the difference is the capacity, and it says which)."""
    from lmsweep.submit.options import Flags
    ex = spec.execution
    sized = (f"elements: sized for {ex.ranks_per_element} rank(s) at {ex.tokens_per_second:g} tokens/s within "
             f"80% of walltime {ex.walltime}, as `lmsweep run` runs them")
    try:
        sp = pack_spec(spec, plan, ex.system, "execution.system", Flags(), live=False)
    except SpecError as e:     # e.g. no account yet, or a unit beyond the walltime: validate says, submit refuses
        return [sized, f"`lmsweep submit --system {ex.system}` would refuse them now: {e.message}"]
    if same_elements(plan, sp):
        return []
    p = sp.packing
    where = f"queue {p.queue}" if p.queue else "this machine"
    return [sized, f"`lmsweep submit --system {ex.system}` re-packs them for {where}: "
                   f"{len(p.elements)} element(s) of {p.nodes} node(s) x {p.ranks_per_node} rank(s), at "
                   f"{sp.tokens_per_second:g} tokens/s per rank ({capacity_difference(spec, sp)})"]


def time_to_results(spec, plan, sp: SubmitPacking, exp: Path) -> list[str]:
    """The decision's time-to-results lines (submit/estimate.py): the chosen queue and every other queue of the
    profile packed the same way (at the walltime asked, or the queue's maximum where that is lower), the model
    load times (measured by this experiment's finished elements, or another's beside it with the same model
    and engine, where there are some), the recommended queue and the warnings."""
    from lmsweep.submit import estimate as est
    from lmsweep.submit.packing import PackingError, pack, plan_unit_costs
    from lmsweep.submit.systems import walltime_seconds
    profile, req = sp.sched.profile, sp.request
    gpu, backend = profile.gpus_per_node > 0, spec.execution.backend
    measured = est.measured_loads(est.read_history(exp), gpu, backend)
    elsewhere = est.sibling_loads(exp, plan.models, gpu, backend) if set(plan.models) - set(measured) else {}
    loads = est.model_loads(plan.models, backend, measured, elsewhere)
    chosen = est.estimate(sp.packing, loads, one_machine=sp.sched.one_machine, queue=req.queue)
    models, costs = plan.units.column("model").to_pylist(), plan_unit_costs(plan)
    others, unfit = [], []
    for q in profile.queues.values():
        if req.queue is None or q.name == req.queue.name:
            continue
        walltime = req.walltime if walltime_seconds(req.walltime) <= q.max_walltime_seconds else q.max_walltime
        alt = replace(req, queue=q, walltime=walltime, array_limit=None, max_queued=None, other_queues=())
        try:
            others.append(est.estimate(pack(models, costs, alt, model_order=list(plan.models)), loads, queue=q))
        except PackingError as e:
            unfit.append((q.name, str(e)))
    return est.describe(chosen, others, unfit, loads)


def check_paths(sched, opts, flags, exp: Path, models: dict | None = None) -> list[str]:
    """The interpreter must exist (else exit 2); node-local paths the compute nodes cannot see, and paths
    outside the profile's shared_paths (the experiment, the interpreter, the plan's models), are warned about
    on stderr. Returns the packing decision's line about the interpreter."""
    import os

    from lmsweep.submit.checks import check_python, node_local_warnings, python_source, shared_path_warnings
    from lmsweep.submit.estimate import model_path
    check_python(opts.python, flags.python, sched.profile)
    tmpdir = os.environ.get("TMPDIR")
    model_paths = {alias: model_path(m) for alias, m in (models or {}).items()}
    for line in [*node_local_warnings(sched.profile, sched.one_machine, exp, opts.python, tmpdir),
                 *shared_path_warnings(sched.profile, sched.one_machine, exp, opts.python, model_paths, tmpdir)]:
        err.print(f"warning: {line}", markup=False, highlight=False)
    where = ("looked up on the compute node's PATH after the environment setup" if "/" not in opts.python
             else python_source(flags.python, sched.profile))
    checked = (f"; each job checks on its node that it runs lmsweep on {sched.profile.mpi_library} (else exit 4)"
               if sched.profile.mpi_library else "")
    return [f"python: {opts.python} ({where}){checked}"]


def cmd_submit(args) -> int:
    from lmsweep.jobs.plan import write_plan
    from lmsweep.results.load import done_unit_ids
    from lmsweep.submit import jobs_dir
    from lmsweep.submit.options import Flags
    from lmsweep.submit.packing import apply_packing, split_arrays

    flags = Flags.from_args(args)
    out_dir = dry_run_out(args)
    if args.all and not args.dry_run:
        raise UsageError("only with --dry-run (a submit runs only what is not done yet)", field="--all")
    spec, plan = validated(args.spec)
    exp = experiment_dir(spec, args.output_dir).resolve()
    system = args.system or spec.execution.system
    sp = pack_spec(spec, plan, system, "--system" if args.system else "execution.system", flags, exp=exp)
    sched, opts, req, packing, live = sp.sched, sp.options, sp.request, sp.packing, sp.live
    profile = sched.profile
    python_line = check_paths(sched, opts, flags, exp, plan.models)
    decision = packing.describe()
    decision[2:2] = [*regrouped(spec, plan, sp),
                     f"throughput: {sp.tokens_per_second:g} tokens/s per rank ({sp.tps_source})"]
    decision += time_to_results(spec, plan, sp, exp)
    decision += [f"live limits from the scheduler: {live}"] * bool(live) + python_line
    plan = apply_packing(plan, packing)

    # a rerun submits only elements with units not yet done (the worker skips finished units anyway)
    done = done_unit_ids(exp, plan.task["type"]) if (exp / "results").is_dir() else set()
    todo = sorted({int(e) for e, u in zip(plan.units.column("element").to_pylist(),
                                          plan.units.column("unit_id").to_pylist()) if u not in done})
    arrays, throttle = packing.arrays, packing.throttle
    if args.all and len(todo) < len(plan.elements):
        decision.append(f"--all: rendering all {len(plan.elements)} element(s); {len(plan.elements) - len(todo)} of "
                        f"them already done here (a submit would run {len(todo)})")
    elif len(todo) < len(plan.elements):
        decision.append(f"{len(plan.elements) - len(todo)} element(s) already done: submitting {len(todo)}"
                        + (" (`--dry-run --all` renders every element's script)" if args.dry_run else ""))
        arrays, throttle, more = split_arrays(todo, req, packing.nodes) if todo else ((), None, [])
        decision += more
    name = jobs_dir.next_name(exp)
    sub_dir = jobs_dir.jobs_root(exp) / name
    jobs = array_jobs(exp, spec.name, name, arrays, throttle, opts)
    # split arrays start one after another; the real id is known only once the previous one is accepted
    jobs = [replace(j, depends_on=f"JOBID_OF_ARRAY_{j.part - 1:02d}") if j.part else j for j in jobs]
    scripts = [sched.render(j) for j in jobs]
    if args.dry_run:
        _print_scripts(decision, jobs, scripts, sub_dir, sched.script_suffix, out_dir)
        return 0
    if not todo:   # the plan on disk (and the submissions made for it) stay as they are
        console.print(f"all {plan.n_units} units already done in {shown(exp)}; nothing to submit", markup=False)
        return 0
    active = _active_jobs(exp)
    if active:
        raise UsageError(f"{len(active)} job task(s) of this experiment are still queued or running "
                        f"({', '.join(active[:5])}{' ...' if len(active) > 5 else ''}); a new submission would "
                        f"re-group the plan under them. Wait, or `lmsweep cancel {exp}` first", file=str(exp))
    write_plan(plan, exp)
    plan_created = plan.created
    directory = jobs_dir.create(exp, name)          # a concurrent submit may have taken `name`: the next one
    sub = jobs_dir.Submission(name=directory.name, directory=directory, kind="submit",
                              system=_system_ref(args.system or spec.execution.system, profile),
                              scheduler=profile.scheduler, plan_created=plan_created,
                              options=opts.record(), packing=decision)
    ids = _submit_arrays(sched, sub, jobs, decision)
    for rec in sub.arrays:
        if rec.job_id:
            console.print(f"submitted {rec.job_id}: {len(rec.elements)} element(s) → {shown(sub.directory)}",
                          markup=False)
    return 0 if len(ids) == len(jobs) else 1


def cmd_resubmit(args) -> int:
    from lmsweep.jobs.plan import read_plan
    from lmsweep.results.load import status
    from lmsweep.submit import jobs_dir
    from lmsweep.submit.base import scheduler_for
    from lmsweep.submit.options import Flags, resolve_options, with_packing
    from lmsweep.submit.packing import PackingError, choose_nodes, split_arrays
    from lmsweep.submit.systems import walltime_seconds
    from lmsweep.submit.tracking import current_submissions, query_states

    flags = Flags.from_args(args)
    out_dir = dry_run_out(args)
    exp = Path(args.experiment).resolve()
    plan = read_plan(exp)
    subs = current_submissions(exp)
    if not subs:
        raise UsageError("no submission recorded for this plan; use `lmsweep submit SPEC`", file=str(exp))
    last = subs[-1]
    profile = load_profile(last.system, "system")
    sched = scheduler_for(profile)
    opts = resolve_options(sched, flags, recorded=last.options)
    python_line = check_paths(sched, opts, flags, exp, plan.models)
    req = pack_request(sched, opts)
    st = status(exp)
    todo = [int(e) for e in st.per_element.query("done < planned")["element"]]
    states, problems = ({}, []) if args.dry_run else query_states(subs)
    if problems:
        raise UsageError("; ".join(problems), file=str(exp))
    latest = jobs_dir.latest_tasks(subs)
    running = [e for e in todo if e in latest and (t := states.get((latest[e][0].job_id, latest[e][1])))
               and t.active]
    todo = [e for e in todo if e not in running]
    if running:
        console.print(f"{len(running)} element(s) still queued or running, not resubmitted: "
                      f"{', '.join(map(str, running[:10]))}", markup=False)
    if not todo:
        console.print("nothing to resubmit: every element is done or still has a live job", markup=False)
        return 0
    try:
        q = req.queue
        if q is not None and walltime_seconds(opts.walltime) > q.max_walltime_seconds:
            raise PackingError(f"walltime {opts.walltime} is above queue {q.name}'s maximum {q.max_walltime}")
        nodes, ppn, _ = choose_nodes(req)
        arrays, throttle, notes = split_arrays(todo, req, nodes)
    except PackingError as e:
        raise UsageError(str(e), file=str(exp)) from None
    opts = with_packing(opts, nodes, ppn)
    decision = [f"resubmitting {len(todo)} element(s) with missing or failed units: "
                f"{', '.join(map(str, todo[:20]))}{' ...' if len(todo) > 20 else ''}",
                f"per element: {nodes} node(s) x {ppn} rank(s); queue {opts.queue or '(none)'}; "
                f"walltime {opts.walltime}", *notes, *python_line]
    name = jobs_dir.next_name(exp)
    jobs = array_jobs(exp, plan.experiment, name, arrays, throttle, opts)
    scripts = [sched.render(j) for j in jobs]
    if args.dry_run:
        _print_scripts(decision, jobs, scripts, jobs_dir.jobs_root(exp) / name, sched.script_suffix, out_dir)
        return 0
    directory = jobs_dir.create(exp, name)          # a concurrent submit may have taken `name`: the next one
    sub = jobs_dir.Submission(name=directory.name, directory=directory, kind="resubmit", system=last.system,
                              scheduler=profile.scheduler, plan_created=plan.meta["created"],
                              options=opts.record(), packing=decision)
    ids = _submit_arrays(sched, sub, jobs, decision)
    for rec in sub.arrays:
        if rec.job_id:
            console.print(f"submitted {rec.job_id}: element(s) {', '.join(map(str, rec.elements[:20]))} "
                          f"→ {shown(sub.directory)}", markup=False)
    return 0 if len(ids) == len(jobs) else 1


def cmd_cancel(args) -> int:
    from lmsweep.submit.base import run, scheduler_for
    from lmsweep.submit.jobs_dir import load_submissions
    from lmsweep.submit.systems import load_system
    from lmsweep.submit.tracking import query_states

    exp = Path(args.experiment).resolve()
    subs = load_submissions(exp)
    if not subs:
        raise UsageError("no submissions recorded here (EXP/jobs/ is empty)", file=str(exp))
    states, problems = query_states(subs)
    for p in problems:
        err.print(p, markup=False)
    rc = 0
    for system in dict.fromkeys(s.system for s in subs):
        jobs = [j for s in subs if s.system == system for j in s.recorded_jobs()]
        live = [j.job_id for j in jobs if any(t.active for (jid, _), t in states.items() if jid == j.job_id)]
        if not live:
            continue
        proc = run(scheduler_for(load_system(system)).cancel_command(live))
        if proc.returncode == 0:
            console.print(f"cancelled {', '.join(live)}", markup=False)
        else:
            rc = 1
            err.print(f"cancel failed: {proc.stderr.strip() or proc.stdout.strip()}", markup=False)
    if rc == 0 and not any(t.active for t in states.values()):
        console.print("no queued or running jobs", markup=False)
    return rc


def cmd_systems(args) -> int:
    """`lmsweep systems [show NAME | new --from NAME DEST]`: the shipped profiles, one in full, or a copy to edit."""
    from lmsweep.errors import ProfileError
    from lmsweep.submit.systems import describe, gpus_text, list_systems, load_system, parse_profile, renamed_copy
    if args.action is None:
        rows = [(p.name, p.scheduler, gpus_text(p), ", ".join(p.queues) or "(none: runs here)")
                for p in map(load_system, list_systems())]
        widths = [max(len(r[i]) for r in [("system", "scheduler", "GPUs/node", "queues"), *rows]) for i in range(3)]
        for r in [("system", "scheduler", "GPUs/node", "queues"), *rows]:
            console.print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[3], markup=False,
                          highlight=False, soft_wrap=True)
        console.print("lmsweep systems show NAME: one in full; lmsweep systems new --from NAME DEST: a copy to edit",
                      markup=False, highlight=False)
        return 0
    if args.action == "show":
        for line in describe(load_profile(args.name, "NAME")):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        return 0
    source = load_profile(args.source, "--from")
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / f"{source.name}.yaml"
    elif dest.suffix not in (".yaml", ".yml"):
        raise UsageError(f"expected a directory or a file name ending in .yaml, got {shown(dest)}", field="DEST")
    if dest.exists() and not args.force:
        raise UsageError(f"{shown(dest)} exists; pass --force to overwrite it", field="DEST")
    text = renamed_copy(source.source.read_text(), source.source, dest.stem)
    try:
        parse_profile(text, dest)             # the copy must load as it is written (its name is the file's)
    except ProfileError as e:
        raise UsageError(f"a profile named {dest.stem!r} cannot be written: {e.message}", field="DEST") from None
    dest.write_text(text)
    console.print(f"wrote {shown(dest)} (system {dest.stem}, a copy of {source.name}); edit it, then "
                  f"`lmsweep submit SPEC --system {shown(dest)} --dry-run`", markup=False, highlight=False)
    return 0


def _scheduler_flags(s) -> None:
    s.add_argument("--queue", "--partition", dest="queue", help="PBS queue / Slurm partition")
    s.add_argument("--account", help="PBS project (-A) / Slurm account")
    s.add_argument("--walltime", help="HH:MM:SS per element")
    s.add_argument("--nodes", type=int, help="nodes per element (default: packed for the queue)")
    s.add_argument("--array-limit", type=int, help="at most this many array tasks at once (%%K)")
    s.add_argument("--python", help="python that runs the worker on the compute nodes (default: the system "
                   "profile's `python`, else the one running lmsweep); it must exist here, and jobs of a profile "
                   "with `mpi_library` check it on the compute node first (exit 4)")
    s.add_argument("--dry-run", action="store_true", help="print the packing decision and scripts; change nothing")
    s.add_argument("--out", metavar="DIR", help="with --dry-run: also write the scripts into DIR (and nothing else)")


def register(sub) -> None:
    s = sub.add_parser("submit", help="plan a spec, pack it for a system's queue and submit it as job arrays")
    s.add_argument("spec")
    s.add_argument("--system", help="system profile name (`lmsweep systems` lists them) or YAML path")
    s.add_argument("--all", action="store_true", help="with --dry-run: render every element's script, also when "
                   "this experiment has already done some or all of them")
    s.add_argument("--output-dir", help="parent of the experiment directory (default: the spec's output_dir); on "
                   "a cluster it must be on a filesystem the compute nodes see (/tmp, /var/tmp, /dev/shm and "
                   "$TMPDIR get a warning)")
    _scheduler_flags(s)
    s.set_defaults(func=cmd_submit)

    s = sub.add_parser("resubmit", help="submit again only the elements with missing or failed units")
    s.add_argument("experiment", help="experiment directory")
    _scheduler_flags(s)
    s.set_defaults(func=cmd_resubmit)

    s = sub.add_parser("systems", help="list the shipped system profiles, show one, or copy one to edit")
    verbs = s.add_subparsers(dest="action")
    show = verbs.add_parser("show", help="one profile in full: queues and limits, launcher, binding, environment")
    show.add_argument("name", help="profile name (or a path to a profile YAML)")
    new = verbs.add_parser("new", help="write an editable copy of a profile (renamed after DEST)")
    new.add_argument("--from", dest="source", required=True, metavar="NAME", help="the profile to copy")
    new.add_argument("dest", metavar="DEST", help="the new file (NAME.yaml: the file name is the profile's name) "
                     "or a directory")
    new.add_argument("--force", action="store_true", help="overwrite DEST if it exists")
    s.set_defaults(func=cmd_systems)

    s = sub.add_parser("cancel", help="cancel an experiment's queued and running jobs")
    s.add_argument("experiment", help="experiment directory")
    s.set_defaults(func=cmd_cancel)

    from lmsweep.submit import status  # results' counts joined with the scheduler's view

    status.register(sub)
