"""The one list of tasks: `@register_task` and everything derived from it.

The tasks themselves are plug-ins: modules of `lmsweep.runner.tasks`, which this registry finds by module
name. Usage, in a new module `runner/tasks/<name>.py`::

    from typing import Literal

    import pyarrow as pa

    from lmsweep.core.task import Task, TaskParams
    from lmsweep.core.task_registry import register_task


    class CountParams(TaskParams):
        type: Literal["count"] = "count"
        lowercase: bool = False


    @register_task("count")
    class Count(Task):
        Params = CountParams
        auto_class = None                       # tokenizer only
        columns = (("num_words", pa.int32()),)

        def run(self, ctx, units):
            return [{"unit_id": u.unit_id, "num_words": len(u.prompt["prompt_text"].split())}
                    for u in units], {}

Discovery imports every module (and subpackage) of `lmsweep.runner.tasks` by name (but `<task>_views.py`,
the matplotlib side of a task's `plot`, which the task imports when it draws) the first time a task is
looked up, so the module above is all a task needs to be known to the spec (`task: {type: count}`),
the plan, the worker, the Parquet schema, the summaries and compare. The spec's discriminated union
(`task_spec_union`), the names, the schemas (results.schema.schema_for), the row keys and the
tolerances (`tolerance_fields`) are all read from here; no other list of tasks exists.

Contract, checked at registration: a name is registered once; the class subclasses Task; its Params
subclass TaskParams with `type: Literal[<name>]`; its columns have distinct names; its tolerances do
not contradict another task's of the same name.
"""
from __future__ import annotations

import importlib
import pkgutil
import threading
from typing import Annotated, Any, TypeVar, Union, get_args

from pydantic import Field

from lmsweep.core.task import RUN_TOLERANCES, Task, TaskParams, Tolerance

T = TypeVar("T", bound=type[Task])

_TASKS: dict[str, Task] = {}
_discovered = False
_lock = threading.RLock()
PACKAGE = "lmsweep.runner.tasks"           # the task plug-ins: imported by this name on discovery
VIEWS_SUFFIX = "_views"                     # `<task>_views.py`: a task's plots, imported when drawn, not on discovery


def register_task(name: str):
    """Class decorator: register a Task subclass under `name` (refuses a second task of that name)."""
    def register(cls: T) -> T:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"@register_task({name!r}) decorates a subclass of lmsweep.core.task.Task, got {cls!r}")
        if name in _TASKS:
            raise ValueError(f"task {name!r} is registered twice: by {type(_TASKS[name]).__module__} and "
                             f"{cls.__module__}")
        params = getattr(cls, "Params", None)
        if not (isinstance(params, type) and issubclass(params, TaskParams)):
            raise TypeError(f"task {name!r}: Params must subclass lmsweep.core.task.TaskParams")
        field = params.model_fields.get("type")
        if field is None or get_args(field.annotation) != (name,) or field.default != name:
            raise TypeError(f'task {name!r}: {params.__name__} needs `type: Literal["{name}"] = "{name}"`')
        names = [c for c, _ in cls.columns]
        dup = sorted({c for c in names if names.count(c) > 1})
        if dup:
            raise ValueError(f"task {name!r}: column {dup[0]!r} is declared twice")
        _check_tolerances(name, cls.tolerances)
        cls.name = name
        _TASKS[name] = cls()
        return cls
    return register


def _discover() -> None:
    """Import every task module once (a module registers its task on import)."""
    global _discovered
    if _discovered:
        return
    with _lock:
        if _discovered:
            return
        package = importlib.import_module(PACKAGE)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if not info.name.startswith("_") and not info.name.endswith(VIEWS_SUFFIX):
                importlib.import_module(f"{package.__name__}.{info.name}")
        _discovered = True


def all_tasks() -> list[Task]:
    """Every registered task, in name order."""
    _discover()
    return [_TASKS[n] for n in sorted(_TASKS)]


def task_names() -> tuple[str, ...]:
    return tuple(t.name for t in all_tasks())


def get_task(name: str) -> Task:
    _discover()
    try:
        return _TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(task_names())}") from None


def plot_tasks() -> list[Task]:
    """The tasks with a `lmsweep plot <name>` command (`Task.plot_help`), in name order."""
    return [t for t in all_tasks() if t.plot_help]


def task_spec_union() -> Any:
    """The spec's `task:` field: a union of every task's Params, told apart by `type`."""
    params = tuple(t.Params for t in all_tasks())
    return Annotated[Union[params], Field(discriminator="type")]


def tolerances() -> list[Tolerance]:
    """Every tolerance key: each task's (in name order, first declaration wins), then the run-wide ones."""
    out: dict[str, Tolerance] = {}
    for t in (*(tol for task in all_tasks() for tol in task.tolerances), *RUN_TOLERANCES):
        out.setdefault(t.name, t)
    return list(out.values())


def tolerance_fields() -> dict[str, tuple[Any, Any]]:
    """`pydantic.create_model` fields for the `regression.tolerances` block, one per tolerance."""
    return {t.name: (t.kind | None, Field(t.default, ge=t.ge, le=t.le, gt=t.gt, description=t.help))
            for t in tolerances()}


def _check_tolerances(name: str, declared: tuple[Tolerance, ...]) -> None:
    """A tolerance key means one thing: a new task's must equal any other declaration of that key."""
    seen = {t.name: ("every comparison", t) for t in RUN_TOLERANCES}
    for task in _TASKS.values():
        for t in task.tolerances:
            seen.setdefault(t.name, (task.name, t))
    for t in declared:
        owner, known = seen.get(t.name, (name, t))
        if known != t:
            raise ValueError(f"task {name!r} declares tolerance {t.name!r} unlike {owner} does "
                             f"({t} vs {known}); share one Tolerance object")
