"""The registry of scheduler backends: one module per scheduler in this folder.

    from lmsweep.submit.backends import register
    from lmsweep.submit.base import Scheduler

    @register
    class LsfScheduler(Scheduler):
        name = "lsf"            # `scheduler: lsf` in a system profile; `execution.lsf` in a spec
        ...

Every module of this folder is imported by name the first time the registry is read, so a new backend is
one file here (plus a profile in configs/systems/ and its test; docs/adding-a-scheduler.md). The names a
profile may give as `scheduler:`, the `execution.<name>` blocks a spec may hold and every dispatch on
a scheduler come from the registry; shared code never names a scheduler. The registry itself is
lmsweep/core/schedulers.py, so that jobs/ validates a spec's scheduler blocks without importing submit/.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from lmsweep.core.schedulers import block_models, register_scheduler, schedulers, unregister_scheduler

if TYPE_CHECKING:
    from lmsweep.submit.base import Scheduler

__all__ = ["backend_class", "backends", "block_models", "names", "register", "unregister"]


def register(cls: type[Scheduler]) -> type[Scheduler]:
    """Class decorator: make `cls` the backend for `scheduler: <cls.name>`; a second one of that name is refused."""
    from lmsweep.submit.base import Scheduler
    if not (isinstance(cls, type) and issubclass(cls, Scheduler)):
        raise TypeError(f"@register expects a Scheduler subclass, got {cls!r}")
    if not getattr(cls, "name", None) or not getattr(cls, "script_suffix", None):
        raise TypeError(f"{cls.__name__} needs class attributes `name` and `script_suffix`")
    register_scheduler(cls)
    return cls


def unregister(name: str) -> None:
    """Forget a backend registered from outside this folder (tests)."""
    unregister_scheduler(name)


def backends() -> dict[str, type[Scheduler]]:
    """Every backend by name, sorted; imports the modules of this folder once (lmsweep/core/schedulers.py)."""
    return schedulers()


def names() -> tuple[str, ...]:
    return tuple(backends())


def backend_class(name: str) -> type[Scheduler]:
    """The backend of `scheduler: <name>`; ValueError naming the known ones otherwise."""
    try:
        return backends()[name]
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r} (known: {', '.join(names())})") from None
