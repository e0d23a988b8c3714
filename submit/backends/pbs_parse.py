"""Parse what the PBS client commands print: job ids, job states, errors, queue limits.

Everything here is a pure function of text, so the parsers are tested against real
transcripts (``tests/fixtures/pbs/``, OpenPBS 23.06) without a PBS server. Only what the PBS
backend (``pbs.py``) asks for is parsed: ``qsub``'s id and refusals, ``qstat -x -f -t`` (text form),
``qstat``/``qdel`` stderr, a job's kill notice and ``qmgr -c "print server"`` for live limits.

Why the rules below look the way they do (all observed in those transcripts):

* ``qsub`` prints ``4.pbshost`` for a job and ``5[].pbshost`` for an array;
  subjobs are ``5[3].pbshost``.
* Finished subjobs show ``X`` while their array is still running, ``F`` (history,
  needs ``qstat -x``) once the whole array is done.
* The array parent's ``Exit_status`` is *not* an aggregate: it is recomputed each time a
  subjob ends and reflects only the last one (0 if it exited 0, 1 if > 0, 2 if < 0).
  An array whose subjob 3 failed can end with ``Exit_status = 0``. So a parent never gets
  ``finished``/``failed`` here; the backend reads each subjob.
* A deleted job is recognised by ``substate = 91`` (JOB_SUBSTATE_TERMINATED) or a comment
  ending in ``and terminated``; its ``Exit_status`` is missing (deleted while queued/held)
  or, when it was killed while running, 0 on this sandbox server and 256+15 = 271
  (SIGTERM) on production PBS. Neither number is trusted alone.
* A job removed because its dependency can never be satisfied ends ``F`` with no
  ``Exit_status``, no ``stime`` and ``substate = 92``: it never ran, so it is ``cancelled``.
* Walltime kills give ``Exit_status = -29`` (JOB_EXEC_KILL_WALLTIME); negative values are
  PBS's own "the job could not run to completion" codes, so they mean ``failed``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

NormalizedState = Literal[
    "queued", "held", "running", "exiting", "finished", "failed", "cancelled", "unknown"
]

TERMINAL_STATES: frozenset[str] = frozenset({"finished", "failed", "cancelled"})

# OpenPBS src/include/job.h
SUBSTATE_TERMINATED = 91
SUBSTATE_FINISHED = 92
SUBSTATE_FAILED = 93
SUBSTATE_MOVED = 94
_SIGTERM = 15
_SIGNAL_BASE = 256  # PBS reports "killed by signal N" as 256 + N

_LIVE_LETTERS: dict[str, NormalizedState] = {
    "Q": "queued",  # queued, eligible to run
    "W": "queued",  # waiting for its requested start time (-a) or a stage-in
    "T": "queued",  # in transit between queues/servers
    "H": "held",  # user/system/operator hold, or a dependency hold
    "S": "held",  # suspended (alive, not progressing, resumes without user action)
    "U": "held",  # suspended because the workstation became busy
    "R": "running",
    "B": "running",  # array parent: at least one subjob has started
    "E": "exiting",
    "M": "unknown",  # moved to another server: this server can no longer tell us anything
}
_DONE_LETTERS = frozenset({"F", "X"})  # F = finished (history), X = subjob finished/expired

_TERMINATED_COMMENT = re.compile(r"\band terminated\b|\bterminated by\b")


class PbsParseError(ValueError):
    """The text is not what the PBS command prints; the message quotes the offending part."""


# --------------------------------------------------------------------------- job ids

# Prefix of an id as printed in table columns, where the server part may be cut off with "*".
_TABLE_ID = re.compile(r"^(?P<seq>\d+)(?:\[(?P<index>\d*)\])?")
JOB_ID = re.compile(r"^(?P<seq>\d+)(?:\[(?P<index>\d*)\])?(?:\.(?P<server>[A-Za-z0-9][A-Za-z0-9._-]*))?$")


@dataclass(frozen=True)
class JobId:
    """A parsed PBS job id. ``index`` is None for plain jobs and for the array itself (``5[]``)."""

    seq: int
    index: int | None
    is_array: bool
    server: str | None

    def __str__(self) -> str:
        bracket = "" if not self.is_array else f"[{'' if self.index is None else self.index}]"
        return f"{self.seq}{bracket}" + (f".{self.server}" if self.server else "")

    @property
    def array_id(self) -> str | None:
        """``5[].server`` for an array or one of its subjobs, None for a plain job."""
        if not self.is_array:
            return None
        return f"{self.seq}[]" + (f".{self.server}" if self.server else "")


def parse_job_id(text: str) -> JobId:
    """Split ``123``, ``123.server``, ``123[]``, ``123[4].server`` into its parts."""
    m = JOB_ID.match(text.strip())
    if not m:
        raise PbsParseError(f"not a PBS job id: {text.strip()!r}")
    idx = m.group("index")
    return JobId(
        seq=int(m.group("seq")),
        index=int(idx) if idx else None,
        is_array=idx is not None,
        server=m.group("server"),
    )


def parse_qsub_output(stdout: str) -> str:
    """The job id qsub printed (``4.pbshost`` or ``5[].pbshost``), exactly as PBS spells it.

    Takes the last line that is a job id: site submit filters may print notices first.
    """
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if JOB_ID.match(line) and "." in line:
            return line
    raise PbsParseError(f"qsub printed no job id: {stdout.strip()!r}")


# --------------------------------------------------------------------------- job states


@dataclass(frozen=True)
class JobState:
    """One line of ``qstat``: a plain job, an array parent or one subjob.

    ``state`` is the PBS letter as printed; ``normalized`` is what the rest of lmsweep
    reasons about. ``exit_status`` of an array parent is kept verbatim but means nothing
    (see module docstring). ``array_indices`` is the parent's submitted index list
    (from ``array_indices_submitted``) so missing subjobs can be noticed.
    """

    job_id: str
    array_index: int | None
    is_array_parent: bool
    state: str
    normalized: NormalizedState
    exit_status: int | None
    name: str | None
    queue: str | None
    comment: str | None = None
    substate: int | None = None
    array_indices: tuple[int, ...] | None = field(default=None, repr=False)

    @property
    def array_id(self) -> str | None:
        """The parent id (``5[].server``) for a parent or subjob; None for a plain job."""
        m = _TABLE_ID.match(self.job_id)
        if not m or m.group("index") is None:
            return None
        server = self.job_id[m.end() :]
        return f"{m.group('seq')}[]{server}"

    @property
    def can_never_run(self) -> bool:
        """The scheduler says no node will ever satisfy the request (e.g. ``system=aurora`` on Polaris)."""
        return self.normalized == "queued" and bool(self.comment) and "Can Never Run" in str(self.comment)

    @property
    def done(self) -> bool:
        """PBS no longer runs or queues it (true for parents too, whatever their subjobs did)."""
        return self.state in _DONE_LETTERS or self.normalized in TERMINAL_STATES


def normalize_state(
    state: str,
    *,
    exit_status: int | None,
    substate: int | None = None,
    comment: str | None = None,
    is_array_parent: bool = False,
    outcome_known: bool = True,
) -> NormalizedState:
    """Map a PBS state letter plus its exit evidence to one lmsweep state.

    ``outcome_known=False`` is for the short table form, which has no exit status: a
    finished job there is ``unknown`` rather than guessed.
    """
    letter = state.strip().upper()
    if letter in _LIVE_LETTERS:
        return _LIVE_LETTERS[letter]
    if letter not in _DONE_LETTERS:
        return "unknown"
    if substate == SUBSTATE_TERMINATED or (comment and _TERMINATED_COMMENT.search(comment)):
        return "cancelled"
    if substate == SUBSTATE_MOVED:
        return "unknown"
    if is_array_parent or not outcome_known:
        return "unknown"
    if exit_status is None:
        # Never ran: deleted while queued/held, or removed for an unsatisfiable dependency.
        return "cancelled"
    if exit_status == 0:
        return "finished"
    if exit_status == _SIGNAL_BASE + _SIGTERM:
        # SIGTERM from qdel or preemption; anything the job did to itself is another signal/code.
        return "cancelled"
    return "failed"


def _opt_int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise PbsParseError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise PbsParseError(f"expected an integer, got {value!r}") from None


def parse_index_list(text: str) -> tuple[int, ...]:
    """Expand PBS index lists: ``0-5``, ``0-9:2``, ``0-1,3-4``, ``7``; ``-`` means none left."""
    text = text.strip()
    if text in ("", "-"):
        return ()
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part.strip())
        if not m:
            raise PbsParseError(f"not a PBS index list: {text!r}")
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else start
        step = int(m.group(3)) if m.group(3) else 1
        out.extend(range(start, end + 1, step))
    return tuple(out)


def state_from_attributes(job_id: str, attrs: Mapping[str, Any]) -> JobState:
    """Build a JobState from one job's attributes (a ``qstat -f`` record as a mapping)."""
    try:
        jid = parse_job_id(job_id)
    except PbsParseError:
        raise PbsParseError(f"qstat record has a malformed job id: {job_id!r}") from None
    state = attrs.get("job_state")
    if not isinstance(state, str) or not state.strip():
        raise PbsParseError(f"{job_id}: no job_state in qstat output")
    is_parent = jid.is_array and jid.index is None
    exit_status = _opt_int(attrs.get("Exit_status"))
    substate = _opt_int(attrs.get("substate"))
    comment = attrs.get("comment")
    comment = str(comment) if comment is not None else None
    submitted = attrs.get("array_indices_submitted")
    return JobState(
        job_id=job_id,
        array_index=jid.index,
        is_array_parent=is_parent,
        state=state.strip(),
        normalized=normalize_state(
            state, exit_status=exit_status, substate=substate, comment=comment, is_array_parent=is_parent
        ),
        exit_status=exit_status,
        name=_opt_str(attrs.get("Job_Name")),
        queue=_opt_str(attrs.get("queue")),
        comment=comment,
        substate=substate,
        array_indices=parse_index_list(str(submitted)) if is_parent and submitted is not None else None,
    )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _full_records(text: str) -> list[tuple[str, dict[str, str]]]:
    """Split ``qstat -f`` text into (job id, {attribute: value}) records.

    Long values wrap onto lines starting with a tab; the pieces join with no separator
    (``... and terminate`` + ``d by root@pbshost``).
    """
    records: list[tuple[str, dict[str, str]]] = []
    attrs: dict[str, str] | None = None
    last_key: str | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.startswith("Job Id:"):
            attrs = {}
            records.append((line.split(":", 1)[1].strip(), attrs))
            last_key = None
        elif not line.strip():
            continue
        elif line.startswith("\t") and attrs is not None and last_key is not None:
            attrs[last_key] += line[1:].rstrip("\n")
        elif attrs is not None and " = " in line and line[:1].isspace():
            key, _, value = line.strip().partition(" = ")
            attrs[key] = value
            last_key = key
        elif attrs is not None and line.strip().endswith(" =") and line[:1].isspace():
            last_key = line.strip()[:-2]
            attrs[last_key] = ""
        else:
            raise PbsParseError(f"qstat -f line {lineno} is not 'key = value': {line!r}")
    return records


