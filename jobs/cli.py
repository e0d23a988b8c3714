"""`lmsweep validate`, `lmsweep plan` and `lmsweep examples`."""
from __future__ import annotations

from pathlib import Path

from rich.table import Table

from lmsweep.console import console, hms


def experiment_dir(spec, output_dir: str | None) -> Path:
    """`<output_dir>/<name>`; a SpecError if that leaves the results root (see jobs.spec.experiment_path)."""
    from lmsweep.jobs.spec import experiment_path

    return experiment_path(spec, output_dir)


def validated(spec_path: str):
    """Everything that can be checked without running: spec, prompts, models, expansion."""
    from lmsweep.jobs.plan import plan_spec
    from lmsweep.jobs.spec import load_spec

    spec = load_spec(spec_path)
    return spec, plan_spec(spec)


def missing_engine(spec) -> str | None:
    """Why the spec's engine cannot run here (a module it imports is not installed), or None. Found without
    importing it: `find_spec`. Engines list the modules as `imports` (runner/engines)."""
    import importlib.util

    from lmsweep.core.engine import get_engine

    engine = get_engine(spec.execution.backend)
    missing = [m for m in getattr(engine, "imports", ()) if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    hint = getattr(engine, "install_hint", f"install {', '.join(missing)}")
    return f"backend {engine.name}: {', '.join(missing)} is not importable in this environment; {hint}"


def cmd_validate(args) -> int:
    import sys

    spec, plan = validated(args.spec)
    experiment_dir(spec, None)           # where outputs would go must be allowed too
    missing = missing_engine(spec)       # a login node may lack the engine: a warning here, a refusal at run
    if missing:
        where = f"{spec.source.file}:{spec.source.line(('execution', 'backend'))}: " if spec.source.file else ""
        print(f"warning: {where}execution.backend: {missing} (the workers need it; `lmsweep run` refuses here)",
              file=sys.stderr, flush=True)
    console.print(f"ok: {args.spec}: experiment {spec.name!r}, {len(plan.models)} model(s), "
                  f"{len(plan.prompts)} prompt(s), {max(len(plan.points), 1)} decoding point(s), "
                  f"{plan.n_units} unit(s) in {len(plan.elements)} element(s)")
    for note in getattr(args, "notes", ()):   # later stages' word on the plan (submit's re-packing), given by
        for line in note(spec, plan):           # lmsweep/cli.py: jobs imports no later stage
            console.print(f"  {line}", markup=False)
    print_quantization(plan)
    print_points(plan.points)
    return 0


def print_quantization(plan) -> None:
    """A note per model whose weights are quantised (a packaged GGUF, dequantised; a directory whose config.json
    has a quantization_config): every output comes from those weights (none for a task that loads only the
    tokenizer)."""
    from lmsweep.core.task_registry import get_task
    from lmsweep.jobs.model_sources import model_quantization

    task = get_task(plan.task["type"])
    if all(task.auto_class_for(task.variant(v)) is None for v in plan.variants):
        return
    for alias, m in plan.models.items():
        source = str(m["source"])
        quantization = model_quantization(source, m.get("path"))
        if quantization is None:
            continue
        how = (f"is a {quantization}, dequantised to {m['dtype']}" if source.startswith("package:")
               else f"has quantised weights ({quantization})")
        console.print(f"note: model {alias!r} ({source}) {how}: its outputs and internals come from quantised "
                      "weights", markup=False)


def cmd_plan(args) -> int:
    from lmsweep.jobs.plan import write_plan

    spec, plan = validated(args.spec)
    exp = experiment_dir(spec, args.output_dir)
    write_plan(plan, exp)
    print_quantization(plan)
    print_points(plan.points)
    print_plan(plan, exp)
    return 0


def print_points(points) -> None:
    """The decoding points with every parameter: a column for each that varies, one line for the rest."""
    if not points:
        return
    from lmsweep.jobs.decoding import PARAM_NAMES, point_labels

    values = [p.model_dump() for p in points]
    varying = [k for k in PARAM_NAMES if len({json_value(v[k]) for v in values}) > 1]
    table = Table(title=f"decoding points ({len(points)})")
    for col in ("point", "label", *varying):
        table.add_column(col, justify="left" if col == "label" else "right")
    labels = point_labels(points)
    shown = range(len(points)) if len(points) <= 40 else [*range(30), *range(len(points) - 5, len(points))]
    for i in shown:
        table.add_row(str(i), labels[i], *(json_value(values[i][k]) for k in varying))
    console.print(table)
    same = [f"{k}: {json_value(values[0][k])}" for k in PARAM_NAMES if k not in varying]
    if same:
        console.print("every point: " + ", ".join(same))


def json_value(v) -> str:
    """A parameter as it is written in YAML (`false`, `null`, `0.7`)."""
    return "true" if v is True else "false" if v is False else "null" if v is None else f"{v:g}" \
        if isinstance(v, float) else str(v)


def print_plan(plan, exp: Path) -> None:
    table = Table(title=f"plan {plan.experiment} ({plan.spec_hash}) → {exp}")
    for col in ("element", "model", "units", "est. time"):
        table.add_column(col, justify="right" if col != "model" else "left")
    shown = plan.elements if len(plan.elements) <= 20 else plan.elements[:10] + plan.elements[-5:]
    for e in shown:
        table.add_row(str(e.index), e.model, str(e.n_units), hms(e.est_seconds))
    console.print(table)
    total = sum(e.est_seconds for e in plan.elements)
    console.print(f"{plan.n_units} units, {len(plan.elements)} elements, estimated {hms(total)} of rank time")


def cmd_examples(args) -> int:
    from lmsweep.jobs.examples import copy_out, find, shipped

    if args.name is None:
        table = Table(title="example specs (lmsweep examples NAME copies one here)")
        table.add_column("name")
        table.add_column("description")
        for e in shipped():
            table.add_row(e.name, e.description)
        console.print(table)
        return 0
    written = copy_out(find(args.name), Path(args.to), force=args.force)
    for path in written:
        console.print(f"wrote {path}")
    console.print(f"next: lmsweep validate {written[0]}")
    return 0


def register(sub) -> None:
    s = sub.add_parser("validate", help="check a spec, its prompt files and models; write nothing")
    s.add_argument("spec")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("plan", help="expand a spec into units and elements; write the plan")
    s.add_argument("spec")
    s.add_argument("--output-dir", help="parent of the experiment directory (default: the spec's output_dir)")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("examples", help="list the example specs shipped with lmsweep, or copy one out to start from")
    s.add_argument("name", nargs="?", help="example to copy (with the prompt files it reads)")
    s.add_argument("--to", default=".", help="directory to copy into (default: the current directory)")
    s.add_argument("--force", action="store_true", help="overwrite files that exist")
    s.set_defaults(func=cmd_examples)
