"""The one list of scheduler backends: their names and their `execution.<name>` block models.

A scheduler backend is a plug-in: one module of `lmsweep.submit.backends` (pbs, slurm, local, ...) whose
class registers itself (`submit.backends.register`, which checks it is a `Scheduler` and calls
`register_scheduler` here). The registry lives in the core because a spec is validated in jobs/: the names
a profile may give as `scheduler:` and the `execution.<name>` blocks a spec may hold come from here, and
jobs/ imports no later stage. Discovery imports every module of `lmsweep.submit.backends` by name the first
time the registry is read, exactly as the task and engine registries find theirs.
"""
from __future__ import annotations

import importlib
import pkgutil
import threading
from typing import Any

PACKAGE = "lmsweep.submit.backends"       # the scheduler plug-ins: imported by this name on discovery

_SCHEDULERS: dict[str, Any] = {}          # name -> its backend class (a submit.base.Scheduler subclass)
_discovered = False
_lock = threading.RLock()


def register_scheduler(cls: Any) -> None:
    """Record `cls` as the backend of `scheduler: <cls.name>`; a second class of that name is refused."""
    with _lock:
        other = _SCHEDULERS.get(cls.name)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise ValueError(f"scheduler {cls.name!r} is registered twice: {other.__qualname__} and "
                             f"{cls.__qualname__}")
        _SCHEDULERS[cls.name] = cls


def unregister_scheduler(name: str) -> None:
    """Forget a backend registered from outside the package (tests)."""
    with _lock:
        _SCHEDULERS.pop(name, None)


def schedulers() -> dict[str, Any]:
    """Every backend class by name, sorted; imports the modules of `lmsweep.submit.backends` once."""
    global _discovered
    if not _discovered:
        with _lock:
            if not _discovered:
                package = importlib.import_module(PACKAGE)
                for module in pkgutil.iter_modules(package.__path__):
                    importlib.import_module(f"{PACKAGE}.{module.name}")
                _discovered = True
    return dict(sorted(_SCHEDULERS.items()))


def scheduler_names() -> tuple[str, ...]:
    return tuple(schedulers())


def block_models() -> dict[str, Any]:
    """The `execution.<name>` block model (a pydantic model) of each backend that has one: what
    `lmsweep validate` checks a spec's scheduler blocks against."""
    return {name: cls.block for name, cls in schedulers().items() if cls.block is not None}