def parse_qstat_full(text: str) -> list[JobState]:
    """Parse the text form of ``qstat -f [-x] [-t]``: the form the backend asks for (``-F json`` on
    this OpenPBS build prints only the first of several ids). Empty output gives an empty list."""
    return [state_from_attributes(jid, attrs) for jid, attrs in _full_records(text)]


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class JobErrors:
    """What ``qstat``/``qdel`` said on stderr about the ids it was given.

    Returned, not raised: with several operands PBS still prints the ones it knows on
    stdout (exit 153, fixture 06c), so the caller merges both. ``finished`` ids need a
    re-query with ``-x``; ``unknown`` ids were never submitted, were mistyped (an array
    without ``[]``), or have aged out of job history.
    """

    unknown: tuple[str, ...] = ()
    finished: tuple[str, ...] = ()
    other: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.unknown or self.finished or self.other)


_UNKNOWN_JOB = re.compile(r"^(?:qstat|qdel|qalter|qhold|qrls|qsig):\s+Unknown Job Id\s+(?P<id>\S+)\s*$")
_FINISHED_QSTAT = re.compile(r"^qstat:\s+(?P<id>\S+)\s+Job has finished\b")
_FINISHED_QDEL = re.compile(r"^(?:qdel|qalter|qhold|qrls|qsig):\s+Job has finished\s+(?P<id>\S+)\s*$")


