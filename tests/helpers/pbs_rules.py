"""A strict checker for rendered PBS batch scripts against the ALCF rules (test helper).

CI has no PBS server, so this is what stands in for ``qsub`` and for ALCF's queue
policies: tests render a script and assert ``check_pbs_script(text, system) == []``.
It is deliberately stricter than PBS (e.g. it insists on ``-q`` and ``place=scatter``):
a script lmsweep writes should be one an ALCF user would write by hand.

The queue table is kept here on purpose, independent of ``configs/systems/*.yaml``, so the
check is an oracle rather than a copy of the code under test; ``tests/test_systems.py``
asserts that the two agree. Sources: ALCF user guides (Polaris/Aurora "Running Jobs",
2026-08, as summarised in ``shared/design.md``) and the OpenPBS transcripts in
``tests/fixtures/pbs`` (e.g. ``max_queued`` counts array subjobs, README item 7).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

__all__ = ["ALCF_QUEUES", "FILESYSTEMS", "MAX_ARRAY_SIZE", "QueueRule", "check_pbs_script"]


@dataclass(frozen=True)
class QueueRule:
    """What an ALCF queue accepts. ``None`` means no documented limit."""

    min_nodes: int
    max_nodes: int
    max_walltime_s: int
    max_concurrent: int  # subjobs that may run at once (the -J %K throttle may not exceed it)
    max_queued: int | None  # jobs queued per user/project; array subjobs count each
    preemptable: bool = False


_H = 3600
ALCF_QUEUES: dict[str, dict[str, QueueRule]] = {
    "polaris": {
        "debug": QueueRule(1, 2, 1 * _H, max_concurrent=1, max_queued=None),
        "debug-scaling": QueueRule(1, 10, 1 * _H, max_concurrent=1, max_queued=1),
        "prod": QueueRule(10, 496, 24 * _H, max_concurrent=10, max_queued=100),
        "preemptable": QueueRule(1, 10, 72 * _H, max_concurrent=20, max_queued=20, preemptable=True),
        "capacity": QueueRule(1, 4, 168 * _H, max_concurrent=1, max_queued=2),
    },
    "aurora": {
        "debug": QueueRule(1, 2, 1 * _H, max_concurrent=1, max_queued=1),
        "debug-scaling": QueueRule(2, 256, 1 * _H, max_concurrent=1, max_queued=1),
        "prod": QueueRule(256, 10624, 24 * _H, max_concurrent=10, max_queued=100),
        # capacity walltime is not in the design notes: 24 h is a conservative assumption
        "capacity": QueueRule(1, 16, 24 * _H, max_concurrent=1, max_queued=None),
    },
}

FILESYSTEMS: dict[str, frozenset[str]] = {
    "polaris": frozenset({"home", "eagle", "grand"}),
    # ALCF Aurora guide: DAOS is requested as daos_user (or daos_perf for approved teams)
    "aurora": frozenset({"home", "flare", "daos_user", "daos_perf"}),
}

MAX_ARRAY_SIZE = 10000  # PBS server default max_array_size (fixture 00_qmgr_print_server)
MIN_WALLTIME_S = 5 * 60  # every ALCF queue's "Time Min"
MAX_NAME_LEN = 236

_KNOWN_OPTIONS = frozenset("AqlJroeNjmMkWv")
_RESOURCES = ("select", "place", "walltime", "filesystems")
_WALLTIME = re.compile(r"^(\d+):([0-5]\d):([0-5]\d)$")
_ARRAY = re.compile(r"^(\d+)-(\d+)(?::(\d+))?(?:%(\d+))?$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_PROJECT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_EMAIL = re.compile(r"^[^@\s,]+@[^@\s,]+$")
_PATH = re.compile(r"^(?:[A-Za-z0-9._-]+:)?[^\s:]+$")


def _seconds(walltime: str) -> int | None:
    m = _WALLTIME.match(walltime)
    if not m:
        return None
    h, mi, s = (int(g) for g in m.groups())
    return h * 3600 + mi * 60 + s


@dataclass
class _Directives:
    options: dict[str, tuple[int, str]]  # option letter -> (line, value)
    resources: dict[str, tuple[int, str]]  # -l name -> (line, value)


def _scan(lines: list[str], errors: list[str]) -> _Directives:
    """Collect directives the way qsub reads them, reporting malformed ones."""
    found = _Directives({}, {})
    first_command: int | None = None
    for n, line in enumerate(lines, 1):
        if n == 1 and line.startswith("#!"):
            continue
        stripped = line.strip()
        is_directive = line.startswith("#PBS")
        if not is_directive and re.match(r"^\s*#\s*PBS\b", line, re.IGNORECASE):
            errors.append(f"line {n}: {stripped!r} is not read by PBS (a directive starts exactly '#PBS ')")
            continue
        if not is_directive:
            if stripped and not stripped.startswith("#") and first_command is None:
                first_command = n
            continue
        if first_command is not None:
            errors.append(
                f"line {n}: #PBS directive after the first command (line {first_command}) is ignored by PBS"
            )
            continue
        body = line[len("#PBS") :]
        if body and not body[0].isspace():
            errors.append(f"line {n}: {stripped!r} is not a directive ('#PBS' must be followed by a space)")
            continue
        if "#" in body:
            errors.append(
                f"line {n}: trailing comment in a #PBS directive (not every PBS strips it; keep it bare)"
            )
            body = body.split("#", 1)[0]
        try:
            tokens = shlex.split(body)
        except ValueError as exc:
            errors.append(f"line {n}: cannot parse directive: {exc}")
            continue
        if not tokens:
            errors.append(f"line {n}: empty #PBS directive")
            continue
        _collect(n, tokens, found, errors)
    return found


def _collect(n: int, tokens: list[str], found: _Directives, errors: list[str]) -> None:
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not re.fullmatch(r"-[A-Za-z]", tok):
            errors.append(f"line {n}: expected an option like -A, got {tok!r}")
            return
        opt = tok[1]
        if opt not in _KNOWN_OPTIONS:
            errors.append(f"line {n}: unknown or unsupported directive {tok}")
            return
        if i + 1 >= len(tokens) or re.fullmatch(r"-[A-Za-z]", tokens[i + 1]):
            errors.append(f"line {n}: {tok} needs a value")
            return
        value = tokens[i + 1]
        i += 2
        if opt == "l":
            for item in value.split(","):
                name, eq, res_value = item.partition("=")
                if not eq or not res_value:
                    errors.append(f"line {n}: -l {item!r} is not resource=value")
                elif name not in _RESOURCES:
                    errors.append(f"line {n}: unknown resource -l {name} (allowed: {', '.join(_RESOURCES)})")
                elif name in found.resources:
                    errors.append(
                        f"line {n}: -l {name} given twice (first on line {found.resources[name][0]})"
                    )
                else:
                    found.resources[name] = (n, res_value)
        elif opt in found.options:
            errors.append(f"line {n}: -{opt} given twice (first on line {found.options[opt][0]})")
        else:
            found.options[opt] = (n, value)


def check_pbs_script(text: str, system: str) -> list[str]:
    """Return every violation of the ALCF rules in a PBS batch script (empty list = ok).

    Messages start with ``line N:`` when a line is at fault, so a failing test points at it.
    """
    if system not in ALCF_QUEUES:
        raise ValueError(f"unknown system {system!r}; expected one of {sorted(ALCF_QUEUES)}")
    errors: list[str] = []
    lines = text.splitlines()
    if not lines or not re.match(r"^#!\s*/\S+", lines[0]):
        first = lines[0] if lines else ""
        errors.append(f"line 1: first line must be a shebang such as '#!/bin/bash -l', got {first!r}")
    d = _scan(lines, errors)
    opts, res = d.options, d.resources

    # mandatory directives
    for opt, what in (("A", "-A <project>"), ("q", "-q <queue>")):
        if opt not in opts:
            errors.append(f"missing mandatory directive {what}")
    for name, what in (
        ("select", f"-l select=<nodes>:system={system}"),
        ("walltime", "-l walltime=HH:MM:SS"),
        ("filesystems", "-l filesystems=<fs:fs>"),
        ("place", "-l place=scatter"),
    ):
        if name not in res:
            errors.append(f"missing mandatory directive {what}")

    if "A" in opts:
        n, project = opts["A"]
        if not _PROJECT.match(project):
            errors.append(f"line {n}: -A {project!r} is not a project name")

    queue_rule: QueueRule | None = None
    queue = None
    if "q" in opts:
        n, queue = opts["q"]
        queue_rule = ALCF_QUEUES[system].get(queue)
        if queue_rule is None:
            errors.append(
                f"line {n}: unknown {system} queue {queue!r} (known: {', '.join(ALCF_QUEUES[system])})"
            )

    nodes = _check_select(res.get("select"), system, errors)
    walltime = _check_walltime(res.get("walltime"), errors)
    _check_filesystems(res.get("filesystems"), system, errors)
    if "place" in res:
        n, place = res["place"]
        if not re.fullmatch(r"scatter(?::(?:excl|exclhost|shared|group=tier[01]))*", place):
            errors.append(
                f"line {n}: -l place={place} must be scatter (optionally :excl or :group=tier0|tier1)"
            )

    if queue_rule is not None and queue is not None:
        if nodes is not None and not queue_rule.min_nodes <= nodes <= queue_rule.max_nodes:
            errors.append(
                f"line {res['select'][0]}: {nodes} nodes outside {system} queue {queue!r} range "
                f"{queue_rule.min_nodes}-{queue_rule.max_nodes}"
            )
        if walltime is not None and walltime > queue_rule.max_walltime_s:
            errors.append(
                f"line {res['walltime'][0]}: walltime {res['walltime'][1]} exceeds {system} queue {queue!r} "
                f"maximum {queue_rule.max_walltime_s // 3600}:00:00"
            )
        if queue_rule.preemptable and opts.get("r", (0, ""))[1] != "y":
            errors.append(f"queue {queue!r} is preemptable: add '#PBS -r y' so a killed job is rerun")

    subjobs = _check_array(opts.get("J"), queue, queue_rule, errors)
    _check_misc(opts, subjobs is not None, errors)
    return errors


def _check_select(entry: tuple[int, str] | None, system: str, errors: list[str]) -> int | None:
    if entry is None:
        return None
    n, value = entry
    if "+" in value:
        errors.append(f"line {n}: multi-chunk select {value!r} is not supported; use <nodes>:system={system}")
        return None
    count, *chunk = value.split(":")
    if not count.isdigit() or int(count) < 1:
        errors.append(f"line {n}: select must start with a node count >= 1, got {value!r}")
        return None
    seen: dict[str, str] = {}
    for item in chunk:
        key, eq, val = item.partition("=")
        if not eq:
            errors.append(f"line {n}: select item {item!r} is not name=value")
        elif key not in ("system", "ncpus", "ngpus", "mpiprocs"):
            errors.append(
                f"line {n}: unknown select resource {key!r} (allowed: system, ncpus, ngpus, mpiprocs)"
            )
        elif key != "system" and not (val.isdigit() and int(val) >= 1):
            errors.append(f"line {n}: select {key}={val!r} must be a positive integer")
        else:
            seen[key] = val
    if "system" not in seen:
        errors.append(f"line {n}: select must name the machine: {count}:system={system}")
    elif seen["system"] != system:
        errors.append(f"line {n}: select asks for system={seen['system']} but this is a {system} script")
    return int(count)


def _check_walltime(entry: tuple[int, str] | None, errors: list[str]) -> int | None:
    if entry is None:
        return None
    n, value = entry
    seconds = _seconds(value)
    if seconds is None:
        errors.append(f"line {n}: walltime {value!r} is not HH:MM:SS")
        return None
    if seconds < MIN_WALLTIME_S:
        errors.append(f"line {n}: walltime {value} is below the 5-minute minimum of every ALCF queue")
    return seconds


def _check_filesystems(entry: tuple[int, str] | None, system: str, errors: list[str]) -> None:
    if entry is None:
        return
    n, value = entry
    names = value.split(":")
    valid = FILESYSTEMS[system]
    for fs in names:
        if fs not in valid:
            errors.append(f"line {n}: unknown {system} filesystem {fs!r} (valid: {', '.join(sorted(valid))})")
    if len(set(names)) != len(names):
        errors.append(f"line {n}: filesystems {value!r} lists a filesystem twice")


def _check_array(
    entry: tuple[int, str] | None, queue: str | None, rule: QueueRule | None, errors: list[str]
) -> int | None:
    """Validate -J and return the subjob count (None when not an array or malformed)."""
    if entry is None:
        return None
    n, value = entry
    m = _ARRAY.match(value)
    if not m:
        errors.append(f"line {n}: -J {value!r} is not start-end[:step][%max_running]")
        return None
    start, end = int(m.group(1)), int(m.group(2))
    step = int(m.group(3)) if m.group(3) else 1
    throttle = int(m.group(4)) if m.group(4) else None
    if start >= end:
        errors.append(f"line {n}: -J {value}: start must be below end (PBS rejects {start}-{end})")
        return None
    if step < 1 or (throttle is not None and throttle < 1):
        errors.append(f"line {n}: -J {value}: step and %max must be >= 1")
        return None
    count = len(range(start, end + 1, step))
    if count > MAX_ARRAY_SIZE:
        errors.append(f"line {n}: -J {value} has {count} subjobs, above max_array_size {MAX_ARRAY_SIZE}")
    if rule is None:
        return count
    limit = rule.max_concurrent
    if throttle is not None and throttle > limit:
        errors.append(
            f"line {n}: -J {value}: %{throttle} exceeds queue {queue!r} limit of {limit} running subjobs"
        )
    elif throttle is None and count > limit:
        errors.append(
            f"line {n}: -J {value}: {count} subjobs in queue {queue!r} need a throttle %K with K <= {limit} "
            f"(without it the array may never run)"
        )
    if rule.max_queued is not None and count > rule.max_queued:
        errors.append(
            f"line {n}: -J {value}: {count} subjobs exceed queue {queue!r} limit of {rule.max_queued} queued "
            f"jobs (each subjob counts)"
        )
    return count


def _check_misc(opts: dict[str, tuple[int, str]], is_array: bool, errors: list[str]) -> None:
    if "r" in opts and opts["r"][1] not in ("y", "n"):
        errors.append(f"line {opts['r'][0]}: -r must be y or n, got {opts['r'][1]!r}")
    if "N" in opts:
        n, name = opts["N"]
        if len(name) > MAX_NAME_LEN:
            errors.append(f"line {n}: -N name is {len(name)} characters, PBS allows {MAX_NAME_LEN}")
        if not _NAME.match(name):
            errors.append(
                f"line {n}: -N {name!r} must start with a letter and use only letters, digits, '_', '-', '.'"
            )
    if "j" in opts and opts["j"][1] not in ("oe", "eo", "n"):
        errors.append(f"line {opts['j'][0]}: -j must be oe, eo or n, got {opts['j'][1]!r}")
    for opt in ("o", "e"):
        if opt in opts:
            n, path = opts[opt]
            if not _PATH.match(path):
                errors.append(f"line {n}: -{opt} {path!r} is not a path (no spaces; optional host: prefix)")
            elif is_array and "^array_index^" not in path and not path.endswith("/"):
                errors.append(
                    f"line {n}: -{opt} {path} has no ^array_index^: every subjob would write the same file"
                )
    if "m" in opts:
        n, mail = opts["m"]
        if not (mail == "n" or (re.fullmatch(r"[abej]+", mail) and len(set(mail)) == len(mail))):
            errors.append(f"line {n}: -m {mail!r} must be 'n' or letters from a, b, e, j")
    if "M" in opts:
        n, users = opts["M"]
        for user in users.split(","):
            if not _EMAIL.match(user):
                errors.append(f"line {n}: -M {user!r} is not an e-mail address")
    if "k" in opts:
        n, keep = opts["k"]
        if not (keep == "n" or (re.fullmatch(r"[oed]+", keep) and len(set(keep)) == len(keep))):
            errors.append(f"line {n}: -k {keep!r} must be 'n' or letters from o, e, d (ALCF suggests doe)")
    if "W" in opts:
        n, attr = opts["W"]
        if not re.fullmatch(r"[a-z_]+=\S+", attr):
            errors.append(f"line {n}: -W {attr!r} is not attribute=value")
    if "v" in opts:
        n, variables = opts["v"]
        for var in variables.split(","):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(=.*)?", var):
                errors.append(f"line {n}: -v {var!r} is not VAR or VAR=value")
