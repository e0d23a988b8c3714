"""System profiles: the per-machine facts (queues, limits, launcher, GPU binding, environment).

Profiles are small YAML files in ``configs/systems/`` (schema documented at the top of
``polaris.yaml``) so a site can be added or corrected without touching code. They are
validated strictly on load, because a wrong limit only shows up hours later as a job that
PBS rejects or never starts; errors name the file, line and key:
``configs/systems/x.yaml:12: queues.prod.max_nodes: expected int, got 'ten'``.

Values that become scheduler directives (queue names, the default queue, PBS filesystems) are held to the
same plain charset as the spec's and the flags' (`submit/options.py` SCHEDULER_NAME, FILESYSTEM_NAME), so
a profile cannot put `;`, `$(`, a backtick or a newline into a directive line; so are its extra `directives`
(checked by the backend's block: the safe charset, none of the flags the backend sets itself). The launcher,
GPU binding and environment setup are shell by design: a profile is configuration like code.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from lmsweep.configs import SYSTEMS as CONFIG_DIR
from lmsweep.errors import ProfileError

PACKAGE_ROOT = CONFIG_DIR.parents[1]      # error messages name shipped profiles as configs/systems/<name>.yaml

LAUNCHER_FIELDS = frozenset({"nranks", "ppn", "depth", "nnodes"})
_WALLTIME = re.compile(r"^(\d+):([0-5]\d):([0-5]\d)$")
# PBS `-l filesystems=` names, as the spec's execution.pbs.filesystems takes them (submit/backends/pbs.py)
FILESYSTEM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

_TOP_KEYS = (
    "name", "scheduler", "gpus_per_node", "cpus_per_node", "ranks_per_node", "default_queue",
    "queues", "filesystems", "launcher", "gpu_bind", "env_setup", "max_array_size",
    "python", "mpi_library", "tokens_per_second", "directives",
)  # fmt: skip
_QUEUE_KEYS = (
    "min_nodes", "max_nodes", "max_walltime", "max_queued", "max_running",
    "max_concurrent_subjobs", "preemptable",
)  # fmt: skip


def walltime_seconds(text: str) -> int:
    """``"HH:MM:SS"`` (hours may exceed 24) to seconds."""
    m = _WALLTIME.match(text)
    if not m:
        raise ValueError(f"walltime {text!r} is not HH:MM:SS")
    h, mi, s = (int(g) for g in m.groups())
    return h * 3600 + mi * 60 + s


@dataclass(frozen=True)
class QueueLimits:
    """One queue (PBS) or partition (Slurm). ``None`` means no limit is known."""

    name: str
    min_nodes: int
    max_nodes: int
    max_walltime: str
    max_queued: int | None
    max_running: int | None
    max_concurrent_subjobs: int | None
    preemptable: bool

    @property
    def max_walltime_seconds(self) -> int:
        return walltime_seconds(self.max_walltime)

    def accepts(self, nodes: int, walltime: str) -> bool:
        """Would this queue take a job of ``nodes`` nodes for ``walltime``?"""
        return (
            self.min_nodes <= nodes <= self.max_nodes
            and walltime_seconds(walltime) <= self.max_walltime_seconds
        )


@dataclass(frozen=True)
class SystemProfile:
    """A validated system profile; see ``configs/systems/polaris.yaml`` for the field meanings."""

    name: str
    scheduler: str                      # a backend registered in submit/backends/
    gpus_per_node: int
    cpus_per_node: int
    ranks_per_node: int
    default_queue: str | None
    queues: Mapping[str, QueueLimits] = field(hash=False)
    filesystems: tuple[str, ...]
    launcher: str
    gpu_bind: str
    env_setup: tuple[str, ...]
    max_array_size: int | None
    python: str | None = None               # interpreter for the worker; None: the one running `lmsweep submit`
    mpi_library: str | None = None          # text mpi4py's MPI.Get_library_version() must hold; None: no preflight
    tokens_per_second: float | None = None  # per-rank throughput packing assumes unless the spec sets one
    directives: tuple[str, ...] = ()        # extra directive lines of every job, before the spec's own
    source: Path | None = field(default=None, compare=False)

    @property
    def cpus_per_rank(self) -> int:
        """The ``--depth`` for ``mpiexec --cpu-bind depth``: cores per node shared among its ranks."""
        return max(1, self.cpus_per_node // self.ranks_per_node)

    def queue(self, name: str | None = None) -> QueueLimits:
        """The named queue, or the default one; a clear error for a queue the profile lacks."""
        wanted = name if name is not None else self.default_queue
        if wanted is None or wanted not in self.queues:
            known = ", ".join(self.queues) or "none"
            raise ProfileError(f"system {self.name!r} has no queue {wanted!r} (known: {known})")
        return self.queues[wanted]


def list_systems(config_dir: Path = CONFIG_DIR) -> list[str]:
    """Names of the profiles shipped in ``configs/systems/`` (what ``load_system`` accepts)."""
    return sorted(p.stem for p in Path(config_dir).glob("*.yaml"))


def load_system(name_or_path: str | Path, config_dir: Path = CONFIG_DIR) -> SystemProfile:
    """Load a profile by name (``"polaris"``) or by path to a YAML file; raise ProfileError."""
    text_arg = str(name_or_path)
    is_path = isinstance(name_or_path, Path) or "/" in text_arg or text_arg.endswith((".yaml", ".yml"))
    path = Path(name_or_path) if is_path else Path(config_dir) / f"{text_arg}.yaml"
    if not path.is_file():
        if is_path:
            raise ProfileError(f"{_display(path)}: no such system profile")
        known = ", ".join(list_systems(config_dir)) or "none"
        raise ProfileError(f"unknown system {text_arg!r} (known: {known}); or pass a path to a profile YAML")
    return parse_profile(path.read_text(), path)


def parse_profile(text: str, path: Path) -> SystemProfile:
    """Validate a profile's YAML text; ``path`` names it in errors and must match ``name``."""
    reader = _Reader(_display(path), text)
    profile = reader.profile()
    if profile.name != path.stem:
        raise reader.error(("name",), f"{profile.name!r} does not match the file name {path.stem!r}")
    return replace(profile, source=path)


