"""`lmsweep run` (plan and run here, in the foreground) and `lmsweep submit / resubmit / cancel`.

submit: validate → plan → pick the system profile and options (spec `execution`, then its
`pbs:`/`slurm:` block, then flags) → pack for the queue → re-group the plan → render one script
per array → (dry run: print and stop) → write the plan → record and submit. Every check runs before
anything is written, so bad input exits 2 with nothing on disk.
"""
from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

from lmsweep.console import console, err
from lmsweep.jobs.cli import experiment_dir, print_plan, validated
from lmsweep.jobs.errors import SpecError


def cmd_run(args) -> int:
    from lmsweep.jobs.plan import write_plan
    from lmsweep.results.cli import report
    from lmsweep.results.load import status
    from lmsweep.submit.local import run_elements

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
        ran = run_elements(exp, todo, concurrency=ex.concurrency, ranks=ex.ranks_per_element,
                           threads=ex.threads_per_rank, show_progress=not args.quiet)
        if any(r.returncode == 2 for r in ran):   # a worker refused its input (printed above): bad input
            return 2
        if any(r.returncode == 3 for r in ran):   # preempted (SIGTERM/Ctrl-C): finished batches are kept
            report(exp, quiet=True)
            console.print("preempted; rerun the same command to continue where it stopped")
            return 3
    return report(exp, quiet=args.quiet)


# ---- options ---------------------------------------------------------------------------------------------

def _flag_name(value: str | None, flag: str) -> str | None:
    from lmsweep.jobs.spec import scheduler_name
    if value is None:
        return None
    try:
        return scheduler_name(value, flag.lstrip("-"))
    except ValueError as e:
        raise SpecError(str(e), field=flag) from None


