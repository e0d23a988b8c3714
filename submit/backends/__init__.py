"""The registry of scheduler backends: one module per scheduler in this folder.

    from lmsweep.submit.backends import register
    from lmsweep.submit.base import Scheduler

    @register
    class LsfScheduler(Scheduler):
        name = "lsf"            # `scheduler: lsf` in a system profile; `execution.lsf` in a spec
        ...

Every module of this folder is imported the first time the registry is read, so a new backend is one
file here (plus a profile in configs/systems/ and its test; docs/adding-a-scheduler.md). The names a
profile may give as `scheduler:`, the `execution.<name>` blocks a spec may hold and every dispatch on
a scheduler come from here; shared code never names a scheduler.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmsweep.submit.base import Scheduler
    from lmsweep.submit.options import SchedulerBlock

_BACKENDS: dict[str, type[Scheduler]] = {}
_discovered = False


def register(cls: type[Scheduler]) -> type[Scheduler]:
    """Class decorator: make `cls` the backend for `scheduler: <cls.name>`; a second one of that name is refused."""
    from lmsweep.submit.base import Scheduler
    if not (isinstance(cls, type) and issubclass(cls, Scheduler)):
        raise TypeError(f"@register expects a Scheduler subclass, got {cls!r}")
    if not getattr(cls, "name", None) or not getattr(cls, "script_suffix", None):
        raise TypeError(f"{cls.__name__} needs class attributes `name` and `script_suffix`")
    other = _BACKENDS.get(cls.name)
    if other is not None and other.__qualname__ != cls.__qualname__:
        raise ValueError(f"scheduler {cls.name!r} is registered twice: {other.__qualname__} and {cls.__qualname__}")
    _BACKENDS[cls.name] = cls
    return cls


def backends() -> dict[str, type[Scheduler]]:
    """Every backend by name, sorted; imports the modules of this folder once."""
    global _discovered
    if not _discovered:
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
        _discovered = True
    return dict(sorted(_BACKENDS.items()))


def names() -> tuple[str, ...]:
    return tuple(backends())


def backend_class(name: str) -> type[Scheduler]:
    """The backend of `scheduler: <name>`; ValueError naming the known ones otherwise."""
    try:
        return backends()[name]
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r} (known: {', '.join(names())})") from None


def block_models() -> dict[str, type[SchedulerBlock]]:
    """The `execution.<name>` block model of each backend that has one (what `lmsweep validate` checks)."""
    return {name: cls.block for name, cls in backends().items() if cls.block is not None}