def parse_job_errors(stderr: str) -> JobErrors:
    """Classify ``qstat``/``qdel`` stderr lines (``Unknown Job Id``, ``Job has finished``)."""
    unknown: list[str] = []
    finished: list[str] = []
    other: list[str] = []
    for line in stderr.splitlines():
        line = line.strip()
        if not line:
            continue
        if m := _UNKNOWN_JOB.match(line):
            unknown.append(m.group("id"))
        elif m := _FINISHED_QSTAT.match(line) or _FINISHED_QDEL.match(line):
            finished.append(m.group("id"))
        else:
            other.append(line)
    return JobErrors(tuple(unknown), tuple(finished), tuple(other))


QsubErrorKind = Literal[
    "queue_limit",
    "array_too_large",
    "bad_array_range",
    "bad_attribute",
    "unknown_queue",
    "unknown_resource",
    "missing_script",
    "rejected",
    "unknown",
]


@dataclass(frozen=True)
class QsubRejection:
    """Why qsub refused a job, with a hint a user can act on."""

    kind: QsubErrorKind
    message: str
    hint: str


_QSUB_ERRORS: tuple[tuple[re.Pattern[str], QsubErrorKind, str], ...] = (
    (
        re.compile(r"would exceed (?:queue|server|complex)\b.*\blimit"),
        "queue_limit",
        "queue limit reached (array subjobs count toward max_queued): wait, or submit fewer/smaller arrays",
    ),
    (
        re.compile(r"Array job exceeds server or queue size limit"),
        "array_too_large",
        "more subjobs than max_array_size: split the array",
    ),
    (re.compile(r"illegal -J value"), "bad_array_range", "-J needs start-end[:step][%max] with start < end"),
    (
        re.compile(r"Illegal attribute or resource value"),
        "bad_attribute",
        "check the value's format (walltime is HH:MM:SS)",
    ),
    (re.compile(r"Unknown queue"), "unknown_queue", "queue name not defined on this server (qstat -Q)"),
    (re.compile(r"Unknown resource"), "unknown_resource", "resource not defined on this server"),
    (re.compile(r"script file:+ No such file"), "missing_script", "the job script path does not exist"),
    (
        re.compile(r"rejected by all possible destinations|Job violates queue and/or server resource limits"),
        "rejected",
        "node count or walltime outside every queue's range",
    ),
)


