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


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'max_new_tokens'?)` for the closest known name, or "" when none is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
