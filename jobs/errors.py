"""One error type for everything a user can fix in their input."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class SpecError(Exception):
    """A problem in user input, reported as `file:line: field: message` on one line.

    The CLI turns it into exit code 2; nothing is written before validation passes.
    """

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

    def all(self) -> list[SpecError]:
        """Every problem this error stands for, one line each (see SpecErrors)."""
        return [self]


class SpecErrors(SpecError):
    """Several problems found in one pass over an input, in file order; each prints as its own line."""

    def __init__(self, errors: list[SpecError]):
        first = errors[0]
        super().__init__(first.message, file=first.file, line=first.line, field=first.field)
        self.errors = errors

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)

    def all(self) -> list[SpecError]:
        return list(self.errors)


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