def check_flags(args) -> None:
    """Flags are checked before anything is planned: a bad value costs nothing and writes nothing."""
    _flag_name(args.queue, "--queue")
    _flag_name(args.account, "--account")
    _flag_walltime(args.walltime)
    for flag in ("nodes", "array_limit"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise SpecError(f"must be >= 1, got {getattr(args, flag)}", field="--" + flag.replace("_", "-"))


def _flag_walltime(value: str | None) -> str | None:
    from lmsweep.jobs.spec import WALLTIME_PATTERN
    if value is not None and not re.match(WALLTIME_PATTERN, value):
        raise SpecError(f"expected HH:MM:SS, got {value!r}", field="--walltime")
    return value


def load_profile(name: str, field: str):
    from lmsweep.submit.systems import ProfileError, load_system
    try:
        return load_system(name)
    except ProfileError as e:
        raise SpecError(str(e), field=field) from None


def _python(flag: str | None) -> str:
    """The worker's interpreter: this one by default; a relative path is made absolute (jobs cd elsewhere)."""
    if not flag:
        return sys.executable
    return os.path.abspath(flag) if "/" in flag else flag


def resolve_options(spec, profile, args) -> dict:
    """ArrayJob fields shared by every array of this submission: spec, then its scheduler block, then flags."""
    ex = spec.execution
    block = ex.pbs if profile.scheduler == "pbs" else ex.slurm if profile.scheduler == "slurm" else None
    where = "execution.pbs" if profile.scheduler == "pbs" else "execution.slurm"
    queue = _flag_name(args.queue, "--queue") or (getattr(block, "queue", None) or getattr(block, "partition", None)) \
        or profile.default_queue
    if profile.scheduler != "local" and queue not in profile.queues:
        key = "queue" if profile.scheduler == "pbs" else "partition"
        raise SpecError(f"system {profile.name!r} has no queue {queue!r} (known: {', '.join(profile.queues)})",
                        field="--queue" if args.queue else f"{where}.{key}")
    account = _flag_name(args.account, "--account") or getattr(block, "account", None)
    if profile.scheduler == "pbs" and not account:
        raise SpecError(f"{profile.name} needs a project for `#PBS -A`: set execution.pbs.account or pass --account",
                        field="execution.pbs.account")
    walltime = _flag_walltime(args.walltime) or getattr(block, "walltime", None) or getattr(block, "time", None) \
        or ex.walltime
    ppn = ex.ranks_per_node or profile.ranks_per_node
    return {
        "queue": queue if profile.scheduler != "local" else None,
        "account": account,
        "walltime": walltime,
        "nodes": args.nodes or ex.nodes,
        "ranks": ex.ranks_per_element if "ranks_per_element" in ex.model_fields_set else None,
        "ranks_per_node": ppn,
        "cpus_per_rank": ex.threads_per_rank or max(1, profile.cpus_per_node // ppn),
        "array_limit": args.array_limit or getattr(block, "array_limit", None)
        or (ex.concurrency if profile.scheduler == "local" else None),
        "filesystems": list(getattr(block, "filesystems", None) or profile.filesystems)
        if profile.scheduler == "pbs" else [],
        "place": getattr(block, "place", "scatter"),
        "qos": getattr(block, "qos", None),
        "gpus_per_node": (getattr(block, "gpus_per_node", None) if getattr(block, "gpus_per_node", None) is not None
                          else profile.gpus_per_node) if profile.scheduler == "slurm" else 0,
        "python": _python(args.python),
        "preemptable": bool(queue in profile.queues and profile.queues[queue].preemptable),
    }


def pack_request(profile, opts: dict, spec, tensor_parallel: int, live: dict):
    from lmsweep.submit.packing import PackRequest
    q = profile.queues.get(opts["queue"]) if opts["queue"] else None
    max_array = min(x for x in (profile.max_array_size, live.get("max_array_size")) if x) \
        if (profile.max_array_size or live.get("max_array_size")) else None
    max_queued = live.get("max_queued")
    if max_queued and q is not None and q.max_queued:
        max_queued = min(max_queued, q.max_queued)
    return PackRequest(system=profile.name, scheduler=profile.scheduler, queue=q, ranks_per_node=opts["ranks_per_node"],
                       walltime=opts["walltime"], tokens_per_second=spec.execution.tokens_per_second,
                       nodes=opts["nodes"], ranks=opts["ranks"], tensor_parallel=tensor_parallel,
                       max_units_per_element=spec.execution.max_units_per_element, max_array_size=max_array,
                       max_queued=max_queued, array_limit=opts["array_limit"],
                       other_queues=tuple(v for k, v in profile.queues.items() if k != opts["queue"]))


def array_jobs(exp: Path, experiment: str, submission: str, arrays, throttle, opts: dict, nodes: int,
               ranks_per_node: int):
    from lmsweep.submit.base import ArrayJob
    return [ArrayJob(experiment=experiment, exp_dir=str(exp), submission=submission, part=i, elements=tuple(els),
                     nodes=nodes, ranks_per_node=ranks_per_node, cpus_per_rank=opts["cpus_per_rank"],
                     walltime=opts["walltime"], queue=opts["queue"], account=opts["account"], throttle=throttle,
                     python=opts["python"], filesystems=tuple(opts["filesystems"]), place=opts["place"],
                     qos=opts["qos"], gpus_per_node=opts["gpus_per_node"], preemptable=opts["preemptable"])
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
        raise SpecError("; ".join(problems) + " — cannot tell whether earlier jobs still run", file=str(exp))
    return sorted({t.task_id for t in states.values() if t.active})


def shown(path: Path) -> str:
    """A path for a terminal: as is, or escaped when it holds newlines or other control characters."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _print_scripts(decision: list[str], jobs, scripts: list[str], sub_dir: Path, suffix: str) -> None:
    out = sys.stdout
    out.write("packing decision:\n" + "".join(f"  {line}\n" for line in decision))
    out.write(f"scripts go to {shown(sub_dir)}/\n")
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


def packing_error(e, spec, args, profile) -> SpecError:
    """Point at the flag or the spec line that asked for what the queue cannot take."""
    flags = {"execution.nodes": "nodes", "execution.walltime": "walltime", "array_limit": "array_limit"}
    flag = flags.get(e.field)
    if flag and getattr(args, flag, None):
        return SpecError(str(e), field="--" + flag.replace("_", "-"))
    block = "pbs" if profile.scheduler == "pbs" else "slurm"
    path = tuple(e.field.split(".")) if e.field != "array_limit" else ("execution", block, "array_limit")
    line = spec.source.line(path) or spec.source.line(("execution",))
    return SpecError(str(e), file=spec.source.file, line=line, field=".".join(path))


def _system_ref(asked: str, profile) -> str:
    """What to load again later: the name of a shipped profile, or the absolute path of a profile file."""
    is_path = "/" in asked or asked.endswith((".yaml", ".yml"))
    return str(Path(profile.source).resolve()) if is_path and profile.source else profile.name


def cmd_submit(args) -> int:
    from lmsweep.jobs.plan import write_plan
    from lmsweep.results.load import done_unit_ids
    from lmsweep.submit import jobs_dir
    from lmsweep.submit.base import scheduler_for
    from lmsweep.submit.packing import PackingError, apply_packing, pack, plan_unit_costs, split_arrays

    check_flags(args)
    spec, plan = validated(args.spec)
    exp = experiment_dir(spec, args.output_dir).resolve()
    profile = load_profile(args.system or spec.execution.system, "--system" if args.system else "execution.system")
    sched = scheduler_for(profile)
    opts = resolve_options(spec, profile, args)
    live = sched.live_limits() if profile.scheduler == "slurm" else {}
    tp = max(int(m.get("tensor_parallel") or 1) for m in plan.models.values())
    req = pack_request(profile, opts, spec, tp, live)
    try:
        packing = pack(plan.units.column("model").to_pylist(), plan_unit_costs(plan), req,
                       model_order=list(plan.models))
    except PackingError as e:
        raise packing_error(e, spec, args, profile) from None
    plan = apply_packing(plan, packing)
    decision = packing.describe() + [f"live limits from the scheduler: {live}"] * bool(live)

    # a rerun submits only elements with units not yet done (the worker skips finished units anyway)
    done = done_unit_ids(exp, plan.task["type"]) if (exp / "results").is_dir() else set()
    todo = sorted({int(e) for e, u in zip(plan.units.column("element").to_pylist(),
                                          plan.units.column("unit_id").to_pylist()) if u not in done})
    arrays, throttle = packing.arrays, packing.throttle
    if len(todo) < len(plan.elements):
        decision.append(f"{len(plan.elements) - len(todo)} element(s) already done: submitting {len(todo)}")
        arrays, throttle, more = split_arrays(todo, req, packing.nodes) if todo else ((), None, [])
        decision += more
    name = jobs_dir.next_name(exp)
    sub_dir = jobs_dir.jobs_root(exp) / name
    jobs = array_jobs(exp, spec.name, name, arrays, throttle, opts, packing.nodes, packing.ranks_per_node)
    # split arrays start one after another; the real id is known only once the previous one is accepted
    jobs = [replace(j, depends_on=f"JOBID_OF_ARRAY_{j.part - 1:02d}") if j.part else j for j in jobs]
    scripts = [sched.render(j) for j in jobs]
    if args.dry_run:
        _print_scripts(decision, jobs, scripts, sub_dir, sched.script_suffix)
        return 0
    if not todo:   # the plan on disk (and the submissions made for it) stay as they are
        console.print(f"all {plan.n_units} units already done in {shown(exp)}; nothing to submit", markup=False)
        return 0
    active = _active_jobs(exp)
    if active:
        raise SpecError(f"{len(active)} job task(s) of this experiment are still queued or running "
                        f"({', '.join(active[:5])}{' ...' if len(active) > 5 else ''}); a new submission would "
                        f"re-group the plan under them. Wait, or `lmsweep cancel {exp}` first", file=str(exp))
    write_plan(plan, exp)
    plan_created = plan.created
    directory = jobs_dir.create(exp, name)          # a concurrent submit may have taken `name`: the next one
    sub = jobs_dir.Submission(name=directory.name, directory=directory, kind="submit",
                              system=_system_ref(args.system or spec.execution.system, profile),
                              scheduler=profile.scheduler, plan_created=plan_created,
                              options={**opts, "nodes": packing.nodes, "ranks_per_node": packing.ranks_per_node},
                              packing=decision)
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
    from lmsweep.submit.packing import PackingError, PackRequest, choose_nodes, split_arrays
    from lmsweep.submit.tracking import current_submissions, query_states

    check_flags(args)
    exp = Path(args.experiment).resolve()
    plan = read_plan(exp)
    subs = current_submissions(exp)
    if not subs:
        raise SpecError("no submission recorded for this plan; use `lmsweep submit SPEC`", file=str(exp))
    last = subs[-1]
    profile = load_profile(last.system, "system")
    sched = scheduler_for(profile)
    opts = dict(last.options)
    if args.queue:
        opts["queue"] = _flag_name(args.queue, "--queue")
    if args.account:
        opts["account"] = _flag_name(args.account, "--account")
    if args.walltime:
        opts["walltime"] = _flag_walltime(args.walltime)
    if args.array_limit:
        opts["array_limit"] = args.array_limit
    if args.nodes:
        opts["nodes"] = args.nodes
    if args.python:
        opts["python"] = _python(args.python)
    q = profile.queues.get(opts["queue"]) if opts["queue"] else None
    if opts["queue"] and q is None:
        raise SpecError(f"system {profile.name!r} has no queue {opts['queue']!r}", field="--queue")
    req = PackRequest(system=profile.name, scheduler=profile.scheduler, queue=q,
                      ranks_per_node=opts["ranks_per_node"], walltime=opts["walltime"], tokens_per_second=1.0,
                      nodes=opts["nodes"], max_array_size=profile.max_array_size, array_limit=opts["array_limit"],
                      other_queues=tuple(v for k, v in profile.queues.items() if k != opts["queue"]))
    st = status(exp)
    todo = [int(e) for e in st.per_element.query("done < planned")["element"]]
    states, problems = ({}, []) if args.dry_run else query_states(subs)
    if problems:
        raise SpecError("; ".join(problems), file=str(exp))
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
        from lmsweep.submit.systems import walltime_seconds
        if q is not None and walltime_seconds(opts["walltime"]) > q.max_walltime_seconds:
            raise PackingError(f"walltime {opts['walltime']} is above queue {q.name}'s maximum {q.max_walltime}")
        nodes, ppn, _ = choose_nodes(req)
        arrays, throttle, notes = split_arrays(todo, req, nodes)
    except PackingError as e:
        raise SpecError(str(e), file=str(exp)) from None
    decision = [f"resubmitting {len(todo)} element(s) with missing or failed units: "
                f"{', '.join(map(str, todo[:20]))}{' ...' if len(todo) > 20 else ''}",
                f"per element: {nodes} node(s) x {ppn} rank(s); queue {opts['queue'] or '(none)'}; "
                f"walltime {opts['walltime']}", *notes]
    name = jobs_dir.next_name(exp)
    jobs = array_jobs(exp, plan.experiment, name, arrays, throttle, opts, nodes, ppn)
    scripts = [sched.render(j) for j in jobs]
    if args.dry_run:
        _print_scripts(decision, jobs, scripts, jobs_dir.jobs_root(exp) / name, sched.script_suffix)
        return 0
    directory = jobs_dir.create(exp, name)          # a concurrent submit may have taken `name`: the next one
    sub = jobs_dir.Submission(name=directory.name, directory=directory, kind="resubmit", system=last.system,
                              scheduler=profile.scheduler, plan_created=plan.meta["created"],
                              options={**opts, "nodes": nodes, "ranks_per_node": ppn}, packing=decision)
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
        raise SpecError("no submissions recorded here (EXP/jobs/ is empty)", file=str(exp))
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


def _scheduler_flags(s) -> None:
    s.add_argument("--queue", "--partition", dest="queue", help="PBS queue / Slurm partition")
    s.add_argument("--account", help="PBS project (-A) / Slurm account")
    s.add_argument("--walltime", help="HH:MM:SS per element")
    s.add_argument("--nodes", type=int, help="nodes per element (default: packed for the queue)")
    s.add_argument("--array-limit", type=int, help="at most this many array tasks at once (%%K)")
    s.add_argument("--python", help="python that runs the worker on the compute nodes (default: this one)")
    s.add_argument("--dry-run", action="store_true", help="print the packing decision and scripts; change nothing")


def register(sub) -> None:
    s = sub.add_parser("run", help="plan and run a spec locally, then print a summary")
    s.add_argument("spec")
    s.add_argument("--output-dir", help="parent of the experiment directory (default: the spec's output_dir)")
    s.add_argument("--quiet", action="store_true", help="no progress bar or tables")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("submit", help="plan a spec, pack it for a system's queue and submit it as job arrays")
    s.add_argument("spec")
    s.add_argument("--system", help="system profile name (polaris, aurora, slurm-generic, local) or YAML path")
    s.add_argument("--output-dir", help="parent of the experiment directory (default: the spec's output_dir)")
    _scheduler_flags(s)
    s.set_defaults(func=cmd_submit)

    s = sub.add_parser("resubmit", help="submit again only the elements with missing or failed units")
    s.add_argument("experiment", help="experiment directory")
    _scheduler_flags(s)
    s.set_defaults(func=cmd_resubmit)

    s = sub.add_parser("cancel", help="cancel an experiment's queued and running jobs")
    s.add_argument("experiment", help="experiment directory")
    s.set_defaults(func=cmd_cancel)
