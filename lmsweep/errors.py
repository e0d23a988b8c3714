"""The errors lmsweep raises on purpose, one tree (the `lmsweep` command maps each to its exit code).

    LmsweepError                 base; never raised itself
    ├── BadInput                 exit 2: something the user gave or has on disk is wrong; nothing was written
    │   ├── SpecError            a spec (or its prompt/model files): `file:line: field: message`
    │   │   └── SpecErrors       several at once, one line each
    │   ├── UsageError           a command-line flag or argument (wrong experiment for a plot, --element past the end)
    │   ├── ExperimentError      an experiment directory's own file is missing, damaged or not what it should be
    │   ├── ProfileError         a system profile (configs/systems/*.yaml or a user's file)
    │   │   └── ProfileErrors    several at once, one line each
    │   └── PackingError         the plan cannot be packed into the queue's limits
    └── SchedulerError           exit 1: the scheduler refused or failed (qsub/sbatch/scancel said no)

This module imports nothing of lmsweep: every stage (`jobs`, `runner`, `submit`, `results`) imports it, so
it never closes an import cycle. `lmsweep.jobs.errors` re-exports the spec errors for older imports.
"""
from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable


class LmsweepError(Exception):
    """Base of every error lmsweep raises on purpose; `exit_code` is what the CLI exits with."""

    exit_code = 1

    def lines(self) -> list[str]:
        """What the CLI prints, one problem a line."""
        return [str(self).replace("\n", " ")]


class BadInput(LmsweepError):
    """A problem the user can fix in what they gave: one line `where: field: message`, exit 2.

    `file`, `line` and `field` say where, when known; the message says what was expected.
    """

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.field = field

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message}".replace("\n", " ")

    def all(self) -> list[BadInput]:
        """Every problem this error stands for, one line each (see SpecErrors)."""
        return [self]

    def lines(self) -> list[str]:
        return [str(one) for one in self.all()]


class SpecError(BadInput):
    """A problem in a spec or the files it names, reported as `file:line: field: message` on one line.

    Nothing is written before validation passes.
    """


class Several:
    """Mixed into a BadInput kind: several problems found in one pass over an input, in file order; it stands
    where the first one was found and each prints as its own line (SpecErrors, ProfileErrors)."""

    def __init__(self, errors: list[BadInput]):
        first = errors[0]
        super().__init__(first.message, file=first.file, line=first.line, field=first.field)
        self.errors = errors

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)

    def all(self) -> list[BadInput]:
        return list(self.errors)


class SpecErrors(Several, SpecError):
    """Several problems of one spec, each on its own line."""


class UsageError(BadInput):
    """A command-line argument that cannot be acted on (an experiment of the wrong task for a plot, an
    element number past the plan's last, jobs still running where none may)."""


class ExperimentError(BadInput):
    """A file of an experiment directory (plan.json, the prompt table, a submission record, a compaction
    manifest, ...) is missing, damaged, of the wrong type or points outside the experiment. `file` names it."""


class ProfileError(BadInput):
    """A system profile is missing or invalid."""


class ProfileErrors(Several, ProfileError):
    """Several problems of one profile, each on its own line."""


class PackingError(BadInput):
    """The plan cannot be packed within the queue's limits (nodes, walltime, array size)."""


class SchedulerError(LmsweepError):
    """The scheduler refused or failed a command (qsub, sbatch, scancel, qstat ...)."""


def raise_all(errors: list[SpecError]) -> None:
    """Raise nothing, the one error, or all of them ordered by line."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise SpecErrors(sorted(errors, key=lambda e: (e.file or "", e.line or 0)))


class KeyProblems(ValueError):
    """Problems inside one block, each at its own key: raised by a validator that reads the block as a
    whole (the decoding grid), so the spec loader can report each at the key's own line."""

    def __init__(self, problems: list[tuple[tuple, str]]):
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems          # (path below the block, e.g. ("temperature", 1); message)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'max_new_tokens'?)` for the closest known name, or "" when none is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# An OSError on a path the user controls (a read-only or full experiment directory, a file without
# permission) is reported as one line naming the path, not a traceback (exit 2, by the `lmsweep` command and
# by the worker's own record of its element); anything else is a bug and shows one.
USER_FIXABLE_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM,
                                 errno.ENOTDIR, errno.EISDIR, errno.ENOENT, errno.ENAMETOOLONG})


def os_error_line(e: OSError) -> str:
    """`path: Read-only file system` (and the second path of a rename), as a BadInput would print."""
    where = f"{e.filename} -> {e.filename2}" if e.filename2 else str(e.filename)
    return str(BadInput(e.strerror or str(e), file=where))