def _display(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(PACKAGE_ROOT))
    except ValueError:
        return str(path)


_MISSING = object()


class _Reader:
    """Walks the YAML once for values and once for line numbers, checking as it goes."""

    def __init__(self, where: str, text: str) -> None:
        self.where = where
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            self.data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise ProfileError(f"{where}{line}: invalid YAML: {problem}") from None
        self.lines: dict[tuple[str, ...], int] = {}
        if node is not None:
            self._index(node, ())

    def _index(self, node: yaml.Node, path: tuple[str, ...]) -> None:
        if path:  # a missing top-level key has no useful line
            self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                if key in seen:
                    raise self.error((*path, key), "duplicate key", line=key_node.start_mark.line + 1)
                seen.add(key)
                self._index(value_node, (*path, key))
                self.lines[(*path, key)] = key_node.start_mark.line + 1

    def error(self, path: tuple[str, ...], problem: str, line: int | None = None) -> ProfileError:
        if line is None:
            probe = path
            while probe not in self.lines and probe:
                probe = probe[:-1]
            line = self.lines.get(probe)
        loc = f"{self.where}:{line}" if line else self.where
        key = ".".join(path) or "(top level)"
        return ProfileError(f"{loc}: {key}: {problem}")

    # -- typed getters -------------------------------------------------------------------

    def _get(self, mapping: dict, path: tuple[str, ...], optional: bool) -> Any:
        value = mapping.get(path[-1], _MISSING)
        if value is _MISSING and not optional:
            raise self.error(path, "missing")
        return value

    def mapping(self, value: Any, path: tuple[str, ...], keys: tuple[str, ...] | None) -> dict:
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping, got {value!r}")
        if keys is not None:
            for key in value:
                if key not in keys:
                    raise self.error((*path, str(key)), f"unknown key (expected one of: {', '.join(keys)})")
        return value

    def integer(self, m: dict, path: tuple[str, ...], minimum: int, optional: bool = False) -> int | None:
        value = self._get(m, path, optional)
        if value is _MISSING or (optional and value is None):
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(path, f"expected int, got {value!r}")
        if value < minimum:
            raise self.error(path, f"must be >= {minimum}, got {value}")
        return value

    def number(self, m: dict, path: tuple[str, ...]) -> float | None:
        """An optional positive number (int or float)."""
        value = self._get(m, path, optional=True)
        if value is _MISSING or value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self.error(path, f"expected a number > 0, got {value!r}")
        return float(value)

    def text(self, m: dict, path: tuple[str, ...], optional: bool = False) -> str | None:
        value = self._get(m, path, optional)
        if value is _MISSING or (optional and value is None):
            return None
        if not isinstance(value, str):
            raise self.error(path, f"expected a string, got {value!r}")
        return value

    def boolean(self, m: dict, path: tuple[str, ...]) -> bool:
        value = self._get(m, path, optional=False)
        if not isinstance(value, bool):
            raise self.error(path, f"expected true or false, got {value!r}")
        return value

    def strings(self, m: dict, path: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(m, path, optional=False)
        if not isinstance(value, list):
            raise self.error(path, f"expected a list of strings, got {value!r}")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise self.error((*path, str(i)), f"expected a non-empty string, got {item!r}")
        return tuple(value)

    # -- the schema ----------------------------------------------------------------------

    def profile(self) -> SystemProfile:
        top = self.mapping(self.data, (), _TOP_KEYS)
        name = self.text(top, ("name",))
        assert name is not None
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
            raise self.error(("name",), f"expected lowercase letters, digits, '-' or '_', got {name!r}")
        from lmsweep.submit.backends import backends  # lazy: the backends import this module

        scheduler = self.text(top, ("scheduler",))
        if scheduler not in backends():
            raise self.error(("scheduler",), f"expected one of {', '.join(backends())}, got {scheduler!r}")
        uses_queues = backends()[scheduler].uses_queues
        gpus = self.integer(top, ("gpus_per_node",), 0)
        cpus = self.integer(top, ("cpus_per_node",), 1)
        assert gpus is not None and cpus is not None
        ranks = self.integer(top, ("ranks_per_node",), 1, optional=True) or max(gpus, 1)

        queues_raw = self.mapping(self._get(top, ("queues",), False), ("queues",), None)
        for q in queues_raw:
            self._scheduler_name(q, ("queues", str(q)), "queue name")
        queues = {str(q): self.queue(str(q), limits) for q, limits in queues_raw.items()}
        default_queue = self.text(top, ("default_queue",), optional=True)
        if default_queue is not None:
            self._scheduler_name(default_queue, ("default_queue",), "queue")
        if not uses_queues:
            if queues:
                raise self.error(("queues",), f"must be empty for scheduler {scheduler}")
            if default_queue is not None:
                raise self.error(("default_queue",), f"must be null for scheduler {scheduler}")
        else:
            if not queues:
                raise self.error(("queues",), f"scheduler {scheduler} needs at least one queue")
            if default_queue not in queues:
                raise self.error(
                    ("default_queue",), f"{default_queue!r} is not one of the queues ({', '.join(queues)})"
                )

        launcher = self.text(top, ("launcher",))
        assert launcher is not None
        self._check_launcher(launcher, ranks)
        gpu_bind = self.text(top, ("gpu_bind",))
        assert gpu_bind is not None
        python = self.text(top, ("python",), optional=True)
        if python is not None and (not python.strip() or ("/" in python and not python.startswith("/"))):
            raise self.error(("python",), f"expected an absolute path or a command name, got {python!r}")
        return SystemProfile(
            name=name,
            scheduler=scheduler,
            gpus_per_node=gpus,
            cpus_per_node=cpus,
            ranks_per_node=ranks,
            default_queue=default_queue,
            queues=MappingProxyType(queues),
            filesystems=self.filesystems(top),
            launcher=launcher,
            gpu_bind=gpu_bind,
            env_setup=self.strings(top, ("env_setup",)),
            max_array_size=self.integer(top, ("max_array_size",), 1, optional=True),
            python=python,
            mpi_library=self.text(top, ("mpi_library",), optional=True),
            tokens_per_second=self.number(top, ("tokens_per_second",)),
            directives=self.directives(top, scheduler),
        )

    def queue(self, name: str, raw: Any) -> QueueLimits:
        base = ("queues", name)
        m = self.mapping(raw, base, _QUEUE_KEYS)
        for key in _QUEUE_KEYS:
            if key not in m:
                raise self.error((*base, key), "missing")
        min_nodes = self.integer(m, (*base, "min_nodes"), 1)
        max_nodes = self.integer(m, (*base, "max_nodes"), 1)
        assert min_nodes is not None and max_nodes is not None
        if max_nodes < min_nodes:
            raise self.error((*base, "max_nodes"), f"{max_nodes} is below min_nodes {min_nodes}")
        walltime = self.text(m, (*base, "max_walltime"))
        if walltime is None or not _WALLTIME.match(walltime) or walltime_seconds(walltime) == 0:
            raise self.error((*base, "max_walltime"), f'expected "HH:MM:SS", got {walltime!r}')
        return QueueLimits(
            name=name,
            min_nodes=min_nodes,
            max_nodes=max_nodes,
            max_walltime=walltime,
            max_queued=self.integer(m, (*base, "max_queued"), 1, optional=True),
            max_running=self.integer(m, (*base, "max_running"), 1, optional=True),
            max_concurrent_subjobs=self.integer(m, (*base, "max_concurrent_subjobs"), 1, optional=True),
            preemptable=self.boolean(m, (*base, "preemptable")),
        )

    def _scheduler_name(self, value: Any, path: tuple[str, ...], what: str) -> None:
        """A value that goes into a #PBS/#SBATCH line: the spec's and the flags' charset (SCHEDULER_NAME)."""
        from lmsweep.submit.options import scheduler_name

        try:
            scheduler_name(value if isinstance(value, str) else repr(value), what)
        except ValueError as exc:
            raise self.error(path, str(exc)) from None

    def filesystems(self, top: dict) -> tuple[str, ...]:
        names = self.strings(top, ("filesystems",))
        for i, fs in enumerate(names):
            if not FILESYSTEM_NAME.match(fs):
                raise self.error(("filesystems", str(i)), f"filesystem {fs!r} must be 1-32 lowercase letters, "
                                 "digits, '_', starting with a letter")
        return names

    def directives(self, top: dict, scheduler: str) -> tuple[str, ...]:
        """Extra directive lines, checked by the backend's block (one without a block takes none)."""
        if top.get("directives") in (None, []):
            return ()
        from lmsweep.submit.backends import backends
        from lmsweep.submit.options import directive

        block = backends()[scheduler].block
        if block is None:
            raise self.error(("directives",), f"scheduler {scheduler} takes no directives")
        lines = self.strings(top, ("directives",))
        for i, line in enumerate(lines):
            try:
                directive(line, block.reserved)
            except ValueError as exc:
                raise self.error(("directives", str(i)), str(exc)) from None
        return lines

    def _check_launcher(self, launcher: str, ranks: int) -> None:
        if not launcher.strip():
            raise self.error(("launcher",), "must not be empty")
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(launcher) if f is not None}
        except ValueError as exc:
            raise self.error(("launcher",), f"bad template: {exc}") from None
        unknown = sorted(names - LAUNCHER_FIELDS)
        if unknown:
            allowed = ", ".join("{" + f + "}" for f in sorted(LAUNCHER_FIELDS))
            raise self.error(("launcher",), f"unknown placeholder {{{unknown[0]}}} (allowed: {allowed})")
        if m := re.search(r"--cpu-bind[ =]list:(\S+)", launcher):
            groups = len(m.group(1).split(":"))
            if groups != ranks:
                raise self.error(
                    ("launcher",), f"--cpu-bind list has {groups} core groups but ranks_per_node is {ranks}"
                )