def classify_qsub_error(stderr: str) -> QsubRejection:
    """Turn qsub's stderr (first meaningful line) into a kind plus hint; never raises."""
    lines = [
        ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith(("usage:", "\t", " "))
    ]
    message = lines[0] if lines else stderr.strip()
    for pattern, kind, hint in _QSUB_ERRORS:
        if pattern.search(stderr):
            return QsubRejection(kind, message, hint)
    return QsubRejection("unknown", message, "see the qsub message")


_KILLED = re.compile(r"^=>> PBS: job killed: (?P<reason>.+?)\s*$", re.MULTILINE)


def parse_job_kill_message(job_stderr: str) -> str | None:
    """The MoM's kill notice in a job's own stderr file, e.g. ``walltime 10 exceeded limit 5``.

    Useful when the job has aged out of ``qstat -x`` history but its output file remains.
    """
    m = _KILLED.search(job_stderr)
    return m.group("reason") if m else None


# --------------------------------------------------------------------------- server / queues


def _qmgr_value(raw: str) -> Any:
    """``True`` → True, ``10`` → 10, ``[u:PBS_GENERIC=1]`` → {"u:PBS_GENERIC": 1}; else the string."""
    value = raw.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if value in ("True", "False"):
        return value == "True"
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    limits = re.findall(r"\[([a-z]):([^=\]]+)=(\d+)\]", value)
    if limits and value.startswith("["):
        return {f"{kind}:{who}": int(n) for kind, who, n in limits}
    return value


def parse_queue_limits(text: str) -> dict[str, dict[str, Any]]:
    """Queue attributes from ``qmgr -c "print server"`` or ``qmgr -c "list queue X"``.

    ``{"debug": {"queue_type": "Execution", "max_queued": {"u:PBS_GENERIC": 1}, ...}}``.
    Limits like ``max_queued`` become ``{"<u|g|p|o>:<name>": n}``; walltime/node bounds
    appear as ``resources_max.walltime`` etc. when the site sets them.
    """
    queues: dict[str, dict[str, Any]] = {}
    current: str | None = None  # for "list queue" blocks
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if m := re.fullmatch(r"create queue (\S+)", stripped):
            queues.setdefault(m.group(1), {})
        elif m := re.fullmatch(r"set queue (\S+) (\S+) ?\+?= (.*)", stripped):
            queues.setdefault(m.group(1), {})[m.group(2)] = _qmgr_value(m.group(3))
        elif m := re.fullmatch(r"Queue (\S+)", stripped):
            current = m.group(1)
            queues.setdefault(current, {})
        elif current is not None and line[:1].isspace() and " = " in stripped:
            key, _, value = stripped.partition(" = ")
            queues[current][key] = _qmgr_value(value)
        else:
            current = None
    return queues


def parse_server_attributes(text: str) -> dict[str, Any]:
    """Server attributes from ``qmgr -c "print server"``, e.g. ``max_array_size`` (10000 by default)."""
    attrs: dict[str, Any] = {}
    for line in text.splitlines():
        if m := re.fullmatch(r"set server (\S+) ?\+?= (.*)", line.strip()):
            attrs[m.group(1)] = _qmgr_value(m.group(2))
    return attrs
